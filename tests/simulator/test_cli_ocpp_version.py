"""`cpsim up --ocpp`: the version reaches agent.toml [ocpp] and the bundled CSMS, with the security flags."""

from __future__ import annotations

import base64
import tomllib
from pathlib import Path

import pytest
import websockets
from websockets.typing import Subprotocol

import simulator.rig
from agent.config import load
from simulator.cli import main
from simulator.rig import Rig, RigOptions


def test_ocpp_flag_reaches_the_rig_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[RigOptions] = []

    async def capture(options: RigOptions) -> int:
        seen.append(options)
        return 0

    monkeypatch.setattr(simulator.rig, "run_rig", capture)
    assert main(["up", "--dir", str(tmp_path / "a"), "--ocpp", "2.0.1", "--security-profile", "1",
                 "--password", "s3cret-pw-16chars"]) == 0
    assert main(["up", "--dir", str(tmp_path / "b")]) == 0
    assert [(o.ocpp_version, o.security_profile) for o in seen] == [("2.0.1", 1), (None, 0)]
    with pytest.raises(SystemExit):
        main(["up", "--dir", str(tmp_path / "c"), "--ocpp", "2.1"])
    assert "--ocpp" in capsys.readouterr().err


async def test_rig_for_2_0_1_writes_the_version_and_its_csms_speaks_it(tmp_path: Path) -> None:
    rig = Rig(RigOptions(directory=tmp_path, bundled_csms=True, ocpp_version="2.0.1", security_profile=1,
                         password="s3cret-pw-16chars"))
    await rig.start()
    try:
        ocpp = tomllib.loads((tmp_path / "agent.toml").read_text())["ocpp"]
        assert (ocpp["version"], ocpp["security_profile"]) == ("2.0.1", 1)
        assert load(tmp_path / "agent.toml").ocpp.version == "2.0.1"
        auth = {"Authorization": "Basic " + base64.b64encode(b"CP001:s3cret-pw-16chars").decode()}
        offered = [Subprotocol("ocpp2.0.1"), Subprotocol("ocpp1.6")]
        async with websockets.connect(f"{ocpp['endpoint']}/CP001", subprotocols=offered,
                                      additional_headers=auth) as connection:
            assert connection.subprotocol == "ocpp2.0.1"
        with pytest.raises(websockets.InvalidStatus) as refused:  # a 1.6-only station: no common subprotocol
            async with websockets.connect(f"{ocpp['endpoint']}/CP001", subprotocols=[Subprotocol("ocpp1.6")],
                                          additional_headers=auth):
                pass
        assert refused.value.response.status_code == 400
    finally:
        await rig.stop()


async def test_rig_without_version_keeps_the_1_6_csms_and_writes_no_version(tmp_path: Path) -> None:
    rig = Rig(RigOptions(directory=tmp_path, bundled_csms=True))
    await rig.start()
    try:
        ocpp = tomllib.loads((tmp_path / "agent.toml").read_text())["ocpp"]
        assert "version" not in ocpp
        offered = [Subprotocol("ocpp2.0.1"), Subprotocol("ocpp1.6")]
        async with websockets.connect(f"{ocpp['endpoint']}/CP001", subprotocols=offered) as connection:
            assert connection.subprotocol == "ocpp1.6"
    finally:
        await rig.stop()
