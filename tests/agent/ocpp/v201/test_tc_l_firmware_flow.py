"""OCPP 2.0.1 firmware update L01-L04 status flow over real websockets against the bundled CSMS, a real HTTP
server and a real installer process (agent/ocpp/v201/firmware.py):

- TC_L_02_CS / TC_L_03_CS with the unsigned path (L02): retrieveDateTime in the future -> DownloadScheduled,
  Downloading at that time; a first download attempt that fails is retried after retryInterval (retries);
  installDateTime in the future -> InstallScheduled, Installing at that time, InstallRebooting; after the
  restart the BootNotification (reason FirmwareUpdate) carries the version the new image reports, then
  Installed for that requestId. PublishFirmware (L03, a Local Controller's) is NotSupported.
- TC_L_10_CS: a new UpdateFirmware while one is scheduled -> AcceptedCanceled; the old one never downloads
  (its URL is never fetched) and gets no more statuses; TC_L_07_CS: the new one's URL is missing ->
  DownloadFailed after its retries; L01.FR.27: an UpdateFirmware while an installer runs -> Rejected.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest

from simulator.csms import CsmsCallError
from tests.agent.ocpp.fileservers import HttpFiles, http_server
from tests.agent.ocpp.firmware_support import FIRMWARE, now_iso
from tests.agent.ocpp.v201.conftest import Octt201, eventually

FSN = "FirmwareStatusNotification"
NEW_VERSION = "9.9.9-fw-test"

# The "new image": copies itself to the marker, takes ``delay`` seconds, and makes the station report the new
# firmware version from its next start on (what running a new image does).
INSTALLER = """\
import pathlib, shutil, sys, time
firmware, marker, toml, version, delay = sys.argv[1:6]
shutil.copyfile(firmware, marker)
time.sleep(float(delay))
path = pathlib.Path(toml)
path.write_text(path.read_text().replace("[station]\\n", f'[station]\\nfirmware_version = "{version}"\\n', 1))
print("installed", version)
"""


class CountingFiles(dict[str, bytes]):
    """GET path -> body, counting the requests; ``late`` bodies appear only after their first request."""

    def __init__(self) -> None:
        super().__init__()
        self.hits: list[str] = []
        self.late: dict[str, bytes] = {}

    def get(self, key: str, default: bytes | None = None) -> bytes | None:  # type: ignore[override]
        self.hits.append(key)
        if key in self.late:
            self[key] = self.late.pop(key)
            return default  # this first request fails (404)
        return super().get(key, default)


def with_installer(octt: Octt201, tmp_path: Path, delay_s: float) -> Path:
    marker = tmp_path / "installed.bin"
    script = tmp_path / "install.py"
    script.write_text(INSTALLER)
    toml = octt.rig.dir / "agent.toml"
    argv = [sys.executable, str(script), "{file}", str(marker), str(toml), NEW_VERSION, str(delay_s)]
    toml.write_text(toml.read_text() + "\n[firmware]\ninstaller = " + json.dumps(argv) + "\n")
    return marker


def fsn(octt: Octt201) -> list[tuple[str, int | None]]:
    return [(m.payload["status"], m.payload.get("requestId")) for m in octt.msgs(FSN)]


def at(octt: Octt201, status: str) -> float:
    return next(m.at for m in octt.msgs(FSN) if m.payload["status"] == status)


async def test_tc_l_02_l_03_cs_scheduled_unsigned_update_with_retry_and_activation(
        octt: Octt201, tmp_path: Path) -> None:
    marker = with_installer(octt, tmp_path, 0.2)
    agent = await octt.start_agent()
    await octt.booted()
    assert octt.msgs("BootNotification")[-1].payload["chargingStation"].get("firmwareVersion") != NEW_VERSION
    files = CountingFiles()
    files.late["/fw.bin"] = FIRMWARE  # the first attempt gets a 404, the retry the image
    with http_server(HttpFiles(files=files)) as web:
        sent = time.time()
        answer = await octt.send("UpdateFirmware", {
            "requestId": 3, "retries": 2, "retryInterval": 1,
            "firmware": {"location": web.url("/fw.bin"), "retrieveDateTime": now_iso(1.5),
                         "installDateTime": now_iso(3.5)}})  # L02: no signature, no signing certificate
        assert answer["status"] == "Accepted"
        await eventually(agent.service.restart_requested.is_set, 12, "restart after the installation")
    assert fsn(octt) == [(s, 3) for s in ("DownloadScheduled", "Downloading", "Downloaded", "InstallScheduled",
                                          "Installing", "InstallRebooting")]
    assert files.hits == ["/fw.bin", "/fw.bin"]  # retried once after the failed attempt
    assert at(octt, "Downloading") >= sent + 1.5 - 0.3  # not before retrieveDateTime (whole-second clocks)
    assert at(octt, "Installing") >= sent + 3.5 - 0.3  # not before installDateTime
    assert at(octt, "Downloaded") - at(octt, "Downloading") >= 0.9  # retryInterval 1 s between the attempts
    assert marker.read_bytes() == FIRMWARE

    await octt.restart_agent()  # what the supervisor does on the restart request: the new image runs
    await eventually(lambda: fsn(octt)[-1:] == [("Installed", 3)], 8, "Installed")
    boot = octt.msgs("BootNotification")[-1].payload
    assert boot["reason"] == "FirmwareUpdate"
    assert boot["chargingStation"]["firmwareVersion"] == NEW_VERSION
    installed = octt.msgs(FSN)[-1]
    assert installed.at >= octt.msgs("BootNotification")[-1].at
    # L03/L04 are a Local Controller's: a station does not publish firmware
    with pytest.raises(CsmsCallError) as refused:
        await octt.send("PublishFirmware", {"location": "http://127.0.0.1:1/fw.bin", "checksum": "0" * 32,
                                            "requestId": 4})
    assert refused.value.code == "NotSupported"


async def test_tc_l_10_l_07_cs_new_update_cancels_the_scheduled_one_rejected_while_installing(
        octt: Octt201, tmp_path: Path) -> None:
    with_installer(octt, tmp_path, 1.5)
    await octt.start_agent()
    await octt.booted()
    files = CountingFiles()
    files["/old.bin"] = FIRMWARE
    files["/new.bin"] = FIRMWARE
    with http_server(HttpFiles(files=files)) as web:
        def update(request_id: int, path: str, retrieve_in_s: float, retries: int = 0) -> dict[str, object]:
            return {"requestId": request_id, "retries": retries, "retryInterval": 1,
                    "firmware": {"location": web.url(path), "retrieveDateTime": now_iso(retrieve_in_s)}}

        assert (await octt.send("UpdateFirmware", update(1, "/old.bin", 2.5)))["status"] == "Accepted"
        await eventually(lambda: fsn(octt) == [("DownloadScheduled", 1)], 5, "DownloadScheduled for 1")
        # TC_L_10_CS: the scheduled one is cancelled; TC_L_07_CS: the new one's file is not there
        assert (await octt.send("UpdateFirmware", update(2, "/missing.bin", -1, retries=1)))["status"] == \
            "AcceptedCanceled"
        await eventually(lambda: fsn(octt)[-1:] == [("DownloadFailed", 2)], 6, "DownloadFailed for 2")
        assert fsn(octt) == [("DownloadScheduled", 1), ("Downloading", 2), ("DownloadFailed", 2)]
        assert files.hits == ["/missing.bin", "/missing.bin"]  # 1 + retries attempts

        assert (await octt.send("UpdateFirmware", update(3, "/new.bin", -1)))["status"] == "Accepted"
        await eventually(lambda: fsn(octt)[-1:] == [("Installing", 3)], 6, "Installing 3")
        busy = await octt.send("UpdateFirmware", update(4, "/new.bin", -1))  # L01.FR.27: the installer runs
        assert busy["status"] == "Rejected" and busy["statusInfo"]["reasonCode"] == "InstallInProgress"
        await eventually(lambda: fsn(octt)[-1:] == [("InstallRebooting", 3)], 6, "InstallRebooting 3")
        remaining = 2.5 - (time.time() - octt.msgs(FSN)[0].at)
        if remaining > 0:
            await asyncio.sleep(remaining + 0.3)  # past the cancelled one's retrieveDateTime
    assert "/old.bin" not in files.hits  # the cancelled update never downloaded
    assert [r for _, r in fsn(octt)].count(1) == 1  # and reported nothing after DownloadScheduled
