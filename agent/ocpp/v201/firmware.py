"""OCPP 2.0.1 firmware update (L01 secure, L02 without signature) and log upload (N01 GetLog), over the
version-neutral pieces of the 1.6 side: transfers (agent/ocpp/v16/transfer.py: http/https/ftp/ftps, bounded
retries and deadlines), the signature and signing-certificate checks (agent/ocpp/firmware_signature.py), the
installer run and the pending-outcome record (agent/ocpp/v16/firmware.py) and the diagnostics archive
(agent/ocpp/v16/diag_archive.py, id tokens masked, secrets removed). The jobs, statuses, download, signature
check and GetLog are shared with 1.6's SignedUpdateFirmware (agent/ocpp/firmware_jobs.py FirmwareJobs).

UpdateFirmware: the signing certificate must chain to an installed ManufacturerRootCertificate
(InvalidCertificate + security event InvalidFirmwareSigningCertificate otherwise); a running update is
cancelled by a new one (AcceptedCanceled, L01.FR.24: while DownloadScheduled, Downloading, ... or
InstallScheduled; the cancelled one gets no further status, FirmwareStatusEnumType has no "cancelled", the
AcceptedCanceled answer is its end), except while its installer runs (Installing, InstallRebooting): that
cannot be cancelled safely, the new one is Rejected (L01.FR.27).
FirmwareStatusNotification: [DownloadScheduled] Downloading, Downloaded | DownloadFailed, SignatureVerified |
InvalidSignature (+ InvalidFirmwareSignature event), [InstallScheduled] (after running transactions end)
Installing, InstallRebooting, then after the restart
(BootNotification reason FirmwareUpdate) Installed + security event FirmwareUpdated; InstallationFailed /
InstallVerificationFailed when it goes wrong. Status notifications are sent when online (not queued), the
outcome after the restart until delivered.

GetLog: DiagnosticsLog (event log, sessions, device model with secrets removed, the agent's log file) or
SecurityLog (the security log), filtered to oldestTimestamp..latestTimestamp, uploaded to remoteLocation;
LogStatusNotification Uploading, Uploaded | UploadFailure (AcceptedCanceled when one was running).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from ocpp.v201 import call

from agent.ocpp.firmware_jobs import FirmwareJobs, check_firmware_request
from agent.ocpp.firmware_signature import file_digest
from agent.ocpp.v16 import diag_archive
from agent.ocpp.v16.firmware import PendingInstall, run_installer, spawn, wait_until_no_transaction
from agent.ocpp.v16.transfer import TransferError
from agent.ocpp.v201.rpc import CallErrorReceived, CallTimeout, ConnectionLost, InvalidPayload

if TYPE_CHECKING:
    from collections.abc import Mapping

    from agent.ocpp.v201.service import OcppService

log = logging.getLogger("cpagent.ocpp.v201.firmware")

PENDING_KIND = "Firmware201"  # the outcome kept across the restart (PendingInstall of agent/ocpp/v16)
BUSY_FIRMWARE = frozenset({"DownloadScheduled", "Downloading", "Downloaded", "SignatureVerified",
                           "InstallScheduled", "Installing", "InstallRebooting"})
ONLINE_POLL_S = 0.5


class FirmwareManagement(FirmwareJobs):
    pending_kind = PENDING_KIND
    busy_firmware = BUSY_FIRMWARE
    online_poll_s = ONLINE_POLL_S
    task_prefix = "ocpp201-"
    log = log
    _svc: OcppService

    def __init__(self, service: OcppService) -> None:
        super().__init__(service, PendingInstall(service.db))
        service.register_trigger("FirmwareStatusNotification", lambda evse: "Accepted", self._send_firmware_status)
        service.register_trigger("LogStatusNotification", lambda evse: "Accepted", self._send_log_status)

    # -- notifications ----------------------------------------------------------------------------

    async def _notify(self, payload: Any) -> bool:
        try:
            await self._svc.request(payload)
            return True
        except (CallErrorReceived, CallTimeout, InvalidPayload, ConnectionLost) as exc:
            log.warning("%s not delivered: %s", type(payload).__name__, exc)
            return False

    def _firmware_message(self, status: str, request_id: int | None) -> Any:
        return call.FirmwareStatusNotification(status=status, request_id=request_id)

    def _log_message(self, status: str, request_id: int | None) -> Any:
        return call.LogStatusNotification(status=status, request_id=request_id)

    def _rejected(self, reason_code: str, exc: Exception) -> dict[str, Any]:
        return {"status": "Rejected", "statusInfo": {"reasonCode": reason_code, "additionalInfo": str(exc)[:500]}}

    async def _send_firmware_status(self, evse: Mapping[str, Any] | None) -> None:
        await self._svc.triggered(self.firmware_trigger_message())

    async def _send_log_status(self, evse: Mapping[str, Any] | None) -> None:
        await self._svc.triggered(self.log_trigger_message())

    # -- UpdateFirmware (L01 / L02) ---------------------------------------------------------------

    async def on_update_firmware(self, request_id: int, firmware: dict[str, Any], **_: Any) -> dict[str, Any]:
        try:
            check_firmware_request(firmware)
        except (TransferError, ValueError) as exc:
            log.warning("UpdateFirmware %d rejected: %s", request_id, exc)
            return self._rejected("InvalidURL", exc)
        signing = firmware.get("signing_certificate")
        if signing is None and firmware.get("signature") is None and self._svc.config.firmware.require_signature:
            # TC_L_18_CS: a station doing secure updates (L01) refuses the unsigned L02 form when so configured
            log.warning("UpdateFirmware %d rejected: no signing certificate and signature "
                        "(firmware.require_signature)", request_id)
            return {"status": "Rejected", "statusInfo": {"reasonCode": "MissingSignature"}}
        if signing is not None or firmware.get("signature") is not None:
            if not signing or not firmware.get("signature"):
                return {"status": "Rejected", "statusInfo": {"reasonCode": "MissingSignature"}}
            if await self._signing_certificate_problem("UpdateFirmware", request_id, signing) is not None:
                return {"status": "InvalidCertificate"}
        busy = self._update_busy()
        if busy and self.firmware_status in ("Installing", "InstallRebooting"):
            log.warning("UpdateFirmware %d rejected: firmware %s is being installed (cannot be cancelled)",
                        request_id, self.firmware_request_id)
            return {"status": "Rejected", "statusInfo": {"reasonCode": "InstallInProgress"}}
        self._accepted_updates[request_id] = firmware
        return {"status": "AcceptedCanceled" if busy else "Accepted"}

    async def after_update_firmware(self, request_id: int, firmware: dict[str, Any], retries: int | None = None,
                                    retry_interval: int | None = None, **_: Any) -> None:
        accepted = self._accepted_updates.pop(request_id, None)
        if accepted is None:
            return
        job = self._update_firmware(request_id, accepted, retries, retry_interval)
        self._update_reported = False
        self._update = spawn(self._tasks, job, "ocpp201-firmware-update", replaces=self._update)

    def _update_over(self) -> None:
        self._lift_hold()  # cancelled (AcceptedCanceled) or failed: the EVSEs are available again

    async def _verify_and_install(self, request_id: int, firmware: dict[str, Any], file: Path) -> None:
        await self._status("Downloaded")
        if firmware.get("signature") is not None:
            digest = await self._verified_digest(request_id, firmware, file)
            if digest is None:
                return
        else:
            digest = await asyncio.to_thread(file_digest, file)
        await self._wait_install_time(firmware)
        if self._transaction_running():
            if self.firmware_status != "InstallScheduled":
                await self._status("InstallScheduled")  # after the running transactions
            await self._wait_for_transactions()
        try:
            unchanged = await asyncio.to_thread(file_digest, file) == digest
        except OSError:
            unchanged = False
        if not unchanged:
            log.error("firmware %d changed after its verification; not installed", request_id)
            await self._status("InstallVerificationFailed")
            return
        await self._status("Installing")
        self.pending.set(PENDING_KIND, "InstallationFailed", request_id, "interrupted during installation")
        ok, why = await run_installer(self._svc.config.firmware.installer, file)
        if not ok:
            self.pending.clear(PENDING_KIND)
            await self._status("InstallationFailed")
            return
        self.pending.set(PENDING_KIND, "Installed", request_id, why)
        await self._status("InstallRebooting")
        self._svc.request_restart("Firmware", boot_reason="FirmwareUpdate")

    async def _wait_for_transactions(self) -> None:
        """L01.FR.06/07: the install (it restarts the agent) waits until no transaction runs; meanwhile the free
        EVSEs are Unavailable (and so is each EVSE whose transaction ends) unless the CSMS allows new sessions
        (ChargingStation.AllowNewSessionsPendingFirmwareUpdate true)."""
        allow = self._svc.variables.value("ChargingStation", "AllowNewSessionsPendingFirmwareUpdate") is True
        svc = self._svc
        svc.firmware_hold = not allow  # kept through the install (it ends in a restart); _update_firmware lifts it
        svc.apply_availability()
        await wait_until_no_transaction(svc.station)  # logs once; then the 2.0.1 transactions without a session
        while self._transaction_running():  # noqa: ASYNC110 (ends with a TransactionEvent Ended, no event here)
            await asyncio.sleep(ONLINE_POLL_S)

    def _transaction_running(self) -> bool:
        """A charging session or a 2.0.1 transaction without one (TxStartPoint EVConnected, ...) anywhere."""
        svc = self._svc
        return any(svc.handlers.transaction_running(cid) for cid in svc.station.connector_ids())  # B11 OnIdle's

    def _lift_hold(self) -> None:
        if self._svc.firmware_hold and self.firmware_status != "InstallRebooting":
            self._svc.firmware_hold = False
            self._svc.apply_availability()

    # -- GetLog (N01) -----------------------------------------------------------------------------

    async def _log_canceled(self, request_id: int) -> None:
        """N01.FR.12 / TC_N_36_CS: the upload a new GetLog replaced (stopped by now) ends AcceptedCanceled."""
        await self._notify(call.LogStatusNotification(status="AcceptedCanceled", request_id=request_id))

    async def build_log_archive(self, name: str, start: float | None, stop: float | None, *,
                                security: bool) -> Path:
        """The archive of agent/ocpp/v16/diag_archive.py with the device model as the OCPP configuration."""
        svc = self._svc
        view = SimpleNamespace(station=svc.station, config=svc.config,
                               store=SimpleNamespace(export=svc.variables.export))
        snapshot = diag_archive.collect(view, start, stop)  # type: ignore[arg-type]  # duck-typed service view
        directory = svc.config.state_dir / "diagnostics"
        return await asyncio.to_thread(diag_archive.write_archive, snapshot, directory, name,
                                       include_diagnostics=not security, include_security_log=security)
