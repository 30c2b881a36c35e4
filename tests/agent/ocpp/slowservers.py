"""Misbehaving HTTP servers on 127.0.0.1 for transfer tests, each connection in its own thread:

- ``drip``: 200 with a large Content-Length, then one byte every ``interval_s`` (never finishes);
- ``short``: 200 with Content-Length ``announced`` but only ``body`` sent, then the connection closes;
- ``silent``: reads the request and never answers;
- ``missing``: 404 at once.

The server counts requests and knows which connections are still open, so a test can see a client's
worker really give up (its socket closes) after a cancel."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.agent.ocpp.fileservers import serving


@dataclass
class SlowServer:
    mode: str  # drip | short | silent | missing
    body: bytes = b"x" * 600
    announced: int = 1000
    interval_s: float = 0.05
    port: int = 0
    requests: int = 0
    open_connections: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str = "/fw.bin") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _serve(self, conn: socket.socket) -> None:
        with self._lock:
            self.open_connections += 1
        try:
            conn.settimeout(0.2)
            request = b""
            while b"\r\n\r\n" not in request and not self._stop.is_set():
                try:
                    data = conn.recv(4096)
                except TimeoutError:
                    continue
                if not data:
                    return
                request += data
            with self._lock:
                self.requests += 1
            if self.mode == "missing":
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            if self.mode == "silent":
                while not self._stop.is_set():  # until the client closes its end
                    try:
                        if not conn.recv(65536):
                            return
                    except TimeoutError:
                        continue
                return
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {self.announced}\r\nConnection: close\r\n\r\n"
            conn.sendall(head.encode())
            if self.mode == "short":
                conn.sendall(self.body)
                return
            while not self._stop.is_set():  # drip
                conn.sendall(b"x")
                time.sleep(self.interval_s)
        except OSError:
            return  # the client went away
        finally:
            conn.close()
            with self._lock:
                self.open_connections -= 1


@contextmanager
def slow_server(mode: str, **options: object) -> Iterator[SlowServer]:
    server = SlowServer(mode, **options)  # type: ignore[arg-type]
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    server.port = listener.getsockname()[1]
    threads: list[threading.Thread] = []

    def accept() -> None:
        while not server._stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=server._serve, args=(conn,), daemon=True)
            thread.start()
            threads.append(thread)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield server
    finally:
        server._stop.set()
        acceptor.join(5)
        listener.close()
        for thread in threads:
            thread.join(5)


@contextmanager
def lying_ftp_server(root: Path, extra: int = 400, user: str = "cp", password: str = "ftp-secret") -> Iterator[int]:
    """A pyftpdlib FTP server whose SIZE answer is ``extra`` bytes more than the file has (as if the
    transfer had been cut short); yields its port."""
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import FTPServer

    authorizer = DummyAuthorizer()
    authorizer.add_user(user, password, str(root), perm="elradfmw")

    class Handler(FTPHandler):
        def ftp_SIZE(self, path: str) -> None:
            self.respond(f"213 {self.fs.getsize(path) + extra}")

    Handler.authorizer = authorizer
    server = FTPServer(("127.0.0.1", 0), Handler)
    with serving(server):
        yield server.socket.getsockname()[1]
