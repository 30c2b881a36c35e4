"""OCPP 2.0.1 firmware update (L01 secure, L02 without signature) and log upload (N01 GetLog), over the
version-neutral pieces of the 1.6 side: transfers (agent/ocpp/v16/transfer.py: http/https/ftp/ftps, bounded
retries and deadlines), the signature and signing-certificate checks (agent/ocpp/v16/signed_firmware.py), the
installer run and the pending-outcome record (agent/ocpp/v16/firmware.py) and the diagnostics archive
(agent/ocpp/v16/diag_archive.py, id tokens masked, secrets removed).

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
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from ocpp.v201 import call

from agent.ocpp.v16 import diag_archive
from agent.ocpp.v16.firmware import (
    PendingInstall,
    archive_name,
    parse_ocpp_time,
    retry_s,
    run_installer,
    spawn,
    wait_until_no_transaction,
)
from agent.ocpp.v16.signed_firmware import certificate_problem, file_digest, load_roots, signature_valid
from agent.ocpp.v16.transfer import TransferError, check_url, download, redact, upload_log_archive
from agent.ocpp.v201.rpc import CallErrorReceived, CallTimeout, ConnectionLost, InvalidPayload
from hal.tasks import cancel_and_wait

if TYPE_CHECKING:
    from collections.abc import Mapping

    from agent.ocpp.v201.service import OcppService

log = logging.getLogger("cpagent.ocpp.v201.firmware")

PENDING_KIND = "Firmware201"  # the outcome kept across the restart (PendingInstall of agent/ocpp/v16)
BUSY_FIRMWARE = frozenset({"DownloadScheduled", "Downloading", "Downloaded", "SignatureVerified",
                           "InstallScheduled", "Installing", "InstallRebooting"})
ONLINE_POLL_S = 0.5


def _utc(wall: float) -> datetime:
    return datetime.fromtimestamp(wall, UTC)


class FirmwareManagement:
    def __init__(self, service: OcppService) -> None:
        self._svc = service
        self.pending = PendingInstall(service.db)
        self.firmware_status = "Idle"
        self.firmware_request_id: int | None = None
        self.log_status = "Idle"
        self.log_request_id: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._update: asyncio.Task[None] | None = None
        self._log: asyncio.Task[None] | None = None
        self._accepted_updates: dict[int, dict[str, Any]] = {}
        self._accepted_logs: dict[int, str] = {}
        self._log_reported = False
        self._update_reported = False
        service.register_trigger("FirmwareStatusNotification", lambda evse: "Accepted", self._send_firmware_status)
        service.register_trigger("LogStatusNotification", lambda evse: "Accepted", self._send_log_status)

    @property
    def roots_dir(self) -> Path:
        return self._svc.config.state_dir / "certificates" / "ManufacturerRootCertificate"

    async def run(self) -> None:
        try:
            await self._report_pending()
            await asyncio.Event().wait()
        finally:
            await cancel_and_wait(*self._tasks)

    # -- notifications ----------------------------------------------------------------------------

    async def _notify(self, payload: Any) -> bool:
        try:
            await self._svc.request(payload)
            return True
        except (CallErrorReceived, CallTimeout, InvalidPayload, ConnectionLost) as exc:
            log.warning("%s not delivered: %s", type(payload).__name__, exc)
            return False

    async def _report_pending(self) -> None:
        pending = self.pending.get(PENDING_KIND)
        if pending is None:
            return
        outcome, request_id, detail = pending
        log.info("reporting the firmware installation after the restart: %s (%s)", outcome, detail)
        while True:
            while not self._svc.online:  # noqa: ASYNC110 (the service offers no "online" event)
                await asyncio.sleep(ONLINE_POLL_S)
            if await self._notify(call.FirmwareStatusNotification(status=outcome, request_id=request_id)):
                break
            await asyncio.sleep(1.0)
        if outcome == "Installed":
            self._svc.security_event("FirmwareUpdated", f"firmware {self._svc.config.station.firmware_version}")
        self.pending.clear(PENDING_KIND)

    async def _status(self, status: str) -> None:
        self.firmware_status = status if status in BUSY_FIRMWARE else "Idle"
        self._update_reported = status not in BUSY_FIRMWARE  # over at its final status, not at its answer
        await self._notify(call.FirmwareStatusNotification(status=status, request_id=self.firmware_request_id))

    async def _send_firmware_status(self, evse: Mapping[str, Any] | None) -> None:
        busy = self.firmware_status != "Idle"
        await self._svc.triggered(call.FirmwareStatusNotification(
            status=self.firmware_status, request_id=self.firmware_request_id if busy else None))

    async def _send_log_status(self, evse: Mapping[str, Any] | None) -> None:
        busy = self.log_status != "Idle"
        await self._svc.triggered(call.LogStatusNotification(
            status=self.log_status, request_id=self.log_request_id if busy else None))

    # -- UpdateFirmware (L01 / L02) ---------------------------------------------------------------

    async def on_update_firmware(self, request_id: int, firmware: dict[str, Any], **_: Any) -> dict[str, Any]:
        try:
            check_url(firmware["location"])
            parse_ocpp_time(firmware["retrieve_date_time"])
            parse_ocpp_time(firmware.get("install_date_time"))
        except (TransferError, ValueError) as exc:
            log.warning("UpdateFirmware %d rejected: %s", request_id, exc)
            return {"status": "Rejected", "statusInfo": {"reasonCode": "InvalidURL", "additionalInfo": str(exc)[:500]}}
        signing = firmware.get("signing_certificate")
        if signing is None and firmware.get("signature") is None and self._svc.config.firmware.require_signature:
            # TC_L_18_CS: a station doing secure updates (L01) refuses the unsigned L02 form when so configured
            log.warning("UpdateFirmware %d rejected: no signing certificate and signature "
                        "(firmware.require_signature)", request_id)
            return {"status": "Rejected", "statusInfo": {"reasonCode": "MissingSignature"}}
        if signing is not None or firmware.get("signature") is not None:
            if not signing or not firmware.get("signature"):
                return {"status": "Rejected", "statusInfo": {"reasonCode": "MissingSignature"}}
            roots = await asyncio.to_thread(load_roots, self.roots_dir)
            problem = certificate_problem(signing, roots, _utc(self._svc.wall()))
            if problem is not None:
                log.warning("UpdateFirmware %d: %s", request_id, problem)
                self._svc.security_event("InvalidFirmwareSigningCertificate", problem)
                return {"status": "InvalidCertificate"}
        busy = self._update is not None and not self._update.done() and not self._update_reported
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

    async def _update_firmware(self, request_id: int, firmware: dict[str, Any], retries: int | None,
                               retry_interval: int | None) -> None:
        self.firmware_request_id = request_id
        location = str(firmware["location"])
        retrieve_wall = parse_ocpp_time(firmware["retrieve_date_time"])
        if retrieve_wall is not None and retrieve_wall > self._svc.wall():
            await self._status("DownloadScheduled")
            await asyncio.sleep(max(0.0, retrieve_wall - self._svc.wall()))
        await self._status("Downloading")
        try:
            file = await download(location, self._svc.config.state_dir / "firmware", retries=retries,
                                  retry_interval_s=retry_s(retry_interval))
        except TransferError as exc:
            log.warning("firmware download from %s failed: %s", redact(location), exc)
            await self._status("DownloadFailed")
            return
        try:
            await self._verify_and_install(request_id, firmware, file)
        finally:
            file.unlink(missing_ok=True)
            self._lift_hold()  # cancelled (AcceptedCanceled) or failed: the EVSEs are available again

    async def _verify_and_install(self, request_id: int, firmware: dict[str, Any], file: Path) -> None:
        await self._status("Downloaded")
        digest = await asyncio.to_thread(file_digest, file)
        signed = firmware.get("signature") is not None
        if signed:
            if not signature_valid(firmware["signing_certificate"], firmware["signature"], digest):
                log.warning("firmware %d: the signature does not match the file", request_id)
                self._svc.security_event("InvalidFirmwareSignature", f"requestId {request_id}")
                await self._status("InvalidSignature")
                return
            await self._status("SignatureVerified")
        install_wall = parse_ocpp_time(firmware.get("install_date_time"))
        if install_wall is not None and install_wall > self._svc.wall():
            await self._status("InstallScheduled")
            await asyncio.sleep(max(0.0, install_wall - self._svc.wall()))
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
        return any(svc.handlers._busy(cid) for cid in svc.station.connector_ids())  # B11 OnIdle's check

    def _lift_hold(self) -> None:
        if self._svc.firmware_hold and self.firmware_status != "InstallRebooting":
            self._svc.firmware_hold = False
            self._svc.apply_availability()

    # -- GetLog (N01) -----------------------------------------------------------------------------

    async def on_get_log(self, log_type: str, request_id: int, log: dict[str, Any], **_: Any) -> dict[str, Any]:
        try:
            check_url(log["remote_location"])
            parse_ocpp_time(log.get("oldest_timestamp"))
            parse_ocpp_time(log.get("latest_timestamp"))
        except (TransferError, ValueError) as exc:
            return {"status": "Rejected", "statusInfo": {"reasonCode": "InvalidURL", "additionalInfo": str(exc)[:500]}}
        kind = "securitylog" if log_type == "SecurityLog" else "diagnostics"
        name = archive_name(self._svc.config.station.charge_point_id, self._svc.wall(), kind)
        busy = self._log is not None and not self._log.done() and not self._log_reported
        self._accepted_logs[request_id] = name
        return {"status": "AcceptedCanceled" if busy else "Accepted", "filename": name}

    async def after_get_log(self, log_type: str, request_id: int, log: dict[str, Any], retries: int | None = None,
                            retry_interval: int | None = None, **_: Any) -> None:
        name = self._accepted_logs.pop(request_id, None)
        if name is None:
            return
        busy = self._log is not None and not self._log.done() and not self._log_reported
        canceled = self.log_request_id if busy else None
        job = self._upload_log(request_id, name, log_type, log, retries, retry_interval, canceled)
        self._log_reported = False
        self._log = spawn(self._tasks, job, "ocpp201-log-upload", replaces=self._log)

    async def _log_status_now(self, status: str) -> None:
        self.log_status = "Uploading" if status == "Uploading" else "Idle"
        self._log_reported = status != "Uploading"  # busy until the final status, not until its answer
        await self._notify(call.LogStatusNotification(status=status, request_id=self.log_request_id))

    async def _upload_log(self, request_id: int, name: str, log_type: str, params: dict[str, Any],
                          retries: int | None, retry_interval: int | None, canceled: int | None = None) -> None:
        if canceled is not None:  # N01.FR.12 / TC_N_36_CS: the upload this one replaced (stopped by now)
            await self._notify(call.LogStatusNotification(status="AcceptedCanceled", request_id=canceled))
        self.log_request_id = request_id
        location = str(params["remote_location"])
        start = parse_ocpp_time(params.get("oldest_timestamp"))
        stop = parse_ocpp_time(params.get("latest_timestamp"))
        security = log_type == "SecurityLog"
        await upload_log_archive(lambda: self.build_archive(name, start, stop, security=security), location,
                                 log_type=log_type, report=self._log_status_now, retries=retries,
                                 retry_interval_s=retry_s(retry_interval), logger=log)

    async def build_archive(self, name: str, start: float | None, stop: float | None, *, security: bool) -> Path:
        """The archive of agent/ocpp/v16/diag_archive.py with the device model as the OCPP configuration."""
        svc = self._svc
        view = SimpleNamespace(station=svc.station, config=svc.config,
                               store=SimpleNamespace(export=svc.variables.export))
        snapshot = diag_archive.collect(view, start, stop)  # type: ignore[arg-type]  # duck-typed service view
        directory = svc.config.state_dir / "diagnostics"
        return await asyncio.to_thread(diag_archive.write_archive, snapshot, directory, name,
                                       include_diagnostics=not security, include_security_log=security)
