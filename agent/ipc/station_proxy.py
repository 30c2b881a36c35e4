"""The network side of the station socket: ``StationProxy`` implements ``StationPort`` over the Unix socket
a ``ControlServer`` serves (``agent.ipc.protocol`` describes the messages).

- State out is a mirror: the facts and every ConnectorView arrive on connect, with every event and with the
  periodic refresh, so ``facts()``, ``connector_view()`` and ``connector_views()`` stay synchronous and cheap.
- Events: ``subscribe()`` listeners are called for each pushed event, after the mirror took the view that
  came with it (a listener that reads ``connector_view`` sees the state the event describes).
- Commands: the coroutines of StationPort (``unlock``, ``clear_faults``, ``manual_relay``, ``manual_pwm``,
  ``signed_reading``) send the call and await the control side's reply (``command_timeout_s``); an error
  reply is raised as KeyError / RuntimeError / ValueError or ``StationCommandError``. The plain commands are
  sent in order without waiting; their results come from the mirror, where they are exact:
  ``begin_authorized`` is False exactly when the connector's reservation does not admit the idTag (the
  proxy updates the mirrored reservation as soon as it sends ``set_reservation``); ``stop_session`` returns
  the running session being stopped (None if there is none); its finished record comes with
  ``SessionStopped``. An error reply to such a command is logged.
- Token decisions the station asks for go to the authority registered here.
- ``shared``: its own connection to the state database, its own SessionStore, EventLog and SystemClock.
- While the control side is not connected: every connector's view says Faulted with ``Fault.INTERNAL``
  (a StatusChanged is raised for each, so OCPP reports InternalError), ``facts().tasks`` carries a dead
  ``control-link`` task, and commands raise ``StationUnavailable`` at once. The proxy reconnects with
  back-off; the fresh views replace the stale ones (a StatusChanged for each connector whose status or
  faults differ), and the authority and the last connector settings, current limits and display lines
  given are sent again (a restarted control side starts without them).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent import db
from agent.eventlog import EventLog
from agent.events import ConnectorStatus, EventListener, MeterUpdate, StationEvent, StatusChanged, StopReason
from agent.ipc.codec import (
    MAX_LINE_BYTES,
    STATION_EVENT,
    CodecError,
    decode,
    decode_line,
    encode,
    encode_line,
)
from agent.ipc.protocol import (
    COMMANDS,
    ERROR_TYPES,
    PROTOCOL_VERSION,
    REGISTER_AUTHORITY,
    StationCommandError,
    StationUnavailable,
)
from agent.sessions import Session, SessionStore
from agent.station_api import (
    ConnectorReservation,
    ConnectorSettings,
    ConnectorView,
    EnergyHold,
    NetworkDiagnostics,
    OperatorMessage,
    SharedResources,
    StationFacts,
    TaskView,
    TokenAuthority,
)
from hal.clock import Clock, SystemClock
from hal.tasks import cancel_and_wait
from hal.types import Fault

log = logging.getLogger("cpagent.ipc.proxy")

COMMAND_TIMEOUT_S = 5.0
RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 5.0
MAX_BUFFER = 1024 * 1024
LINK_TASK = "control-link"
# A stop of the whole agent (one SIGTERM to both sides) shows here first as the control side closing: the loss is
# reported (every connector Faulted) only if this side is not stopping by then.
LOST_REPORT_DELAY_S = 0.5


class StationProxy:
    """StationPort on the network side, over the station socket."""

    def __init__(
        self,
        path: Path | str,
        state_db: Path | str,
        *,
        clock: Clock | None = None,
        command_timeout_s: float = COMMAND_TIMEOUT_S,
        reconnect_min_s: float = RECONNECT_MIN_S,
        reconnect_max_s: float = RECONNECT_MAX_S,
    ) -> None:
        self.path = Path(path)
        self.command_timeout_s = command_timeout_s
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self._db = db.connect(state_db)
        self._eventlog_db = db.connect(state_db, durable=False)
        clock = clock or SystemClock()
        self._shared = SharedResources(self._db, SessionStore(self._db), EventLog(self._eventlog_db), clock)
        self._listeners: list[EventListener] = []
        self._facts: StationFacts | None = None
        self._views: dict[int, ConnectorView] = {}
        self._signing: set[tuple[int, str, str]] = set()
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, tuple[str, asyncio.Future[Any] | None]] = {}
        self._ids = itertools.count(1)
        self._authority: TokenAuthority | None = None
        self._diagnostics: NetworkDiagnostics | None = None
        self._replay: dict[tuple[str, int], dict[str, Any]] = {}  # (command, connector) -> args, sent on reconnect
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._answers: set[asyncio.Task[None]] = set()
        # set_reservation sent but not yet answered: (request id, reservation) per connector, laid over the
        # views that arrive meanwhile (a refresh already in flight must not undo it in the mirror)
        self._reserving: dict[int, tuple[int, ConnectorReservation | None]] = {}
        self._closing = False
        self._lost_report: asyncio.TimerHandle | None = None
        self.last_error = "not connected yet"
        self.connects = 0  # hellos received so far

    # ----------------------------------------------------------------------------------- lifecycle
    async def start(self, timeout_s: float | None = None) -> None:
        """Start connecting; with ``timeout_s``, wait that long for the first hello (TimeoutError)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="station-proxy")
        if timeout_s is not None:
            await asyncio.wait_for(self._ready.wait(), timeout_s)

    def stopping(self) -> None:
        """This side is stopping (SIGTERM or SIGINT, which systemd and a terminal send the control side at the
        same moment): the connection closing from now on is the station stopping too, not a failure to report
        to the CSMS as every connector Faulted (InternalError)."""
        self._closing = True

    async def close(self) -> None:
        self._closing = True
        if self._lost_report is not None:
            self._lost_report.cancel()
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        for task in list(self._answers):
            await cancel_and_wait(task)
        self._db.close()
        self._eventlog_db.close()

    @property
    def connected(self) -> bool:
        return self._writer is not None and self._ready.is_set()

    async def wait_connected(self, timeout_s: float) -> None:
        await asyncio.wait_for(self._ready.wait(), timeout_s)

    async def _run(self) -> None:
        delay = self.reconnect_min_s
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(str(self.path), limit=MAX_LINE_BYTES)
            except OSError as exc:
                self.last_error = f"cannot connect to {self.path}: {exc.strerror or exc}"
            else:
                try:
                    await self._session(reader, writer)
                    delay = self.reconnect_min_s
                except asyncio.CancelledError:
                    writer.transport.abort()
                    self._lost("closing")
                    raise
                except Exception as exc:
                    log.exception("station proxy: connection handler failed")
                    self.last_error = f"internal error: {type(exc).__name__}"
                writer.transport.abort()
                self._lost(self.last_error)
            await asyncio.sleep(delay)
            delay = min(self.reconnect_max_s, delay * 2)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        while True:
            try:
                line = await reader.readline()
            except ValueError:
                self.last_error = f"frame longer than {MAX_LINE_BYTES} bytes from the control side"
                log.error("station proxy: %s", self.last_error)
                return
            except OSError as exc:
                self.last_error = f"read failed: {exc}"
                return
            if not line:
                self.last_error = "the control side closed the connection"
                log.warning("station proxy: %s", self.last_error)
                return
            try:
                self._handle(decode_line(line))
            except CodecError as exc:
                self.last_error = f"bad frame from the control side: {exc}"
                log.error("station proxy: %s", self.last_error)
                return

    # ----------------------------------------------------------------------------------- incoming
    def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("k")
        if kind == "hello":
            if message.get("v") != PROTOCOL_VERSION:
                raise CodecError(f"protocol version {str(message.get('v'))[:10]} (expected {PROTOCOL_VERSION})")
            facts = decode(message.get("facts"), StationFacts, "hello.facts")
            views = decode(message.get("views"), tuple[ConnectorView, ...], "hello.views")
            self._on_hello(facts, views)
        elif kind == "event":
            event = decode(message.get("event"), STATION_EVENT, "event")
            view = decode(message.get("view"), ConnectorView | None, "event.view")
            if "facts" in message:
                self._facts = decode(message["facts"], StationFacts, "event.facts")
            if view is not None:
                self._take(view)
            elif isinstance(event, MeterUpdate) and event.connector_id in self._views:
                # An idle reading comes without a view (see ControlServer._on_event): it is the newest sample.
                mirror = self._views[event.connector_id]
                self._take(dataclasses.replace(mirror, last_sample=event.sample, meter_latest=event.sample))
            signing = message.get("signing")
            session: Session | None = getattr(event, "session", None)
            if isinstance(signing, bool) and session is not None and event.connector_id is not None:
                which = "start" if session.stop_wall is None else "stop"
                key = (event.connector_id, session.ref, which)
                (self._signing.add if signing else self._signing.discard)(key)
            self._emit(event)
        elif kind == "refresh":
            if "facts" in message:
                self._facts = decode(message["facts"], StationFacts, "refresh.facts")
            for view in decode(message.get("views"), tuple[ConnectorView, ...], "refresh.views"):
                if view.id in self._views:
                    self._take(view)
        elif kind == "reply":
            self._on_reply(message)
        elif kind == "ask":
            self._on_ask(message)
        else:
            raise CodecError(f"unknown message kind {str(kind)[:40]!r}")

    def _on_hello(self, facts: StationFacts, views: tuple[ConnectorView, ...]) -> None:
        before = dict(self._views)
        self._facts = facts
        self._views = {v.id: v for v in views}
        self._signing.clear()
        self._reserving.clear()
        self.connects += 1
        self.last_error = ""
        self._ready.set()
        log.info("station proxy: connected to the control side (%d connectors)", len(views))
        if self._authority is not None:
            self._send_call(REGISTER_AUTHORITY, {})
        for (op, _cid), args in list(self._replay.items()):
            self._send_call(op, args)
        for view in views:
            old = before.get(view.id)
            if old is None or (old.status, old.faults) != (view.status, view.faults):
                self._emit(StatusChanged(view.id, view.status, view.faults))

    def _on_reply(self, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        entry = self._pending.pop(request_id, None) if type(request_id) is int else None
        if entry is None:
            raise CodecError("reply to no outstanding command")
        op, future = entry
        for cid, (reserving_id, _) in list(self._reserving.items()):
            if reserving_id == request_id:
                del self._reserving[cid]
        error = message.get("error")
        if error is not None:
            if not isinstance(error, dict):
                raise CodecError(f"reply to {op}: error is not an object")
            etype = error.get("type")
            text = f"{op}: {str(error.get('message'))[:500]}"
            exc = ERROR_TYPES.get(etype, StationCommandError)(text) if isinstance(etype, str) else \
                StationCommandError(text)
            if future is None:
                log.warning("station proxy: the control side refused %s", text)
            elif not future.done():
                future.set_exception(exc)
            return
        result = decode(message.get("result"), COMMANDS[op].result if op in COMMANDS else None, f"reply.{op}")
        if future is not None and not future.done():
            future.set_result(result)
        elif op == "begin_authorized" and result is False:
            log.warning("station proxy: the control side refused begin_authorized (reservation changed meanwhile)")

    def _on_ask(self, message: dict[str, Any]) -> None:
        ask_id = message.get("id")
        op = message.get("op")
        if type(ask_id) is not int:
            raise CodecError("ask without an integer id")
        id_tag = message.get("id_tag")
        if not isinstance(id_tag, str):
            raise CodecError(f"ask {str(op)[:20]}: id_tag is not a string")
        if op == "authorize":
            coro: Any = self._authorize(id_tag)
        elif op == "may_stop":
            coro = self._may_stop(decode(message.get("session"), Session, "ask.session"), id_tag)
        else:
            raise CodecError(f"unknown question {str(op)[:40]!r}")
        task = asyncio.create_task(self._answer(ask_id, coro))
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)

    async def _authorize(self, id_tag: str) -> Any:
        if self._authority is None:
            raise RuntimeError("no token authority")
        return await self._authority.authorize(id_tag)

    async def _may_stop(self, session: Session, id_tag: str) -> Any:
        if self._authority is None:
            raise RuntimeError("no token authority")
        return await self._authority.may_stop(session, id_tag)

    async def _answer(self, ask_id: int, coro: Any) -> None:
        try:
            result = await coro
            message: dict[str, Any] = {"k": "answer", "id": ask_id, "result": encode(result)}
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("station proxy: token decision failed: %s: %s", type(exc).__name__, exc)
            message = {"k": "answer", "id": ask_id, "error": f"{type(exc).__name__}"}
        with contextlib.suppress(StationUnavailable):
            self._write(message)

    def _lost(self, why: str) -> None:
        """The connection is gone: fail what waits; LOST_REPORT_DELAY_S later, unless this side is stopping
        or the control side is back, mark every connector Faulted (InternalError)."""
        was_connected = self._ready.is_set()
        self._writer = None
        self._ready.clear()
        pending, self._pending = self._pending, {}
        self._reserving.clear()
        for op, future in pending.values():
            if future is not None and not future.done():
                future.set_exception(StationUnavailable(f"{op}: the control side went away ({why})"))
        if not was_connected or self._closing:
            return
        if self._lost_report is not None:
            self._lost_report.cancel()
        self._lost_report = asyncio.get_running_loop().call_later(LOST_REPORT_DELAY_S, self._report_lost, why)

    def _report_lost(self, why: str) -> None:
        self._lost_report = None
        if self._closing or self._ready.is_set():  # stopping with the control side, or it is back already
            return
        log.error("station proxy: lost the control side (%s); connectors reported Faulted", why)
        for cid, view in list(self._views.items()):
            faults = view.faults | {Fault.INTERNAL}
            self._views[cid] = dataclasses.replace(view, status=ConnectorStatus.FAULTED, faults=faults)
            self._emit(StatusChanged(cid, ConnectorStatus.FAULTED, faults))

    def _emit(self, event: StationEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("station event listener failed on %s", type(event).__name__)

    # ----------------------------------------------------------------------------------- outgoing
    def _write(self, message: dict[str, Any]) -> None:
        writer = self._writer
        if writer is None or writer.transport.is_closing():
            raise StationUnavailable(f"the control side is not connected ({self.last_error or 'connection closing'})")
        data = encode_line(message)
        if writer.transport.get_write_buffer_size() + len(data) > MAX_BUFFER:
            writer.transport.abort()  # the read loop sees the end and reconnects
            raise StationUnavailable("the control side does not read its socket")
        writer.write(data)

    def _send_call(self, op: str, args: dict[str, Any], future: asyncio.Future[Any] | None = None) -> int:
        request_id = next(self._ids)
        self._write({"k": "call", "id": request_id, "op": op, "args": {k: encode(v) for k, v in args.items()}})
        self._pending[request_id] = (op, future)
        return request_id

    def _send(self, op: str, **args: Any) -> int:
        """A command sent without waiting (StationUnavailable at once when not connected)."""
        if not self.connected:
            raise StationUnavailable(f"{op}: the control side is not connected ({self.last_error})")
        return self._send_call(op, args)

    async def _call(self, op: str, **args: Any) -> Any:
        """A command whose reply is awaited."""
        if not self.connected:
            raise StationUnavailable(f"{op}: the control side is not connected ({self.last_error})")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._send_call(op, args, future)
        try:
            return await asyncio.wait_for(future, self.command_timeout_s)
        except TimeoutError:
            raise StationUnavailable(f"{op}: no answer from the control side within {self.command_timeout_s} s") \
                from None

    def _mirror(self, connector_id: int) -> ConnectorView:
        return self._views[connector_id]

    def _take(self, view: ConnectorView) -> None:
        reserving = self._reserving.get(view.id)
        if reserving is not None and view.reservation != reserving[1]:
            view = dataclasses.replace(view, reservation=reserving[1])
        self._views[view.id] = view

    # ----------------------------------------------------------------------------------- StationPort: state
    @property
    def shared(self) -> SharedResources:
        return self._shared

    def facts(self) -> StationFacts:
        if self._facts is None:
            raise StationUnavailable(f"no facts yet: the control side was never connected ({self.last_error})")
        if self.connected:
            return self._facts
        link = TaskView(LINK_TASK, False, False, self.last_error)
        return dataclasses.replace(self._facts, tasks=(*self._facts.tasks, link))

    def connector_ids(self) -> tuple[int, ...]:
        return tuple(self._views)

    def connector_view(self, connector_id: int) -> ConnectorView:
        return self._views[connector_id]

    def connector_views(self) -> Mapping[int, ConnectorView]:
        return dict(self._views)

    def subscribe(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    # ----------------------------------------------------------------------------------- StationPort: commands
    def begin_authorized(self, connector_id: int, id_tag: str, parent_id_tag: str | None = None) -> bool:
        if not self._mirror(connector_id).admits(id_tag, parent_id_tag):
            return False
        self._send("begin_authorized", connector_id=connector_id, id_tag=id_tag, parent_id_tag=parent_id_tag)
        return True

    def stop_session(self, connector_id: int, reason: StopReason) -> Session | None:
        session = self._mirror(connector_id).session
        if session is None:
            return None
        self._send("stop_session", connector_id=connector_id, reason=reason)
        return session

    def set_current_limit(self, connector_id: int, amps: float | None) -> None:
        self._mirror(connector_id)
        self._send("set_current_limit", connector_id=connector_id, amps=amps)
        self._replay[("set_current_limit", connector_id)] = {"connector_id": connector_id, "amps": amps}

    def set_available(self, connector_id: int, available: bool) -> None:
        self._mirror(connector_id)
        self._send("set_available", connector_id=connector_id, available=available)
        # Replayed after a control-side restart: an Unavailable connector (ChangeAvailability) stays so.
        self._replay[("set_available", connector_id)] = {"connector_id": connector_id, "available": available}

    def set_maintenance(self, connector_id: int, on: bool) -> None:
        self._mirror(connector_id)
        self._send("set_maintenance", connector_id=connector_id, on=on)

    async def unlock(self, connector_id: int) -> bool:
        result: bool = await self._call("unlock", connector_id=connector_id)
        return result

    def hold_energy(self, connector_id: int, reason: EnergyHold) -> None:
        self._mirror(connector_id)
        self._send("hold_energy", connector_id=connector_id, reason=reason)

    def release_energy(self, connector_id: int, reason: EnergyHold) -> None:
        self._mirror(connector_id)
        self._send("release_energy", connector_id=connector_id, reason=reason)

    def set_reservation(self, connector_id: int, reservation: ConnectorReservation | None) -> None:
        view = self._mirror(connector_id)
        request_id = self._send("set_reservation", connector_id=connector_id, reservation=reservation)
        self._reserving[connector_id] = (request_id, reservation)
        self._views[connector_id] = dataclasses.replace(view, reservation=reservation)

    def set_display_extra(self, connector_id: int, extra: tuple[tuple[str, str], ...]) -> None:
        self._mirror(connector_id)
        self._send("set_display_extra", connector_id=connector_id, extra=extra)
        self._replay[("set_display_extra", connector_id)] = {"connector_id": connector_id, "extra": extra}

    def set_operator_messages(self, connector_id: int, messages: tuple[OperatorMessage, ...]) -> None:
        self._mirror(connector_id)
        self._send("set_operator_messages", connector_id=connector_id, messages=messages)
        self._replay[("set_operator_messages", connector_id)] = {"connector_id": connector_id, "messages": messages}

    def configure_connector(self, connector_id: int, settings: ConnectorSettings) -> None:
        self._mirror(connector_id)
        self._send("configure_connector", connector_id=connector_id, settings=settings)
        self._replay[("configure_connector", connector_id)] = {"connector_id": connector_id, "settings": settings}

    def register_authority(self, authority: TokenAuthority) -> None:
        self._authority = authority
        if self.connected:
            self._send_call(REGISTER_AUTHORITY, {})

    def signed_reading_pending(self, connector_id: int, session_ref: str, which: str) -> bool:
        return (connector_id, session_ref, which) in self._signing

    async def signed_reading(self, connector_id: int, session_ref: str, which: str) -> str | None:
        result: str | None = await self._call("signed_reading", connector_id=connector_id,
                                              session_ref=session_ref, which=which)
        return result

    async def manual_relay(self, connector_id: int, closed: bool) -> None:
        await self._call("manual_relay", connector_id=connector_id, closed=closed)

    async def manual_pwm(self, connector_id: int, duty_percent: float) -> None:
        await self._call("manual_pwm", connector_id=connector_id, duty_percent=duty_percent)

    async def clear_faults(self, connector_id: int) -> bool:
        result: bool = await self._call("clear_faults", connector_id=connector_id)
        return result

    def attach_network_diagnostics(self, provider: NetworkDiagnostics) -> None:
        self._diagnostics = provider

    def network_diagnostics(self) -> NetworkDiagnostics | None:
        return self._diagnostics
