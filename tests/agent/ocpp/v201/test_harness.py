"""The 2.0.1 harness itself: the rig's agent.toml asks for 2.0.1, the CSMS selects ocpp2.0.1, presets land
in [ocpp.variables], and the agent boots over 2.0.1 (once the 2.0.1 service exists)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from agent.config import load
from simulator.rig import Rig, RigOptions
from tests.agent.ocpp.v201.conftest import CP, Octt201, toml_value, write_config


async def test_rig_config_and_csms_speak_2_0_1(octt: Octt201) -> None:
    config = load(octt.rig.dir / "agent.toml")
    assert config.ocpp.version == "2.0.1" and config.ocpp.endpoint == octt.csms.url
    offered = [Subprotocol("ocpp2.0.1"), Subprotocol("ocpp1.6")]
    async with connect(f"{octt.csms.url}/{CP}", subprotocols=offered) as connection:
        assert connection.subprotocol == "ocpp2.0.1"
        await octt.csms.wait_connected(CP)
        assert octt.csms.version_of(CP) == "2.0.1"


def test_presets_are_written_as_an_ocpp_variables_table(octt: Octt201) -> None:
    path = write_config(octt.rig, {"OCPPCommCtrlr/HeartbeatInterval": 60, "TxCtrlr/TxStartPoint": "PowerPathClosed",
                                   "AuthCtrlr/AuthorizeRemoteStart": False})
    table = tomllib.loads(path.read_text())["ocpp"]
    assert table["version"] == "2.0.1"
    assert table["variables"] == {"OCPPCommCtrlr/HeartbeatInterval": 60, "TxCtrlr/TxStartPoint": "PowerPathClosed",
                                  "AuthCtrlr/AuthorizeRemoteStart": False}
    assert toml_value(["a", "b"]) == '["a", "b"]'
    with pytest.raises(TypeError):
        toml_value({"a": 1})


async def test_agent_boots_over_2_0_1(octt: Octt201) -> None:
    await octt.start_agent()
    boot = await octt.wait("BootNotification", within=10)
    assert boot.payload["chargingStation"]["vendorName"] == "cpsim"
    assert octt.csms.version_of(CP) == "2.0.1"
    assert "ocpp2.0.1" in octt.csms.handshakes[-1].subprotocols
    await octt.wait_status("Available", evse_id=1, connector_id=1)


async def test_cpsim_rig_for_2_0_1_with_basic_auth_boots_the_agent(tmp_path: Path) -> None:
    """What `cpsim up --ocpp 2.0.1 --security-profile 1 --password PW` builds: the agent boots over 2.0.1."""
    rig = Rig(RigOptions(directory=tmp_path, bundled_csms=True, ocpp_version="2.0.1", security_profile=1,
                         password="s3cret-pw-16chars", charge_point_id=CP))
    await rig.start()
    harness = Octt201(rig.csms, rig) if rig.csms is not None else None
    try:
        assert harness is not None
        await harness.start_agent()
        await harness.wait("BootNotification", within=10)
        handshake = harness.csms.handshakes[-1]
        assert handshake.authorization is not None and handshake.authorization.startswith("Basic ")
        assert harness.csms.version_of(CP) == "2.0.1"
    finally:
        if harness is not None and harness.agent is not None:
            await harness.agent.stop()
        await rig.stop()
