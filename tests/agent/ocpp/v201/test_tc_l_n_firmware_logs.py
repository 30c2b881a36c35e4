"""OCPP 2.0.1 firmware, logs and customer information over real websockets against the bundled CSMS:
TC_L_01_CS (secure firmware update: real HTTP download, ECDSA signature checked, a real installer process,
InstallRebooting, the restart with BootNotification reason FirmwareUpdate, Installed, FirmwareUpdated),
the InvalidCertificate / InvalidSignature cases, TC_N_25_CS / TC_N_35_CS (GetLog DiagnosticsLog and
SecurityLog uploaded over HTTP), TC_N_27/28/30_CS (customer information report, no data, clear and report)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from agent.ocpp.v201.customer_information import CHUNK, NO_DATA, chunks
from tests.agent.ocpp.fileservers import http_server
from tests.agent.ocpp.firmware_support import FIRMWARE, INSTALLER, archive_members, now_iso
from tests.agent.ocpp.test_octt_signed_firmware import Manufacturer, pem
from tests.agent.ocpp.v201.conftest import TAG, Octt201, eventually
from tests.agent.ocpp.v201.test_tc_a_b_security import security_events

FSN = "FirmwareStatusNotification"
LSN = "LogStatusNotification"


def statuses(octt: Octt201, action: str) -> list[str]:
    return [m.payload["status"] for m in octt.msgs(action)]


def with_installer(octt: Octt201, tmp_path: Path) -> Path:
    """[firmware] installer in the rig's agent.toml: a real process copying the image to the returned path."""
    marker = tmp_path / "installed.bin"
    script = tmp_path / "install.py"
    script.write_text(INSTALLER)
    argv = [sys.executable, str(script), "{file}", str(marker), "0"]
    toml = octt.rig.dir / "agent.toml"
    toml.write_text(toml.read_text() + "\n[firmware]\ninstaller = " + json.dumps(argv) + "\n")
    return marker


def install_root(octt: Octt201, maker: Manufacturer) -> None:
    """The manufacturer's root as the station's ManufacturerRootCertificate (installed before the start)."""
    from agent.certificates import CertificateStore

    store = CertificateStore(octt.rig.dir / "state" / "certificates")
    assert store.install("ManufacturerRootCertificate", pem(maker.root), now=__import__("time").time()) == "Accepted"


def update(url: str, maker: Manufacturer, signature: str, request_id: int) -> dict[str, object]:
    return {"requestId": request_id, "retries": 1, "retryInterval": 1,
            "firmware": {"location": url, "retrieveDateTime": now_iso(-1), "signingCertificate": pem(maker.signer),
                         "signature": signature}}


def test_chunks() -> None:
    assert chunks("") == [""]
    assert chunks("a" * (CHUNK + 1)) == ["a" * CHUNK, "a"]


async def test_tc_l_01_cs_secure_firmware_update(octt: Octt201, tmp_path: Path) -> None:
    marker = with_installer(octt, tmp_path)
    maker = Manufacturer(ec.generate_private_key(ec.SECP256R1()))
    install_root(octt, maker)
    agent = await octt.start_agent()
    await octt.booted()
    with http_server() as web:
        web.files["/fw.bin"] = FIRMWARE
        # a signing certificate of somebody else: InvalidCertificate, nothing downloaded
        stranger = Manufacturer(ec.generate_private_key(ec.SECP256R1()))
        refused = await octt.send("UpdateFirmware", update(web.url("/fw.bin"), stranger, stranger.sign(FIRMWARE), 7))
        assert refused["status"] == "InvalidCertificate"
        await eventually(lambda: "InvalidFirmwareSigningCertificate" in security_events(octt), 5, "certificate event")
        # a signature over other bytes: InvalidSignature, not installed
        answer = await octt.send("UpdateFirmware", update(web.url("/fw.bin"), maker, maker.sign(b"other"), 8))
        assert answer["status"] == "Accepted"
        await eventually(lambda: statuses(octt, FSN) == ["Downloading", "Downloaded", "InvalidSignature"], 8,
                         "InvalidSignature")
        await eventually(lambda: "InvalidFirmwareSignature" in security_events(octt), 5, "signature event")
        assert not marker.exists()
        # TC_L_01_CS
        answer = await octt.send("UpdateFirmware", update(web.url("/fw.bin"), maker, maker.sign(FIRMWARE), 9))
        assert answer["status"] == "Accepted"
        await eventually(agent.service.restart_requested.is_set, 10, "restart after the installation")
    assert statuses(octt, FSN)[3:] == ["Downloading", "Downloaded", "SignatureVerified", "Installing",
                                       "InstallRebooting"]
    assert marker.read_bytes() == FIRMWARE
    await octt.restart_agent()  # what the supervisor does on the restart request
    await eventually(lambda: statuses(octt, FSN)[-1:] == ["Installed"], 8, "Installed")
    assert octt.msgs(FSN)[-1].payload == {"status": "Installed", "requestId": 9}
    assert octt.msgs("BootNotification")[-1].payload["reason"] == "FirmwareUpdate"
    await eventually(lambda: "FirmwareUpdated" in security_events(octt), 8, "FirmwareUpdated")


async def test_tc_n_25_n_35_cs_get_log(octt: Octt201) -> None:
    await octt.start_agent()
    await octt.booted()
    await eventually(lambda: "StartupOfTheDevice" in security_events(octt), 5, "a security event to log")
    with http_server() as web:
        for request_id, log_type in ((1, "DiagnosticsLog"), (2, "SecurityLog")):
            answer = await octt.send("GetLog", {"logType": log_type, "requestId": request_id,
                                                "log": {"remoteLocation": web.url("/logs/")}})
            assert answer["status"] == "Accepted" and answer["filename"].endswith(".tar.gz")
            await eventually(lambda rid=request_id: [m.payload for m in octt.msgs(LSN)][-1:]
                             == [{"status": "Uploaded", "requestId": rid}], 8, f"{log_type} uploaded")
        assert statuses(octt, LSN) == ["Uploading", "Uploaded", "Uploading", "Uploaded"]
        uploads = list(web.uploads.values())
    diagnostics, security = archive_members(uploads[0]), archive_members(uploads[1])
    assert "events.jsonl" in diagnostics and "ocpp-configuration.json" in diagnostics
    assert "security.log" not in diagnostics
    assert b"StartupOfTheDevice" in security["security.log"]
    assert "events.jsonl" not in security


async def test_tc_n_27_n_28_n_30_cs_customer_information(octt: Octt201) -> None:
    agent = await octt.start_agent()
    await octt.booted()
    decision = await agent.tap(TAG, None)  # Authorize: the answer lands in the authorization cache
    assert decision.accepted
    token = {"idToken": TAG, "type": "ISO14443"}

    def notes(request_id: int) -> list[dict[str, object]]:
        return [m.payload for m in octt.msgs("NotifyCustomerInformation") if m.payload["requestId"] == request_id]

    # TC_N_27_CS: report with data
    answer = await octt.send("CustomerInformation", {"requestId": 1, "report": True, "clear": False, "idToken": token})
    assert answer["status"] == "Accepted"
    await eventually(lambda: notes(1) and notes(1)[-1]["tbc"] is False, 5, "report 1")
    assert "AuthorizationCache: Accepted" in str(notes(1)[0]["data"])
    # TC_N_28_CS: an idToken we know nothing about
    other = {"idToken": "0000UNKNOWN", "type": "ISO14443"}
    await octt.send("CustomerInformation", {"requestId": 2, "report": True, "clear": False, "idToken": other})
    await eventually(lambda: notes(2), 5, "report 2")
    assert notes(2) == [{**notes(2)[0], "data": NO_DATA, "tbc": False, "seqNo": 0}]
    # TC_N_30_CS: clear and report, then nothing is left
    await octt.send("CustomerInformation", {"requestId": 3, "report": True, "clear": True, "idToken": token})
    await eventually(lambda: notes(3), 5, "report 3")
    assert "AuthorizationCache" in str(notes(3)[0]["data"])
    await octt.send("CustomerInformation", {"requestId": 4, "report": True, "clear": False, "idToken": token})
    await eventually(lambda: notes(4), 5, "report 4")
    assert notes(4)[0]["data"] == NO_DATA
    invalid = await octt.send("CustomerInformation", {"requestId": 5, "report": True, "clear": False})
    assert invalid["status"] == "Invalid"
