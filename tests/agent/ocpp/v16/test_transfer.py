"""agent.ocpp.v16.transfer against real HTTP and FTP servers on 127.0.0.1; URL checks; retries."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.ocpp.v16.transfer import (
    TransferError,
    check_url,
    download,
    file_name_of,
    join_location,
    redact,
    upload,
)
from tests.agent.ocpp.fileservers import HttpFiles, ftp_server, http_server


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
