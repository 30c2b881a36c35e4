"""Which OCPP version the network side speaks: ``[ocpp] version`` = "1.6", "2.0.1" or "auto".

"1.6" / "2.0.1": that version's service, offering only its subprotocol (a CSMS selecting none is refused
with one log line per attempt, and redialled with back-off). "auto": the link offers ``ocpp2.0.1, ocpp1.6``
(Part 4 section 3.1.2, preference first) and speaks what the CSMS selects. The version runs as one service at
a time; when the CSMS selects the other version, the open connection is handed to a new service of that
version (no extra connection), the old one is stopped and its station subscriptions detached. The version
the CSMS last selected is remembered in the state database, so a restart dials with the right service
(nothing remembered: the 1.6 service dials, offering both).

    runner = VersionRunner(station, config)          # constructs the first service (opens the outbox)
    status = await runner.run_until_stopped(stop)     # RESTART_EXIT_STATUS after a Reset
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable
from typing import Any, cast

from websockets.asyncio.client import ClientConnection

from agent.config import AgentConfig
from agent.db import Migration, migrate
from agent.events import EventListener, StationEvent
from agent.sdnotify import EXIT_RESTART_REQUESTED
from agent.station_api import StationPort
from hal.flag import Flag, first_set
from hal.tasks import cancel_and_wait

log = logging.getLogger("cpagent.ocpp.runner")

V16, V201 = "ocpp1.6", "ocpp2.0.1"
OFFERS: dict[str, tuple[str, ...]] = {"1.6": (V16,), "2.0.1": (V201,), "auto": (V201, V16)}
COMPONENT = "ocpp_version"
MIGRATIONS: list[Migration] = [
    "CREATE TABLE ocpp_version (id INTEGER PRIMARY KEY CHECK (id = 1), subprotocol TEXT NOT NULL)",
]


def remembered(conn: sqlite3.Connection) -> str | None:
    migrate(conn, COMPONENT, MIGRATIONS)
    row = conn.execute("SELECT subprotocol FROM ocpp_version WHERE id = 1").fetchone()
    return None if row is None else str(row[0])


def remember(conn: sqlite3.Connection, subprotocol: str) -> None:
    try:
        conn.execute("INSERT INTO ocpp_version(id, subprotocol) VALUES (1, ?) "
                     "ON CONFLICT(id) DO UPDATE SET subprotocol = excluded.subprotocol", (subprotocol,))
    except sqlite3.Error as exc:  # then the next start dials with the preferred version: harmless
        log.error("cannot remember the OCPP version: %s", exc)


class DetachablePort:
    """The station as one service sees it: its event subscriptions end when it is replaced."""

    def __init__(self, station: StationPort) -> None:
        self._station = station
        self._listeners: list[EventListener] = []
        self._detached = False
        station.subscribe(self._forward)

    def subscribe(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    def detach(self) -> None:
        self._detached = True
        self._listeners.clear()

    def _forward(self, event: StationEvent) -> None:
        if self._detached:
            return
        for listener in list(self._listeners):
            listener(event)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._station, name)


class VersionRunner:
    def __init__(self, station: StationPort, config: AgentConfig) -> None:
        self.station = station
        self.config = config
        self.offer = OFFERS[config.ocpp.version]
        last = remembered(station.shared.db) if len(self.offer) > 1 else None
        # Nothing remembered: start as 1.6 (an existing 1.6 installation runs exactly as before); a 2.0.1 CSMS
        # selecting ocpp2.0.1 costs one hand-over at the first connection, then it is remembered.
        self.speaks = last if last in self.offer else (V16 if V16 in self.offer else self.offer[0])
        self._switch: tuple[str, ClientConnection] | None = None
        self._switched = Flag()
        self.port = DetachablePort(station)
        self.service: Any = self._make(self.speaks)

    def _make(self, subprotocol: str) -> Any:
        port = cast(StationPort, self.port)
        if subprotocol == V201:
            from agent.ocpp.v201.service import OcppService as Service201

            return Service201(port, self.config, subprotocols=self.offer, on_other_version=self._other_version)
        from agent.ocpp.v16.service import OcppService as Service16

        return Service16(port, self.config, subprotocols=self.offer, on_other_version=self._other_version)

    def _other_version(self, subprotocol: str, connection: ClientConnection) -> None:
        self._switch = (subprotocol, connection)
        self._switched.set()

    async def run_until_stopped(self, stop: asyncio.Event | Flag) -> int:
        """Run the service until ``stop`` is set or the CSMS asks for a Reset. Returns the exit status:
        RESTART_EXIT_STATUS after a Reset, 1 when the service ended by itself (a bug), else 0."""
        while True:
            service = self.service
            running = asyncio.create_task(service.run(), name="ocpp")
            # The first of: stop, a Reset, a version switch, the service ending; one wait for all (no task each).
            ended = Flag()
            running.add_done_callback(_sets(ended))
            waits = [running]
            if isinstance(stop, Flag):
                flags = [stop, service.restart_requested, self._switched, ended]
            else:  # an asyncio.Event (cpagent run's): its own wait task
                waits.append(asyncio.create_task(stop.wait()))
                waits[-1].add_done_callback(_sets(ended))
                flags = [service.restart_requested, self._switched, ended]
            try:
                await first_set(*flags)
            finally:
                with contextlib.suppress(Exception):
                    await service.stop()
                await cancel_and_wait(*waits)
            if self._switch is not None and not stop.is_set() and not service.restart_kind:
                subprotocol, connection = self._switch
                self._switch = None
                self._switched.clear()
                log.info("the CSMS selected %s: switching from %s", subprotocol, self.speaks)
                self.port.detach()
                self.port = DetachablePort(self.station)
                self.speaks = subprotocol
                remember(self.station.shared.db, subprotocol)
                self.service = self._make(subprotocol)
                self.service.startup_reported = True  # one StartupOfTheDevice per start, queued by the old side
                self.service.link.adopt(connection)
                continue
            if service.restart_kind:
                return EXIT_RESTART_REQUESTED
            if not stop.is_set() and running.done():
                failure = None if running.cancelled() else running.exception()
                log.critical("the OCPP service ended unexpectedly (%r); exiting so that systemd restarts the "
                             "agent", failure, exc_info=failure)
                return 1
            return 0


def _sets(flag: Flag) -> Callable[[object], None]:
    return lambda _done: flag.set()


def make_runner(station: StationPort, config: AgentConfig) -> VersionRunner | None:
    return VersionRunner(station, config) if config.ocpp.endpoint else None


async def run_until_stopped(
    station: StationPort, config: AgentConfig, stop: asyncio.Event, runner: VersionRunner | None = None
) -> int:
    """For ``cpagent run``: the OCPP side (when ``ocpp.endpoint`` is set) until ``stop`` or a Reset."""
    if not config.ocpp.endpoint:
        await stop.wait()
        return 0
    runner = runner or VersionRunner(station, config)
    return await runner.run_until_stopped(stop)
