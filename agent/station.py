"""The station: devices from the configuration, one Connector per connector, the token reader, the
state database, and the tasks that keep them running."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
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
from agent.redact import mask
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
    StopReason,
    TaskView,
    TokenAuthority,
)
from agent.supervisor import Supervisor
from hal import Device, DeviceFaultChanged, Role, TokenReader
from hal.clock import Clock, SystemClock
from hal.registry import load_driver
from hal.types import Fault

if TYPE_CHECKING:
    from agent.energy.site import SiteController

log = logging.getLogger("cpagent.station")


def build_devices(config: AgentConfig) -> dict[str, Device]:
    """Instantiate every configured device. Raises hal.DeviceError naming the device on bad settings."""
    devices: dict[str, Device] = {}
    for name, dev in config.devices.items():
        factory = load_driver(dev.driver)
        devices[name] = factory(name, dev.settings)
    return devices


class Station:
    """The control side. It implements ``agent.station_api.StationPort`` (the methods under "the station
    interface"), which is all the network side (OCPP, the diagnostic socket) may use."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        clock: Clock | None = None,
        devices: dict[str, Device] | None = None,
        authorizer: Authorizer | None = None,
        eventlog: EventLog | None = None,
    ) -> None:
        """``eventlog``: an event log the caller owns (cpsim fleet: one for all its stations, on one
        connection); by default the station opens its own on state.db."""
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.devices = devices if devices is not None else build_devices(config)
        self.started_wall = time.time()
        self._listeners: list[EventListener] = []
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.db = db.connect(config.state_dir / "state.db")
        if db.CONNECT_HOOK is None:  # (cpsim fleet: a view of the fleet's one file, no state.db of its own)
            os.chmod(config.state_dir / "state.db", 0o600)  # holds the AuthorizationKey; SQLite's -wal/-shm follow
        self.sessions = SessionStore(self.db)
        # The event log is a convenience: its own connection without fsync per row, so logging a status
        # change never costs the loop a disk flush (transaction data keeps synchronous=FULL).
        self._eventlog_db = None
        if eventlog is None:
            self._eventlog_db = db.connect(config.state_dir / "state.db", durable=False)
            eventlog = EventLog(self._eventlog_db)
        self.eventlog = eventlog
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
        self.ocpp_diagnostics: NetworkDiagnostics | None = None  # attached by the OCPP service when configured
        self.supervisor = Supervisor(on_crash=self._on_task_crash, on_give_up=self._on_task_give_up)
        self._shared = SharedResources(self.db, self.sessions, self.eventlog, self.clock)
        self._site_tasks: set[asyncio.Task[None]] = set()
        self.site = self._site_controller(config)  # local energy management (issue 15), None when off

    # ----------------------------------------------------------------- the station interface (StationPort)
    @property
    def shared(self) -> SharedResources:
        return self._shared

    def facts(self) -> StationFacts:
        s = self.config.station
        return StationFacts(
            charge_point_id=s.charge_point_id,
            vendor=s.vendor,
            model=s.model,
            serial_number=s.serial_number,
            firmware_version=s.firmware_version,
            connector_ids=tuple(self.connectors),
            has_reader=self.reader is not None,
            reader_faults=frozenset(self.reader_faults),
            started_wall=self.started_wall,
            tasks=tuple(TaskView(n, t.alive, t.gave_up, t.last_error) for n, t in self.supervisor.tasks.items()),
        )

    def connector_ids(self) -> tuple[int, ...]:
        return tuple(self.connectors)

    def connector_view(self, connector_id: int) -> ConnectorView:
        return self.connectors[connector_id].view()

    def connector_views(self) -> Mapping[int, ConnectorView]:
        return {cid: c.view() for cid, c in self.connectors.items()}

    def begin_authorized(self, connector_id: int, id_tag: str, parent_id_tag: str | None = None) -> bool:
        return self.connectors[connector_id].begin_authorized(id_tag, parent_id_tag)

    def stop_session(self, connector_id: int, reason: StopReason) -> Session | None:
        return self.connectors[connector_id].stop_session(reason)

    def set_current_limit(self, connector_id: int, amps: float | None) -> None:
        self.connectors[connector_id].set_current_limit(amps)

    def set_available(self, connector_id: int, available: bool) -> None:
        self.connectors[connector_id].set_available(available)

    def set_maintenance(self, connector_id: int, on: bool) -> None:
        self.connectors[connector_id].set_maintenance(on)

    async def unlock(self, connector_id: int) -> bool:
        return self.connectors[connector_id].unlock()

    def hold_energy(self, connector_id: int, reason: EnergyHold) -> None:
        self.connectors[connector_id].hold_energy(reason)

    def release_energy(self, connector_id: int, reason: EnergyHold) -> None:
        self.connectors[connector_id].release_energy(reason)

    def set_reservation(self, connector_id: int, reservation: ConnectorReservation | None) -> None:
        self.connectors[connector_id].set_reservation(reservation)

    def set_display_extra(self, connector_id: int, extra: tuple[tuple[str, str], ...]) -> None:
        self.connectors[connector_id].set_display_extra(extra)

    def set_operator_messages(self, connector_id: int, messages: tuple[OperatorMessage, ...]) -> None:
        self.connectors[connector_id].set_operator_messages(messages)

    def configure_connector(self, connector_id: int, settings: ConnectorSettings) -> None:
        self.connectors[connector_id].configure(settings)

    def register_authority(self, authority: TokenAuthority) -> None:
        self.authorizer = authority
        for connector in self.connectors.values():
            connector.stop_check = authority.may_stop

    def signed_reading_pending(self, connector_id: int, session_ref: str, which: str) -> bool:
        connector = self.connectors.get(connector_id)
        return connector is not None and connector.signed_reading(session_ref, which) is not None

    async def signed_reading(self, connector_id: int, session_ref: str, which: str) -> str | None:
        connector = self.connectors.get(connector_id)
        task = connector.signed_reading(session_ref, which) if connector is not None else None
        if task is None:
            return None
        return await asyncio.shield(task)

    async def manual_relay(self, connector_id: int, closed: bool) -> None:
        self.connectors[connector_id].manual_relay(closed)

    async def manual_pwm(self, connector_id: int, duty_percent: float) -> None:
        self.connectors[connector_id].manual_pwm(duty_percent)

    async def clear_faults(self, connector_id: int) -> bool:
        return self.connectors[connector_id].controller.clear_faults()

    def attach_network_diagnostics(self, provider: NetworkDiagnostics) -> None:
        self.ocpp_diagnostics = provider

    def network_diagnostics(self) -> NetworkDiagnostics | None:
        return self.ocpp_diagnostics

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

    def _site_controller(self, config: AgentConfig) -> SiteController | None:
        if not config.site.enabled:
            return None
        from agent.energy.site import SiteController, find_site_meter, load_of

        site = SiteController(
            config.site,
            find_site_meter(config.site, self.devices),
            self.clock,
            loads=lambda: [load_of(c) for c in self.connectors.values()],
            apply=lambda cid, amps, reason: self.connectors[cid].set_site_limit(amps, reason),
            on_fault=self._on_site_fault,
            switch=self._site_phase_switch,
        )
        site.step()  # the failsafe current until the site meter has answered: nothing starts above it
        return site

    def _site_phase_switch(self, connector_id: int, phases: int) -> None:
        """The solar rules ask for a 1/3-phase switch: run the IEC sequence in its own task."""

        async def switch() -> None:
            try:
                await self.connectors[connector_id].switch_phases(phases)
            except Exception as exc:  # refused or failed: logged by the switcher; the rules try again later
                log.info("connector %d: phase switch to %d not done: %s", connector_id, phases, exc)

        try:
            task = asyncio.get_running_loop().create_task(switch())
        except RuntimeError:  # no loop yet (the first step runs in __init__): the rules ask again
            return
        self._site_tasks.add(task)
        task.add_done_callback(self._site_tasks.discard)

    def _on_site_fault(self, active: bool, detail: str) -> None:
        """The site meter is a station-level fault (connector 0, like the reader's)."""
        before = set(self.reader_faults)
        (self.reader_faults.add if active else self.reader_faults.discard)(Fault.SITE_METER)
        self.eventlog.add(self.clock.wall(), "warning" if active else "info", "site", detail)
        if self.reader_faults != before:
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
    async def run(self, ready: Callable[[], None] | None = None, *, serve_diag: bool = True) -> None:
        """Run the devices until cancelled. ``serve_diag``: also serve the technician's socket here (one
        process); the split agent serves it on the network side instead (agent/split.py)."""
        diag = None
        if serve_diag:  # the control side of the split agent never imports the technician's socket
            from agent.diag import DiagServer

            diag = DiagServer(self, self.config.diag_socket, self.ocpp_diagnostics)
        if diag is not None:
            try:
                await diag.start()
            except OSError as exc:
                # The charger must charge even if the technician's socket cannot be created.
                log.error("diagnostic socket %s unavailable: %s", self.config.diag_socket, exc)
        self.start_devices()
        if ready:
            ready()
        try:
            await asyncio.get_running_loop().create_future()  # until cancelled (a bare future: no Event)
        finally:
            await self.stop_devices()
            if diag is not None:
                await diag.stop()

    def start_devices(self) -> None:
        """Start the devices (a supervised task each, or ``start()`` for one that needs no task), the token
        reader and the site controller: run() without its own task and the diagnostic socket, for a caller
        that keeps no task per station (cpsim fleet). stop_devices() ends them."""
        for name, device in self.devices.items():
            if device.needs_task:
                self.supervisor.spawn(f"device:{name}", device.run)
            else:
                device.start()
        if self.reader is not None:
            self.supervisor.spawn("tokens", self._read_tokens, critical=False)
        if self.site is not None:
            self.supervisor.spawn("site", self.site.run)

    async def stop_devices(self) -> None:
        await self.supervisor.stop()
        for device in self.devices.values():
            if not device.needs_task:
                device.stop()

    def close(self) -> None:
        # Leave the hardware safe: nothing energised when the agent stops.
        for connector in self.connectors.values():
            try:
                connector.switch.open_relay()
            except Exception:
                log.exception("connector %d: could not open the relay on shutdown", connector.id)
        self.db.close()
        if self._eventlog_db is not None:
            self._eventlog_db.close()


class _Delegate:
    """Lets the station swap its authorizer (e.g. when OCPP comes up) without rebuilding connectors."""

    def __init__(self, station: Station) -> None:
        self._station = station

    async def authorize(self, id_tag: str) -> AuthDecision:
        return await self._station.authorizer.authorize(id_tag)
