"""File transfers for firmware and diagnostics: download over HTTP(S)/FTP(S), upload by HTTP(S) PUT (POST
if the server answers 405) or FTP(S) STOR. URLs come from the CSMS, so only http/https/ftp/ftps pass;
sizes and time are bounded; the blocking urllib/ftplib calls run in worker threads. No shell anywhere.

    path = await download(url, state_dir / "firmware", retries=2, retry_interval_s=30)
    await upload(location, archive_path, retries=1, retry_interval_s=10)
"""

from __future__ import annotations

import asyncio
import ftplib
import io
import logging
import re
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePosixPath
from typing import IO
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

log = logging.getLogger("cpagent.ocpp.v16.transfer")

ALLOWED_SCHEMES = frozenset({"http", "https", "ftp", "ftps"})
MAX_DOWNLOAD_BYTES = 256 * 1024 * 1024
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
TIMEOUT_S = 60.0
CHUNK = 64 * 1024
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")

Sleep = Callable[[float], Awaitable[None]]


class TransferError(Exception):
    """A transfer failed (bad URL, network, server answer, size limit). The message holds no credentials."""


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
                        retry_interval_s: float, sleep: Sleep) -> None:
    """1 + retries attempts, retry_interval_s apart; the last failure is raised."""
    attempts = 1 + max(0, retries or 0)
    for number in range(1, attempts + 1):
        try:
            await attempt()
            return
        except TransferError as exc:
            log.warning("%s: attempt %d/%d failed: %s", what, number, attempts, exc)
            if number == attempts:
                raise
        await sleep(max(0.0, retry_interval_s))


# -- download ----------------------------------------------------------------------------------------


async def download(
    url: str,
    dest_dir: Path,
    *,
    retries: int | None = None,
    retry_interval_s: float = 30.0,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
    timeout_s: float = TIMEOUT_S,
    sleep: Sleep = asyncio.sleep,
) -> Path:
    """Fetch ``url`` into ``dest_dir`` (atomically: a partial file never has the final name)."""
    parts = check_url(url)
    target = dest_dir / file_name_of(url)

    async def attempt() -> None:
        await asyncio.to_thread(_download_blocking, parts, url, target, max_bytes, timeout_s)

    await _with_retries(f"download {redact(url)}", attempt, retries, retry_interval_s, sleep)
    return target


def _download_blocking(parts: SplitResult, url: str, target: Path, max_bytes: int, timeout_s: float) -> None:
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with partial.open("wb") as out:
            if parts.scheme.lower() in ("http", "https"):
                _http_get(url, out, max_bytes, timeout_s)
            else:
                _ftp_get(parts, out, max_bytes, timeout_s)
        partial.replace(target)
    except OSError as exc:
        raise TransferError(f"cannot store the download: {exc.strerror or exc}") from None
    finally:
        partial.unlink(missing_ok=True)


def _opener() -> urllib.request.OpenerDirector:
    # No proxies from the environment and no file:// handler; TLS certificates are verified.
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}),
        urllib.request.HTTPSHandler(context=ssl.create_default_context()),
    )


def _http_get(url: str, out: IO[bytes], max_bytes: int, timeout_s: float) -> None:
    try:
        with _opener().open(urllib.request.Request(url, method="GET"), timeout=timeout_s) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise TransferError(f"file too large ({length} bytes, limit {max_bytes})")
            total = 0
            while chunk := response.read(CHUNK):
                total += len(chunk)
                if total > max_bytes:
                    raise TransferError(f"file too large (over {max_bytes} bytes)")
                out.write(chunk)
    except urllib.error.HTTPError as exc:
        raise TransferError(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise TransferError(f"cannot reach the server: {exc.reason}") from None
    except (OSError, ValueError) as exc:  # timeouts, resets, malformed responses
        raise TransferError(f"HTTP transfer failed: {exc}") from None


def _ftp_client(parts: SplitResult, timeout_s: float) -> ftplib.FTP:
    secure = parts.scheme.lower() == "ftps"
    client = ftplib.FTP_TLS(context=ssl.create_default_context(), timeout=timeout_s) if secure else ftplib.FTP(
        timeout=timeout_s
    )
    client.connect(parts.hostname or "", parts.port or 21)
    client.login(unquote(parts.username or "anonymous"), unquote(parts.password or "anonymous@"))
    if isinstance(client, ftplib.FTP_TLS):
        client.prot_p()
    return client


def _ftp_get(parts: SplitResult, out: IO[bytes], max_bytes: int, timeout_s: float) -> None:
    total = 0

    def write(chunk: bytes) -> None:
        nonlocal total
        total += len(chunk)
        if total > max_bytes:
            raise TransferError(f"file too large (over {max_bytes} bytes)")
        out.write(chunk)

    try:
        client = _ftp_client(parts, timeout_s)
        try:
            client.retrbinary(f"RETR {unquote(parts.path)}", write, blocksize=CHUNK)
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
    sleep: Sleep = asyncio.sleep,
) -> str:
    """Upload ``path`` below the directory URL ``location``; returns the target URL (redacted)."""
    parts = check_url(location)
    target = join_location(location, path.name)

    async def attempt() -> None:
        await asyncio.to_thread(_upload_blocking, parts, location, target, path, max_bytes, timeout_s)

    await _with_retries(f"upload to {redact(target)}", attempt, retries, retry_interval_s, sleep)
    return redact(target)


def _upload_blocking(
    parts: SplitResult, location: str, target: str, path: Path, max_bytes: int, timeout_s: float
) -> None:
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise TransferError(f"{path.name} is too large to upload ({size} bytes, limit {max_bytes})")
        data = path.read_bytes()
    except OSError as exc:
        raise TransferError(f"cannot read {path.name}: {exc.strerror or exc}") from None
    if parts.scheme.lower() in ("http", "https"):
        _http_upload(location, target, path.name, data, timeout_s)
    else:
        _ftp_put(urlsplit(target), data, timeout_s)


def _http_send(request: urllib.request.Request, timeout_s: float) -> None:
    with _opener().open(request, timeout=timeout_s) as response:
        response.read(CHUNK)


def multipart_body(field: str, file_name: str, data: bytes) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data upload with one file."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{file_name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _http_upload(location: str, target: str, file_name: str, data: bytes, timeout_s: float) -> None:
    octets = {"Content-Type": "application/octet-stream"}
    try:
        try:
            _http_send(urllib.request.Request(target, data=data, method="PUT", headers=octets), timeout_s)
            return
        except urllib.error.HTTPError as exc:
            if exc.code != 405:
                raise
        body, content_type = multipart_body("file", file_name, data)
        try:
            _http_send(
                urllib.request.Request(location, data=body, method="POST", headers={"Content-Type": content_type}),
                timeout_s,
            )
        except urllib.error.HTTPError as exc:
            if exc.code != 415:
                raise
            _http_send(urllib.request.Request(target, data=data, method="POST", headers=octets), timeout_s)
    except urllib.error.HTTPError as exc:
        raise TransferError(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise TransferError(f"cannot reach the server: {exc.reason}") from None
    except (OSError, ValueError) as exc:
        raise TransferError(f"HTTP upload failed: {exc}") from None


def _ftp_put(parts: SplitResult, data: bytes, timeout_s: float) -> None:
    try:
        client = _ftp_client(parts, timeout_s)
        try:
            client.storbinary(f"STOR {unquote(parts.path)}", io.BytesIO(data), blocksize=CHUNK)
        finally:
            _ftp_close(client)
    except ftplib.all_errors as exc:
        raise TransferError(f"FTP upload failed: {exc}") from None
