"""What the signed firmware update and the log upload of both OCPP versions share: the 1.6 security whitepaper's
SignedUpdateFirmware / GetLog (agent/ocpp/v16/signed_firmware.py SignedFirmware) and 2.0.1's UpdateFirmware /
GetLog (agent/ocpp/v201/firmware.py FirmwareManagement).

Shared: the jobs (one update, one upload; a new request replaces the running one), the outcome of an install
reported after the restart, the signing-certificate check, the download with its statuses, the signature
check, the wait for installDateTime, GetLog (validation, archive name, busy until the final status is
reported, the upload) and what a triggered status notification says. A subclass gives its version's
messages (``_firmware_message``, ``_log_message``), how a notification is sent (``_notify``), how a refused
request is answered (``_rejected``) and the log archive (``build_log_archive``).
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from agent.ocpp.firmware_signature import certificate_problem, file_digest, load_roots, signature_valid
from agent.ocpp.v16.firmware import (
    PendingInstall,
    archive_name,
    deliver_when_online,
    parse_ocpp_time,
    report_pending_outcome,
    retry_s,
    serve_jobs,
    spawn,
    wait_until_wall,
)
from agent.ocpp.v16.transfer import TransferError, check_url, download, redact, upload_log_archive


def utc(wall: float) -> datetime:
    return datetime.fromtimestamp(wall, UTC)


def check_firmware_request(firmware: dict[str, Any]) -> None:
    """TransferError or ValueError if the firmware's location or one of its dates is unusable."""
    check_url(firmware["location"])
    parse_ocpp_time(firmware["retrieve_date_time"])
    parse_ocpp_time(firmware.get("install_date_time"))


def check_log_request(log: dict[str, Any]) -> None:
    """TransferError or ValueError if a GetLog's remoteLocation or one of its timestamps is unusable."""
    check_url(log["remote_location"])
    parse_ocpp_time(log.get("oldest_timestamp"))
    parse_ocpp_time(log.get("latest_timestamp"))


class FirmwareJobs(ABC):
    pending_kind: ClassVar[str]  # the PendingInstall kind of this version's installs
    busy_firmware: ClassVar[frozenset[str]]  # firmware statuses of an update still running
    online_poll_s: ClassVar[float]
    task_prefix: ClassVar[str]  # names the job tasks
    log: ClassVar[logging.Logger]

    def __init__(self, service: Any, pending: PendingInstall) -> None:
        self._svc = service
        self.pending = pending
        self.firmware_status = "Idle"
        self.firmware_request_id: int | None = None
        self.log_status = "Idle"
        self.log_request_id: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._update: asyncio.Task[None] | None = None
        self._log: asyncio.Task[None] | None = None
        self._log_reported = False  # the running upload already sent its final LogStatusNotification
        self._update_reported = False  # the running update already sent its final FirmwareStatusNotification
        self._accepted_updates: dict[int, dict[str, Any]] = {}
        self._accepted_logs: dict[int, str] = {}  # requestId -> archive name promised in the answer

    # -- the version's part -----------------------------------------------------------------------

    @abstractmethod
    async def _notify(self, payload: Any) -> bool:
        """Send a status notification now (not queued); False if it was not delivered."""
        raise NotImplementedError

    @abstractmethod
    def _firmware_message(self, status: str, request_id: int | None) -> Any:
        raise NotImplementedError

    @abstractmethod
    def _log_message(self, status: str, request_id: int | None) -> Any:
        raise NotImplementedError

    @abstractmethod
    def _rejected(self, reason_code: str, exc: Exception) -> dict[str, Any]:
        """The answer to a request refused for ``reason_code`` (the 2.0.1 statusInfo's)."""
        raise NotImplementedError

    @abstractmethod
    async def build_log_archive(self, name: str, start: float | None, stop: float | None, *,
                                security: bool) -> Path:
        raise NotImplementedError

    # -- jobs -------------------------------------------------------------------------------------

    @property
    def roots_dir(self) -> Path:
        return Path(self._svc.config.state_dir) / "certificates" / "ManufacturerRootCertificate"

    @property
    def jobs(self) -> set[asyncio.Task[None]]:
        """The running jobs: the service cancels them when it ends."""
        return self._tasks

    async def run(self) -> None:
        """Report a pending outcome; the jobs (started later) end (transfers stopped) with the service."""
        await serve_jobs(self._tasks, report_pending_outcome(self._svc, self.pending, self.pending_kind,
                                                             self._deliver))

    async def _deliver(self, outcome: str, request_id: int | None) -> None:
        payload = self._firmware_message(outcome, request_id)
        await deliver_when_online(self._svc, self._notify, payload, self.online_poll_s)

    def firmware_trigger_message(self) -> Any:
        """What a triggered FirmwareStatusNotification says: the requestId only while an update runs."""
        busy = self.firmware_status != "Idle"
        return self._firmware_message(self.firmware_status, self.firmware_request_id if busy else None)

    def log_trigger_message(self) -> Any:
        busy = self.log_status != "Idle"
        return self._log_message(self.log_status, self.log_request_id if busy else None)

    # -- firmware update --------------------------------------------------------------------------

    def _update_busy(self) -> bool:
        """An update runs: busy until its final status is reported, not until that notification's answer."""
        return self._update is not None and not self._update.done() and not self._update_reported

    async def _status(self, status: str) -> None:
        self.firmware_status = status if status in self.busy_firmware else "Idle"
        self._update_reported = status not in self.busy_firmware  # over at its final status, not at its answer
        await self._notify(self._firmware_message(status, self.firmware_request_id))

    async def _signing_certificate_problem(self, action: str, request_id: int, chain_pem: str) -> str | None:
        """None if the signing certificate chains to an installed ManufacturerRootCertificate; otherwise why
        not (logged, security event InvalidFirmwareSigningCertificate)."""
        roots = await asyncio.to_thread(load_roots, self.roots_dir)
        problem = certificate_problem(chain_pem, roots, utc(self._svc.wall()))
        if problem is not None:
            self.log.warning("%s %d: %s", action, request_id, problem)
            self._svc.security_event("InvalidFirmwareSigningCertificate", problem)
        return problem

    async def _download(self, request_id: int, firmware: dict[str, Any], retries: int | None,
                        retry_interval: int | None) -> Path | None:
        """[DownloadScheduled until retrieveDateTime], Downloading, the file; None after DownloadFailed."""
        self.firmware_request_id = request_id
        location = str(firmware["location"])
        retrieve_wall = parse_ocpp_time(firmware["retrieve_date_time"])
        if retrieve_wall is not None and retrieve_wall > self._svc.wall():
            await self._status("DownloadScheduled")  # a triggered status then says so, not Idle
            await wait_until_wall(self._svc, retrieve_wall)
        await self._status("Downloading")
        try:
            return await download(location, Path(self._svc.config.state_dir) / "firmware", retries=retries,
                                  retry_interval_s=retry_s(retry_interval))
        except TransferError as exc:
            self.log.warning("firmware download from %s failed: %s", redact(location), exc)
            await self._status("DownloadFailed")
            return None

    async def _update_firmware(self, request_id: int, firmware: dict[str, Any], retries: int | None,
                               retry_interval: int | None) -> None:
        file = await self._download(request_id, firmware, retries, retry_interval)
        if file is None:
            return
        try:
            await self._verify_and_install(request_id, firmware, file)
        finally:  # installed (already gone), refused, failed, or replaced by a newer request
            file.unlink(missing_ok=True)
            self._update_over()

    @abstractmethod
    async def _verify_and_install(self, request_id: int, firmware: dict[str, Any], file: Path) -> None:
        """From Downloaded to the restart (or a failure status)."""
        raise NotImplementedError

    def _update_over(self) -> None:  # noqa: B027 - an optional hook: nothing to do by default
        """The downloaded update ended here without a restart (failed, refused or replaced)."""

    async def _verified_digest(self, request_id: int, firmware: dict[str, Any], file: Path) -> bytes | None:
        """The file's SHA-256 after SignatureVerified; None after InvalidSignature (and its security event)."""
        digest = await asyncio.to_thread(file_digest, file)
        if not signature_valid(firmware["signing_certificate"], firmware["signature"], digest):
            self.log.warning("firmware %d: the signature does not match the file", request_id)
            self._svc.security_event("InvalidFirmwareSignature", f"requestId {request_id}")
            await self._status("InvalidSignature")
            return None
        await self._status("SignatureVerified")
        return digest

    async def _wait_install_time(self, firmware: dict[str, Any]) -> None:
        """InstallScheduled until installDateTime, if it is still ahead."""
        install_wall = parse_ocpp_time(firmware.get("install_date_time"))
        if install_wall is not None and install_wall > self._svc.wall():
            await self._status("InstallScheduled")
            await wait_until_wall(self._svc, install_wall)

    # -- GetLog -----------------------------------------------------------------------------------

    def _log_busy(self) -> bool:
        """An upload runs: busy until its final status is reported, not until that notification's answer."""
        return self._log is not None and not self._log.done() and not self._log_reported

    async def on_get_log(self, log_type: str, request_id: int, log: dict[str, Any], **_: Any) -> dict[str, Any]:
        try:
            check_log_request(log)
        except (TransferError, ValueError) as exc:
            return self._rejected("InvalidURL", exc)
        kind = "securitylog" if log_type == "SecurityLog" else "diagnostics"
        name = archive_name(self._svc.config.station.charge_point_id, self._svc.wall(), kind)
        busy = self._log_busy()
        self._accepted_logs[request_id] = name
        return {"status": "AcceptedCanceled" if busy else "Accepted", "filename": name}

    async def after_get_log(self, log_type: str, request_id: int, log: dict[str, Any], retries: int | None = None,
                            retry_interval: int | None = None, **_: Any) -> None:
        name = self._accepted_logs.pop(request_id, None)
        if name is None:
            return
        canceled = self.log_request_id if self._log_busy() else None
        job = self._upload_log(request_id, name, log_type, log, retries, retry_interval, canceled)
        self._log_reported = False
        self._log = spawn(self._tasks, job, f"{self.task_prefix}log-upload", replaces=self._log)

    async def _log_canceled(self, request_id: int) -> None:  # noqa: B027 - optional hook
        """The upload ``request_id`` was replaced by a new GetLog (stopped by now); 1.6 says nothing."""

    async def _log_status(self, status: str) -> None:
        self.log_status = "Uploading" if status == "Uploading" else "Idle"
        self._log_reported = status != "Uploading"
        await self._notify(self._log_message(status, self.log_request_id))

    async def _upload_log(self, request_id: int, name: str, log_type: str, params: dict[str, Any],
                          retries: int | None, retry_interval: int | None, canceled: int | None = None) -> None:
        if canceled is not None:
            await self._log_canceled(canceled)
        self.log_request_id = request_id
        location = str(params["remote_location"])
        start = parse_ocpp_time(params.get("oldest_timestamp"))
        stop = parse_ocpp_time(params.get("latest_timestamp"))
        security = log_type == "SecurityLog"
        await upload_log_archive(lambda: self.build_log_archive(name, start, stop, security=security), location,
                                 log_type=log_type, report=self._log_status, retries=retries,
                                 retry_interval_s=retry_s(retry_interval), logger=self.log)
