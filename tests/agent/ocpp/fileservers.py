"""Real file servers on 127.0.0.1 for transfer tests: an HTTP server (GET files, PUT/POST uploads) and a
pyftpdlib FTP server, each in a thread on an ephemeral port."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer


@dataclass
class HttpFiles:
    files: dict[str, bytes] = field(default_factory=dict)  # GET path -> body
    uploads: dict[str, bytes] = field(default_factory=dict)  # "PUT /path" or "POST /path" -> body
    put_status: int = 201  # 405 makes clients fall back to POST
    upload_status: int | None = None  # e.g. 500: every upload fails
    upload_attempts: int = 0  # PUT and POST requests received
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def _handler(state: HttpFiles) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _upload(self, method: str, status: int) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            state.upload_attempts += 1
            if state.upload_status is not None:
                status = state.upload_status
            elif method == "PUT" and state.put_status != 201:
                status = state.put_status
            else:
                state.uploads[f"{method} {self.path}"] = body
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_PUT(self) -> None:
            self._upload("PUT", 201)

        def do_POST(self) -> None:
            self._upload("POST", 200)

    return Handler


@contextmanager
def http_server(state: HttpFiles | None = None) -> Iterator[HttpFiles]:
    state = state or HttpFiles()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class FtpSite:
    root: Path
    user: str
    password: str
    port: int = 0

    def url(self, path: str) -> str:
        return f"ftp://{self.user}:{self.password}@127.0.0.1:{self.port}{path}"


@contextmanager
def ftp_server(root: Path, user: str = "cp", password: str = "ftp-secret") -> Iterator[FtpSite]:
    root.mkdir(parents=True, exist_ok=True)
    authorizer = DummyAuthorizer()
    authorizer.add_user(user, password, str(root), perm="elradfmw")

    class Handler(FTPHandler):
        pass

    Handler.authorizer = authorizer
    Handler.auth_failed_timeout = 0.05  # pyftpdlib delays a failed login by 3 s by default
    Handler.passive_ports = None
    Handler.masquerade_address = None
    server = FTPServer(("127.0.0.1", 0), Handler)
    site = FtpSite(root, user, password, server.socket.getsockname()[1])
    with serving(server):
        yield site


@contextmanager
def serving(server: FTPServer) -> Iterator[None]:
    """Run a pyftpdlib server in a thread for the block. Its loop is not thread-safe: it is stopped from its
    own thread."""
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            server.serve_forever(timeout=0.05, blocking=False, handle_exit=False)
        server.close_all()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
