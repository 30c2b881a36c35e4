"""File transfers for firmware and diagnostics: download over HTTP(S)/FTP(S), upload by HTTP(S) PUT (POST
if the server answers 405) or FTP(S) STOR. URLs come from the CSMS, so only http/https/ftp/ftps without
control characters pass. No shell anywhere.

    path = await download(url, state_dir / "firmware", retries=2, retry_interval_s=30)
    await upload(location, archive_path, retries=1, retry_interval_s=10)

Bounds, whatever the CSMS asks (a hostile one may send retries 10^9, interval 0, or point at a server that
drips one byte a minute):

- the blocking urllib/ftplib calls run in this module's own executor of ``WORKERS`` threads, never in the
  event loop's default executor (which the websocket's address lookups need);
- ``retries`` is capped at ``MAX_RETRIES`` (at most 11 attempts) and attempts are at least
  ``MIN_RETRY_INTERVAL_S`` apart;
- one transfer, all attempts and waits included, ends after ``deadline_s`` (``TOTAL_DEADLINE_S``), every
  socket operation after ``timeout_s``;
- a cancelled or timed-out transfer really stops: the worker checks a stop flag before every chunk and its
  sockets are shut down, so a blocked read returns at once;
- a download shorter (or longer) than its announced size (HTTP Content-Length, FTP SIZE) fails;
- a failed or cancelled download leaves no file behind; download/upload raise only TransferError (or
  CancelledError).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ftplib
import http.client
import io
import logging
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any, TypeVar
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

log = logging.getLogger("cpagent.ocpp.v16.transfer")

ALLOWED_SCHEMES = frozenset({"http", "https", "ftp", "ftps"})
MAX_DOWNLOAD_BYTES = 256 * 1024 * 1024
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
TIMEOUT_S = 60.0  # each socket operation (connect, one read, one send)
TOTAL_DEADLINE_S = 3600.0  # one download/upload with all its attempts and the waits between them
MAX_RETRIES = 10  # a larger ``retries`` is capped (1 + 10 attempts)
MIN_RETRY_INTERVAL_S = 1.0  # a smaller ``retryInterval`` (e.g. 0) waits this long between attempts
WORKERS = 4  # threads of the transfer executor: firmware, signed firmware, diagnostics, log at once
STOP_WAIT_S = 5.0  # how long a cancelled transfer waits for its worker to notice
CHUNK = 64 * 1024
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
_RAW_BAD = re.compile(r"[\x00-\x20\x7f]")  # control characters and spaces in the URL as sent
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # control characters once %-decoded (FTP sends them raw)

Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")


class TransferError(Exception):
    """A transfer failed (bad URL, network, server answer, size limit). The message holds no credentials."""


_executor: concurrent.futures.ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def executor() -> concurrent.futures.ThreadPoolExecutor:
    """The transfers' own bounded thread pool (shared by all transfers of the process)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="transfer")
        return _executor


class _Job:
    """One transfer's deadline and stop switch, shared by the event loop and the worker thread."""

    def __init__(self, deadline_s: float) -> None:
        self.limit_s = deadline_s
        self.deadline = time.monotonic() + deadline_s
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.reason = ""

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def stop(self, reason: str) -> None:
        """From any thread: make the worker give up at its next chunk and wake it from a blocked read."""
        with self._lock:
            if not self._stopped.is_set():
                self.reason = reason
                self._stopped.set()
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shutdown(sock)

    def register(self, sock: socket.socket) -> None:
        """A socket the worker opened: shut down when the job stops."""
        with self._lock:
            if not self._stopped.is_set():
                self._sockets = [s for s in self._sockets if s.fileno() != -1]
                self._sockets.append(sock)
                return
        _shutdown(sock)

    def check(self) -> None:
        """In the worker, before every chunk: TransferError once the job is stopped or out of time."""
        if self._stopped.is_set():
            raise TransferError(self.reason)
        if self.remaining() <= 0:
            self.stop(f"time limit of {self.limit_s:.0f} s exceeded")
            raise TransferError(self.reason)

    def socket_timeout(self, timeout_s: float) -> float:
        self.check()
        return max(0.05, min(timeout_s, self.remaining()))


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


async def _in_worker(job: _Job, what: str, function: Callable[..., T], *args: Any) -> T:
    """Run ``function(*args)`` in the transfer executor; stop it when the caller is cancelled or the job's
    deadline passes, and wait (bounded) until the worker has really given up."""
    future = asyncio.get_running_loop().run_in_executor(executor(), _guarded, job, what, function, *args)
    try:
        await asyncio.wait({future}, timeout=max(0.0, job.remaining()) + 0.5)
    except asyncio.CancelledError:
        job.stop("cancelled")
        await _settle(future)
        raise
    if not future.done():
        job.stop(f"time limit of {job.limit_s:.0f} s exceeded")
        await _settle(future)
        if not future.done():
            raise TransferError(job.reason)
    return future.result()


async def _settle(future: asyncio.Future[Any]) -> None:
    done, _ = await asyncio.wait({future}, timeout=STOP_WAIT_S)
    if not done:
        log.warning("a stopped transfer's worker is still running after %.0f s", STOP_WAIT_S)
    future.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no "never retrieved" log


def _guarded(job: _Job, what: str, function: Callable[..., T], *args: Any) -> T:
    """In the worker: every failure becomes a TransferError (a bug or a strange server answer must end
    in a failure status, never in an exception the feature does not expect)."""
    try:
        return function(*args)
    except TransferError:
        if job.stopped or job.remaining() <= 0:  # a socket timeout clipped to the deadline: say so
            job.check()
            raise TransferError(job.reason) from None
        raise
    except Exception as exc:
        if job.stopped or job.remaining() <= 0:
            job.check()
            raise TransferError(job.reason) from None
        log.debug("%s: unexpected %s", what, type(exc).__name__, exc_info=True)
        raise TransferError(f"{what} failed: {type(exc).__name__}: {exc}") from None


def check_url(url: str) -> SplitResult:
    """Parse a CSMS-given URL; TransferError unless it is http/https/ftp/ftps with a host."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a non-numeric port
    except ValueError as exc:
        raise TransferError(f"unreadable URL: {exc}") from None
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        raise TransferError(f"URL scheme {parts.scheme!r} not allowed (only {', '.join(sorted(ALLOWED_SCHEMES))})")
    if not parts.hostname:
        raise TransferError("URL has no host")
    decoded = (unquote(parts.username or ""), unquote(parts.password or ""), unquote(parts.path))
    if _RAW_BAD.search(url.strip()) or any(_CONTROL.search(text) for text in decoded):
        raise TransferError("URL contains control characters or spaces")
    return parts


def redact(url: str) -> str:
    """The URL without its password, for logs and messages."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unreadable URL>"
    netloc = (f"{parts.username}:***@" if parts.password is not None else "") + host + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def file_name_of(url: str, default: str = "firmware.bin") -> str:
    """A safe local file name from the URL's last path segment."""
    name = _SAFE_NAME.sub("_", PurePosixPath(unquote(urlsplit(url).path)).name).lstrip(".")
    return name[:100] or default


def join_location(location: str, name: str) -> str:
    """GetDiagnostics/GetLog location is a directory: the file goes below it."""
    parts = urlsplit(location)
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return urlunsplit((parts.scheme, parts.netloc, path + name, parts.query, ""))


async def _with_retries(what: str, attempt: Callable[[], Awaitable[None]], retries: int | None,
                        retry_interval_s: float, sleep: Sleep, job: _Job) -> None:
    """1 + retries attempts (retries capped at MAX_RETRIES), at least MIN_RETRY_INTERVAL_S apart, all
    within the job's deadline; the last failure is raised."""
    attempts = 1 + min(MAX_RETRIES, max(0, retries or 0))
    interval = max(MIN_RETRY_INTERVAL_S, retry_interval_s)
    for number in range(1, attempts + 1):
        try:
            await attempt()
            return
        except TransferError as exc:
            log.warning("%s: attempt %d/%d failed: %s", what, number, attempts, exc)
            if number == attempts or job.stopped:
                raise
            if job.remaining() < interval:
                raise TransferError(f"{exc} (no time left for attempt {number + 1} within the "
                                    f"{job.limit_s:.0f} s limit)") from None
        await sleep(interval)


# -- download ----------------------------------------------------------------------------------------


async def download(
    url: str,
    dest_dir: Path,
    *,
    retries: int | None = None,
    retry_interval_s: float = 30.0,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
    timeout_s: float = TIMEOUT_S,
    deadline_s: float = TOTAL_DEADLINE_S,
    sleep: Sleep = asyncio.sleep,
) -> Path:
    """Fetch ``url`` into ``dest_dir`` (atomically: a partial file never has the final name). On failure
    or cancellation no file of this download is left in ``dest_dir``."""
    parts = check_url(url)
    target = dest_dir / file_name_of(url)
    job = _Job(deadline_s)
    what = f"download {redact(url)}"

    async def attempt() -> None:
        await _in_worker(job, what, _download_blocking, job, parts, url, target, max_bytes, timeout_s)

    try:
        await _with_retries(what, attempt, retries, retry_interval_s, sleep, job)
    except asyncio.CancelledError:
        target.unlink(missing_ok=True)  # the worker may have finished just before it noticed
        raise
    return target


def _download_blocking(job: _Job, parts: SplitResult, url: str, target: Path, max_bytes: int,
                       timeout_s: float) -> None:
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with partial.open("wb") as out:
            if parts.scheme.lower() in ("http", "https"):
                _http_get(job, url, out, max_bytes, timeout_s)
            else:
                _ftp_get(job, parts, out, max_bytes, timeout_s)
        job.check()  # a stopped job never puts its file in place
        partial.replace(target)
    except OSError as exc:
        raise TransferError(f"cannot store the download: {exc.strerror or exc}") from None
    finally:
        partial.unlink(missing_ok=True)


class _HttpConnection(http.client.HTTPConnection):
    job: _Job

    def connect(self) -> None:
        super().connect()
        self.job.register(self.sock)


class _HttpsConnection(http.client.HTTPSConnection):
    job: _Job

    def connect(self) -> None:
        super().connect()
        self.job.register(self.sock)


class _HttpHandler(urllib.request.HTTPHandler):
    """Connections whose sockets the job can shut down."""

    def __init__(self, job: _Job) -> None:
        super().__init__()
        self._job = job

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        def connection(host: str, **kwargs: Any) -> http.client.HTTPConnection:
            conn = _HttpConnection(host, **kwargs)
            conn.job = self._job
            return conn

        return self.do_open(connection, req)


class _HttpsHandler(urllib.request.HTTPSHandler):
    def __init__(self, job: _Job) -> None:
        self._tls = ssl.create_default_context()  # certificates are verified
        super().__init__(context=self._tls)
        self._job = job

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        def connection(host: str, **kwargs: Any) -> http.client.HTTPConnection:
            conn = _HttpsConnection(host, context=self._tls, **kwargs)
            conn.job = self._job
            return conn

        return self.do_open(connection, req)


def _opener(job: _Job) -> urllib.request.OpenerDirector:
    # No proxies from the environment; redirects only to http/https/ftp (urllib refuses file://).
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), _HttpHandler(job), _HttpsHandler(job))


def _announced_length(response: http.client.HTTPResponse) -> int | None:
    length = response.headers.get("Content-Length")
    if length is None or response.headers.get("Transfer-Encoding"):
        return None
    if not (length.isascii() and length.strip().isdigit()):
        raise TransferError(f"unreadable Content-Length {length[:40]!r}")
    return int(length)


def _http_get(job: _Job, url: str, out: IO[bytes], max_bytes: int, timeout_s: float) -> None:
    try:
        request = urllib.request.Request(url, method="GET")
        with _opener(job).open(request, timeout=job.socket_timeout(timeout_s)) as response:
            expected = _announced_length(response)
            if expected is not None and expected > max_bytes:
                raise TransferError(f"file too large ({expected} bytes, limit {max_bytes})")
            total = 0
            while True:
                job.check()
                chunk = response.read1(CHUNK)  # returns what one read brings: a drip cannot hold it
                if not chunk:
                    break
                total += len(chunk)
                if total > max_bytes:
                    raise TransferError(f"file too large (over {max_bytes} bytes)")
                out.write(chunk)
            if expected is not None and total != expected:
                raise TransferError(f"download incomplete: {total} of {expected} bytes")
    except urllib.error.HTTPError as exc:
        raise TransferError(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise TransferError(f"cannot reach the server: {exc.reason}") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:  # timeouts, resets, malformed responses
        raise TransferError(f"HTTP transfer failed: {type(exc).__name__} {exc}") from None


def _ftp_client(job: _Job, parts: SplitResult, timeout_s: float) -> ftplib.FTP:
    secure = parts.scheme.lower() == "ftps"
    timeout = job.socket_timeout(timeout_s)
    client = ftplib.FTP_TLS(context=ssl.create_default_context(), timeout=timeout) if secure else ftplib.FTP(
        timeout=timeout
    )
    original = client.ntransfercmd

    def ntransfercmd(cmd: str, rest: int | str | None = None) -> tuple[socket.socket, int | None]:
        job.check()
        conn, size = original(cmd, rest)
        job.register(conn)  # the data connection
        return conn, size

    client.ntransfercmd = ntransfercmd  # type: ignore[method-assign]
    try:
        client.connect(parts.hostname or "", parts.port or 21)
        if client.sock is not None:
            job.register(client.sock)
        client.login(unquote(parts.username or "anonymous"), unquote(parts.password or "anonymous@"))
        if isinstance(client, ftplib.FTP_TLS):
            client.prot_p()
    except BaseException:
        client.close()
        raise
    return client


def _ftp_size(client: ftplib.FTP, path: str) -> int | None:
    """The file's size by SIZE (RFC 3659) in binary mode, None when the server does not say."""
    try:
        client.voidcmd("TYPE I")
        return client.size(path)
    except (ftplib.error_perm, ftplib.error_reply, ValueError):
        return None


def _ftp_get(job: _Job, parts: SplitResult, out: IO[bytes], max_bytes: int, timeout_s: float) -> None:
    total = 0

    def write(chunk: bytes) -> None:
        nonlocal total
        job.check()
        total += len(chunk)
        if total > max_bytes:
            raise TransferError(f"file too large (over {max_bytes} bytes)")
        out.write(chunk)

    try:
        client = _ftp_client(job, parts, timeout_s)
        try:
            path = unquote(parts.path)
            expected = _ftp_size(client, path)
            if expected is not None and expected > max_bytes:
                raise TransferError(f"file too large ({expected} bytes, limit {max_bytes})")
            client.retrbinary(f"RETR {path}", write, blocksize=CHUNK)
            if expected is not None and total != expected:
                raise TransferError(f"download incomplete: {total} of {expected} bytes")
        finally:
            _ftp_close(client)
    except ftplib.all_errors as exc:
        raise TransferError(f"FTP transfer failed: {exc}") from None


def _ftp_close(client: ftplib.FTP) -> None:
    try:
        client.quit()
    except ftplib.all_errors:
        client.close()


# -- upload ------------------------------------------------------------------------------------------


async def upload(
    location: str,
    path: Path,
    *,
    retries: int | None = None,
    retry_interval_s: float = 30.0,
    max_bytes: int = MAX_UPLOAD_BYTES,
    timeout_s: float = TIMEOUT_S,
    deadline_s: float = TOTAL_DEADLINE_S,
    sleep: Sleep = asyncio.sleep,
) -> str:
    """Upload ``path`` below the directory URL ``location``; returns the target URL (redacted)."""
    parts = check_url(location)
    target = join_location(location, path.name)
    job = _Job(deadline_s)
    what = f"upload to {redact(target)}"

    async def attempt() -> None:
        await _in_worker(job, what, _upload_blocking, job, parts, location, target, path, max_bytes, timeout_s)

    await _with_retries(what, attempt, retries, retry_interval_s, sleep, job)
    return redact(target)


def _upload_blocking(
    job: _Job, parts: SplitResult, location: str, target: str, path: Path, max_bytes: int, timeout_s: float
) -> None:
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise TransferError(f"{path.name} is too large to upload ({size} bytes, limit {max_bytes})")
        data = path.read_bytes()
    except OSError as exc:
        raise TransferError(f"cannot read {path.name}: {exc.strerror or exc}") from None
    if parts.scheme.lower() in ("http", "https"):
        _http_upload(job, location, target, path.name, data, timeout_s)
    else:
        _ftp_put(job, urlsplit(target), data, timeout_s)


def _chunks(job: _Job, data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), CHUNK):
        job.check()
        yield data[start:start + CHUNK]


def _http_send(job: _Job, url: str, method: str, data: bytes, content_type: str, timeout_s: float) -> None:
    headers = {"Content-Type": content_type, "Content-Length": str(len(data))}
    request = urllib.request.Request(url, data=_chunks(job, data), method=method, headers=headers)
    with _opener(job).open(request, timeout=job.socket_timeout(timeout_s)) as response:
        response.read1(CHUNK)


def multipart_body(field: str, file_name: str, data: bytes) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data upload with one file."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{file_name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _http_upload(job: _Job, location: str, target: str, file_name: str, data: bytes, timeout_s: float) -> None:
    octets = "application/octet-stream"
    try:
        try:
            _http_send(job, target, "PUT", data, octets, timeout_s)
            return
        except urllib.error.HTTPError as exc:
            if exc.code != 405:
                raise
        body, content_type = multipart_body("file", file_name, data)
        try:
            _http_send(job, location, "POST", body, content_type, timeout_s)
        except urllib.error.HTTPError as exc:
            if exc.code != 415:
                raise
            _http_send(job, target, "POST", data, octets, timeout_s)
    except urllib.error.HTTPError as exc:
        raise TransferError(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise TransferError(f"cannot reach the server: {exc.reason}") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise TransferError(f"HTTP upload failed: {type(exc).__name__} {exc}") from None


def _ftp_put(job: _Job, parts: SplitResult, data: bytes, timeout_s: float) -> None:
    try:
        client = _ftp_client(job, parts, timeout_s)
        try:
            client.storbinary(f"STOR {unquote(parts.path)}", io.BytesIO(data), blocksize=CHUNK,
                              callback=lambda _block: job.check())
        finally:
            _ftp_close(client)
    except ftplib.all_errors as exc:
        raise TransferError(f"FTP upload failed: {exc}") from None


async def upload_log_archive(
    build: Callable[[], Awaitable[Path]],
    location: str,
    *,
    log_type: str,
    report: Callable[[str], Awaitable[None]],
    retries: int | None,
    retry_interval_s: float,
    logger: logging.Logger,
    failure: str = "UploadFailure",
) -> None:
    """GetLog's upload for both OCPP versions (and 1.6 GetDiagnostics, whose ``failure`` is "UploadFailed"):
    build the archive, report Uploading, upload it, report Uploaded or ``failure`` (also when the archive
    cannot be written); the archive is removed afterwards."""
    try:
        path = await build()
    except OSError as exc:
        logger.error("%s archive could not be written: %s", log_type, exc)
        await report(failure)
        return
    await report("Uploading")
    try:
        target = await upload(location, path, retries=retries, retry_interval_s=retry_interval_s)
    except TransferError as exc:
        logger.warning("%s upload to %s failed: %s", log_type, redact(location), exc)
        await report(failure)
        return
    finally:
        with contextlib.suppress(OSError):
            await asyncio.to_thread(path.unlink, True)
    logger.info("%s uploaded to %s", log_type, target)
    await report("Uploaded")
