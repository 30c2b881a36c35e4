"""Security whitepaper file transfers: SignedUpdateFirmware (valid signature -> Installed after restart, bad
signature, certificate not chaining), GetLog (DiagnosticsLog, SecurityLog) and ExtendedTriggerMessage."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import json
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from agent.ocpp.v16.signed_firmware import SIGN_METHOD
from tests.agent.ocpp.conftest import CP, TAG, Agent, Octt, eventually
from tests.agent.ocpp.fileservers import http_server
from tests.agent.ocpp.firmware_support import (
    FIRMWARE,
    archive_members,
    assert_no_secrets,
    configure,
    now_iso,
    statuses,
    wait_statuses,
)

SFW = "SignedFirmwareStatusNotification"
LOG = "LogStatusNotification"
Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def certificate(subject: str, key: Key, issuer: str, issuer_key: Key, *, ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class Manufacturer:
    """A manufacturer root and a firmware signing certificate under it."""

    def __init__(self, signer_key: Key) -> None:
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = certificate("Maker Root", self.root_key, "Maker Root", self.root_key, ca=True)
        self.signer_key = signer_key
        self.signer = certificate("Maker Firmware", signer_key, "Maker Root", self.root_key, ca=False)

    def install_root(self, octt: Octt) -> None:
        folder = octt.rig.dir / "state" / "certificates" / "ManufacturerRootCertificate"
        folder.mkdir(parents=True, exist_ok=True)
        der = self.root.public_bytes(serialization.Encoding.DER)
        (folder / f"{hashlib.sha256(der).hexdigest()}.pem").write_text(pem(self.root))

    def sign(self, data: bytes) -> str:
        key = self.signer_key
        if isinstance(key, rsa.RSAPrivateKey):
            signature = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        else:
            signature = key.sign(data, ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(signature).decode()


def signed_update(url: str, maker: Manufacturer, signature: str, request_id: int = 11) -> dict[str, object]:
    return {"requestId": request_id, "retries": 1, "retryInterval": 0,
            "firmware": {"location": url, "retrieveDateTime": now_iso(-1), "signingCertificate": pem(maker.signer),
                         "signature": signature}}


async def start_trusting_a_manufacturer(octt: Octt) -> tuple[Manufacturer, Agent]:
    """A manufacturer whose root the agent trusts, and the agent started and booted."""
    maker = Manufacturer(ec.generate_private_key(ec.SECP256R1()))
    maker.install_root(octt)
    agent = await octt.start_agent()
    await octt.booted()
    return maker, agent


def security_events(octt: Octt) -> list[str]:
    return [m.payload["type"] for m in octt.msgs("SecurityEventNotification")]


async def test_signed_firmware_valid_signature_installed_after_restart(octt: Octt, tmp_path: Path) -> None:
    marker = configure(octt, tmp_path)
    maker, agent = await start_trusting_a_manufacturer(octt)
    with http_server() as web:
        web.files["/signed.bin"] = FIRMWARE
        answer = await octt.csms.send(CP, "SignedUpdateFirmware",
                                      signed_update(web.url("/signed.bin"), maker, maker.sign(FIRMWARE)))
        assert answer == {"status": "Accepted"}
        await wait_statuses(octt, SFW, ["Downloading", "Downloaded", "SignatureVerified", "Installing"])
        assert agent.service is not None
        await eventually(agent.service.restart_requested.is_set, 10, "restart after install")
    assert marker.read_bytes() == FIRMWARE
    assert {m.payload.get("requestId") for m in octt.msgs(SFW)} == {11}
    await octt.restart_agent()
    await wait_statuses(octt, SFW, ["Downloading", "Downloaded", "SignatureVerified", "Installing", "Installed"])
    assert octt.msgs(SFW)[-1].payload == {"status": "Installed", "requestId": 11}
    await eventually(lambda: "FirmwareUpdated" in security_events(octt), 8, "FirmwareUpdated")


async def test_signed_firmware_bad_signature(octt: Octt, tmp_path: Path) -> None:
    marker = configure(octt, tmp_path)
    maker = Manufacturer(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    maker.install_root(octt)
    agent = await octt.start_agent()
    await octt.booted()
    with http_server() as web:
        web.files["/signed.bin"] = FIRMWARE
        answer = await octt.csms.send(CP, "SignedUpdateFirmware",
                                      signed_update(web.url("/signed.bin"), maker, maker.sign(b"other image")))
        assert answer == {"status": "Accepted"}
        await wait_statuses(octt, SFW, ["Downloading", "Downloaded", "InvalidSignature"])
    await eventually(lambda: "InvalidFirmwareSignature" in security_events(octt), 8, "InvalidFirmwareSignature")
    assert not marker.exists()
    assert agent.service is not None and not agent.service.restart_requested.is_set()


async def test_signed_firmware_certificate_not_chaining(octt: Octt, tmp_path: Path) -> None:
    configure(octt, tmp_path)
    trusted = Manufacturer(ec.generate_private_key(ec.SECP256R1()))
    trusted.install_root(octt)
    stranger = Manufacturer(ec.generate_private_key(ec.SECP256R1()))  # same names, other root key
    await octt.start_agent()
    await octt.booted()
    answer = await octt.csms.send(CP, "SignedUpdateFirmware",
                                  signed_update("http://127.0.0.1:9/x.bin", stranger, stranger.sign(FIRMWARE)))
    assert answer == {"status": "InvalidCertificate"}
    await eventually(lambda: "InvalidFirmwareSigningCertificate" in security_events(octt), 8, "security event")
    refused = await octt.csms.send(CP, "SignedUpdateFirmware",
                                   signed_update("file:///x.bin", trusted, trusted.sign(FIRMWARE)))
    assert refused == {"status": "Rejected"}
    await asyncio.sleep(0.2)
    assert octt.msgs(SFW) == []


async def test_signed_firmware_download_and_install_scheduled(octt: Octt, tmp_path: Path) -> None:
    """retrieveDateTime / installDateTime in the future: DownloadScheduled and InstallScheduled, and a
    triggered status meanwhile reports the scheduled update (with its requestId), not Idle."""
    configure(octt, tmp_path)
    maker, agent = await start_trusting_a_manufacturer(octt)
    with http_server() as web:
        web.files["/signed.bin"] = FIRMWARE
        request = signed_update(web.url("/signed.bin"), maker, maker.sign(FIRMWARE), request_id=21)
        firmware: dict[str, object] = request["firmware"]  # type: ignore[assignment]
        firmware["retrieveDateTime"] = now_iso(2.0)
        firmware["installDateTime"] = now_iso(4.0)
        assert await octt.csms.send(CP, "SignedUpdateFirmware", request) == {"status": "Accepted"}
        await wait_statuses(octt, SFW, ["DownloadScheduled"])
        answer = await octt.csms.send(CP, "ExtendedTriggerMessage", {"requestedMessage": "FirmwareStatusNotification"})
        assert answer == {"status": "Accepted"}
        await wait_statuses(octt, SFW, ["DownloadScheduled", "DownloadScheduled"])
        assert octt.msgs(SFW)[1].payload == {"status": "DownloadScheduled", "requestId": 21}
        await wait_statuses(octt, SFW, ["DownloadScheduled", "DownloadScheduled", "Downloading", "Downloaded",
                                        "SignatureVerified", "InstallScheduled", "Installing"], within=15)
        assert agent.service is not None
        await eventually(agent.service.restart_requested.is_set, 10, "restart after install")


async def test_signed_firmware_install_verification_failed_when_the_file_changed(octt: Octt, tmp_path: Path) -> None:
    """The file is checked again right before installing (here after a transaction that delayed the
    install): a file changed since SignatureVerified is InstallVerificationFailed and never installed."""
    marker = configure(octt, tmp_path)
    maker, agent = await start_trusting_a_manufacturer(octt)
    await octt.charging()
    with http_server() as web:
        web.files["/signed.bin"] = FIRMWARE
        answer = await octt.csms.send(CP, "SignedUpdateFirmware",
                                      signed_update(web.url("/signed.bin"), maker, maker.sign(FIRMWARE)))
        assert answer == {"status": "Accepted"}
        await wait_statuses(octt, SFW, ["Downloading", "Downloaded", "SignatureVerified"])
    downloaded = octt.rig.dir / "state" / "firmware" / "signed.bin"
    assert downloaded.read_bytes() == FIRMWARE  # waiting for the transaction to end
    downloaded.write_bytes(b"tampered" + FIRMWARE[8:])
    assert (await agent.tap(TAG)).accepted
    await octt.wait("StopTransaction")
    await wait_statuses(octt, SFW, ["Downloading", "Downloaded", "SignatureVerified", "InstallVerificationFailed"])
    assert octt.msgs(SFW)[-1].payload == {"status": "InstallVerificationFailed", "requestId": 11}
    assert not marker.exists() and not downloaded.exists()
    assert agent.service is not None and not agent.service.restart_requested.is_set()


async def test_get_log_diagnostics_and_security_log(octt: Octt, tmp_path: Path) -> None:
    configure(octt, tmp_path)
    security_log = octt.rig.dir / "state" / "security.log"
    security_log.parent.mkdir(parents=True, exist_ok=True)
    security_log.write_text(
        json.dumps({"timestamp": now_iso(-7200), "type": "Old"}) + "\n"
        + json.dumps({"timestamp": now_iso(), "type": "StartupOfTheDevice"}) + "\n"
    )
    await octt.start_agent()
    await octt.booted()
    with http_server() as web:
        answer = await octt.csms.send(CP, "GetLog", {"logType": "DiagnosticsLog", "requestId": 5,
                                                     "log": {"remoteLocation": web.url("/logs")}})
        assert answer["status"] == "Accepted"
        await wait_statuses(octt, LOG, ["Uploading", "Uploaded"])
        assert {m.payload["requestId"] for m in octt.msgs(LOG)} == {5}
        diagnostics = archive_members(web.uploads[f"PUT /logs/{answer['filename']}"])
        assert "events.jsonl" in diagnostics and "security.log" not in diagnostics
        assert_no_secrets(diagnostics)

        answer = await octt.csms.send(CP, "GetLog", {"logType": "SecurityLog", "requestId": 6, "log": {
            "remoteLocation": web.url("/logs"), "oldestTimestamp": now_iso(-3600)}})
        assert answer["status"] == "Accepted" and "securitylog" in answer["filename"]
        await wait_statuses(octt, LOG, ["Uploading", "Uploaded", "Uploading", "Uploaded"])
        members = archive_members(web.uploads[f"PUT /logs/{answer['filename']}"])
    lines = [json.loads(line) for line in members["security.log"].splitlines()]
    types = [line.get("type") for line in lines]  # the security engineer's module may add its own lines
    assert "StartupOfTheDevice" in types and "Old" not in types  # the old line is outside the window
    assert "events.jsonl" not in members
    rejected = await octt.csms.send(CP, "GetLog", {"logType": "SecurityLog", "requestId": 7,
                                                   "log": {"remoteLocation": "file:///tmp"}})
    assert rejected == {"status": "Rejected"}


async def test_get_log_upload_failure(octt: Octt, tmp_path: Path) -> None:
    configure(octt, tmp_path)
    await octt.start_agent()
    await octt.booted()
    with http_server() as web:
        dead = web.url("/logs")
    answer = await octt.csms.send(CP, "GetLog", {"logType": "DiagnosticsLog", "requestId": 8, "retries": 0,
                                                 "log": {"remoteLocation": dead}})
    assert answer["status"] == "Accepted"
    await wait_statuses(octt, LOG, ["Uploading", "UploadFailure"])


async def test_extended_trigger_message(octt: Octt, tmp_path: Path) -> None:
    agent = await octt.start_agent()
    await octt.booted()

    async def trigger(message: str, connector_id: int | None = None) -> str:
        payload: dict[str, object] = {"requestedMessage": message}
        if connector_id is not None:
            payload["connectorId"] = connector_id
        return str((await octt.csms.send(CP, "ExtendedTriggerMessage", payload))["status"])

    assert await trigger("LogStatusNotification") == "Accepted"
    assert (await octt.wait(LOG)).payload == {"status": "Idle"}
    assert await trigger("FirmwareStatusNotification") == "Accepted"
    assert (await octt.wait(SFW)).payload == {"status": "Idle"}
    assert await trigger("Heartbeat") == "Accepted"
    await octt.wait("Heartbeat")
    assert await trigger("BootNotification") == "Accepted"
    await octt.wait("BootNotification", count=2)
    before = len(octt.msgs("StatusNotification"))
    assert await trigger("StatusNotification", 1) == "Accepted"
    await octt.wait("StatusNotification", count=before + 1)
    await eventually(lambda: agent.connector.last_sample is not None, 5, "a meter reading")
    assert await trigger("MeterValues", 1) == "Accepted"
    assert (await octt.wait("MeterValues")).payload["meterValue"][0]["sampledValue"][0]["context"] == "Trigger"
    assert await trigger("StatusNotification", 9) == "Rejected"
    assert agent.service is not None
    signer = any(callable(getattr(f, SIGN_METHOD, None)) for f in agent.service.features.values())
    assert await trigger("SignChargePointCertificate") == ("Accepted" if signer else "NotImplemented")
    assert statuses(octt, SFW) == ["Idle"]


def openssl_base64(signature_b64: str, eol: str = "\n") -> str:
    """The signature as `openssl base64` writes it: 64 columns, a line break after every line."""
    raw = signature_b64
    return "".join(raw[i:i + 64] + eol for i in range(0, len(raw), 64))


async def test_signed_firmware_rsa_signature_wrapped_like_openssl_base64(octt: Octt, tmp_path: Path) -> None:
    """Whitepaper 1.6 edition 3, SignedUpdateFirmware.req: `signature` is the Base64 encoded firmware
    signature; base64 wrapped at 64 columns (RFC 2045 style, as `openssl base64` writes it, here with CR/LF)
    is valid base64 and a valid RSA-SHA256 signature in it is verified and installed."""
    marker = configure(octt, tmp_path)
    maker = Manufacturer(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    maker.install_root(octt)
    agent = await octt.start_agent()
    await octt.booted()
    wrapped = openssl_base64(maker.sign(FIRMWARE), "\r\n")
    assert "\r\n" in wrapped.rstrip()  # a 2048-bit signature is 344 base64 characters: 6 lines
    with http_server() as web:
        web.files["/signed.bin"] = FIRMWARE
        answer = await octt.csms.send(CP, "SignedUpdateFirmware",
                                      signed_update(web.url("/signed.bin"), maker, wrapped))
        assert answer == {"status": "Accepted"}
        await wait_statuses(octt, SFW, ["Downloading", "Downloaded", "SignatureVerified", "Installing"])
        assert agent.service is not None
        await eventually(agent.service.restart_requested.is_set, 10, "restart after install")
    assert marker.read_bytes() == FIRMWARE
