"""A small OCPP 1.6J and 2.0.1 central system for the demo and the tests, on the same ``ocpp`` library.

``Csms(version="1.6" | "2.0.1" | "auto")`` picks the websocket subprotocol per connection (auto: ocpp2.0.1
when the charge point offers it, else ocpp1.6); the 2.0.1 side is ``simulator.csms201``. Both record
into the same ``messages()/wait_for()`` and are driven by the same ``send()``.

Answers every charge-point-initiated message, records what it received per charge point, logs every
frame both ways as one JSON line ({"t", "dir": "in"|"out", "cp", "frame"}), sends CS->CP CALLs on
request and simulates outages. In tests::

    csms = Csms(accept=["TAG1"], boot_status="Accepted")
    await csms.start()                      # 127.0.0.1, port 0 -> csms.port / csms.url
    ...                                     # point the agent at csms.url
    boot = await csms.wait_for("CP1", "BootNotification")
    result = await csms.send("CP1", "RemoteStartTransaction", {"idTag": "TAG1", "connectorId": 1})
    await csms.outage(5.0)                  # refuse connections and drop current ones for 5 s
    await csms.stop()

As a process: ``cpsim csms --port P [--ocpp 1.6|2.0.1|auto] [--host H] [--log FILE] [--boot Accepted|Pending|Rejected]
[--interval S] [--accept TAG ...] [--password PW] [--control PATH]``; it prints {"port": P} on stdout.
The control socket speaks JSON lines: {"cmd": "send", "cp", "action", "payload"}, {"cmd": "outage",
"seconds"}, {"cmd": "messages", "cp"}, {"cmd": "status"}, {"cmd": "set", "boot"?, "interval"?, "ocpp"?}.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import decimal
import json
import logging
import signal
import ssl
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import unquote

from ocpp import messages as ocpp_messages
from ocpp.charge_point import camel_to_snake_case, remove_nones, serialize_as_dict, snake_to_camel_case
from ocpp.exceptions import OCPPError, UnknownCallErrorCodeError
from ocpp.routing import on
from ocpp.v16 import ChargePoint as LibraryChargePoint
from ocpp.v16 import call, call_result
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, NegotiationError
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from simulator.csms201 import SUBPROTOCOL_201, VERSION_201, CentralSystemSide201, is_201_action

LOG = logging.getLogger("cpsim.csms")
SUBPROTOCOL = Subprotocol("ocpp1.6")
BOOT_STATUSES = ("Accepted", "Pending", "Rejected")
VERSIONS = ("1.6", "2.0.1", "auto")


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Received:
    """A CALL the CSMS received."""

    action: str
    payload: dict[str, Any]
    unique_id: str
    at: float  # wall clock seconds


@dataclass(frozen=True)
class Handshake:
    """What a charge point sent on the websocket upgrade."""

    charge_point_id: str
    path: str
    authorization: str | None
    subprotocols: tuple[str, ...]


class CsmsCallError(Exception):
    """The charge point answered a CS->CP CALL with a CALLERROR."""

    def __init__(self, action: str, code: str, description: str) -> None:
        super().__init__(f"{action}: {code}: {description}")
        self.action = action
        self.code = code
        self.description = description


class FrameLog:
    """JSON-lines frame log; keeps nothing in memory."""

    def __init__(self, path: Path | None) -> None:
        self._file: IO[str] | None = path.open("a", encoding="utf-8") if path else None

    def write(self, direction: str, charge_point_id: str, raw: str | bytes) -> None:
        if self._file is None:
            return
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        try:
            frame: Any = json.loads(text)
        except ValueError:
            frame = text  # garbage is logged as the string it was
        line = {"t": utc_now_iso(), "dir": direction, "cp": charge_point_id, "frame": frame}
        self._file.write(json.dumps(line, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class _ObservedConnection:
    """The websocket as the library sees it: every frame is logged and CALLs are recorded."""

    def __init__(self, websocket: ServerConnection, charge_point_id: str, csms: Csms) -> None:
        self.websocket = websocket
        self._id = charge_point_id
        self._csms = csms

    async def recv(self) -> str | bytes:
        while True:
            raw = await self.websocket.recv()
            self._csms._frame_in(self._id, raw)
            # Answers to send_raw CALLs and hostile replies never reach the library.
            if not await self._csms._intercepted(self._id, raw, self.send):
                return raw

    async def send(self, message: str) -> None:
        self._csms.frame_log.write("out", self._id, message)
        await self.websocket.send(message)


_Handler = TypeVar("_Handler", bound=Callable[..., Any])


def _on(action: str) -> Callable[[_Handler], _Handler]:
    """The library's ``@on``, typed."""
    decorator: Callable[[_Handler], _Handler] = on(action)
    return decorator


class _CentralSystemSide(LibraryChargePoint):  # type: ignore[misc]
    """The library's ChargePoint on the server side, answering CP->CS messages from Csms settings."""

    def __init__(self, charge_point_id: str, connection: _ObservedConnection, csms: Csms) -> None:
        super().__init__(charge_point_id, connection, response_timeout=csms.response_timeout, logger=LOG)
        self._csms = csms

    def _id_tag_info(self, id_tag: str) -> dict[str, str]:
        full = self._csms.id_tag_infos.get(id_tag)
        if full is not None:
            return dict(full)
        return {"status": self._csms.auth_list.get(id_tag, "Invalid")}

    @_on("BootNotification")
    async def on_boot_notification(self, **_: Any) -> call_result.BootNotification:
        return call_result.BootNotification(
            current_time=utc_now_iso(), interval=self._csms.heartbeat_interval, status=self._csms.boot_status
        )

    @_on("Heartbeat")
    async def on_heartbeat(self, **_: Any) -> call_result.Heartbeat:
        return call_result.Heartbeat(current_time=utc_now_iso())

    @_on("Authorize")
    async def on_authorize(self, id_tag: str, **_: Any) -> call_result.Authorize:
        return call_result.Authorize(id_tag_info=self._id_tag_info(id_tag))

    @_on("StartTransaction")
    async def on_start_transaction(self, id_tag: str, **_: Any) -> call_result.StartTransaction:
        return call_result.StartTransaction(
            transaction_id=self._csms._next_transaction_id(), id_tag_info=self._id_tag_info(id_tag)
        )

    @_on("StopTransaction")
    async def on_stop_transaction(self, id_tag: str | None = None, **_: Any) -> call_result.StopTransaction:
        return call_result.StopTransaction(id_tag_info=self._id_tag_info(id_tag) if id_tag else None)

    @_on("MeterValues")
    async def on_meter_values(self, **_: Any) -> call_result.MeterValues:
        return call_result.MeterValues()

    @_on("StatusNotification")
    async def on_status_notification(self, **_: Any) -> call_result.StatusNotification:
        return call_result.StatusNotification()

    @_on("DataTransfer")
    async def on_data_transfer(self, **_: Any) -> call_result.DataTransfer:
        return call_result.DataTransfer(status=self._csms.data_transfer_status)

    @_on("FirmwareStatusNotification")
    async def on_firmware_status_notification(self, **_: Any) -> call_result.FirmwareStatusNotification:
        return call_result.FirmwareStatusNotification()

    @_on("DiagnosticsStatusNotification")
    async def on_diagnostics_status_notification(
        self, **_: Any
    ) -> call_result.DiagnosticsStatusNotification:
        return call_result.DiagnosticsStatusNotification()

    @_on("SecurityEventNotification")
    async def on_security_event_notification(self, **_: Any) -> call_result.SecurityEventNotification:
        return call_result.SecurityEventNotification()

    @_on("SignedFirmwareStatusNotification")
    async def on_signed_firmware_status_notification(
        self, **_: Any
    ) -> call_result.SignedFirmwareStatusNotification:
        return call_result.SignedFirmwareStatusNotification()

    @_on("LogStatusNotification")
    async def on_log_status_notification(self, **_: Any) -> call_result.LogStatusNotification:
        return call_result.LogStatusNotification()

    @_on("SignCertificate")
    async def on_sign_certificate(self, **_: Any) -> call_result.SignCertificate:
        return call_result.SignCertificate(status="Accepted")


@dataclass
class _Peer:
    websocket: ServerConnection
    side: _CentralSystemSide | CentralSystemSide201
    version: str  # "1.6" or "2.0.1": the subprotocol this connection speaks


@dataclass
class _Records:
    received: dict[str, list[Received]] = field(default_factory=lambda: defaultdict(list))
    handshakes: list[Handshake] = field(default_factory=list)


class Csms:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        log_path: Path | str | None = None,
        boot_status: str = "Accepted",
        heartbeat_interval: int = 300,
        accept: Iterable[str] = (),
        auth_list: Mapping[str, str] | None = None,
        password: str | None = None,
        response_timeout: float = 30.0,
        ping_interval: float | None = None,
        ssl_context: ssl.SSLContext | None = None,
        version: str = "1.6",
    ) -> None:
        if boot_status not in BOOT_STATUSES:
            raise ValueError(f"boot status must be one of {BOOT_STATUSES}")
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {VERSIONS}")
        # Which OCPP the CSMS speaks: read at each handshake, so a test may change it between connections.
        self.version = version
        self.host = host
        self.port = port
        self.boot_status = boot_status
        self.heartbeat_interval = heartbeat_interval
        self.auth_list: dict[str, str] = {tag: "Accepted" for tag in accept}
        self.auth_list.update(auth_list or {})
        # A whole idTagInfo (wire form: status, parentIdTag, expiryDate) per idTag; wins over auth_list.
        self.id_tag_infos: dict[str, dict[str, str]] = {}
        self.password = password
        self.response_timeout = response_timeout
        self.ping_interval = ping_interval
        # TLS (wss://); a context with verify_mode CERT_REQUIRED also demands a client certificate.
        self.ssl_context = ssl_context
        self.data_transfer_status = "Accepted"
        # 2.0.1: a whole idTokenInfo (wire form) per idToken, wins over auth_list; SignCertificate's status
        # and, when a signer is set, the CertificateSigned sent after an accepted SignCertificate.
        self.id_token_infos: dict[str, dict[str, Any]] = {}
        # 2.0.1: more fields of the TransactionEventResponse per eventType (wire form: totalCost,
        # updatedPersonalMessage ...), e.g. {"Ended": {"totalCost": 4.7}}.
        self.transaction_event_answers: dict[str, dict[str, Any]] = {}
        self.sign_certificate_status = "Accepted"
        self.certificate_signer: Callable[[str], str] | None = None
        self.certificate_signed_delay = 0.0
        self.certificate_signed_results: list[dict[str, Any]] = []
        self._background: set[asyncio.Future[Any]] = set()
        # Tests of the station's robustness: ``hostile_reply(cp, action, unique_id, payload)`` may return
        # the raw text answering a station CALL instead of the normal answer (None: answer normally; "": never
        # answer);
        # answers to CALLs put on the wire by ``send_raw`` are collected per unique id in ``raw_answers``.
        self.hostile_reply: Callable[[str, str, str, dict[str, Any]], str | None] | None = None
        self.raw_answers: dict[str, list[Any]] = defaultdict(list)
        self._raw_call_ids: set[str] = set()
        self.frame_log = FrameLog(Path(log_path) if log_path else None)
        self._records = _Records()
        self._peers: dict[str, _Peer] = {}
        self._server: Server | None = None
        self._transaction_id = 0
        self._changed = asyncio.Condition()
        self._waiters = 0  # callers inside wait_for / wait_connected
        self._reject_status: int | None = None
        self._outage_task: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{'wss' if self.ssl_context else 'ws'}://{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await serve(
            self._serve_connection,
            self.host,
            self.port,
            select_subprotocol=self._select_subprotocol,
            process_request=self._check_upgrade,
            ping_interval=self.ping_interval,
            compression=None,
            ssl=self.ssl_context,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        LOG.info("CSMS listening on %s", self.url)

    async def stop(self) -> None:
        if self._outage_task is not None:
            self._outage_task.cancel()
            self._outage_task = None
        for task in list(self._background):
            task.cancel()
        await self._close_server()
        self.frame_log.close()

    async def _close_server(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    # -- what tests look at -----------------------------------------------------------------------

    @property
    def connected_ids(self) -> list[str]:
        return sorted(self._peers)

    @property
    def handshakes(self) -> list[Handshake]:
        return list(self._records.handshakes)

    def version_of(self, charge_point_id: str) -> str | None:
        """The OCPP version ("1.6" / "2.0.1") this charge point's current connection speaks, or None."""
        peer = self._peers.get(charge_point_id)
        return peer.version if peer is not None else None

    def messages(self, charge_point_id: str, action: str | None = None) -> list[Received]:
        received = self._records.received.get(charge_point_id, [])
        return [m for m in received if action is None or m.action == action]

    async def wait_for(
        self, charge_point_id: str, action: str, *, count: int = 1, within: float = 5.0
    ) -> Received:
        """The count-th message of this action from this charge point (waits up to ``within`` s)."""
        self._waiters += 1
        try:
            async with asyncio.timeout(within), self._changed:
                await self._changed.wait_for(lambda: len(self.messages(charge_point_id, action)) >= count)
        finally:
            self._waiters -= 1
        return self.messages(charge_point_id, action)[count - 1]

    async def wait_connected(self, charge_point_id: str, *, within: float = 5.0) -> None:
        self._waiters += 1
        try:
            async with asyncio.timeout(within), self._changed:
                await self._changed.wait_for(lambda: charge_point_id in self._peers)
        finally:
            self._waiters -= 1

    # -- CS -> CP ---------------------------------------------------------------------------------

    async def send(
        self, charge_point_id: str, action: str, payload: Mapping[str, Any], *, validate: bool = True
    ) -> dict[str, Any]:
        """Send a CALL of any action of the connection's version; return the CALLRESULT payload (camelCase)
        or raise CsmsCallError. 2.0.1 payloads go on the wire as given, validated unless ``validate=False``."""
        peer = self._peers.get(charge_point_id)
        if peer is None:
            raise LookupError(f"{charge_point_id} is not connected")
        if isinstance(peer.side, CentralSystemSide201):
            if not is_201_action(action):
                raise ValueError(f"{action} is not an OCPP 2.0.1 action")
            try:
                return await peer.side.call_payload(action, dict(payload), validate=validate)
            except OCPPError as error:
                raise CsmsCallError(action, error.code, str(error.description)) from None
            except UnknownCallErrorCodeError as error:
                raise CsmsCallError(action, "Unknown", str(error)) from None
        request_class = getattr(call, action, None)
        if not isinstance(request_class, type):
            raise ValueError(f"{action} is not an OCPP 1.6 action")
        request = request_class(**camel_to_snake_case(dict(payload)))
        try:
            result = await peer.side.call(request, suppress=False)
        except OCPPError as error:
            raise CsmsCallError(action, error.code, str(error.description)) from None
        except UnknownCallErrorCodeError as error:
            raise CsmsCallError(action, "Unknown", str(error)) from None
        answer: dict[str, Any] = snake_to_camel_case(remove_nones(serialize_as_dict(result)))
        return answer

    async def send_raw(self, charge_point_id: str, text: str) -> None:
        """Put any text on the wire (for tests of the charge point's handling of bad frames)."""
        peer = self._peers.get(charge_point_id)
        if peer is None:
            raise LookupError(f"{charge_point_id} is not connected")
        with contextlib.suppress(ValueError, TypeError, IndexError):
            frame = json.loads(text)
            if isinstance(frame, list) and frame[0] not in (3, 4) and isinstance(frame[1], str):
                self._raw_call_ids.update((frame[1], "-1"))  # "-1": a 2.0.1 answer to an unreadable id
        self.frame_log.write("out", charge_point_id, text)
        await peer.websocket.send(text)

    # -- faults -----------------------------------------------------------------------------------

    async def outage(self, seconds: float, *, http_status: int | None = None) -> None:
        """Drop every connection and refuse new ones for ``seconds``.

        Without ``http_status`` the listening socket closes (dials are refused) and connections are
        aborted without a close frame, like a network loss; with it, upgrades get that HTTP status.
        """
        if self._outage_task is not None:
            self._outage_task.cancel()
        self._reject_status = http_status
        for peer in list(self._peers.values()):
            peer.websocket.transport.abort()
        if http_status is None:
            await self._close_server()
        self._outage_task = asyncio.create_task(self._end_outage_after(seconds))

    async def _end_outage_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self._reject_status = None
        while self._server is None:
            try:
                await self.start()  # same port: charge points redial the URL they know
            except OSError as error:
                LOG.error("CSMS: cannot listen on port %d again (%s); retrying", self.port, error)
                await asyncio.sleep(0.5)
        self._outage_task = None

    async def drop(self, charge_point_id: str, *, code: int = 1000) -> None:
        """Close one charge point's connection cleanly (it should redial)."""
        peer = self._peers.get(charge_point_id)
        if peer is not None:
            await peer.websocket.close(code)

    # -- internals --------------------------------------------------------------------------------

    def _next_transaction_id(self) -> int:
        self._transaction_id += 1
        return self._transaction_id

    def _frame_in(self, charge_point_id: str, raw: str | bytes) -> None:
        self.frame_log.write("in", charge_point_id, raw)
        try:
            frame = json.loads(raw)
        except ValueError:
            return
        if isinstance(frame, list) and len(frame) == 4 and frame[0] == 2 and isinstance(frame[3], dict):
            self._records.received[charge_point_id].append(
                Received(str(frame[2]), frame[3], str(frame[1]), time.time())
            )
            self._notify()

    async def _intercepted(self, charge_point_id: str, raw: str | bytes, send: Callable[[str], Any]) -> bool:
        """Whether this frame was handled here: an answer to a send_raw CALL, or a CALL answered by
        ``hostile_reply``."""
        if self.hostile_reply is None and not self._raw_call_ids:
            return False
        try:
            frame = json.loads(raw)
        except ValueError:
            return False
        if not isinstance(frame, list) or len(frame) < 3 or not isinstance(frame[1], str):
            return False
        if frame[0] in (3, 4) and frame[1] in self._raw_call_ids:
            self.raw_answers[frame[1]].append(frame)
            self._notify()
            return True
        if frame[0] == 2 and self.hostile_reply is not None and len(frame) == 4 and isinstance(frame[3], dict):
            text = self.hostile_reply(charge_point_id, str(frame[2]), frame[1], frame[3])
            if text is not None:
                if text:  # "" : the CALL is never answered (the station's MessageTimeout runs out)
                    await send(text)
                return True
        return False

    def _notify(self) -> None:
        if not self._waiters:  # nobody in wait_for / wait_connected (always so for `cpsim csms`): no wake task
            return  # per frame (a waiter checks its predicate before it waits, so it misses nothing)

        async def wake() -> None:
            async with self._changed:
                self._changed.notify_all()

        task = asyncio.ensure_future(wake())
        task.add_done_callback(lambda _: None)

    def _select_subprotocol(self, _: ServerConnection, offered: Sequence[str]) -> Subprotocol | None:
        """ocpp1.6 / ocpp2.0.1 per ``version``; auto prefers ocpp2.0.1. None offered in common: HTTP 400."""
        wanted = {"1.6": [SUBPROTOCOL], "2.0.1": [SUBPROTOCOL_201]}.get(self.version, [SUBPROTOCOL_201, SUBPROTOCOL])
        for subprotocol in wanted:
            if subprotocol in offered:
                return subprotocol
        raise NegotiationError("no common subprotocol; this CSMS speaks " + ", ".join(wanted))

    def _check_upgrade(self, connection: ServerConnection, request: Request) -> Response | None:
        charge_point_id = _charge_point_id(request.path)
        offered = tuple(
            part.strip() for value in request.headers.get_all("Sec-WebSocket-Protocol") for part in value.split(",")
        )
        authorization = request.headers.get("Authorization")
        self._records.handshakes.append(Handshake(charge_point_id, request.path, authorization, offered))
        if self._reject_status is not None:
            return connection.respond(HTTPStatus(self._reject_status), "outage\n")
        if not charge_point_id:
            return connection.respond(HTTPStatus.NOT_FOUND, "charge point id missing\n")
        if self.password is not None and not _basic_auth_ok(authorization, charge_point_id, self.password):
            response = connection.respond(HTTPStatus.UNAUTHORIZED, "bad credentials\n")
            response.headers = Headers(response.headers)
            response.headers["WWW-Authenticate"] = 'Basic realm="ocpp"'
            return response
        return None

    async def _serve_connection(self, websocket: ServerConnection) -> None:
        charge_point_id = _charge_point_id(websocket.request.path if websocket.request else "")
        observed = _ObservedConnection(websocket, charge_point_id, self)
        side: _CentralSystemSide | CentralSystemSide201
        if websocket.subprotocol == SUBPROTOCOL_201:
            side, version = CentralSystemSide201(charge_point_id, observed, self), VERSION_201
        else:
            side, version = _CentralSystemSide(charge_point_id, observed, self), "1.6"
        previous = self._peers.get(charge_point_id)
        if previous is not None:  # a charge point reconnecting replaces its stale connection
            previous.websocket.transport.abort()
        self._peers[charge_point_id] = _Peer(websocket, side, version)
        self._notify()
        LOG.info("CSMS: %s connected (OCPP %s)", charge_point_id, version)
        try:
            await side.start()
        except ConnectionClosed:
            pass
        finally:
            if self._peers.get(charge_point_id) is not None and self._peers[charge_point_id].websocket is websocket:
                del self._peers[charge_point_id]
            self._notify()
            LOG.info("CSMS: %s disconnected", charge_point_id)


def _charge_point_id(path: str) -> str:
    return unquote(path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1])


def _basic_auth_ok(header: str | None, charge_point_id: str, password: str) -> bool:
    if header is None or not header.startswith("Basic "):
        return False
    try:
        user, _, given = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return user == charge_point_id and given == password


# -- process entry ----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cpsim csms", description="Small OCPP 1.6J / 2.0.1 central system")
    p.add_argument("--ocpp", choices=VERSIONS, default="auto",
                   help="OCPP version(s) spoken (default auto: ocpp2.0.1 when the station offers it, else ocpp1.6)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    p.add_argument("--log", type=Path, help="JSON-lines frame log")
    p.add_argument("--boot", choices=BOOT_STATUSES, default="Accepted")
    p.add_argument("--interval", type=int, default=300, help="heartbeat interval sent in BootNotification.conf")
    p.add_argument("--accept", nargs="*", default=[], metavar="TAG", help="id tags answered Accepted")
    p.add_argument("--password", help="require HTTP Basic auth with this password")
    p.add_argument("--control", type=Path, help="Unix socket for JSON-lines control commands")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


async def _control_command(csms: Csms, request: Any) -> dict[str, Any]:
    if not isinstance(request, dict):
        return {"ok": False, "error": "expected a JSON object"}
    command = request.get("cmd")
    try:
        if command == "send":
            result = await csms.send(str(request["cp"]), str(request["action"]), dict(request.get("payload", {})))
            return {"ok": True, "result": result}
        if command == "outage":
            await csms.outage(float(request["seconds"]), http_status=request.get("http_status"))
            return {"ok": True}
        if command == "messages":
            received = csms.messages(str(request["cp"]), request.get("action"))
            return {"ok": True, "messages": [
                {"action": m.action, "payload": m.payload, "id": m.unique_id, "t": m.at} for m in received
            ]}
        if command == "status":
            return {"ok": True, "port": csms.port, "connected": csms.connected_ids,
                    "versions": {cp: csms.version_of(cp) for cp in csms.connected_ids}}
        if command == "set":
            if "boot" in request:
                if request["boot"] not in BOOT_STATUSES:
                    return {"ok": False, "error": f"boot must be one of {BOOT_STATUSES}"}
                csms.boot_status = request["boot"]
            if "interval" in request:
                csms.heartbeat_interval = int(request["interval"])
            if "ocpp" in request:
                if request["ocpp"] not in VERSIONS:
                    return {"ok": False, "error": f"ocpp must be one of {VERSIONS}"}
                csms.version = request["ocpp"]
            return {"ok": True}
    except CsmsCallError as error:
        return {"ok": False, "error": error.code, "description": error.description}
    except (KeyError, TypeError, ValueError, LookupError, OCPPError, TimeoutError) as error:
        return {"ok": False, "error": f"{type(error).__name__}: {error}"}
    return {"ok": False, "error": f"unknown cmd {command!r}"}


def _json_number(value: object) -> float | int:
    """Answers parsed with Decimal numbers (1.6 GetCompositeSchedule limits ...) as JSON numbers."""
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


async def _serve_control(csms: Csms, path: Path) -> asyncio.Server:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                except ValueError:
                    reply: dict[str, Any] = {"ok": False, "error": "not JSON"}
                else:
                    reply = await _control_command(csms, request)
                writer.write(json.dumps(reply, default=_json_number).encode() + b"\n")
                await writer.drain()
        writer.close()

    await asyncio.to_thread(path.unlink, missing_ok=True)
    return await asyncio.start_unix_server(client, path=str(path))


async def _run(args: argparse.Namespace) -> None:
    # Its own process, nothing else on its loop: each payload is validated in the loop, not in an executor
    # thread (the library's default). A BootNotification is validated in ~0.1 ms; the thread hop (submit,
    # wake-up through the self-pipe, GIL hand-overs) cost more than that, per message both ways.
    ocpp_messages.ASYNC_VALIDATION = False
    csms = Csms(args.host, args.port, log_path=args.log, boot_status=args.boot,
                heartbeat_interval=args.interval, accept=args.accept, password=args.password, version=args.ocpp)
    await csms.start()
    control = await _serve_control(csms, args.control) if args.control else None
    print(json.dumps({"port": csms.port, "url": csms.url}), flush=True)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    try:
        await stopped.wait()
    finally:
        if control is not None:
            control.close()
            await asyncio.to_thread(args.control.unlink, missing_ok=True)
        await csms.stop()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "csms":
        argv = argv[1:]
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s csms %(levelname)s %(name)s: %(message)s")
    asyncio.run(_run(args))
    return 0
