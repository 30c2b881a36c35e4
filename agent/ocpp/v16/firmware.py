"""OCPP 1.6 FirmwareManagement: UpdateFirmware (download at retrieveDate, install when no transaction runs,
restart, report Installed after the restart) and GetDiagnostics (archive, upload, report).

The installer is the argv list of ``[firmware] installer`` with "{file}" replaced, run without a shell.
Before it runs, "InstallationFailed" is persisted as the pending outcome; a successful installer turns it
into "Installed" and the agent restarts. After any boot the pending outcome is reported once online, so an
agent that died while installing reports InstallationFailed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ocpp.v16 import call

from agent.db import Migration, migrate
from agent.ocpp.v16 import diag_archive
from agent.ocpp.v16.configuration import FIRMWARE
from agent.ocpp.v16.rpc import OcppRpcError
from agent.ocpp.v16.transfer import TransferError, check_url, download, redact, upload_log_archive
from hal.tasks import cancel_and_wait

if TYPE_CHECKING:
    from agent.ocpp.v16.service import OcppService
    from agent.station_api import StationPort

log = logging.getLogger("cpagent.ocpp.v16.firmware")

COMPONENT = "ocpp16_firmware"
MIGRATIONS: list[Migration] = [
    "CREATE TABLE ocpp16_firmware_pending (kind TEXT PRIMARY KEY, request_id INTEGER, outcome TEXT NOT NULL,"
    " detail TEXT NOT NULL DEFAULT '')",
]

INSTALL_TIMEOUT_S = 1800.0
IDLE_POLL_S = 1.0
ONLINE_POLL_S = 0.2
DEFAULT_RETRY_INTERVAL_S = 30.0
PLAIN = "FirmwareManagement"  # kind of pending install: plain UpdateFirmware; signed uses "Signed"

StatusSink = Callable[[str], Awaitable[None]]


def parse_ocpp_time(text: str | None) -> float | None:
    if not text:
        return None
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


class PendingInstall:
    """The outcome of an install that ends with a restart, kept in state.db to report after it."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        migrate(conn, COMPONENT, MIGRATIONS)

    def set(self, kind: str, outcome: str, request_id: int | None = None, detail: str = "") -> None:
        self._conn.execute(
            "INSERT INTO ocpp16_firmware_pending(kind, request_id, outcome, detail) VALUES (?,?,?,?) "
            "ON CONFLICT(kind) DO UPDATE SET request_id = excluded.request_id, outcome = excluded.outcome, "
            "detail = excluded.detail",
            (kind, request_id, outcome, detail),
        )

    def get(self, kind: str) -> tuple[str, int | None, str] | None:
        row = self._conn.execute(
            "SELECT outcome, request_id, detail FROM ocpp16_firmware_pending WHERE kind = ?", (kind,)
        ).fetchone()
        return (str(row[0]), row[1], str(row[2])) if row else None

    def clear(self, kind: str) -> None:
        self._conn.execute("DELETE FROM ocpp16_firmware_pending WHERE kind = ?", (kind,))


# -- helpers shared with signed firmware ------------------------------------------------------------------


async def notify(service: OcppService, payload: Any) -> bool:
    """Send a status notification now; offline it is dropped (status notifications are not queued)."""
    try:
        await service._request(payload)
        return True
    except OcppRpcError as exc:
        log.warning("%s not delivered: %s", type(payload).__name__, exc)
        return False


async def deliver_when_online(service: Any, send: Callable[[Any], Awaitable[bool]], payload: Any,
                              poll_s: float = ONLINE_POLL_S) -> None:
    """For the report after a restart: wait until the CSMS accepted us (``service.online``), then ``send``
    (True once delivered), again 1 s later until it is delivered."""
    while True:
        while not service.online:  # noqa: ASYNC110 - the service offers no event for "online"
            await asyncio.sleep(poll_s)
        if await send(payload):
            return
        await asyncio.sleep(1.0)


async def report_pending_outcome(service: Any, pending: PendingInstall, kind: str,
                                 deliver: Callable[[str, int | None], Awaitable[None]]) -> None:
    """After a restart: the outcome of the install that caused it (``deliver``-ed until it arrives, then the
    security event FirmwareUpdated if Installed), once; nothing if no install was pending."""
    entry = pending.get(kind)
    if entry is None:
        return
    outcome, request_id, detail = entry
    log.info("reporting the firmware installation outcome after the restart: %s (%s)", outcome, detail)
    await deliver(outcome, request_id)
    if outcome == "Installed":
        service.security_event("FirmwareUpdated", f"firmware {service.config.station.firmware_version}")
    pending.clear(kind)


async def serve_jobs(tasks: set[asyncio.Task[None]], first: Awaitable[None]) -> None:
    """A firmware feature's run(): ``first`` (the report after a restart), then return (no task waits for
    jobs that may never come): the jobs started later end with the service (transfers stopped, files
    removed), which cancels every feature's ``jobs`` when it ends (OcppServiceBase.run)."""
    try:
        await first
    except BaseException:
        await cancel_and_wait(*tasks)
        raise


async def wait_until_wall(service: OcppService, wall: float | None) -> None:
    if wall is not None:
        await asyncio.sleep(max(0.0, wall - service.wall()))


async def wait_until_no_transaction(station: StationPort) -> None:
    """Installing restarts the agent: let running sessions finish first (they keep charging)."""
    logged = False
    while any(c.session is not None for c in station.connector_views().values()):
        if not logged:
            log.info("firmware install waits for the running transaction(s) to end")
            logged = True
        await asyncio.sleep(IDLE_POLL_S)


def retry_s(retry_interval: int | None) -> float:
    return DEFAULT_RETRY_INTERVAL_S if retry_interval is None else float(max(0, retry_interval))


def installer_argv(template: tuple[str, ...], file: Path) -> list[str]:
    return [arg.replace("{file}", str(file)) for arg in template]


async def run_installer(template: tuple[str, ...] | None, file: Path,
                        timeout_s: float = INSTALL_TIMEOUT_S) -> tuple[bool, str]:
    """(success, why) of running the configured installer on ``file``: argv list, never a shell."""
    if template is None:
        log.error("firmware downloaded but no installer is configured ([firmware] installer = [...]); "
                  "installation failed")
        return False, "no installer configured"
    argv = installer_argv(template, file)
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
    except OSError as exc:
        log.error("firmware installer %r cannot start: %s", argv[0], exc)
        return False, f"installer cannot start: {exc.strerror or exc}"
    try:
        async with asyncio.timeout(timeout_s):
            output, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        log.error("firmware installer timed out after %.0f s", timeout_s)
        return False, "installer timed out"
    tail = output.decode("utf-8", errors="replace")[-2000:].strip()
    if process.returncode != 0:
        log.error("firmware installer failed (exit %s): %s", process.returncode, tail)
        return False, f"installer exit status {process.returncode}"
    log.info("firmware installer succeeded: %s", tail)
    return True, "installed"


async def install_and_restart(
    service: OcppService, file: Path, kind: str, status: StatusSink, request_id: int | None = None,
    verify: Callable[[Path], Awaitable[bool]] | None = None,
) -> bool:
    """Wait for idle, Installing, run the installer; on success persist Installed and restart the agent.
    ``verify`` (signed firmware) checks the file once more right before installing: the wait for the
    transactions (or installDateTime) may be long, and a file changed meanwhile is InstallVerificationFailed."""
    await wait_until_no_transaction(service.station)
    if verify is not None and not await verify(file):
        log.error("firmware %s failed its verification before installing; not installed", file.name)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(file.unlink)
        await status("InstallVerificationFailed")
        return False
    await status("Installing")
    pending = PendingInstall(service.station.shared.db)
    pending.set(kind, "InstallationFailed", request_id, "interrupted during installation")
    ok, why = await run_installer(service.config.firmware.installer, file)
    if not ok:
        pending.clear(kind)
        with contextlib.suppress(OSError):  # gone before the final status: the job is over when it is reported
            await asyncio.to_thread(file.unlink)
        await status("InstallationFailed")
        return False
    pending.set(kind, "Installed", request_id, why)
    with contextlib.suppress(OSError):
        await asyncio.to_thread(file.unlink)
    service.request_restart("Firmware")
    return True


def remove_leftovers(directory: Path) -> None:
    """Remove the files in ``directory`` (not below it): what jobs that did not survive a restart left."""
    removed = []
    with contextlib.suppress(OSError):
        for path in directory.iterdir():
            with contextlib.suppress(OSError):
                if path.is_file() or path.is_symlink():
                    path.unlink()
                    removed.append(path.name)
    if removed:
        log.info("removed %d file(s) left by earlier transfers in %s: %s", len(removed), directory,
                 ", ".join(sorted(removed)[:10]))


def archive_name(charge_point_id: str, wall: float, kind: str = "diagnostics") -> str:
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", charge_point_id)[:40]
    stamp = datetime.fromtimestamp(wall, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{safe}-{kind}-{stamp}.tar.gz"


async def build_archive(service: OcppService, name: str, start_wall: float | None, stop_wall: float | None,
                        *, diagnostics: bool = True, security_log: bool = True) -> Path:
    snapshot = diag_archive.collect(service, start_wall, stop_wall)
    directory = service.config.state_dir / "diagnostics"
    return await asyncio.to_thread(diag_archive.write_archive, snapshot, directory, name,
                                   include_diagnostics=diagnostics, include_security_log=security_log)


def spawn(tasks: set[asyncio.Task[None]], coroutine: Coroutine[Any, Any, None], name: str,
          replaces: asyncio.Task[None] | None = None) -> asyncio.Task[None]:
    """Jobs outlive the CALL that started them (and the connection): keep a reference, log crashes.
    ``replaces``: the job this one takes over from; it is cancelled and has finished (its transfer stopped,
    its files removed) before ``coroutine`` starts, so the two never share a file or a status."""
    if replaces is not None:
        replaces.cancel()

    async def guarded() -> None:
        started = False
        try:
            if replaces is not None:
                await asyncio.wait({replaces})
            started = True
            await coroutine
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed", name)
        finally:
            if not started:
                coroutine.close()

    task = asyncio.create_task(guarded(), name=name)
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task


# -- the feature --------------------------------------------------------------------------------------------


class FirmwareManagement:
    @property
    def jobs(self) -> set[asyncio.Task[None]]:
        """The running jobs: the service cancels them when it ends."""
        return self._tasks

    profile = FIRMWARE

    def __init__(self, service: OcppService) -> None:
        self._svc = service
        self.pending = PendingInstall(service.station.shared.db)
        self.firmware_status = "Idle"  # what a triggered FirmwareStatusNotification reports
        self.diagnostics_status = "Idle"
        self._tasks: set[asyncio.Task[None]] = set()
        self._update: asyncio.Task[None] | None = None
        self._diagnostics: asyncio.Task[None] | None = None
        self._diagnostics_names: dict[str, str] = {}  # location -> archive name promised in the .conf
        # No job survives a restart: what a job of an earlier run left (partial or uninstalled downloads of
        # plain and signed firmware, archives) is removed before any new job can start.
        remove_leftovers(self.download_dir)
        remove_leftovers(service.config.state_dir / "diagnostics")

    @property
    def download_dir(self) -> Path:
        return self._svc.config.state_dir / "firmware"

    # -- after a restart --------------------------------------------------------------------------

    async def run(self) -> None:
        """Report a pending outcome, then keep the jobs: they end (transfers stopped) with the service."""
        await serve_jobs(self._tasks, report_pending_outcome(self._svc, self.pending, PLAIN, self._deliver))

    async def _deliver(self, outcome: str, request_id: int | None) -> None:
        payload = call.FirmwareStatusNotification(status=outcome)
        await deliver_when_online(self._svc, lambda p: notify(self._svc, p), payload)

    # -- UpdateFirmware ---------------------------------------------------------------------------

    async def on_update_firmware(self, location: str, retrieve_date: str, **_: Any) -> dict[str, Any]:
        return {}  # UpdateFirmware.conf has no fields; problems are reported as DownloadFailed

    async def after_update_firmware(
        self, location: str, retrieve_date: str, retries: int | None = None, retry_interval: int | None = None,
        **_: Any,
    ) -> None:
        if self._update is not None and not self._update.done():
            log.info("a new UpdateFirmware replaces the one in progress")
        self._update = spawn(self._tasks, self._update_firmware(location, retrieve_date, retries, retry_interval),
                             "firmware-update", replaces=self._update)

    async def _status(self, status: str) -> None:
        self.firmware_status = status if status in ("Downloading", "Downloaded", "Installing") else "Idle"
        await notify(self._svc, call.FirmwareStatusNotification(status=status))

    async def _update_firmware(self, location: str, retrieve_date: str, retries: int | None,
                               retry_interval: int | None) -> None:
        try:
            check_url(location)
            retrieve_wall = parse_ocpp_time(retrieve_date)
        except (TransferError, ValueError) as exc:
            log.warning("UpdateFirmware location/date refused: %s", exc)
            await self._status("DownloadFailed")
            return
        await wait_until_wall(self._svc, retrieve_wall)
        await self._status("Downloading")
        try:
            file = await download(location, self.download_dir, retries=retries,
                                  retry_interval_s=retry_s(retry_interval))
        except TransferError as exc:
            log.warning("firmware download from %s failed: %s", redact(location), exc)
            await self._status("DownloadFailed")
            return
        try:
            await self._status("Downloaded")
            await install_and_restart(self._svc, file, PLAIN, self._status)
        finally:  # installed (already gone), failed, or replaced by a newer UpdateFirmware
            file.unlink(missing_ok=True)

    # -- GetDiagnostics ---------------------------------------------------------------------------

    async def on_get_diagnostics(self, location: str, **_: Any) -> dict[str, Any]:
        try:
            check_url(location)
        except TransferError as exc:
            log.warning("GetDiagnostics location refused: %s", exc)
            return {}  # no fileName: no diagnostics will be uploaded
        name = archive_name(self._svc.config.station.charge_point_id, self._svc.wall())
        self._diagnostics_names[location] = name
        return {"fileName": name}

    async def after_get_diagnostics(
        self, location: str, retries: int | None = None, retry_interval: int | None = None,
        start_time: str | None = None, stop_time: str | None = None, **_: Any,
    ) -> None:
        name = self._diagnostics_names.pop(location, None)
        if name is None:
            return
        job = self._upload_diagnostics(location, name, retries, retry_interval, start_time, stop_time)
        self._diagnostics = spawn(self._tasks, job, "diagnostics-upload", replaces=self._diagnostics)

    async def _diagnostics_status(self, status: str) -> None:
        self.diagnostics_status = "Uploading" if status == "Uploading" else "Idle"
        await notify(self._svc, call.DiagnosticsStatusNotification(status=status))

    async def _upload_diagnostics(self, location: str, name: str, retries: int | None, retry_interval: int | None,
                                  start_time: str | None, stop_time: str | None) -> None:
        try:
            start, stop = parse_ocpp_time(start_time), parse_ocpp_time(stop_time)
        except ValueError:
            start = stop = None
        # the CSMS was promised a file: an archive that cannot be written (disk full, ...) is UploadFailed
        await upload_log_archive(
            lambda: build_archive(self._svc, name, start, stop, security_log=False), location,
            log_type="diagnostics", report=self._diagnostics_status, retries=retries,
            retry_interval_s=retry_s(retry_interval), logger=log, failure="UploadFailed")
