"""OCPP 2.0.1 firmware update with ongoing transactions (L01.FR.06 / L01.FR.07,
ChargingStation.AllowNewSessionsPendingFirmwareUpdate) over real websockets, a real HTTP server and a real
installer process, on a rig with two EVSEs (agent/ocpp/v201/firmware.py):

- the download and verification go on while a transaction charges (the update is not refused and does not
  stop the transaction); the install, which restarts the agent, waits (InstallScheduled) until no transaction
  runs (L01.FR.06).
- AllowNewSessionsPendingFirmwareUpdate false (TC_L_15_CS): the free EVSE is Unavailable while the install
  waits (no new session there), and so becomes the EVSE whose transaction ends; true (TC_L_14_CS): the free
  EVSE stays Available, a new session starts there, and the install waits for it too. The order follows the
  errata (2023-12) version of the cases: Downloading, Downloaded, InstallScheduled, then Unavailable.
TC_L_12/L_13 are for a station unable to download during a transaction and TC_L_16 for one able to install
during it (Part 6 prerequisites): this station is neither, so they do not apply.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from simulator.csms import Csms
from tests.agent.ocpp.fileservers import HttpFiles, http_server
from tests.agent.ocpp.firmware_support import FIRMWARE
from tests.agent.ocpp.v201.conftest import Octt201, eventually, octt_on

FSN = "FirmwareStatusNotification"
INSTALLER = "import shutil, sys\nshutil.copyfile(sys.argv[1], sys.argv[2])\n"


@pytest.fixture
async def two(tmp_path: Path, csms: Csms) -> AsyncIterator[Octt201]:
    async with octt_on(tmp_path / "two", csms, connectors=2) as octt:
        yield octt


def fsn(octt: Octt201) -> list[str]:
    return [m.payload["status"] for m in octt.msgs(FSN)]


def statuses(octt: Octt201, evse: int) -> list[str]:
    return [m.payload["connectorStatus"] for m in octt.msgs("StatusNotification") if m.payload["evseId"] == evse]


async def start(octt: Octt201, tmp_path: Path, allow: bool) -> Path:
    marker = tmp_path / "installed.bin"
    script = tmp_path / "install.py"
    script.write_text(INSTALLER)
    toml = octt.rig.dir / "agent.toml"
    toml.write_text(toml.read_text() + f'\n[firmware]\ninstaller = ["{sys.executable}", "{script}", "{{file}}", '
                    f'"{marker}"]\n')
    await octt.start_agent({"TxCtrlr/TxStartPoint": "EVConnected"})
    await octt.booted()
    await octt.wait_status("Available", evse_id=2)
    answer = await octt.send("SetVariables", {"setVariableData": [{
        "component": {"name": "ChargingStation"}, "variable": {"name": "AllowNewSessionsPendingFirmwareUpdate"},
        "attributeValue": "true" if allow else "false"}]})
    assert answer["setVariableResult"][0]["attributeStatus"] == "Accepted"
    octt.ctl("plug", connector=1)
    await octt.wait_tx_event("Started")
    return marker


async def update(octt: Octt201, url: str) -> None:
    answer = await octt.send("UpdateFirmware", {"requestId": 12, "firmware": {
        "location": url, "retrieveDateTime": "2020-01-01T00:00:00Z"}})
    assert answer["status"] == "Accepted"  # not refused because a transaction runs
    await eventually(lambda: fsn(octt)[-1:] == ["InstallScheduled"], 6, "InstallScheduled")
    assert fsn(octt) == ["Downloading", "Downloaded", "InstallScheduled"]  # downloaded during the transaction


async def test_tc_l_15_cs_install_waits_and_free_evses_unavailable(two: Octt201, tmp_path: Path) -> None:
    octt = two
    marker = await start(octt, tmp_path, allow=False)
    with http_server(HttpFiles(files={"/fw.bin": FIRMWARE})) as web:
        await update(octt, web.url("/fw.bin"))
        await octt.wait_status("Unavailable", evse_id=2)  # L01.FR.07: the free EVSE
        octt.ctl("plug", connector=2)  # no new session on it while the install is pending
        await asyncio.sleep(0.8)
        assert len(octt.transaction_ids()) == 1
        assert fsn(octt)[-1] == "InstallScheduled" and not marker.exists()
        assert all(p["eventType"] != "Ended" for p in octt.tx_events())  # the update did not stop it
        octt.ctl("unplug", connector=1)
        await octt.wait_tx_event("Ended")
        await eventually(lambda: fsn(octt)[-1:] == ["InstallRebooting"], 6, "InstallRebooting")
    assert fsn(octt) == ["Downloading", "Downloaded", "InstallScheduled", "Installing", "InstallRebooting"]
    assert marker.read_bytes() == FIRMWARE
    assert statuses(octt, 1)[-1] == "Unavailable"  # the EVSE whose transaction ended stays out of use
    assert statuses(octt, 2)[-1] == "Unavailable" and len(octt.transaction_ids()) == 1


async def test_tc_l_14_cs_new_sessions_allowed_install_waits_for_all(two: Octt201, tmp_path: Path) -> None:
    octt = two
    marker = await start(octt, tmp_path, allow=True)
    with http_server(HttpFiles(files={"/fw.bin": FIRMWARE})) as web:
        await update(octt, web.url("/fw.bin"))
        octt.ctl("plug", connector=2)  # a new session while the install is pending
        await eventually(lambda: len(octt.transaction_ids()) == 2, 5, "a transaction on EVSE 2")
        octt.ctl("unplug", connector=1)
        await octt.wait_tx_event("Ended")
        await asyncio.sleep(0.8)
        assert fsn(octt)[-1] == "InstallScheduled" and not marker.exists()  # EVSE 2 still charges
        octt.ctl("unplug", connector=2)
        await octt.wait_tx_event("Ended", count=2)
        await eventually(lambda: fsn(octt)[-1:] == ["InstallRebooting"], 6, "InstallRebooting")
    assert marker.read_bytes() == FIRMWARE
    assert "Unavailable" not in statuses(octt, 1) + statuses(octt, 2)


async def test_tc_l_18_cs_unsigned_update_rejected_when_signatures_are_required(octt: Octt201) -> None:
    """Part 6 TC_L_18_CS wants Rejected or InvalidCertificate from a station that supports secure updates. The
    spec text does not say so: L01.FR.11 (signing certificate included) binds the CSMS, and L02 (no signature)
    is a use case of its own that a station may support. So refusing it is a choice: [firmware]
    require_signature = true (default false keeps L02, test_tc_l_firmware_flow.py)."""
    toml = octt.rig.dir / "agent.toml"
    toml.write_text(toml.read_text() + "\n[firmware]\nrequire_signature = true\n")
    await octt.start_agent()
    await octt.booted()
    answer = await octt.send("UpdateFirmware", {"requestId": 18, "firmware": {
        "location": "http://127.0.0.1:9/fw.bin", "retrieveDateTime": "2020-01-01T00:00:00Z",
        "installDateTime": "2020-01-01T00:00:00Z"}})  # signingCertificate and signature omitted
    assert answer["status"] == "Rejected" and answer["statusInfo"]["reasonCode"] == "MissingSignature"
    await asyncio.sleep(0.3)
    assert octt.msgs(FSN) == []


def test_firmware_require_signature_is_validated_naming_the_key(octt: Octt201) -> None:
    from agent.config import ConfigError, load

    toml = octt.rig.dir / "agent.toml"
    toml.write_text(toml.read_text() + '\n[firmware]\nrequire_signature = "yes"\n')
    with pytest.raises(ConfigError, match=r"firmware\.require_signature"):
        load(toml)
