"""Security whitepaper file transfers (native 1.6J actions, no feature profile of their own):
SignedUpdateFirmware (signing certificate must chain to an installed ManufacturerRootCertificate; the
firmware's SHA-256 signature is checked before installing), GetLog (DiagnosticsLog or SecurityLog) and
ExtendedTriggerMessage.

Manufacturer roots are PEM files in <state_dir>/certificates/ManufacturerRootCertificate/. The checks are
agent/ocpp/firmware_signature.py's; the jobs, statuses and GetLog are shared with 2.0.1
(agent/ocpp/firmware_jobs.py FirmwareJobs).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ocpp.v16 import call

from agent.ocpp.firmware_jobs import FirmwareJobs, check_firmware_request
from agent.ocpp.firmware_signature import file_digest
from agent.ocpp.v16 import trigger
from agent.ocpp.v16.configuration import SECURITY
from agent.ocpp.v16.firmware import (
    ONLINE_POLL_S,
    PendingInstall,
    build_archive,
    install_and_restart,
    notify,
    spawn,
)
from agent.ocpp.v16.transfer import TransferError

if TYPE_CHECKING:
    from agent.ocpp.v16.service import OcppService

log = logging.getLogger("cpagent.ocpp.v16.signed_firmware")

SIGNED = "Signed"  # kind of pending install
BUSY_FIRMWARE = frozenset({"DownloadScheduled", "Downloading", "Downloaded", "SignatureVerified",
                           "InstallScheduled", "Installing"})
SIGN_METHOD = "sign_charge_point_certificate"


# -- the feature ------------------------------------------------------------------------------------------


class SignedFirmware(FirmwareJobs):
    profile = SECURITY  # whitepaper actions belong to no 1.6 feature profile
    pending_kind = SIGNED
    busy_firmware = BUSY_FIRMWARE
    online_poll_s = ONLINE_POLL_S
    task_prefix = ""
    log = log
    _svc: OcppService

    def __init__(self, service: OcppService) -> None:
        super().__init__(service, PendingInstall(service.station.shared.db))

    async def _notify(self, payload: Any) -> bool:
        return await notify(self._svc, payload)

    def _firmware_message(self, status: str, request_id: int | None) -> Any:
        return _signed_status(status, request_id)

    def _log_message(self, status: str, request_id: int | None) -> Any:
        return _log_status(status, request_id)

    def _rejected(self, reason_code: str, exc: Exception) -> dict[str, Any]:
        return {"status": "Rejected"}

    async def build_log_archive(self, name: str, start: float | None, stop: float | None, *,
                                security: bool) -> Path:
        return await build_archive(self._svc, name, start, stop, diagnostics=not security, security_log=security)

    # -- SignedUpdateFirmware ---------------------------------------------------------------------

    async def on_signed_update_firmware(self, request_id: int, firmware: dict[str, Any], **_: Any) -> dict[str, Any]:
        try:
            check_firmware_request(firmware)
        except (TransferError, ValueError) as exc:
            log.warning("SignedUpdateFirmware %d rejected: %s", request_id, exc)
            return {"status": "Rejected"}
        if await self._signing_certificate_problem("SignedUpdateFirmware", request_id,
                                                   firmware["signing_certificate"]) is not None:
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

    async def _verify_and_install(self, request_id: int, firmware: dict[str, Any], file: Path) -> None:
        await self._status("Downloaded")
        digest = await self._verified_digest(request_id, firmware, file)
        if digest is None:
            return
        await self._wait_install_time(firmware)

        async def unchanged(path: Path) -> bool:
            try:
                return await asyncio.to_thread(file_digest, path) == digest
            except OSError:
                return False

        await install_and_restart(self._svc, file, SIGNED, self._status, request_id, verify=unchanged)

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
            action = trigger.send_now(svc, self.log_trigger_message())
        elif requested_message == "FirmwareStatusNotification":
            action = trigger.send_now(svc, self.firmware_trigger_message())
        else:  # SignChargePointCertificate
            action = getattr(self._certificate_signer(), SIGN_METHOD)()
        await trigger.send_triggered(svc, requested_message, action)


def _signed_status(status: str, request_id: int | None) -> Any:
    return call.SignedFirmwareStatusNotification(status=status, request_id=request_id)


def _log_status(status: str, request_id: int | None) -> Any:
    return call.LogStatusNotification(status=status, request_id=request_id)

