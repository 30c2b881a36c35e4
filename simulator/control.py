"""Client of a running rig's control socket (DIR/ctl.sock): one JSON request, one JSON reply."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any


class RigUnreachable(Exception):
    pass


def send(directory: Path, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    path = directory / "ctl.sock"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(json.dumps(request).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
    except OSError as exc:
        raise RigUnreachable(f"no simulator at {path}: {exc.strerror or exc}") from exc
    reply: dict[str, Any] = json.loads(buf)
    return reply


async def send_async(directory: Path, request: dict[str, Any]) -> dict[str, Any]:
    import asyncio

    return await asyncio.to_thread(send, directory, request)
