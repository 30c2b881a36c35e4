"""OCTT 1.6 FirmwareManagement: 044_1-3 UpdateFirmware, 045_1/2 GetDiagnostics, against real HTTP and FTP
servers on 127.0.0.1 and a real installer script."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from agent.redact import mask
from tests.agent.ocpp.conftest import CP, TAG, Octt, eventually
from tests.agent.ocpp.fileservers import HttpFiles, ftp_server, http_server
from tests.agent.ocpp.firmware_support import (
    AUTH_KEY,
    FIRMWARE,
    archive_members,
    assert_no_secrets,
    configure,
    now_iso,
    statuses,
    wait_statuses,
)

FW = "FirmwareStatusNotification"
DIAG = "DiagnosticsStatusNotification"


def security_events(octt: Octt) -> list[str]:
    return [m.payload["type"] for m in octt.msgs("SecurityEventNotification")]


async def test_044_1_firmware_update_downloaded_installed_after_restart(octt: Octt, tmp_path: Path) -> None:
    marker = configure(octt, tmp_path)
    agent = await octt.start_agent()
    await octt.booted()
    with http_server() as web:
        web.files["/fw/cp-2.0.bin"] = FIRMWARE
        answer = await octt.csms.send(CP, "UpdateFirmware", {"location": web.url("/fw/cp-2.0.bin"),
                                                              "retrieveDate": now_iso(-5)})
        assert answer == {}
        await wait_statuses(octt, FW, ["Downloading", "Downloaded", "Installing"])
        service = agent.service
        assert service is not None
        await eventually(service.restart_requested.is_set, 10, "the restart after installing")
    assert service.restart_kind == "Firmware"
    assert marker.read_bytes() == FIRMWARE  # the installer got the downloaded file
    await octt.restart_agent()
    await wait_statuses(octt, FW, ["Downloading", "Downloaded", "Installing", "Installed"])
    await eventually(lambda: "FirmwareUpdated" in security_events(octt), 8, "FirmwareUpdated security event")
    await octt.restart_agent()  # reported once, not again after the next boot
    await octt.wait("BootNotification", count=3)
    await octt.wait_status("Available")
    await asyncio.sleep(0.3)
    assert statuses(octt, FW).count("Installed") == 1


async def test_044_1_install_waits_for_the_transaction_to_end(octt: Octt, tmp_path: Path) -> None:
    marker = configure(octt, tmp_path)
    agent = await octt.start_agent()
    await octt.booted()
    await octt.charging()
    with http_server() as web:
        web.files["/fw.bin"] = FIRMWARE
        await octt.csms.send(CP, "UpdateFirmware", {"location": web.url("/fw.bin"), "retrieveDate": now_iso()})
        await wait_statuses(octt, FW, ["Downloading", "Downloaded"])
        await asyncio.sleep(1.5)
        assert statuses(octt, FW) == ["Downloading", "Downloaded"]  # still charging: not installing
        assert agent.connector.session is not None and not marker.exists()
        assert (await agent.tap(TAG)).accepted  # the driver ends the session
        await octt.wait("StopTransaction")
        await wait_statuses(octt, FW, ["Downloading", "Downloaded", "Installing"], within=5)
        assert agent.service is not None
        await eventually(agent.service.restart_requested.is_set, 5, "restart")


async def test_044_2_download_failed(octt: Octt, tmp_path: Path) -> None:
    configure(octt, tmp_path)
    agent = await octt.start_agent()
    await octt.booted()
    with http_server() as web:
        await octt.csms.send(CP, "UpdateFirmware", {"location": web.url("/missing.bin"), "retrieveDate": now_iso(),
                                                    "retries": 1, "retryInterval": 0})
        await wait_statuses(octt, FW, ["Downloading", "DownloadFailed"])
    await octt.csms.send(CP, "UpdateFirmware", {"location": "file:///etc/shadow", "retrieveDate": now_iso()})
    await wait_statuses(octt, FW, ["Downloading", "DownloadFailed", "DownloadFailed"])
    assert agent.service is not None and not agent.service.restart_requested.is_set()


async def test_044_3_installation_failed(octt: Octt, tmp_path: Path) -> None:
    marker = configure(octt, tmp_path, exit_code=3)
    agent = await octt.start_agent()
    await octt.booted()
    with http_server() as web:
        web.files["/fw.bin"] = FIRMWARE
        await octt.csms.send(CP, "UpdateFirmware", {"location": web.url("/fw.bin"), "retrieveDate": now_iso()})
        await wait_statuses(octt, FW, ["Downloading", "Downloaded", "Installing", "InstallationFailed"])
    assert agent.service is not None and not agent.service.restart_requested.is_set()
    assert not marker.exists()
    await octt.restart_agent()  # nothing pending is reported after a reboot
    await octt.wait("BootNotification", count=2)
    await octt.wait_status("Available")
    await asyncio.sleep(0.3)
    assert statuses(octt, FW) == ["Downloading", "Downloaded", "Installing", "InstallationFailed"]


async def test_044_3_no_installer_configured(octt: Octt, tmp_path: Path) -> None:
    configure(octt, tmp_path, exit_code=None)
    await octt.start_agent()
    await octt.booted()
    with http_server() as web:
        web.files["/fw.bin"] = FIRMWARE
        await octt.csms.send(CP, "UpdateFirmware", {"location": web.url("/fw.bin"), "retrieveDate": now_iso()})
        await wait_statuses(octt, FW, ["Downloading", "Downloaded", "Installing", "InstallationFailed"])


async def test_045_1_get_diagnostics_ftp_upload_without_secrets(octt: Octt, tmp_path: Path) -> None:
    configure(octt, tmp_path)
    await octt.start_agent(AuthorizationKey=AUTH_KEY)
    await octt.booted()
    await octt.charging()
    with ftp_server(tmp_path / "ftp") as site:
        (site.root / "diag").mkdir()
        answer = await octt.csms.send(CP, "GetDiagnostics", {"location": site.url("/diag/"), "retries": 1,
                                                             "retryInterval": 1, "startTime": now_iso(-3600)})
        name = answer["fileName"]
        assert name.startswith(f"{CP}-diagnostics-") and name.endswith(".tar.gz")
        await wait_statuses(octt, DIAG, ["Uploading", "Uploaded"])
        members = archive_members((site.root / "diag" / name).read_bytes())
    assert {"events.jsonl", "sessions.json", "ocpp-configuration.json", "agent-config.json"} <= set(members)
    sessions = json.loads(members["sessions.json"])
    assert sessions and sessions[0]["id_tag"] == mask(TAG)  # personal data, masked as cpctl shows it
    configuration = json.loads(members["ocpp-configuration.json"])
    assert "HeartbeatInterval" in configuration and "AuthorizationKey" not in configuration
    agent_config = json.loads(members["agent-config.json"])
    assert "endpoint" in agent_config["ocpp"] and "password" not in agent_config["ocpp"]
    assert members["events.jsonl"].strip()
    assert_no_secrets(members)


async def test_045_1_diagnostics_time_window_excludes_older_sessions(octt: Octt, tmp_path: Path) -> None:
    configure(octt, tmp_path)
    await octt.start_agent()
    await octt.booted()
    await octt.charging()
    with http_server() as web:
        answer = await octt.csms.send(CP, "GetDiagnostics", {"location": web.url("/up"),
                                                             "stopTime": now_iso(-3600)})
        await wait_statuses(octt, DIAG, ["Uploading", "Uploaded"])
        members = archive_members(web.uploads[f"PUT /up/{answer['fileName']}"])
    assert json.loads(members["sessions.json"]) == []
    assert members["events.jsonl"] == b""


async def test_045_2_upload_failed(octt: Octt, tmp_path: Path) -> None:
    configure(octt, tmp_path)
    await octt.start_agent()
    await octt.booted()
    with http_server(HttpFiles(upload_status=500)) as web:
        answer = await octt.csms.send(CP, "GetDiagnostics", {"location": web.url("/up/"), "retries": 1,
                                                             "retryInterval": 0})
        assert "fileName" in answer
        await wait_statuses(octt, DIAG, ["Uploading", "UploadFailed"])
        assert web.uploads == {}
    refused = await octt.csms.send(CP, "GetDiagnostics", {"location": "gopher://127.0.0.1/x"})
    assert refused == {}  # no fileName: nothing will be uploaded
    await asyncio.sleep(0.2)
    assert statuses(octt, DIAG) == ["Uploading", "UploadFailed"]


async def test_045_2_archive_that_cannot_be_written_is_upload_failed(octt: Octt, tmp_path: Path) -> None:
    """The .conf promised a fileName: if the archive cannot even be written, the CSMS still hears
    UploadFailed (and GetLog's LogStatusNotification UploadFailure) instead of nothing."""
    configure(octt, tmp_path)
    await octt.start_agent()
    await octt.booted()
    blocker = octt.rig.dir / "state" / "diagnostics"
    blocker.write_text("a file where the archive directory should be")
    with http_server() as web:
        answer = await octt.csms.send(CP, "GetDiagnostics", {"location": web.url("/up/")})
        assert "fileName" in answer
        await wait_statuses(octt, DIAG, ["UploadFailed"])
        answer = await octt.csms.send(CP, "GetLog", {"logType": "SecurityLog", "requestId": 3,
                                                     "log": {"remoteLocation": web.url("/up/")}})
        assert answer["status"] == "Accepted"
        await wait_statuses(octt, "LogStatusNotification", ["UploadFailure"])
        assert octt.msgs("LogStatusNotification")[0].payload == {"status": "UploadFailure", "requestId": 3}
        assert web.uploads == {}
