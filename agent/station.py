"""The station: devices from the configuration, one Connector per connector, the token reader, the
state database, and the tasks that keep them running."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from agent import db
from agent.authorize import AllowList, AuthDecision, Authorizer
from agent.config import AgentConfig
from agent.connector import Connector
from agent.eventlog import EventLog
from agent.events import (
    ConnectorStatus,
    EventListener,
    SessionStarted,
    SessionStopped,
    StationEvent,
    StatusChanged,
    TokenPresented,
)
from agent.faults import FAULTS
from agent.sessions import SessionStore
from agent.supervisor import Supervisor
from hal import Device, DeviceFaultChanged, Role, TokenReader
from hal.clock import Clock, SystemClock
from hal.registry import load_driver
from hal.types import Fault

if TYPE_CHECKING:
    from agent.diag import OcppDiagnostics

log = logging.getLogger("cpagent.station")


def build_devices(config: AgentConfig) -> dict[str, Device]:
    """Instantiate every configured device. Raises hal.DeviceError naming the device on bad settings."""
    devices: dict[str, Device] = {}
    for name, dev in config.devices.items():
        factory = load_driver(dev.driver)
        devices[name] = factory(name, dev.settings)
    return devices


class Station:
    def __init__(
        self,
        config: AgentConfig,
        *,
        clock: Clock | None = None,
        devices: dict[str, Device] | None = None,
        authorizer: Authorizer | None = None,
    ) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.devices = devices if devices is not None else build_devices(config)
        self.started_wall = time.time()
        self._listeners: list[EventListener] = []
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.db = db.connect(config.state_dir / "state.db")
        os.chmod(config.state_dir / "state.db", 0o600)  # holds the AuthorizationKey; SQLite's -wal/-shm follow
        self.sessions = SessionStore(self.db)
        # The event log is a convenience: its own connection without fsync per row, so logging a status
        # change never costs the loop a disk flush (transaction data keeps synchronous=FULL).
        self._eventlog_db = db.connect(config.state_dir / "state.db", durable=False)
        self.eventlog = EventLog(self._eventlog_db)
        self._listeners.append(self._record_event)
        self.authorizer: Authorizer = authorizer or AllowList(config.allowed_tokens)
        self.connectors: dict[int, Connector] = {}
        for cc in config.connectors:
            self.connectors[cc.id] = Connector(
                cc, self.clock, self.devices, self.sessions, _Delegate(self), self._emit,
                support_contact=config.station.support_contact,
            )
        self.reader: TokenReader | None = None
        if config.token_reader:
            self.reader = self.devices[config.token_reader].role(Role.TOKEN_READER)
            self.devices[config.token_reader].subscribe(self._on_reader_event)
        self.reader_faults: set[Fault] = set()
        self._crashed_devices: set[str] = set()
        for name, device in self.devices.items():
            device.subscribe(lambda _event, name=name: self._device_spoke(name))  # type: ignore[misc]
        self.ocpp_diagnostics: OcppDiagnostics | None = None  # set by the OCPP service when configured
        self.supervisor = Supervisor(on_crash=self._on_task_crash, on_give_up=self._on_task_give_up)

    # ----------------------------------------------------------------- events
    def subscribe(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    def _emit(self, event: StationEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("station event listener failed on %s", type(event).__name__)

    def _record_event(self, event: StationEvent) -> None:
        """Keep what a technician needs in the persisted event log (idTags masked)."""
        now = self.clock.wall()
        if isinstance(event, StatusChanged):
            faults = sorted(event.faults)
            text = f"connector {event.connector_id} {event.status.value}"
            if faults:
                text += ": " + "; ".join(FAULTS[f].explanation for f in faults)
            self.eventlog.add(now, "warning" if faults else "info", "connector", text,
                              {"connector": event.connector_id, "status": event.status.value,
                               "faults": [f.value for f in faults]})
        elif isinstance(event, SessionStarted):
            self.eventlog.add(now, "info", "session",
                              f"connector {event.connector_id} session started for {mask(event.session.id_tag)}",
                              {"connector": event.connector_id, "session": event.session.ref})
        elif isinstance(event, SessionStopped):
            self.eventlog.add(now, "info", "session",
                              f"connector {event.connector_id} session stopped ({event.reason.value}), "
                              f"{event.session.energy_wh:.0f} Wh",
                              {"connector": event.connector_id, "session": event.session.ref,
                               "energy_wh": event.session.energy_wh})
        elif isinstance(event, TokenPresented):
            verdict = "accepted" if event.accepted else "rejected"
            self.eventlog.add(now, "info", "token", f"card {mask(event.id_tag)} {verdict}",
                              {"connector": event.connector_id})

    def _on_reader_event(self, event: object) -> None:
        if isinstance(event, DeviceFaultChanged):
            before = set(self.reader_faults)
            (self.reader_faults.add if event.active else self.reader_faults.discard)(event.fault)
            if self.reader_faults != before:  # connector 0 (the whole charge point) reports the reader
                self._emit(StatusChanged(0, ConnectorStatus.AVAILABLE, frozenset(self.reader_faults)))

    def _connectors_of(self, device_name: str) -> list[Connector]:
        return [
            c for c in self.connectors.values()
            if device_name in (c.config.pilot, c.config.power_switch, c.config.meter, c.config.lock)
        ]

    def _on_task_crash(self, name: str, exc: BaseException) -> None:
        if not name.startswith("device:"):
            return
        device = name.split(":", 1)[1]
        self._crashed_devices.add(device)
        detail = f"driver {device} crashed: {type(exc).__name__}: {exc}"
        self.eventlog.add(self.clock.wall(), "error", "supervisor", detail)
        if device == self.config.token_reader:
            self.reader_faults.add(Fault.READER_SILENT)
        for connector in self._connectors_of(device):
            # A crashed driver cannot be trusted with the hardware: the connector opens and is Faulted
            # until the restarted driver speaks again.
            connector.hal_event(DeviceFaultChanged(Fault.INTERNAL, True, detail))

    def _device_spoke(self, device: str) -> None:
        if device not in self._crashed_devices:
            return
        self._crashed_devices.discard(device)
        self.eventlog.add(self.clock.wall(), "info", "supervisor", f"driver {device} is running again")
        if device == self.config.token_reader:
            self.reader_faults.discard(Fault.READER_SILENT)
        for connector in self._connectors_of(device):
            connector.hal_event(DeviceFaultChanged(Fault.INTERNAL, False, f"driver {device} restarted"))

    def _on_task_give_up(self, name: str) -> None:
        log.critical("%s is down for good; the affected connector stays Faulted", name)

    # ----------------------------------------------------------------- tokens
    async def present_token(self, id_tag: str, connector_id: int | None = None) -> AuthDecision:
        connector = self.connectors.get(connector_id) if connector_id else self._route(id_tag)
        if connector is None:
            # Perhaps a card of the same group (parentIdTag) stopping a running session.
            for c in self.connectors.values():
                if c.session is not None and c.stop_check is not None and await c.stop_check(c.session, id_tag):
                    connector = c
                    break
        if connector is None:
            log.info("token %s presented but no connector can take it", mask(id_tag))
            self._emit(TokenPresented(None, id_tag, False))
            return AuthDecision(False, "Invalid")
        decision = await connector.present_token(id_tag)
        self._emit(TokenPresented(connector.id, id_tag, decision.accepted))
        return decision

    def _route(self, id_tag: str) -> Connector | None:
        conns = list(self.connectors.values())
        for c in conns:
            if c.session is not None and c.session.id_tag.upper() == id_tag.upper():
                return c
        for c in conns:
            state = c.controller.cp_state
            if c.session is None and c.available and state is not None and state.ev_connected:
                return c
        for c in conns:
            if c.session is None and c.available and c.pending_id_tag is None:
                return c
        return None

    async def _read_tokens(self) -> None:
        assert self.reader is not None
        async for token in self.reader.tokens():
            try:
                await self.present_token(token.uid)
            except Exception:
                log.exception("handling token failed")

    # ----------------------------------------------------------------- lifecycle
    async def run(self, ready: Callable[[], None] | None = None) -> None:
        from agent.diag import DiagServer

        self.diag = DiagServer(self, self.config.diag_socket, self.ocpp_diagnostics)
        try:
            await self.diag.start()
        except OSError as exc:
            # The charger must charge even if the technician's socket cannot be created.
            log.error("diagnostic socket %s unavailable: %s", self.config.diag_socket, exc)
        for name, device in self.devices.items():
            self.supervisor.spawn(f"device:{name}", device.run)
        if self.reader is not None:
            self.supervisor.spawn("tokens", self._read_tokens, critical=False)
        if ready:
            ready()
        try:
            await asyncio.Event().wait()
        finally:
            await self.supervisor.stop()
            await self.diag.stop()

    def close(self) -> None:
        # Leave the hardware safe: nothing energised when the agent stops.
        for connector in self.connectors.values():
            try:
                connector.switch.open_relay()
            except Exception:
                log.exception("connector %d: could not open the relay on shutdown", connector.id)
        self.db.close()
        self._eventlog_db.close()


class _Delegate:
    """Lets the station swap its authorizer (e.g. when OCPP comes up) without rebuilding connectors."""

    def __init__(self, station: Station) -> None:
        self._station = station

    async def authorize(self, id_tag: str) -> AuthDecision:
        return await self._station.authorizer.authorize(id_tag)


def mask(id_tag: str) -> str:
    """idTags are personal data: show only the last four characters in logs and the CLI."""
    return "*" * max(0, len(id_tag) - 4) + id_tag[-4:]
