"""Security whitepaper file transfers (native 1.6J actions, no feature profile of their own):
SignedUpdateFirmware (signing certificate must chain to an installed ManufacturerRootCertificate; the
firmware's SHA-256 signature is checked before installing), GetLog (DiagnosticsLog or SecurityLog) and
ExtendedTriggerMessage.

Manufacturer roots are PEM files in <state_dir>/certificates/ManufacturerRootCertificate/.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ocpp.v16 import call

from agent.ocpp.v16 import trigger
from agent.ocpp.v16.configuration import SECURITY
from agent.ocpp.v16.firmware import (
    PendingInstall,
    archive_name,
    build_archive,
    install_and_restart,
    notify,
    notify_when_online,
    parse_ocpp_time,
    retry_s,
    spawn,
    wait_until_wall,
)
from agent.ocpp.v16.transfer import TransferError, check_url, download, redact, upload_log_archive
from hal.tasks import cancel_and_wait

# cryptography (~8 MB resident) is imported where a signature or certificate is checked, not to start.
if TYPE_CHECKING:
    from cryptography import x509

    from agent.ocpp.v16.service import OcppService

log = logging.getLogger("cpagent.ocpp.v16.signed_firmware")

SIGNED = "Signed"  # kind of pending install
MAX_CHAIN_DEPTH = 5
BUSY_FIRMWARE = frozenset({"DownloadScheduled", "Downloading", "Downloaded", "SignatureVerified",
                           "InstallScheduled", "Installing"})
_HASH_CHUNK = 1024 * 1024
SIGN_METHOD = "sign_charge_point_certificate"
_WHITESPACE = re.compile(r"[ \t\r\n\f\v]+")


# -- verification (pure, no I/O besides reading the given paths) ---------------------------------------


def load_roots(directory: Path) -> list[x509.Certificate]:
    from cryptography import x509

    roots: list[x509.Certificate] = []
    for path in sorted(directory.glob("*.pem")) if directory.is_dir() else []:
        try:
            roots.extend(x509.load_pem_x509_certificates(path.read_bytes()))
        except (OSError, ValueError) as exc:
            log.warning("manufacturer root %s unreadable: %s", path.name, exc)
    return roots


def _valid_at(cert: x509.Certificate, when: datetime) -> bool:
    return cert.not_valid_before_utc <= when <= cert.not_valid_after_utc


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    from cryptography.exceptions import InvalidSignature

    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def certificate_problem(chain_pem: str, roots: list[x509.Certificate], when: datetime) -> str | None:
    """None if the leaf of ``chain_pem`` (optionally followed by intermediates) chains to one of ``roots``
    with every certificate valid at ``when``; otherwise why not."""
    from cryptography import x509

    try:
        chain = x509.load_pem_x509_certificates(chain_pem.encode())
    except ValueError as exc:
        return f"signing certificate unreadable: {exc}"
    if not roots:
        return "no ManufacturerRootCertificate installed"
    current, intermediates = chain[0], chain[1:]
    for _ in range(MAX_CHAIN_DEPTH):
        if not _valid_at(current, when):
            return f"certificate {current.subject.rfc4514_string()} is not valid now"
        for root in roots:
            if current == root or _issued_by(current, root):
                return None if _valid_at(root, when) else "manufacturer root certificate expired"
        parent = next((c for c in intermediates if _issued_by(current, c)), None)
        if parent is None:
            return "signing certificate does not chain to an installed ManufacturerRootCertificate"
        current = parent
    return "certificate chain too long"


def file_digest(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.digest()


def decode_signature(text: str) -> bytes:
    """The base64 ``signature`` field. Line breaks and other ASCII whitespace are allowed anywhere (base64
    wrapped at 64 columns, as `openssl base64` writes it); any other character outside the base64 alphabet,
    or bad padding, raises binascii.Error."""
    return base64.b64decode(_WHITESPACE.sub("", text), validate=True)


def signature_valid(chain_pem: str, signature_b64: str, digest: bytes) -> bool:
    """SHA-256 signature (base64, possibly wrapped in lines) by the signing certificate's key (RSA PKCS#1
    v1.5 or ECDSA) over the file whose SHA-256 is ``digest``."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

    try:
        signature = decode_signature(signature_b64)
        key = x509.load_pem_x509_certificates(chain_pem.encode())[0].public_key()
        prehashed = utils.Prehashed(hashes.SHA256())
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, digest, padding.PKCS1v15(), prehashed)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, digest, ec.ECDSA(prehashed))
        else:
            return False
    except (ValueError, binascii.Error, InvalidSignature):
        return False
    return True


# -- the feature ------------------------------------------------------------------------------------------


class SignedFirmware:
    profile = SECURITY  # whitepaper actions belong to no 1.6 feature profile

    def __init__(self, service: OcppService) -> None:
        self._svc = service
        self.pending = PendingInstall(service.station.shared.db)
        self.firmware_status = "Idle"
        self.firmware_request_id: int | None = None
        self.log_status = "Idle"
        self.log_request_id: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._update: asyncio.Task[None] | None = None
        self._log: asyncio.Task[None] | None = None
        self._log_reported = False  # the running upload already sent its final LogStatusNotification
        self._accepted_updates: dict[int, dict[str, Any]] = {}
        self._accepted_logs: dict[int, tuple[str, str]] = {}

    @property
    def roots_dir(self) -> Path:
        return self._svc.config.state_dir / "certificates" / "ManufacturerRootCertificate"

    async def run(self) -> None:
        """Report a pending outcome, then keep the jobs: they end (transfers stopped) with the service."""
        try:
            await self._report_pending()
            await asyncio.Event().wait()
        finally:
            await cancel_and_wait(*self._tasks)

    async def _report_pending(self) -> None:
        pending = self.pending.get(SIGNED)
        if pending is None:
            return
        outcome, request_id, detail = pending
        log.info("reporting the signed firmware installation outcome after the restart: %s (%s)", outcome, detail)
        await notify_when_online(self._svc, _signed_status(outcome, request_id))
        if outcome == "Installed":
            self._svc.security_event("FirmwareUpdated", f"firmware {self._svc.config.station.firmware_version}")
        self.pending.clear(SIGNED)

    # -- SignedUpdateFirmware ---------------------------------------------------------------------

    async def on_signed_update_firmware(self, request_id: int, firmware: dict[str, Any], **_: Any) -> dict[str, Any]:
        try:
            check_url(firmware["location"])
            parse_ocpp_time(firmware["retrieve_date_time"])
            parse_ocpp_time(firmware.get("install_date_time"))
        except (TransferError, ValueError) as exc:
            log.warning("SignedUpdateFirmware %d rejected: %s", request_id, exc)
            return {"status": "Rejected"}
        roots = await asyncio.to_thread(load_roots, self.roots_dir)
        problem = certificate_problem(firmware["signing_certificate"], roots, _utc(self._svc.wall()))
        if problem is not None:
            log.warning("SignedUpdateFirmware %d: %s", request_id, problem)
            self._svc.security_event("InvalidFirmwareSigningCertificate", problem)
            return {"status": "InvalidCertificate"}
        busy = self._update is not None and not self._update.done()
        self._accepted_updates[request_id] = firmware
        return {"status": "AcceptedCanceled" if busy else "Accepted"}

    async def after_signed_update_firmware(self, request_id: int, firmware: dict[str, Any],
                                           retries: int | None = None, retry_interval: int | None = None,
                                           **_: Any) -> None:
        accepted = self._accepted_updates.pop(request_id, None)
        if accepted is None:
            return
        if self._update is not None and not self._update.done():
            log.info("SignedUpdateFirmware %d cancels the update in progress", request_id)
        job = self._update_firmware(request_id, accepted, retries, retry_interval)
        self._update = spawn(self._tasks, job, "signed-firmware-update", replaces=self._update)

    async def _status(self, status: str) -> None:
        self.firmware_status = status if status in BUSY_FIRMWARE else "Idle"
        await notify(self._svc, _signed_status(status, self.firmware_request_id))

    async def _update_firmware(self, request_id: int, firmware: dict[str, Any], retries: int | None,
                               retry_interval: int | None) -> None:
        self.firmware_request_id = request_id
        location = str(firmware["location"])
        retrieve_wall = parse_ocpp_time(firmware["retrieve_date_time"])
        if retrieve_wall is not None and retrieve_wall > self._svc.wall():
            await self._status("DownloadScheduled")  # a triggered status then says so, not Idle
            await wait_until_wall(self._svc, retrieve_wall)
        await self._status("Downloading")
        try:
            file = await download(location, self._svc.config.state_dir / "firmware", retries=retries,
                                  retry_interval_s=retry_s(retry_interval))
        except TransferError as exc:
            log.warning("signed firmware download from %s failed: %s", redact(location), exc)
            await self._status("DownloadFailed")
            return
        try:
            await self._verify_and_install(request_id, firmware, file)
        finally:  # installed (already gone), refused, failed, or replaced by a newer request
            file.unlink(missing_ok=True)

    async def _verify_and_install(self, request_id: int, firmware: dict[str, Any], file: Path) -> None:
        await self._status("Downloaded")
        digest = await asyncio.to_thread(file_digest, file)
        if not signature_valid(firmware["signing_certificate"], firmware["signature"], digest):
            log.warning("signed firmware %d: the signature does not match the file", request_id)
            self._svc.security_event("InvalidFirmwareSignature", f"requestId {request_id}")
            await self._status("InvalidSignature")
            return
        await self._status("SignatureVerified")
        install_wall = parse_ocpp_time(firmware.get("install_date_time"))
        if install_wall is not None and install_wall > self._svc.wall():
            await self._status("InstallScheduled")
            await wait_until_wall(self._svc, install_wall)

        async def unchanged(path: Path) -> bool:
            try:
                return await asyncio.to_thread(file_digest, path) == digest
            except OSError:
                return False

        await install_and_restart(self._svc, file, SIGNED, self._status, request_id, verify=unchanged)

    # -- GetLog -----------------------------------------------------------------------------------

    async def on_get_log(self, log_type: str, request_id: int, log: dict[str, Any], **_: Any) -> dict[str, Any]:
        try:
            check_url(log["remote_location"])
            parse_ocpp_time(log.get("oldest_timestamp"))
            parse_ocpp_time(log.get("latest_timestamp"))
        except (TransferError, ValueError):
            return {"status": "Rejected"}
        kind = "securitylog" if log_type == "SecurityLog" else "diagnostics"
        name = archive_name(self._svc.config.station.charge_point_id, self._svc.wall(), kind)
        # Busy until the final status is reported, not until that notification's answer comes back.
        busy = self._log is not None and not self._log.done() and not self._log_reported
        self._accepted_logs[request_id] = (name, log_type)
        return {"status": "AcceptedCanceled" if busy else "Accepted", "filename": name}

    async def after_get_log(self, log_type: str, request_id: int, log: dict[str, Any], retries: int | None = None,
                            retry_interval: int | None = None, **_: Any) -> None:
        accepted = self._accepted_logs.pop(request_id, None)
        if accepted is None:
            return
        job = self._upload_log(request_id, accepted[0], log_type, log, retries, retry_interval)
        self._log_reported = False
        self._log = spawn(self._tasks, job, "log-upload", replaces=self._log)

    async def _log_status(self, status: str) -> None:
        self.log_status = "Uploading" if status == "Uploading" else "Idle"
        self._log_reported = status != "Uploading"
        await notify(self._svc, _log_status(status, self.log_request_id))

    async def _upload_log(self, request_id: int, name: str, log_type: str, params: dict[str, Any],
                          retries: int | None, retry_interval: int | None) -> None:
        self.log_request_id = request_id
        location = str(params["remote_location"])
        start = parse_ocpp_time(params.get("oldest_timestamp"))
        stop = parse_ocpp_time(params.get("latest_timestamp"))
        security = log_type == "SecurityLog"
        await upload_log_archive(
            lambda: build_archive(self._svc, name, start, stop, diagnostics=not security, security_log=security),
            location, log_type=log_type, report=self._log_status, retries=retries,
            retry_interval_s=retry_s(retry_interval), logger=log)

    # -- ExtendedTriggerMessage -------------------------------------------------------------------

    def _certificate_signer(self) -> Any:
        """The security engineer's certificate handlers (a feature or ``service.certificates``) if loaded:
        they offer ``sign_charge_point_certificate()``. None answers NotImplemented."""
        candidates = [*self._svc.features.values(), getattr(self._svc, "certificates", None)]
        for candidate in candidates:
            if callable(getattr(candidate, SIGN_METHOD, None)):
                return candidate
        return None

    def _trigger_answer(self, requested_message: str, connector_id: int | None) -> str:
        if requested_message == "SignChargePointCertificate" and self._certificate_signer() is None:
            return "NotImplemented"
        problem = trigger.connector_problem(self._svc, requested_message, connector_id)
        return "Rejected" if problem is not None else "Accepted"

    async def on_extended_trigger_message(self, requested_message: str, connector_id: int | None = None,
                                          **_: Any) -> dict[str, Any]:
        return {"status": self._trigger_answer(requested_message, connector_id)}

    async def after_extended_trigger_message(self, requested_message: str, connector_id: int | None = None,
                                             **_: Any) -> None:
        if self._trigger_answer(requested_message, connector_id) != "Accepted":
            return
        svc = self._svc
        if requested_message == "BootNotification":
            action: Any = trigger.send_boot(svc)
        elif requested_message == "Heartbeat":
            action = trigger.send_heartbeat(svc)
        elif requested_message == "StatusNotification":
            action = trigger.send_statuses(svc, connector_id)
        elif requested_message == "MeterValues":
            action = trigger.send_meter_values(svc, connector_id)
        elif requested_message == "LogStatusNotification":
            action = trigger.send_now(svc, _log_status(self.log_status, self._busy_id(self.log_status,
                                                                                        self.log_request_id)))
        elif requested_message == "FirmwareStatusNotification":
            request_id = self._busy_id(self.firmware_status, self.firmware_request_id)
            action = trigger.send_now(svc, _signed_status(self.firmware_status, request_id))
        else:  # SignChargePointCertificate
            action = getattr(self._certificate_signer(), SIGN_METHOD)()
        await trigger.send_triggered(svc, requested_message, action)

    @staticmethod
    def _busy_id(status: str, request_id: int | None) -> int | None:
        return None if status == "Idle" else request_id


def _signed_status(status: str, request_id: int | None) -> Any:
    return call.SignedFirmwareStatusNotification(status=status, request_id=request_id)


def _log_status(status: str, request_id: int | None) -> Any:
    return call.LogStatusNotification(status=status, request_id=request_id)


def _utc(wall: float) -> datetime:
    return datetime.fromtimestamp(wall, UTC)
