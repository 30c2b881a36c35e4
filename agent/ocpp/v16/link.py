"""The websocket link to the CSMS: dial, keep, and redial forever with capped, jittered back-off.

URL = endpoint without trailing "/" + "/" + percent-encoded charge point id; subprotocol "ocpp1.6" is
offered and required. Security profile 0 (none), 1 (HTTP Basic, user = charge point id, password =
AuthorizationKey read from a callable at every dial), 2 (TLS + Basic) and 3 (TLS client certificate)
via an ``ssl.SSLContext``. Every way a connection ends (clean close, pong timeout, HTTP error on the
upgrade, refused, subprotocol refused) leads to a redial after ``Backoff.delay``.

Per connection an ``OcppSession`` is created with the given handlers and ``on_connected(session)`` runs
beside it (boot sequence, outbox drain). If it raises, the connection is closed and redialled.
``on_disconnected(reason)`` is called when a connection that was up ends.

    link = Link("ws://csms.example/ocpp", "CP-1", handlers=handlers, on_connected=service.connected,
                security_profile=1, password=lambda: config.authorization_key)
    task = asyncio.create_task(link.run())
    ...
    await link.stop()
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import quote, urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from agent.ocpp.budget import DEFAULT_MS_PER_S, BudgetStats, RequestBudget
from agent.ocpp.v16.rpc import (
    MAX_FRAME_BYTES,
    V16,
    V201,
    Dialect,
    Handler,
    OcppSession,
    RedactingFilter,
    install_redaction,
)
from agent.ocpp.v16.tls import probe_server_tls_version
from hal.clock import Clock, SystemClock

LOG = logging.getLogger("cpagent.ocpp.v16.link")
SUBPROTOCOL = Subprotocol("ocpp1.6")
# Reconnect jitter: one stream for every link of the process (a Random is 2.5 kB; cpsim fleet runs many links).
_JITTER = random.Random()
# Every version we can speak, by websocket subprotocol (OCPP-J Part 4 section 3.1.2).
DIALECTS: dict[str, Dialect] = {V16.subprotocol: V16, V201.subprotocol: V201}
# What the CSMS selected when it is one we offered but not the one this link speaks; the link hands the open
# connection over (``on_other_version``) and dials no more until stopped.
OtherVersionHook = Callable[[str, ClientConnection], None]

ConnectedHook = Callable[[OcppSession], Awaitable[None]]
DisconnectedHook = Callable[[str], Awaitable[None] | None]
Sleeper = Callable[[float], Awaitable[None]]


class LinkState(StrEnum):
    DISCONNECTED = "Disconnected"
    CONNECTING = "Connecting"
    CONNECTED = "Connected"


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off: attempt n waits between (1 - jitter) and 1 times min(cap, base * factor**n)."""

    base: float = 1.0
    cap: float = 300.0
    factor: float = 2.0
    jitter: float = 0.5
    # A connection that stayed up this long resets the attempt count.
    stable_after: float = 60.0

    def ceiling(self, attempt: int) -> float:
        exponent = min(max(attempt, 0), 64)  # beyond this the cap rules anyway; avoids float overflow
        return float(min(self.cap, self.base * self.factor**exponent))

    def delay(self, attempt: int, rng: random.Random) -> float:
        ceiling = self.ceiling(attempt)
        return ceiling * (1.0 - self.jitter) + rng.uniform(0.0, ceiling * self.jitter)


@dataclass
class LinkCounters:
    connects: int = 0  # connections that reached CONNECTED
    failures: int = 0  # dial attempts that did not
    disconnects: int = 0  # connections that ended


def build_url(endpoint: str, charge_point_id: str) -> str:
    return endpoint.rstrip("/") + "/" + quote(charge_point_id, safe="")


def basic_credentials(charge_point_id: str, password: str) -> str:
    """The base64 part of the Basic Authorization header."""
    return base64.b64encode(f"{charge_point_id}:{password}".encode()).decode("ascii")


class SubprotocolRefused(Exception):
    """The server completed the upgrade without selecting a subprotocol we offered."""


class OtherVersionSelected(Exception):
    """The CSMS selected another offered version: the connection went to ``on_other_version``."""


class Link:
    # Slots for the attributes set at start (a __dict__ past 30 keys is a full table per instance: ~1.2 kB more per
    # station in cpsim fleet); __dict__ and __weakref__ keep everything else (new attributes, tests' patches) working.
    __slots__ = ("__dict__", "__weakref__", "_adopted", "_after", "_body", "_clock", "_connection", "_handlers",
                 "_message_timeout", "_on_connected", "_on_disconnected", "_password", "_rng", "_session", "_sleep",
                 "_ssl_context", "_state", "_stopping", "_tls_probe_note", "backoff", "budget_stats",
                 "charge_point_id", "close_timeout", "counters", "last_contact_monotonic", "last_contact_wall",
                 "last_error", "on_other_version", "open_timeout", "ping_interval", "ping_timeout",
                 "redacting_filter", "request_budget_ms_per_s", "security_profile", "speaks", "subprotocols", "url")

    def __init__(
        self,
        endpoint: str,
        charge_point_id: str,
        *,
        on_connected: ConnectedHook,
        handlers: Mapping[str, Handler] | None = None,
        after: Mapping[str, Handler] | None = None,
        on_disconnected: DisconnectedHook | None = None,
        security_profile: int = 0,
        password: Callable[[], str | None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        ping_interval: float | None = 60.0,
        ping_timeout: float | None = None,
        message_timeout: float = 30.0,
        open_timeout: float = 30.0,
        close_timeout: float = 5.0,
        backoff: Backoff | None = None,
        clock: Clock | None = None,
        sleep: Sleeper | None = None,
        rng: random.Random | None = None,
        subprotocols: Sequence[str] = (SUBPROTOCOL,),
        speaks: str = SUBPROTOCOL,
        on_other_version: OtherVersionHook | None = None,
        request_budget_ms_per_s: float = DEFAULT_MS_PER_S,
    ) -> None:
        self.url = build_url(endpoint, charge_point_id)
        if speaks not in DIALECTS or speaks not in subprotocols or not set(subprotocols) <= set(DIALECTS):
            raise ValueError(f"cannot speak {speaks!r} offering {list(subprotocols)}")
        # Offered in this order (preference first); this link's sessions speak ``speaks``.
        self.subprotocols = tuple(subprotocols)
        self.speaks = speaks
        self.on_other_version = on_other_version
        self._adopted: ClientConnection | None = None
        scheme = urlsplit(self.url).scheme
        if scheme not in ("ws", "wss"):
            raise ValueError(f"CSMS endpoint must be ws:// or wss://, got {endpoint!r}")
        if security_profile not in (0, 1, 2, 3):
            raise ValueError(f"security profile must be 0..3, got {security_profile}")
        if security_profile >= 2 and (scheme != "wss" or ssl_context is None):
            raise ValueError(f"security profile {security_profile} needs a wss:// endpoint and an ssl_context")
        if security_profile in (1, 2) and password is None:
            raise ValueError(f"security profile {security_profile} needs a password (AuthorizationKey)")
        self.charge_point_id = charge_point_id
        self.security_profile = security_profile
        # WebSocketPingInterval (<= 0 or None: no pings); changes apply from the next connection.
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self._message_timeout = message_timeout
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.backoff = backoff or Backoff()
        self.counters = LinkCounters()
        # Each connection's budget for the CSMS's requests (agent/ocpp/budget.py); the counts span connections.
        self.request_budget_ms_per_s = request_budget_ms_per_s
        self.budget_stats = BudgetStats(rate_ms_per_s=request_budget_ms_per_s)
        self.last_error: str | None = None
        self.last_contact_monotonic: float | None = None
        self.last_contact_wall: float | None = None
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        # Kept, not copied (the service's tables: every connection's OcppSession shares them too).
        self._handlers: Mapping[str, Handler] = {} if handlers is None else handlers
        self._after: Mapping[str, Handler] = {} if after is None else after
        self._password = password
        self._ssl_context = ssl_context if scheme == "wss" else None
        self._clock: Clock = clock or SystemClock()
        self._sleep: Sleeper = sleep or asyncio.sleep
        self._rng = rng or _JITTER
        self._state = LinkState.DISCONNECTED
        self._connection: ClientConnection | None = None
        self._session: OcppSession | None = None
        self._body: asyncio.Task[None] | None = None
        self._stopping = False
        self._tls_probe_note: str | None = None  # what the one TLS version probe found
        self.redacting_filter = RedactingFilter(self.secrets)

    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def message_timeout(self) -> float:
        return self._message_timeout

    @message_timeout.setter
    def message_timeout(self, seconds: float) -> None:
        """MessageTimeout: applies to the current session at once."""
        self._message_timeout = seconds
        if self._session is not None:
            self._session.message_timeout = seconds

    @property
    def session(self) -> OcppSession | None:
        """The session of the current connection, if connected."""
        return self._session

    def adopt(self, connection: ClientConnection) -> None:
        """Use this open connection (its subprotocol is ours) instead of dialling, once: another link dialled
        it and the CSMS selected our version."""
        self._adopted = connection

    def secrets(self) -> list[str]:
        """Values that must never reach a log: the password and the Basic credentials built from it."""
        password = self._password() if self._password is not None else None
        if not password:
            return []
        return [password, basic_credentials(self.charge_point_id, password)]

    async def run(self) -> None:
        """Keep the link up until ``stop()`` (returns) or cancellation (raises CancelledError)."""
        if self._body is not None:
            raise RuntimeError("Link.run() is already running")
        self._stopping = False
        uninstall = install_redaction(self.redacting_filter)
        self._body = asyncio.create_task(self._keep_connected())
        try:
            await self._body
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not (self._stopping and current is not None and current.cancelling() == 0):
                raise
        finally:
            self._body = None
            self._state = LinkState.DISCONNECTED
            uninstall()

    async def stop(self) -> None:
        """Close the connection cleanly and end ``run()``."""
        self._stopping = True
        adopted, self._adopted = self._adopted, None
        if adopted is not None:  # handed over but never used (e.g. the link was replaced at once)
            await adopted.close(1000, "charge point stopping")
        connection = self._connection
        if connection is not None:
            await connection.close(1000, "charge point stopping")
        body = self._body
        if body is not None and not body.done():
            body.cancel()
            await asyncio.wait({body})

    async def _keep_connected(self) -> None:
        attempt = 0
        while not self._stopping:
            up_since = await self._connect_once()
            if self._stopping:
                return
            if up_since is not None and self._clock.monotonic() - up_since >= self.backoff.stable_after:
                attempt = 0
            delay = self.backoff.delay(attempt, self._rng)
            attempt += 1
            LOG.info("%s: redial in %.1f s", self.charge_point_id, delay)
            await self._sleep(delay)

    async def _connect_once(self) -> float | None:
        """Dial, serve until the connection ends; return when it came up (monotonic), None if it never did."""
        self._state = LinkState.CONNECTING
        try:
            connection = await self._dial()
        except OtherVersionSelected:
            self._state = LinkState.DISCONNECTED
            await asyncio.Event().wait()  # until stopped: the connection belongs to the other version now
            return None
        except Exception as exc:
            self._state = LinkState.DISCONNECTED
            error = _describe_dial_failure(exc, tls=self._ssl_context is not None)
            if self._ssl_context is not None and _reset_in_handshake(exc):
                error += await self._probe_tls_version()
            self.last_error = error
            self.counters.failures += 1  # after last_error: watchers read both together
            LOG.warning("%s: cannot connect to %s: %s", self.charge_point_id, self.url, self.last_error)
            return None
        up_since = self._clock.monotonic()
        self._touch()
        self.counters.connects += 1
        self._connection = connection
        session = OcppSession(
            connection,
            self.charge_point_id,
            self._handlers,
            after=self._after,
            message_timeout=self.message_timeout,
            on_activity=self._touch,
            dialect=DIALECTS[self.speaks],
            budget=RequestBudget(self.request_budget_ms_per_s, stats=self.budget_stats, name=self.charge_point_id),
        )
        self._session = session
        self._state = LinkState.CONNECTED
        LOG.info("%s: connected to %s", self.charge_point_id, self.url)
        serving = asyncio.create_task(session.serve())
        hook = asyncio.create_task(self._run_connected_hook(session, connection))
        try:
            await serving
        finally:
            hook.cancel()
            serving.cancel()
            await asyncio.gather(hook, serving, return_exceptions=True)
            self._session = None
            self._connection = None
            self._state = LinkState.DISCONNECTED
            await connection.close()
        reason = _describe_close(connection)
        self.counters.disconnects += 1
        self.last_error = reason
        LOG.warning("%s: disconnected: %s", self.charge_point_id, reason)
        if self._on_disconnected is not None:
            try:
                outcome = self._on_disconnected(reason)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                LOG.exception("%s: on_disconnected hook failed", self.charge_point_id)
        return up_since

    async def _dial(self) -> ClientConnection:
        if self._adopted is not None:
            connection, self._adopted = self._adopted, None
            return connection
        headers: dict[str, str] = {}
        if self.security_profile in (1, 2):
            password = self._password() if self._password is not None else None
            if not password:
                raise PermissionError("no AuthorizationKey configured for Basic auth")
            headers["Authorization"] = "Basic " + basic_credentials(self.charge_point_id, password)
        ping_interval = self.ping_interval if self.ping_interval and self.ping_interval > 0 else None
        ping_timeout = self.ping_timeout if self.ping_timeout is not None else ping_interval
        connection = await connect(
            self.url,
            subprotocols=[Subprotocol(name) for name in self.subprotocols],
            additional_headers=headers,
            ssl=self._ssl_context,
            proxy=None,  # a charge point talks to its CSMS directly; ignore *_proxy variables
            compression=None,  # many CSMSs lack permessage-deflate; it also costs RAM per connection
            open_timeout=self.open_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            close_timeout=self.close_timeout,
            max_size=MAX_FRAME_BYTES,  # a bigger frame closes the connection with 1009 (message too big)
        )
        selected = connection.subprotocol
        if selected == self.speaks:
            return connection
        if selected in self.subprotocols and self.on_other_version is not None:
            LOG.info("%s: the CSMS selected %s: handing the connection to the OCPP %s side",
                     self.charge_point_id, selected, DIALECTS[selected].version)
            self.on_other_version(selected, connection)
            raise OtherVersionSelected(selected)
        offered = ", ".join(self.subprotocols)
        await connection.close(1002, f"subprotocol required: {offered}"[:120])
        if len(self.subprotocols) == 1:  # the 1.6 wording, kept
            raise SubprotocolRefused(f"server did not accept subprotocol {offered} (selected {selected!r})")
        raise SubprotocolRefused(f"the CSMS selected none of the offered subprotocols {offered} "
                                 f"(selected {selected!r}): refused")

    async def _run_connected_hook(self, session: OcppSession, connection: ClientConnection) -> None:
        try:
            await self._on_connected(session)
        except asyncio.CancelledError:
            raise
        except Exception:
            LOG.exception("%s: on_connected failed; closing the connection to start over", self.charge_point_id)
            await connection.close(1011, "charge point error")

    async def _probe_tls_version(self) -> str:
        """After a silent reset of our handshake: which TLS version the server would speak (once per link,
        so a server that keeps resetting costs one extra connection, not one per redial)."""
        if self._tls_probe_note is None:
            self._tls_probe_note = ""
            parts = urlsplit(self.url)
            if parts.hostname is not None:
                version = await asyncio.to_thread(probe_server_tls_version, parts.hostname, parts.port or 443)
                if version in ("TLSv1", "TLSv1.1", "SSLv3"):
                    self._tls_probe_note = (f"; the server speaks only {version} "
                                            "(unsupported protocol version, we require TLS 1.2+)")
        return self._tls_probe_note

    def _touch(self) -> None:
        self.last_contact_monotonic = self._clock.monotonic()
        self.last_contact_wall = self._clock.wall()


def _reset_in_handshake(exc: Exception) -> bool:
    return isinstance(exc, ConnectionResetError | ssl.SSLEOFError | ConnectionAbortedError) and not str(exc)


def _describe_dial_failure(exc: Exception, *, tls: bool = False) -> str:
    if isinstance(exc, InvalidStatus):
        return f"HTTP {exc.response.status_code} on websocket upgrade"
    if isinstance(exc, SubprotocolRefused):
        return str(exc)
    if isinstance(exc, InvalidHandshake):
        return f"websocket handshake failed: {exc}"
    if isinstance(exc, TimeoutError):
        return "timed out opening the connection"
    if isinstance(exc, PermissionError):
        return str(exc)
    if isinstance(exc, OSError):
        # Always the type and a reason: a peer resetting a TLS handshake raises ConnectionResetError()
        # with no text at all.
        reason = exc.strerror or str(exc)
        if not reason:
            reason = "reset by the server" if isinstance(exc, ConnectionResetError) else "closed by the server"
            if isinstance(exc, ConnectionResetError | ssl.SSLEOFError | ConnectionAbortedError) and tls:
                reason += " during the TLS handshake (no TLS version or cipher suite in common?)"
        return f"connection failed: {type(exc).__name__}: {reason}"
    return f"{type(exc).__name__}: {exc or 'no reason given'}"


def _describe_close(connection: ClientConnection) -> str:
    """Who ended the connection, with which code and why (websockets' close_rcvd / close_sent /
    close_rcvd_then_sent tell who went first)."""
    protocol = connection.protocol
    received, sent = protocol.close_rcvd, protocol.close_sent
    if received is None and sent is not None and sent.code == 1011 and "keepalive" in sent.reason:
        return "pong timeout (keepalive ping unanswered)"
    if sent is not None and (received is None or not protocol.close_rcvd_then_sent):
        text = f"closed by the charge point with code {sent.code}" + (f": {sent.reason}" if sent.reason else "")
        return text if received is not None else text + " (the CSMS did not answer the close)"
    if received is None:
        return "connection lost (no close frame from the CSMS)"
    return f"closed by the CSMS with code {received.code}" + (f": {received.reason}" if received.reason else "")
