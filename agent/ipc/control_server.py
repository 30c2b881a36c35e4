"""The control side of the station socket: ``ControlServer`` serves a ``Station`` to one network-side
client (``agent.ipc.station_proxy.StationProxy``) over a Unix socket, in the control process's event loop.

- The socket is created 0600 and appears atomically (bound in a private temporary directory, then renamed
  into place), so no other user ever sees a connectable socket.
- One client at a time: a new connection replaces the old one (a restarted network side must not wait for
  the kernel to notice its predecessor is gone).
- On connect: the facts and every ConnectorView. Then every station event with the affected connector's
  fresh view, a periodic refresh of all views (meter values, lock position), and a reply to each command.
- Token decisions: the station gets a ``RemoteAuthority`` once the client registers one; it asks over the
  socket and waits at most ``ask_timeout_s``; without a client, or when it is slow or answers nonsense, the
  station decides as it does with no authority (the configured allow-list; a stop by another card is
  refused).
- Nothing the client sends can raise out of the server: a frame that is not a valid message is logged once
  per connection and the connection is closed; a command the station refuses gets an error reply.
- Writes never block the loop and never buffer without bound: a client whose unread output exceeds
  ``max_buffer`` bytes is dropped.

The event listener runs inside the station's call chain (which may be the safety path), so it only takes
a snapshot, encodes it and hands the bytes to the transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.authorize import AllowList, AuthDecision
from agent.events import MeterUpdate, SessionStarted, SessionStopped, StationEvent, StatusChanged
from agent.ipc.codec import MAX_LINE_BYTES, CodecError, decode, decode_line, encode, encode_line
from agent.ipc.protocol import ASK_OPS, COMMANDS, PROTOCOL_VERSION, REGISTER_AUTHORITY
from agent.sessions import Session
from hal.tasks import cancel_and_wait

if TYPE_CHECKING:
    from agent.station import Station

log = logging.getLogger("cpagent.ipc.server")

REFRESH_S = 5.0  # views also go out with every event; this refresh only carries slow drifts (meter, lock)
ASK_TIMEOUT_S = 5.0
MAX_BUFFER = 1024 * 1024


class _Client:
    def __init__(self, server: ControlServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.authority = False  # the client answers token decisions
        self.asks: dict[int, asyncio.Future[Any]] = {}
        self.closed = False
        self.tasks: set[asyncio.Task[None]] = set()

    def send(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            data = encode_line(message)
        except (CodecError, TypeError, ValueError) as exc:
            log.error("station socket: cannot send %s: %s", message.get("k"), exc)
            return
        transport = self.writer.transport
        if transport.is_closing():
            self.close("connection closing")
            return
        if transport.get_write_buffer_size() + len(data) > self.server.max_buffer:
            self.close(f"client does not read (over {self.server.max_buffer} bytes unsent)")
            return
        self.writer.write(data)

    def close(self, why: str) -> None:
        if self.closed:
            return
        self.closed = True
        log.warning("station socket: client dropped: %s", why)
        for future in self.asks.values():
            if not future.done():
                future.set_exception(ConnectionError("the client went away"))
        self.writer.transport.abort()


class RemoteAuthority:
    """The station's TokenAuthority while a network side is connected: asks it over the socket."""

    def __init__(self, server: ControlServer, fallback: AllowList) -> None:
        self._server = server
        self._fallback = fallback

    async def authorize(self, id_tag: str) -> AuthDecision:
        answer = await self._server.ask("authorize", {"id_tag": id_tag})
        if isinstance(answer, AuthDecision):
            return answer
        return await self._fallback.authorize(id_tag)

    async def may_stop(self, session: Session, id_tag: str) -> bool:
        answer = await self._server.ask("may_stop", {"session": encode(session), "id_tag": id_tag})
        return answer is True


class ControlServer:
    def __init__(
        self,
        station: Station,
        path: Path | str,
        *,
        refresh_s: float = REFRESH_S,
        ask_timeout_s: float = ASK_TIMEOUT_S,
        max_buffer: int = MAX_BUFFER,
    ) -> None:
        self.station = station
        self.path = Path(path)
        self.refresh_s = refresh_s
        self.ask_timeout_s = ask_timeout_s
        self.max_buffer = max_buffer
        self._server: asyncio.Server | None = None
        self._client: _Client | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._next_ask = 0
        self._subscribed = False
        self._authority = RemoteAuthority(self, AllowList(station.config.allowed_tokens))
        self._authority_registered = False
        self.clients_served = 0  # connections accepted so far (for tests and diagnostics)

    # ----------------------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        sock = _bind_private(self.path)
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_LINE_BYTES)
        if not self._subscribed:
            self.station.subscribe(self._on_event)
            self._subscribed = True
        self._refresher = asyncio.create_task(self._refresh(), name="ipc-refresh")

    async def stop(self) -> None:
        if self._refresher is not None:
            await cancel_and_wait(self._refresher)
        if self._client is not None:
            self._client.close("server stopping")
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    @property
    def connected(self) -> bool:
        return self._client is not None and not self._client.closed

    # ----------------------------------------------------------------------------------- one client
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._client is not None:
            self._client.close("replaced by a new connection")
        client = _Client(self, reader, writer)
        self._client = client
        self.clients_served += 1
        try:
            client.send({
                "k": "hello", "v": PROTOCOL_VERSION, "facts": encode(self.station.facts()),
                "views": [encode(v) for v in self.station.connector_views().values()],
            })
            while not client.closed:
                try:
                    line = await reader.readline()
                except ValueError:  # longer than MAX_LINE_BYTES
                    client.close(f"frame longer than {MAX_LINE_BYTES} bytes")
                    break
                except (ConnectionError, OSError) as exc:
                    client.close(f"read failed: {exc}")
                    break
                if not line:
                    client.close("connection closed by the client")
                    break
                try:
                    message = decode_line(line)
                    await self._handle(client, message)
                except CodecError as exc:
                    client.close(f"bad frame: {exc}")  # logged once: the connection ends with it
        except asyncio.CancelledError:
            client.close("server stopping")
            raise
        except Exception as exc:  # never out of the server; the station keeps running
            log.exception("station socket: client handler failed")
            client.close(f"internal error: {type(exc).__name__}")
        finally:
            for task in list(client.tasks):
                task.cancel()
            if self._client is client:
                self._client = None
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(self, client: _Client, message: dict[str, Any]) -> None:
        kind = message.get("k")
        if kind == "call":
            request_id = message.get("id")
            if not isinstance(request_id, int) or isinstance(request_id, bool):
                raise CodecError("call without an integer id")
            op = message.get("op")
            if op == REGISTER_AUTHORITY:
                client.authority = True
                if not self._authority_registered:
                    self.station.register_authority(self._authority)
                    self._authority_registered = True
                client.send({"k": "reply", "id": request_id, "result": None})
                return
            command = COMMANDS.get(op) if isinstance(op, str) else None
            if command is None or not isinstance(op, str):
                raise CodecError(f"unknown command {str(op)[:40]!r}")
            args = message.get("args")
            if not isinstance(args, dict):
                raise CodecError(f"{op}: args is not an object")
            unknown = set(args) - set(command.params)
            if unknown:
                raise CodecError(f"{op}: no parameter {sorted(unknown)[0][:40]!r}")
            kwargs = {}
            for name, tp in command.params.items():
                if name in args:
                    kwargs[name] = decode(args[name], tp, f"{op}.{name}")
                elif name not in command.defaults:
                    raise CodecError(f"{op}: {name} is missing")
            if op == "signed_reading":  # may wait for the meter: must not hold up later commands
                task = asyncio.create_task(self._run(client, request_id, op, kwargs))
                client.tasks.add(task)
                task.add_done_callback(client.tasks.discard)
            else:
                await self._run(client, request_id, op, kwargs)
        elif kind == "answer":
            request_id = message.get("id")
            future = client.asks.get(request_id) if isinstance(request_id, int) else None
            if future is None or future.done():
                if type(request_id) is int and 0 < request_id <= self._next_ask:
                    return  # too late: the station has decided without it
                raise CodecError("answer to no question asked")
            if "error" in message:
                future.set_exception(RuntimeError(str(message["error"])[:200]))
            else:
                future.set_result(message.get("result"))
        else:
            raise CodecError(f"unknown message kind {str(kind)[:40]!r}")

    async def _run(self, client: _Client, request_id: int, op: str, kwargs: dict[str, Any]) -> None:
        try:
            result = getattr(self.station, op)(**kwargs)
            if asyncio.iscoroutine(result):
                result = await result
            reply: dict[str, Any] = {"k": "reply", "id": request_id, "result": encode(result)}
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not isinstance(exc, (KeyError, RuntimeError, ValueError)):
                log.exception("station command %s failed", op)
            message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
            reply = {"k": "reply", "id": request_id,
                     "error": {"type": type(exc).__name__, "message": message[:500]}}
        client.send(reply)
        if "connector_id" in kwargs and not client.closed:
            # The command's effect, now (events may already have carried it; this covers silent changes).
            self._push_view(client, kwargs["connector_id"])

    def _push_view(self, client: _Client, connector_id: int) -> None:
        try:
            view = self.station.connector_view(connector_id)
        except KeyError:
            return
        client.send({"k": "refresh", "views": [encode(view)]})

    # ----------------------------------------------------------------------------------- events out
    def _on_event(self, event: StationEvent) -> None:
        client = self._client
        if client is None or client.closed:
            return
        try:
            message: dict[str, Any] = {"k": "event", "event": encode(event), "view": None}
            cid = event.connector_id
            # An idle meter reading (2 Hz) goes without a view: the client updates its view from the sample.
            idle_reading = isinstance(event, MeterUpdate) and event.session_ref is None
            if not idle_reading and cid is not None and cid in self.station.connectors:
                message["view"] = encode(self.station.connector_view(cid))
            elif cid == 0 and isinstance(event, StatusChanged):
                message["facts"] = encode(self.station.facts())
            if isinstance(event, (SessionStarted, SessionStopped)) and cid is not None:
                which = "start" if isinstance(event, SessionStarted) else "stop"
                message["signing"] = self.station.signed_reading_pending(cid, event.session.ref, which)
        except Exception:
            log.exception("station socket: cannot encode %s", type(event).__name__)
            return
        client.send(message)

    async def _refresh(self) -> None:
        last: dict[str, Any] | None = None
        last_client: _Client | None = None
        while True:
            await asyncio.sleep(self.refresh_s)
            client = self._client
            if client is None or client.closed:
                continue
            try:
                message = {"k": "refresh", "facts": encode(self.station.facts()),
                           "views": [encode(v) for v in self.station.connector_views().values()]}
                if message != last or client is not last_client:  # nothing changed: nothing to send or decode
                    client.send(message)
                    last, last_client = message, client
            except Exception:
                log.exception("station socket: refresh failed")

    # ----------------------------------------------------------------------------------- token decisions
    async def ask(self, op: str, args: dict[str, Any]) -> Any:
        """The client's answer decoded, or None when there is no client that answers, it is slow (over
        ``ask_timeout_s``) or the answer is unusable."""
        client = self._client
        if client is None or client.closed or not client.authority:
            return None
        self._next_ask += 1
        ask_id = self._next_ask
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        client.asks[ask_id] = future
        try:
            client.send({"k": "ask", "id": ask_id, "op": op, **args})
            raw = await asyncio.wait_for(future, self.ask_timeout_s)
            return decode(raw, ASK_OPS[op], f"answer to {op}")
        except TimeoutError:
            log.warning("station socket: no answer to %s within %.1f s; deciding locally", op, self.ask_timeout_s)
        except ConnectionError:
            log.warning("station socket: the client went away before answering %s; deciding locally", op)
        except (CodecError, RuntimeError) as exc:
            log.warning("station socket: unusable answer to %s (%s); deciding locally", op, exc)
        finally:
            client.asks.pop(ask_id, None)
        return None


def _bind_private(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0600 before anyone can reach it: bound inside a fresh 0700
    directory next to ``path``, chmod-ed, then renamed over ``path`` (atomic; a stale socket is replaced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".ipc-", dir=path.parent))
    tmp = scratch / "s"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(tmp))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        sock.listen(4)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    finally:
        with contextlib.suppress(OSError):
            scratch.rmdir()
    return sock
