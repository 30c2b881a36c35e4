"""agent.ocpp.v16.transfer against real HTTP and FTP servers on 127.0.0.1; URL checks; retries."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from agent.ocpp.v16.transfer import (
    MAX_RETRIES,
    MIN_RETRY_INTERVAL_S,
    WORKERS,
    TransferError,
    check_url,
    download,
    file_name_of,
    join_location,
    redact,
    upload,
)
from hal.tasks import cancel_and_wait
from tests.agent.ocpp.conftest import eventually
from tests.agent.ocpp.fileservers import HttpFiles, ftp_server, http_server
from tests.agent.ocpp.slowservers import lying_ftp_server, slow_server
from tests.agent.ocpp.test_octt_security import leaf, make_ca


async def no_sleep(_: float) -> None:
    pass


@pytest.mark.parametrize("url", ["file:///etc/passwd", "sftp://h/x", "javascript:x", "http:///nohost", "http://h:x/"])
def test_urls_outside_the_allow_list_are_refused(url: str) -> None:
    with pytest.raises(TransferError):
        check_url(url)


def test_names_and_redaction() -> None:
    assert file_name_of("http://h/a/../fw%20v2.bin?x=1") == "fw_v2.bin"
    assert file_name_of("http://h/") == "firmware.bin"
    assert file_name_of("http://h/..") == "firmware.bin"
    assert join_location("ftp://h/dir", "a.tgz") == "ftp://h/dir/a.tgz"
    assert join_location("ftp://h/dir/", "a.tgz") == "ftp://h/dir/a.tgz"
    assert redact("ftp://u:pw@h:21/x") == "ftp://u:***@h:21/x"
    assert "pw" not in redact("https://u:pw@h/x?token=1")


async def test_http_download_and_put_upload(tmp_path: Path) -> None:
    with http_server() as web:
        web.files["/fw/image.bin"] = b"\x01" * 200_000
        path = await download(web.url("/fw/image.bin"), tmp_path / "dl")
        assert path.read_bytes() == web.files["/fw/image.bin"]
        assert [p.name for p in path.parent.iterdir()] == ["image.bin"]  # no partial files left
        target = await upload(web.url("/up"), path)
        assert target.endswith("/up/image.bin")
        assert web.uploads == {"PUT /up/image.bin": path.read_bytes()}


async def test_http_upload_falls_back_to_multipart_post_on_405(tmp_path: Path) -> None:
    file = tmp_path / "diag.tar.gz"
    file.write_bytes(b"archive-bytes")
    with http_server(HttpFiles(put_status=405)) as web:
        await upload(web.url("/up/"), file)
        body = web.uploads["POST /up/"]
        assert b'filename="diag.tar.gz"' in body and b"archive-bytes" in body


async def test_download_retries_then_fails_and_size_limit(tmp_path: Path) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    with http_server() as web:
        with pytest.raises(TransferError, match="404"):
            await download(web.url("/missing.bin"), tmp_path, retries=2, retry_interval_s=7, sleep=sleep)
        assert slept == [7, 7]  # 1 + 2 attempts
        web.files["/big.bin"] = b"x" * 5000
        with pytest.raises(TransferError, match="too large"):
            await download(web.url("/big.bin"), tmp_path, max_bytes=4096, sleep=no_sleep)
        assert not list(tmp_path.iterdir())  # noqa: ASYNC240


async def test_ftp_download_and_upload(tmp_path: Path) -> None:
    with ftp_server(tmp_path / "ftp") as site:
        (site.root / "fw.bin").write_bytes(b"firmware" * 1000)
        path = await download(site.url("/fw.bin"), tmp_path / "dl")
        assert path.read_bytes() == b"firmware" * 1000
        (site.root / "incoming").mkdir()
        await upload(site.url("/incoming"), path)
        assert (site.root / "incoming" / "fw.bin").read_bytes() == path.read_bytes()
        with pytest.raises(TransferError, match="FTP"):
            await download(site.url("/nope.bin"), tmp_path / "dl", sleep=no_sleep)
        bad = site.url("/fw.bin").replace(site.password, "wrong")
        with pytest.raises(TransferError) as info:
            await download(bad, tmp_path / "dl", sleep=no_sleep)
        assert "wrong" not in str(info.value)


async def test_upload_to_a_closed_port_fails(tmp_path: Path) -> None:
    file = tmp_path / "a.txt"
    file.write_text("x")
    with http_server() as web:
        dead = web.url("/up")
    with pytest.raises(TransferError, match="reach"):
        await upload(dead, file, retries=1, retry_interval_s=0, sleep=no_sleep, timeout_s=2)


# -- hostile servers and CSMS parameters (issue 11 item 15) --------------------------------------------


def transfer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("transfer")]


async def test_download_shorter_than_its_content_length_fails_and_leaves_no_file(tmp_path: Path) -> None:
    """RFC 9112 §6.3: a message whose connection closes before Content-Length octets arrived is incomplete."""
    with slow_server("short", body=b"x" * 600, announced=1000) as web:
        with pytest.raises(TransferError, match="incomplete: 600 of 1000"):
            await download(web.url(), tmp_path / "dl", sleep=no_sleep)
    assert not list((tmp_path / "dl").iterdir())


async def test_cancelled_download_stops_its_worker_and_leaves_no_file(tmp_path: Path) -> None:
    for mode in ("drip", "silent"):
        with slow_server(mode) as web:
            task = asyncio.create_task(download(web.url(), tmp_path / mode, timeout_s=30))
            await eventually(lambda: web.open_connections == 1, 5, f"{mode}: the download connected")
            await asyncio.sleep(0.3)
            task.cancel()
            started = time.monotonic()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert time.monotonic() - started < 2  # the worker noticed at once (socket shut down)
            await eventually(lambda: web.open_connections == 0, 2, f"{mode}: the worker closed its connection")
            assert not list((tmp_path / mode).iterdir())  # no partial file


async def test_total_deadline_of_a_download_and_an_upload(tmp_path: Path) -> None:
    file = tmp_path / "diag.tar.gz"
    file.write_bytes(b"a" * 1000)
    with slow_server("drip") as drip, slow_server("silent") as silent:
        started = time.monotonic()
        with pytest.raises(TransferError, match="time limit"):
            await download(drip.url(), tmp_path / "dl", deadline_s=1.0, timeout_s=30, sleep=no_sleep)
        with pytest.raises(TransferError, match="time limit"):
            await upload(silent.url("/up/"), file, deadline_s=1.0, timeout_s=30, sleep=no_sleep)
        assert time.monotonic() - started < 4
        await eventually(lambda: drip.open_connections == 0 and silent.open_connections == 0, 2, "closed")
    assert not list((tmp_path / "dl").iterdir())


async def test_transfers_never_occupy_the_default_executor(tmp_path: Path) -> None:
    """Six drip servers once filled the loop's default executor (min(32, cores + 4) threads) and the
    websocket redial's address lookup waited 29 s. Transfers use their own bounded executor."""
    loop = asyncio.get_running_loop()
    count = min(32, (os.cpu_count() or 1) + 4) + 2
    with slow_server("drip") as web:
        tasks = [asyncio.create_task(download(web.url(f"/fw{n}.bin"), tmp_path, timeout_s=30)) for n in range(count)]
        await eventually(lambda: web.open_connections == min(count, WORKERS), 5, "downloads connected")
        started = time.monotonic()
        await asyncio.wait_for(loop.getaddrinfo("localhost", 80), 2)
        assert time.monotonic() - started < 1
        assert len(transfer_threads()) <= WORKERS
        await cancel_and_wait(*tasks)
        await eventually(lambda: web.open_connections == 0, 3, "every worker stopped")
    assert not list(tmp_path.iterdir())  # noqa: ASYNC240


async def test_retries_are_capped_and_spaced(tmp_path: Path) -> None:
    """retries 10^9 with retryInterval 0 once made 129 attempts in 5 s."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    with slow_server("missing") as web:
        with pytest.raises(TransferError, match="404"):
            await asyncio.wait_for(download(web.url(), tmp_path, retries=10**9, retry_interval_s=0, sleep=sleep), 10)
        assert web.requests == 1 + MAX_RETRIES
        assert slept == [MIN_RETRY_INTERVAL_S] * MAX_RETRIES
        task = asyncio.create_task(download(web.url(), tmp_path, retries=10**9, retry_interval_s=0))
        await asyncio.sleep(2.5 * MIN_RETRY_INTERVAL_S)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert web.requests - (1 + MAX_RETRIES) <= 3


@pytest.mark.parametrize("path", ["/fw%0D%0ADELE%20x.bin", "/fw%0a.bin", "/fw%00.bin"])
async def test_control_characters_in_an_ftp_url_are_a_transfer_error(tmp_path: Path, path: str) -> None:
    """A CR/LF in the path once raised ValueError from ftplib outside the retry loop (the job died with the
    status left at Downloading). Now it is refused like any bad URL, before anything is sent."""
    with ftp_server(tmp_path / "ftp") as site:
        (site.root / "fw.bin").write_bytes(b"firmware")
        url = site.url(path)
        with pytest.raises(TransferError, match="control characters"):
            check_url(url)
        with pytest.raises(TransferError):
            await download(url, tmp_path / "dl", sleep=no_sleep)
        with pytest.raises(TransferError):
            await upload(site.url("/in%0d%0a/"), site.root / "fw.bin", sleep=no_sleep)
        bad_password = f"ftp://{site.user}:x%0d%0aDELE%20fw.bin@127.0.0.1:{site.port}/fw.bin"
        with pytest.raises(TransferError, match="control characters"):
            await download(bad_password, tmp_path / "dl", sleep=no_sleep)
        assert (site.root / "fw.bin").exists()
        for raw in ("http://127.0.0.1/a\r\nb", "http://127.0.0.1/a b", "http://127.0.0.1/a\x00"):
            with pytest.raises(TransferError):
                check_url(raw)


async def test_ftp_download_shorter_than_its_size_fails(tmp_path: Path) -> None:
    """RFC 3659 §4: SIZE is the number of octets a RETR in TYPE I transfers; fewer means a cut transfer."""
    root = tmp_path / "ftp"
    root.mkdir()
    (root / "fw.bin").write_bytes(b"f" * 600)
    with lying_ftp_server(root, extra=400) as port:
        with pytest.raises(TransferError, match="incomplete: 600 of 1000"):
            await download(f"ftp://cp:ftp-secret@127.0.0.1:{port}/fw.bin", tmp_path / "dl", sleep=no_sleep)
    assert not list((tmp_path / "dl").iterdir())


async def test_https_download_verifies_the_server_certificate(tmp_path: Path) -> None:
    """Downloads over https go through the transfer's own connection classes and still verify the server's
    certificate: one from an unknown CA is refused."""
    ca = make_ca("Unknown CA")
    server_cert, server_key = leaf(ca, "127.0.0.1", server=True).write(tmp_path, "server")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server_cert, server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        raw, _ = listener.accept()
        with raw, contextlib.suppress(OSError), context.wrap_socket(raw, server_side=True) as tls:
            tls.recv(4096)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with pytest.raises(TransferError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            await download(f"https://127.0.0.1:{port}/fw.bin", tmp_path / "dl", sleep=no_sleep, timeout_s=5)
    finally:
        listener.close()
        thread.join(5)
