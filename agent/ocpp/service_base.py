"""What the OCPP 1.6 and 2.0.1 services (agent/ocpp/v16/service.py, agent/ocpp/v201/service.py) share: the
boot state, online / wall-clock state, the CSMS clock offset, the link (re)dial loop, the per-connection
scaffold (boot, statuses, heartbeat beside the sender loop), the security-event queue and the handler merge.

The version-specific bodies stay in each service: how the link is made, the boot exchange, the sender loop,
status notifications, how a heartbeat is sent and how long its interval is. A subclass sets ``_log`` (its own
logger, so log lines keep their logger name) and ``_task_prefix``, calls ``_init_shared()`` early in its
``__init__`` (before its features are made) and implements the abstract hooks below.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

from agent.db import StorageError
from agent.ocpp.v16.meter_values import ocpp_time
from agent.ocpp.v16.rpc import ConnectionLost, Handler, OcppSession
from hal.flag import Flag
from hal.tasks import cancel_and_wait

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.ocpp.v16.link import Link, OtherVersionHook
    from agent.outbox import Outbox
    from agent.station_api import StationPort
    from hal.clock import Clock

BOOT_RETRY_S = 30.0  # when the CSMS gives no usable interval or does not answer BootNotification
MAX_HEARTBEAT_S = 86400  # a heartbeat at least daily, for the clock
SETTING_SYSTEM_TIME_S = 60.0  # a CSMS clock jump beyond this is a SettingSystemTime security event
# A CSMS currentTime outside [2020, 2100) is refused (the offset stays as it was). The bound is on the CSMS's
# time, not on the offset: a board whose RTC lost power wakes in 1970 and legitimately needs an offset of
# decades, but no charge point running this software sees a real time before 2020 or after 2100, and
# "9999-12-31T23:59:59-12:00" (schema-valid) would push every timestamp past year 9999.
CSMS_TIME_MIN = datetime(2020, 1, 1, tzinfo=UTC).timestamp()
CSMS_TIME_MAX = datetime(2100, 1, 1, tzinfo=UTC).timestamp()

SecuritySink = Callable[[str, str | None, str], None]  # (kind, techInfo, timestamp)


class BootStatus(StrEnum):
    NONE = "None"  # not (yet) accepted in this process
    PENDING = "Pending"
    ACCEPTED = "Accepted"
    REJECTED = "Rejected"


def parse_time(text: str) -> float:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def chain(first: Handler, second: Handler) -> Handler:
    """Two features acting after the same answer (e.g. Core and Security after ChangeConfiguration)."""

    async def both(**kwargs: Any) -> Any:
        await first(**kwargs)
        return await second(**kwargs)

    return both


def merge_handlers(
    from_object: Callable[[object], tuple[dict[str, Handler], dict[str, Handler]]],
    core: object,
    features: Iterable[object],
) -> tuple[dict[str, Handler], dict[str, Handler]]:
    """The ``on_*`` handlers and ``after_*`` hooks of the core handlers and every feature; two handlers for one
    action are a RuntimeError, two hooks run one after the other."""
    on, after = from_object(core)
    for feature in features:
        more_on, more_after = from_object(feature)
        clash = set(on) & set(more_on)
        if clash:
            raise RuntimeError(f"{type(feature).__name__} redefines handlers for {sorted(clash)}")
        on.update(more_on)
        for action, hook in more_after.items():
            after[action] = chain(after[action], hook) if action in after else hook
    return on, after


class BoundHandlers(Mapping[str, Handler]):
    """``{action: getattr(owners[index], name)}``, each method bound when it is looked up: the action -> (owner
    index, method name) table is shared by every service whose owners are of the same classes (cpsim fleet: one
    table instead of ~30 bound methods and a dict per station). Made by ``compact_handlers``."""

    __slots__ = ("_owners", "_table")

    def __init__(self, owners: tuple[object, ...], table: Mapping[str, tuple[int, str]]) -> None:
        self._owners = owners
        self._table = table

    def __getitem__(self, action: str) -> Handler:
        index, name = self._table[action]
        handler: Handler = getattr(self._owners[index], name)
        return handler

    def __contains__(self, action: object) -> bool:
        return action in self._table

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)


_HANDLER_TABLES: dict[tuple[type, ...], Mapping[str, tuple[int, str]]] = {}


def compact_handlers(on: dict[str, Handler], owners: Sequence[object]) -> Mapping[str, Handler]:
    """``on`` (from merge_handlers) as a BoundHandlers when every handler is a method that its owner's class
    defines (looking it up again binds the same function), else ``on`` itself (a handler set on an instance,
    a closure, a class answering through ``__getattr__``)."""
    position = {id(owner): i for i, owner in enumerate(owners)}
    table: dict[str, tuple[int, str]] = {}
    for action, handler in on.items():
        owner, func = getattr(handler, "__self__", None), getattr(handler, "__func__", None)
        if owner is None or func is None or id(owner) not in position:
            return on
        name = func.__name__
        if name in getattr(owner, "__dict__", ()) or getattr(type(owner), name, None) is not func:
            return on
        table[action] = (position[id(owner)], name)
    key = tuple(type(owner) for owner in owners)
    shared = _HANDLER_TABLES.setdefault(key, table)
    return BoundHandlers(tuple(owners), shared if shared == table else table)


class WrappedHandlers(Mapping[str, Handler]):
    """``{action: wrap(action, handler)}`` whose wrapper (the boot gate) is made when the action is looked up,
    once per CSMS request, instead of one wrapper kept per handler for the service's life (cpsim fleet: ~30
    per station, ~3 kB 1.6 and ~12 kB 2.0.1). The Link and each OcppSession keep this mapping, not copies."""

    __slots__ = ("_handlers", "_wrap")

    def __init__(self, handlers: Mapping[str, Handler], wrap: Callable[[str, Handler], Handler]) -> None:
        self._handlers = handlers
        self._wrap = wrap

    def __getitem__(self, action: str) -> Handler:
        return self._wrap(action, self._handlers[action])

    def __contains__(self, action: object) -> bool:
        return action in self._handlers

    def __iter__(self) -> Iterator[str]:
        return iter(self._handlers)

    def __len__(self) -> int:
        return len(self._handlers)


class OcppServiceBase(ABC):
    _log: ClassVar[logging.Logger]
    _task_prefix: ClassVar[str]  # names the service's tasks: "<prefix>-link", "<prefix>-<feature>"
    station: StationPort
    config: AgentConfig
    clock: Clock
    outbox: Outbox
    link: Link
    boot_status: BootStatus
    features: dict[str, Any]
    password_source: Callable[[], str | None]

    def _init_shared(
        self, station: StationPort, config: AgentConfig, clock: Clock | None, subprotocols: Sequence[str],
        on_other_version: OtherVersionHook | None,
    ) -> None:
        if not config.ocpp.endpoint:
            raise ValueError("OcppService needs ocpp.endpoint in the configuration")
        self.station = station
        self.config = config
        self.clock = clock or station.shared.clock
        # What the link offers ("auto": the other version too) and whom it hands a connection of the other one.
        self.subprotocols = tuple(subprotocols)
        self.on_other_version = on_other_version
        self.clock_offset_s = 0.0  # CSMS time - local wall time; the system clock is never set
        self._clock_refusal_logged = False  # one warning per run of unusable currentTimes
        self.restart_requested = Flag()
        self.restart_kind: str | None = None
        self._wake_event = Flag()
        self._heartbeat_changed = Flag()
        self._stopping = False
        self._relink = False
        self.security_sinks: list[SecuritySink] = []  # the persistent security log

    # -- hooks -------------------------------------------------------------------------------------

    @abstractmethod
    def _make_link(self) -> Link:
        raise NotImplementedError

    def _starting(self) -> None:  # noqa: B027 - optional hook
        """First thing in run()."""

    def _side_tasks(self) -> list[asyncio.Task[None]]:
        """Tasks run() keeps beside the link and the features."""
        return []

    def _on_connection(self) -> None:  # noqa: B027 - optional hook
        """First thing on each new connection."""

    @abstractmethod
    async def _boot(self, session: OcppSession) -> bool:
        raise NotImplementedError

    @abstractmethod
    def _refresh_statuses(self, fresh_boot: bool) -> None:
        raise NotImplementedError

    @abstractmethod
    async def _sender(self, session: OcppSession) -> None:
        raise NotImplementedError

    @abstractmethod
    def _heartbeat_interval(self) -> int:
        raise NotImplementedError

    @abstractmethod
    async def _send_heartbeat(self, session: OcppSession) -> None:
        raise NotImplementedError

    # -- state -------------------------------------------------------------------------------------

    @property
    def accepted(self) -> bool:
        return self.boot_status is BootStatus.ACCEPTED

    @property
    def online(self) -> bool:
        session = self.link.session
        return self.accepted and session is not None and not session.closed

    def wall(self) -> float:
        """Wall time as the CSMS sees it (local clock + the offset learnt from its currentTime)."""
        return self.clock.wall() + self.clock_offset_s

    def _password(self) -> str | None:
        return self.password_source()

    def _wake(self) -> None:
        self._wake_event.set()

    async def relink(self) -> None:
        """Close the connection and dial again with the current security_profile / ssl_context / password
        (e.g. SecurityProfile or the password changed). The outbox and the boot state stay."""
        self._relink = True
        await self.link.stop()

    async def _run_link(self) -> None:
        while True:
            await self.link.run()
            if self._stopping or not self._relink:
                return
            self._relink = False
            self.link = self._make_link()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def run(self) -> None:
        self._starting()
        prefix = self._task_prefix
        tasks = [
            asyncio.create_task(self._run_link(), name=f"{prefix}-link"),
            *self._side_tasks(),
            *(
                asyncio.create_task(feature.run(), name=f"{prefix}-{name}")
                for name, feature in self.features.items()
                if hasattr(feature, "run")
            ),
        ]
        try:
            await asyncio.gather(*tasks)  # a feature's run() may end early (nothing to wait for): the others go on
        finally:
            await cancel_and_wait(*tasks)
            # jobs outliving their CALL (firmware, log uploads) end with the service
            await cancel_and_wait(*(job for feature in self.features.values() for job in getattr(feature, "jobs", ())))

    async def stop(self) -> None:
        self._stopping = True
        await self.link.stop()

    async def wait_delivered(self, timeout_s: float) -> None:
        """Wait (bounded) until the outbox is empty, if we are online at all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.online and self.outbox.depth() > 0 and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    # -- per connection ----------------------------------------------------------------------------

    async def _connected(self, session: OcppSession) -> None:
        self._on_connection()
        try:
            fresh_boot = await self._boot(session)
            self._refresh_statuses(fresh_boot)
            self._wake()
            heartbeat = asyncio.create_task(self._heartbeat(session))
            try:
                await self._sender(session)
            finally:
                heartbeat.cancel()
                await asyncio.gather(heartbeat, return_exceptions=True)
        except ConnectionLost:
            self._log.info("connection lost; the outbox keeps %d message(s)", self.outbox.depth())

    async def _heartbeat(self, session: OcppSession) -> None:
        while not session.closed:
            interval = self._heartbeat_interval()
            period = min(interval, MAX_HEARTBEAT_S) if interval > 0 else MAX_HEARTBEAT_S
            self._heartbeat_changed.clear()
            if await self._heartbeat_changed.wait_for(period):
                continue  # interval changed: start the new period now
            await self._send_heartbeat(session)

    def _sync_clock(self, current_time: str) -> None:
        """Follow the CSMS clock (currentTime of Boot/Heartbeat answers), unless its time is unusable."""
        try:
            csms_wall = parse_time(current_time)
            usable = CSMS_TIME_MIN <= csms_wall < CSMS_TIME_MAX
        except (ValueError, TypeError, OverflowError, AttributeError):
            usable = False
        if not usable:
            if not self._clock_refusal_logged:
                self._log.warning("CSMS sent an unusable currentTime %.40r (outside 2020..2099); keeping the "
                                  "clock offset of %.0f s", current_time, self.clock_offset_s)
                self._clock_refusal_logged = True
            return
        self._clock_refusal_logged = False
        offset = csms_wall - self.clock.wall()
        jump = offset - self.clock_offset_s
        if abs(jump) > 2.0:
            self._log.info("CSMS clock differs from ours by %.1f s; timestamps follow the CSMS", offset)
        self.clock_offset_s = offset
        if abs(jump) > SETTING_SYSTEM_TIME_S:
            self.security_event("SettingSystemTime", f"time set from the CSMS clock: moved by {jump:+.0f} s")

    # -- for features ------------------------------------------------------------------------------

    async def request(self, payload: Any) -> Any:
        """One CALL (a ``call`` dataclass of the version) now, outside the sender loop; ConnectionLost when not
        online. One outstanding CALL: it waits for the sender's. Raises CallErrorReceived / CallTimeout /
        InvalidPayload when the CSMS fails to answer."""
        session = self.link.session
        if session is None or session.closed or not self.accepted:
            raise ConnectionLost("not connected to the CSMS")
        return await session.request(payload)

    def security_event(self, kind: str, tech_info: str | None = None) -> None:
        """Queue a SecurityEventNotification (whitepaper / A04 type name, e.g. "StartupOfTheDevice") through the
        durable outbox: it is delivered once the CSMS has accepted us, in order, surviving restarts."""
        payload: dict[str, Any] = {"type": kind[:50], "timestamp": ocpp_time(self.wall())}
        if tech_info:
            payload["techInfo"] = tech_info[:255]
        for sink in self.security_sinks:  # the persistent security log
            try:
                sink(kind, tech_info, payload["timestamp"])
            except Exception:
                self._log.exception("security log sink failed for %s", kind)
        try:
            self.outbox.append("SecurityEventNotification", payload)
        except StorageError as exc:
            self._log.error("security event %s could not be queued: %s", kind, exc)
        self._log.info("security event %s%s", kind, f": {tech_info}" if tech_info else "")
        self._wake()
