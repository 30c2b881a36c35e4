"""Firmware and diagnostics transfers against misbehaving file servers and a hostile CSMS (issue 11 item 15),
end to end: bundled CSMS on 127.0.0.1, the agent in-process, real HTTP/FTP servers.

OCPP 1.6 §6.18 FirmwareStatusNotification / §6.17 DiagnosticsStatusNotification: a download or upload that
did not work is reported as DownloadFailed / UploadFailed; §5.19 UpdateFirmware: a new request replaces the
one in progress. What a job leaves behind (files, threads, sockets) is the agent's business: nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.agent.ocpp.conftest import CP, TAG, Octt, eventually
from tests.agent.ocpp.fileservers import ftp_server, http_server
from tests.agent.ocpp.firmware_support import FIRMWARE, configure, now_iso, statuses, wait_statuses
from tests.agent.ocpp.slowservers import slow_server

FW = "FirmwareStatusNotification"
DIAG = "DiagnosticsStatusNotification"


def firmware_files(octt: Octt) -> list[str]:
    folder = octt.rig.dir / "state" / "firmware"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


async def test_download_shorter_than_content_length_is_download_failed(octt: Octt, tmp_path: Path) -> None:
    """A server that announces 1000 bytes and sends 600 once got the truncated image installed."""
    marker = configure(octt, tmp_path)
    agent = await octt.start_agent()
    await octt.booted()
    with slow_server("short", body=b"x" * 600, announced=1000) as web:
        await octt.csms.send(CP, "UpdateFirmware", {"location": web.url(), "retrieveDate": now_iso(),
                                                    "retries": 0})
        await wait_statuses(octt, FW, ["Downloading", "DownloadFailed"])
    await asyncio.sleep(0.3)
    assert statuses(octt, FW) == ["Downloading", "DownloadFailed"]
    assert not marker.exists() and firmware_files(octt) == []
    assert agent.service is not None and not agent.service.restart_requested.is_set()


async def test_control_characters_in_locations_are_refused_with_a_status(octt: Octt, tmp_path: Path) -> None:
    """A CR/LF in an FTP location once left FirmwareStatusNotification at Downloading (and diagnostics at
    Uploading) for good: ftplib's ValueError killed the job. Now the location is refused up front: §6.18
    DownloadFailed; GetDiagnostics.conf without fileName (§6.33: nothing will be uploaded); GetLog and
    SignedUpdateFirmware Rejected (whitepaper)."""
    configure(octt, tmp_path)
    await octt.start_agent()
    await octt.booted()
    with ftp_server(tmp_path / "ftp") as site:
        (site.root / "fw.bin").write_bytes(FIRMWARE)
        await octt.csms.send(CP, "UpdateFirmware", {"location": site.url("/fw.bin%0D%0ADELE%20fw.bin"),
                                                    "retrieveDate": now_iso()})
        await wait_statuses(octt, FW, ["DownloadFailed"])
        assert await octt.csms.send(CP, "GetDiagnostics", {"location": site.url("/in%0d%0a/")}) == {}
        log = await octt.csms.send(CP, "GetLog", {"logType": "DiagnosticsLog", "requestId": 4,
                                                  "log": {"remoteLocation": site.url("/in%0a/")}})
        assert log == {"status": "Rejected"}
        signed = await octt.csms.send(CP, "SignedUpdateFirmware", {"requestId": 5, "firmware": {
            "location": site.url("/fw%0d%0a.bin"), "retrieveDateTime": now_iso(), "signingCertificate": "x",
            "signature": "eA=="}})
        assert signed == {"status": "Rejected"}
        await asyncio.sleep(0.3)
        assert (site.root / "fw.bin").exists()
    assert statuses(octt, FW) == ["DownloadFailed"] and statuses(octt, DIAG) == []


async def test_replaced_updates_stop_their_download_and_leave_no_files(octt: Octt, tmp_path: Path) -> None:
    """§5.19: a new UpdateFirmware replaces the one in progress. The replaced job's downloaded file is
    removed, a replaced download really stops (its connection closes), and only the last image is
    installed once the transaction has ended."""
    marker = configure(octt, tmp_path)
    agent = await octt.start_agent()
    await octt.booted()
    await octt.charging()  # installing waits for the transaction: the first image stays Downloaded
    with http_server() as web, slow_server("drip") as drip:
        web.files["/first.bin"] = b"first image" * 1000
        web.files["/third.bin"] = FIRMWARE
        await octt.csms.send(CP, "UpdateFirmware", {"location": web.url("/first.bin"), "retrieveDate": now_iso()})
        await wait_statuses(octt, FW, ["Downloading", "Downloaded"])
        assert firmware_files(octt) == ["first.bin"]

        await octt.csms.send(CP, "UpdateFirmware", {"location": drip.url("/second.bin"), "retrieveDate": now_iso()})
        await eventually(lambda: drip.open_connections == 1, 5, "the second download connected")
        await eventually(lambda: "first.bin" not in firmware_files(octt), 3, "the replaced job's file removed")

        await octt.csms.send(CP, "UpdateFirmware", {"location": web.url("/third.bin"), "retrieveDate": now_iso()})
        await eventually(lambda: drip.open_connections == 0, 3, "the replaced download stopped")
        await wait_statuses(octt, FW, ["Downloading", "Downloaded", "Downloading", "Downloading", "Downloaded"])
        assert firmware_files(octt) == ["third.bin"]  # no partial file of the dripping download

        assert (await agent.tap(TAG)).accepted
        await octt.wait("StopTransaction")
        await wait_statuses(octt, FW, ["Downloading", "Downloaded", "Downloading", "Downloading", "Downloaded",
                                       "Installing"])
        assert agent.service is not None
        await eventually(agent.service.restart_requested.is_set, 5, "restart")
    assert marker.read_bytes() == FIRMWARE and firmware_files(octt) == []


async def test_failed_install_and_leftovers_of_an_earlier_run_are_removed(octt: Octt, tmp_path: Path) -> None:
    """A downloaded image whose installation failed is not kept; files left by a run that died mid-download
    (partial files) are removed at start, since no job survives a restart."""
    configure(octt, tmp_path, exit_code=3)
    folder = octt.rig.dir / "state" / "firmware"
    folder.mkdir(parents=True)
    (folder / ".fw.bin.1a2b3c4d.part").write_bytes(b"half")
    (folder / "old.bin").write_bytes(b"an image of a job that died with the agent")
    await octt.start_agent()
    await octt.booted()
    assert firmware_files(octt) == []
    with http_server() as web:
        web.files["/fw.bin"] = FIRMWARE
        await octt.csms.send(CP, "UpdateFirmware", {"location": web.url("/fw.bin"), "retrieveDate": now_iso()})
        await wait_statuses(octt, FW, ["Downloading", "Downloaded", "Installing", "InstallationFailed"])
    assert firmware_files(octt) == []


async def test_stopping_the_agent_stops_a_running_download(octt: Octt, tmp_path: Path) -> None:
    configure(octt, tmp_path)
    await octt.start_agent()
    await octt.booted()
    with slow_server("drip") as drip:
        await octt.csms.send(CP, "UpdateFirmware", {"location": drip.url(), "retrieveDate": now_iso()})
        await eventually(lambda: drip.open_connections == 1, 5, "download connected")
        assert octt.agent is not None
        await octt.agent.stop()
        octt.agent = None
        await eventually(lambda: drip.open_connections == 0, 3, "the download stopped with the agent")
    assert firmware_files(octt) == []


async def test_replaced_diagnostics_upload_stops_and_removes_its_archive(octt: Octt, tmp_path: Path) -> None:
    """§6.33 GetDiagnostics while an upload hangs on a silent server: the hanging upload stops (connection
    closed), its archive is removed, the new one is Uploaded."""
    configure(octt, tmp_path)
    await octt.start_agent()
    await octt.booted()
    archives = octt.rig.dir / "state" / "diagnostics"
    with http_server() as web, slow_server("silent") as silent:
        first = await octt.csms.send(CP, "GetDiagnostics", {"location": silent.url("/up/")})
        await eventually(lambda: silent.open_connections == 1, 5, "the first upload connected")
        await wait_statuses(octt, DIAG, ["Uploading"])
        await asyncio.sleep(1.1)  # archive names have a 1 s resolution
        second = await octt.csms.send(CP, "GetDiagnostics", {"location": web.url("/up/")})
        assert first["fileName"] != second["fileName"]
        await eventually(lambda: silent.open_connections == 0, 3, "the replaced upload stopped")
        await wait_statuses(octt, DIAG, ["Uploading", "Uploading", "Uploaded"])
        assert list(web.uploads) == [f"PUT /up/{second['fileName']}"]
    await eventually(lambda: not any(archives.iterdir()), 3, "no archive left")
