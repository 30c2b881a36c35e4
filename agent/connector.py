"""One connector: wires its hardware roles to the IEC 61851 controller and runs the session logic
(plug-first and authorize-first), persisting every session.

The safety path never passes through here asynchronously: board events are handed to the
controller synchronously inside the device's listener call, and the controller commands the board
at once. Session bookkeeping (SQLite, display, station events) happens after that.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable

from agent.authorize import AuthDecision, Authorizer
from agent.charge_control import ChargeController, ChargeState, ControlLimits
from agent.config import ConnectorConfig
from agent.db import StorageError
from agent.events import (
    ConnectorStatus,
    MeterUpdate,
    SessionStarted,
    SessionStopped,
    StationEvent,
    StatusChanged,
    StopReason,
)
from agent.faults import info as fault_info
from agent.operator_messages import MAX_OPERATOR_MESSAGES, compose_screen
from agent.phase_switch import PhaseSwitcher
from agent.redact import mask
from agent.sessions import Session, SessionStore
from agent.station_api import ConnectorReservation, ConnectorSettings, ConnectorView, EnergyHold, OperatorMessage
from hal import (
    ConnectorLock,
    ControlPilot,
    Device,
    DeviceFaultChanged,
    Display,
    FaultFlagsChanged,
    HalEvent,
    LockFeedback,
    Meter,
    MeterSample,
    PilotStateChanged,
    PowerSwitch,
    ProximityChanged,
    RelayFeedback,
    Role,
    Screen,
    ScreenState,
)
from hal.clock import Clock, TimerHandle
from hal.roles import SignedMeter
from hal.types import Fault

log = logging.getLogger("cpagent.connector")

PROGRESS_PERSIST_S = 5.0  # how often the last meter value of an open session is written down
RESUME_GRACE_S = 3.0  # after a restart, how long to wait for the board to say whether the EV is still there
SIGNING_TIMEOUT_S = 10.0  # a signed reading that takes longer is given up (the session goes on regardless)


class Connector:
    # Slots for the attributes set at start (a __dict__ past 30 keys is a full table per instance: ~1.2 kB more per
    # station in cpsim fleet); __dict__ and __weakref__ keep everything else (new attributes, tests' patches) working.
    __slots__ = ("__dict__", "__weakref__", "_clock", "_emit", "_finished_plugged", "_pending", "_resume_timer",
                 "_sessions", "_signing", "_status", "_status_faults", "_support_contact", "authorizer", "available",
                 "config", "connection_timeout_s", "controller", "device_faults", "display", "display_extra", "id",
                 "last_sample", "lock", "lock_held_for", "maintenance", "meter", "operator_messages",
                 "phase_switcher", "pilot", "reservation", "session", "stop_check", "stop_on_ev_disconnect",
                 "switch", "unlock_on_ev_disconnect", "used_reservation")

    def __init__(
        self,
        config: ConnectorConfig,
        clock: Clock,
        devices: dict[str, Device],
        sessions: SessionStore,
        authorizer: Authorizer,
        emit: Callable[[StationEvent], None],
        *,
        support_contact: str = "",
    ) -> None:
        self.id = config.id
        self.config = config
        self._clock = clock
        self._sessions = sessions
        self.authorizer = authorizer
        self._emit = emit
        self._support_contact = support_contact
        pilot_dev = devices[config.pilot]
        switch_dev = devices[config.power_switch]
        self.pilot: ControlPilot = pilot_dev.role(Role.PILOT)
        self.switch: PowerSwitch = switch_dev.role(Role.POWER_SWITCH)
        self.lock: ConnectorLock | None = devices[config.lock].role(Role.LOCK) if config.lock else None
        self.meter: Meter | None = devices[config.meter].role(Role.METER) if config.meter else None
        self.display: Display | None = devices[config.display].role(Role.DISPLAY) if config.display else None
        self.controller = ChargeController(
            clock,
            self.pilot,
            self.switch,
            ControlLimits(
                max_current_a=config.max_current_a,
                phases=config.phases,
                ventilation_available=config.ventilation_available,
                fixed_cable=config.fixed_cable,
                overcurrent_margin_a=config.overcurrent_margin_a,
                overcurrent_factor=config.overcurrent_factor,
                overcurrent_time_s=config.overcurrent_time_s,
            ),
            on_change=self._on_controller_change,
        )
        self.phase_switcher = PhaseSwitcher(
            self.id,
            self.controller,
            switch_dev.role(Role.PHASE_SWITCH) if Role.PHASE_SWITCH in switch_dev.roles else None,
            installed_phases=config.phases,
            settle_s=config.phase_switch_settle_s,
            max_switches=config.max_phase_switches,
        )
        self.session: Session | None = None
        self.last_sample: MeterSample | None = None
        self.device_faults: set[Fault] = set()
        self.available = True
        self.maintenance = False
        self._pending: tuple[str, float] | None = None  # (id_tag, monotonic expiry) authorized before plug-in
        self._finished_plugged = False  # a session ended while the EV is still plugged in -> Finishing
        self._last_persist = 0.0
        self._status: ConnectorStatus | None = None
        self._status_faults: frozenset[Fault] = frozenset()
        self._resume_timer: TimerHandle | None = None
        self.connection_timeout_s = 60.0
        self.stop_on_ev_disconnect = True  # unplugging the EV ends the session (OCPP may say otherwise)
        # OCPP UnlockConnectorOnEVSideDisconnect: false keeps the cable locked in the socket after it was
        # pulled from the EV, until the session's idTag is presented again or the CSMS unlocks it.
        self.unlock_on_ev_disconnect = True
        self.lock_held_for: str | None = None
        # Set by the OCPP service: may another idTag (same parentIdTag) stop this session?
        self.stop_check: Callable[[Session, str], Awaitable[bool]] | None = None
        # Set by a reservation feature (set_reservation): while held and idle the connector is Reserved.
        self.reservation: ConnectorReservation | None = None
        self.used_reservation: tuple[str, ConnectorReservation] | None = None  # (session ref, what it used)
        # Extra (key, text) lines for the display, e.g. ("price", ...), ("cost", ...), set by a pricing feature.
        self.display_extra: tuple[tuple[str, str], ...] = ()
        self.operator_messages: tuple[OperatorMessage, ...] = ()  # from the network side (agent/operator_messages.py)
        # Signed meter readings in progress: (session ref, "start"|"stop") -> task returning the record or None.
        self._signing: dict[tuple[str, str], asyncio.Task[str | None]] = {}

        seen: set[int] = set()
        for dev in (pilot_dev, switch_dev, *(devices[n] for n in (config.lock, config.meter) if n)):
            if id(dev) not in seen:
                seen.add(id(dev))
                dev.subscribe(self._on_hal_event)

        # A session left open by a crash or power loss: resume if the EV is still there, else close it.
        open_session = sessions.open_session(self.id)
        if open_session is not None:
            self.session = open_session
            self._resume_timer = clock.call_later(RESUME_GRACE_S, self._resolve_resume)

    # ----------------------------------------------------------------- HAL input (safety path first)
    def hal_event(self, event: HalEvent) -> None:
        """Feed an event as if a device had sent it (the station uses it for crashed drivers)."""
        self._on_hal_event(event)

    def _on_hal_event(self, event: HalEvent) -> None:
        # Status is published once, after the session logic has seen the event too (an unplug is
        # "session stopped, Available", not a blip of SuspendedEV in between).
        self._in_event = True
        try:
            self._handle_hal_event(event)
        finally:
            self._in_event = False
        self._publish_status()

    _in_event = False

    def _handle_hal_event(self, event: HalEvent) -> None:
        c = self.controller
        if isinstance(event, PilotStateChanged):
            c.on_cp_state(event.state)
            self._after_cp_state()
        elif isinstance(event, RelayFeedback):
            c.on_relay_feedback(event.closed)
        elif isinstance(event, FaultFlagsChanged):
            c.on_fault_flags(event.active)
        elif isinstance(event, DeviceFaultChanged):
            c.on_device_fault(event.fault, event.active)
            if event.active:
                self.device_faults.add(event.fault)
                log.warning("connector %d: %s (%s)", self.id, fault_info(event.fault).explanation, event.detail)
            elif event.fault in self.device_faults:  # a driver's first "not faulted" is no recovery
                self.device_faults.discard(event.fault)
                log.info("connector %d: %s recovered", self.id, event.fault.value)
            if event.fault is Fault.BOARD_SILENT and event.active:
                self._after_cp_state()
        elif isinstance(event, ProximityChanged):
            c.on_proximity(event.ampacity_a)
        elif isinstance(event, MeterSample):
            c.on_measured_current(event.current_a)
            self._on_sample(event)
        elif isinstance(event, LockFeedback):
            pass

    def _after_cp_state(self) -> None:
        state = self.controller.cp_state
        if self._resume_timer is not None and state is not None:
            self._resolve_resume()
        if state is None:
            return
        if not state.ev_connected:
            self._finished_plugged = False
            if self.session is not None and self._resume_timer is None and state.letter == "A":
                if self.stop_on_ev_disconnect:
                    if not self.unlock_on_ev_disconnect and self.lock is not None and not self.config.fixed_cable:
                        self.lock_held_for = self.session.id_tag
                    self.stop_session(StopReason.EV_DISCONNECTED)
                # else the transaction stays open (OCPP StopTransactionOnEVSideDisconnect = false) and
                # energy flows again when an EV is plugged back in.
            return
        if self.session is not None and self._resume_timer is None:
            # Re-plugged into a transaction kept open: the session authorizes this EV again. Only that
            # reason ends here; any other hold (invalid idTag, availability, ...) stays.
            self.controller.release_energy(EnergyHold.NOT_AUTHORIZED)
        if self.session is None and self._pending is not None:
            tag, expiry = self._pending
            self._pending = None
            if self._clock.monotonic() <= expiry:
                self._start_session(tag)

    def _resolve_resume(self) -> None:
        if self._resume_timer is None:
            return
        self._resume_timer.cancel()
        self._resume_timer = None
        session = self.session
        if session is None:
            return
        state = self.controller.cp_state
        if state is not None and state.ev_connected and self.available:
            log.info("connector %d: resuming session %s after restart (EV still connected)", self.id, session.ref)
            self.controller.release_energy(EnergyHold.NOT_AUTHORIZED)
            if self.lock is not None:
                self.lock.lock()
        else:
            log.warning("connector %d: closing session %s after power loss", self.id, session.ref)
            self.stop_session(StopReason.POWER_LOSS, energy_wh=session.last_energy_wh)

    def _on_sample(self, sample: MeterSample) -> None:
        self.last_sample = sample
        session = self.session
        if session is not None and self._resume_timer is None:
            now = self._clock.monotonic()
            if now - self._last_persist >= PROGRESS_PERSIST_S:
                self._last_persist = now
                try:
                    self._sessions.progress(session.ref, self._clock.wall(), sample.energy_import_wh)
                except StorageError as exc:
                    log.error("connector %d: %s", self.id, exc)
        self._emit(MeterUpdate(self.id, sample, session.ref if session else None))
        self._refresh_display()

    def _on_controller_change(self) -> None:
        if (
            self.session is None
            and self.lock is not None
            and self.controller.relay_feedback_closed is False
            and not self.config.fixed_cable
            and self.lock_held_for is None
        ):
            self.lock.unlock()
        self._publish_status()

    # ----------------------------------------------------------------- session logic
    async def present_token(self, id_tag: str) -> AuthDecision:
        """A card at the reader (or an app start) for this connector."""
        if self.session is not None:
            if self.session.id_tag.upper() == id_tag.upper():
                self.stop_session(StopReason.LOCAL)
                return AuthDecision(True)
            if self.stop_check is not None and await self.stop_check(self.session, id_tag):
                self.stop_session(StopReason.LOCAL, stop_id_tag=id_tag)
                return AuthDecision(True)
            return AuthDecision(False, "Invalid")
        if self.lock_held_for is not None and self.lock_held_for.upper() == id_tag.upper():
            self.release_held_lock()  # the owner comes back for the cable: no new session
            return AuthDecision(True)
        decision = await self.authorizer.authorize(id_tag)
        if decision.accepted and not self.begin_authorized(id_tag, decision.parent_id_tag):
            decision = AuthDecision(False, "Invalid")
        self._publish_status()
        return decision

    def admits(self, id_tag: str, parent_id_tag: str | None = None) -> bool:
        """May this idTag start here (no reservation, or one that admits it)?"""
        return self.reservation is None or self.reservation.admits(id_tag, parent_id_tag)

    def set_operator_messages(self, messages: tuple[OperatorMessage, ...]) -> None:
        """Operator messages for the display (bounded); what is shown is decided at every screen."""
        self.operator_messages = tuple(messages[:MAX_OPERATOR_MESSAGES])
        self._refresh_display()

    def set_display_extra(self, extra: tuple[tuple[str, str], ...]) -> None:
        """Extra lines for the display (e.g. price and cost); shown at once and with every later screen."""
        self.display_extra = extra
        self._refresh_display()

    def set_reservation(self, reservation: ConnectorReservation | None) -> None:
        self.reservation = reservation
        if reservation is not None and self.session is None:
            self.controller.hold_energy(EnergyHold.RESERVED)
        else:
            self.controller.release_energy(EnergyHold.RESERVED)
        self._publish_status()

    # ----------------------------------------------------------------- energy authority
    # The one place that decides whether energy may flow: a set of named reasons (EnergyHold) kept by the
    # controller. Callers (OCPP, the diagnostic socket, the session logic) hold and release their own
    # reason; energy flows only while none is held, and nothing else (pilot changes, timers) ends one.
    def hold_energy(self, reason: EnergyHold) -> None:
        """Withhold energy for ``reason`` (the relay opens inside the call) until ``release_energy(reason)``."""
        self.controller.hold_energy(reason)
        self._publish_status()

    def release_energy(self, reason: EnergyHold) -> None:
        self.controller.release_energy(reason)
        self._publish_status()

    @property
    def energy_holds(self) -> frozenset[EnergyHold]:
        """Every reason energy is withheld now, including a current limit below 6 A (ZERO_LIMIT)."""
        return self.controller.energy_holds

    def set_current_limit(self, amps: float | None) -> None:
        """An external current limit per phase (None = only the installation's and the cable's)."""
        self.controller.set_external_limit(amps)

    def set_site_limit(self, amps: float | None, reason: str = "site-fuse") -> None:
        """The site allocation (agent/energy/site.py, control side): min with every other limit; 0 pauses."""
        self.controller.set_site_limit(amps, reason)

    def begin_authorized(self, id_tag: str, parent_id_tag: str | None = None) -> bool:
        """Start now if the EV is plugged in, else hold the authorization for ConnectionTimeOut.
        False if a reservation holds the connector for someone else."""
        if not self.admits(id_tag, parent_id_tag):
            log.info("connector %d: reserved for another idTag", self.id)
            return False
        state = self.controller.cp_state
        if state is not None and state.ev_connected:
            self._start_session(id_tag)
        else:
            self._pending = (id_tag, self._clock.monotonic() + self.connection_timeout_s)
            self._clock.call_later(self.connection_timeout_s + 0.01, self._expire_pending)
            self._publish_status()
        return True

    def _expire_pending(self) -> None:
        if self._pending is not None and self._clock.monotonic() > self._pending[1]:
            log.info("connector %d: authorization for %s expired before plug-in", self.id, self._pending[0])
            self._pending = None
            self._publish_status()

    @property
    def pending_id_tag(self) -> str | None:
        return self._pending[0] if self._pending else None

    def _energy_now(self) -> float:
        if self.last_sample is not None:
            return self.last_sample.energy_import_wh
        if self.meter is not None and self.meter.latest is not None:
            return self.meter.latest.energy_import_wh
        return 0.0

    def release_held_lock(self) -> None:
        """End a hold from UnlockConnectorOnEVSideDisconnect=false and unlock (if nothing else needs it)."""
        self.lock_held_for = None
        self._on_controller_change()

    def _start_session(self, id_tag: str) -> None:
        if not self.available or self.session is not None:
            return
        self.lock_held_for = None  # a new session owns the lock now
        try:
            session = self._sessions.begin(self.id, id_tag, self._clock.wall(), self._energy_now())
        except StorageError as exc:
            # No record, no charge: we could not account for the energy.
            log.error("connector %d: refusing to start: %s", self.id, exc)
            return
        self.session = session
        self.phase_switcher.new_session()
        self._finished_plugged = False
        self._last_persist = self._clock.monotonic()
        if self.reservation is not None:  # admitted in begin_authorized: this session uses it up
            self.used_reservation = (session.ref, self.reservation)
            self.reservation = None
        self.controller.release_energy(EnergyHold.RESERVED)
        log.info("connector %d: session %s started for %s", self.id, session.ref, mask(id_tag))
        self._sign(session.ref, "start")  # only queued here; listeners of SessionStarted can find it
        self._emit(SessionStarted(self.id, session))
        if self.lock is not None and not self.config.fixed_cable:
            self.lock.lock()
        self.controller.release_energy(EnergyHold.NOT_AUTHORIZED)
        self._publish_status()

    def stop_session(
        self, reason: StopReason, *, energy_wh: float | None = None, stop_id_tag: str | None = None
    ) -> Session | None:
        """End the running session; ``stop_id_tag``: the card that ended it when it is not the session's own."""
        session = self.session
        if session is None:
            return None
        was_in_event, self._in_event = self._in_event, True
        try:
            self.controller.hold_energy(EnergyHold.NOT_AUTHORIZED)
            for hold in _SESSION_HOLDS:  # they were about this session
                self.controller.release_energy(hold)
            if self.reservation is not None:
                self.controller.hold_energy(EnergyHold.RESERVED)
        finally:
            self._in_event = was_in_event
        self.session = None
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None
        energy = self._energy_now() if energy_wh is None else energy_wh
        try:
            finished = self._sessions.finish(session.ref, self._clock.wall(), energy, reason.value,
                                             stop_id_tag=stop_id_tag)
        except StorageError as exc:
            log.error("connector %d: %s", self.id, exc)
            finished = None
        state = self.controller.cp_state
        self._finished_plugged = state is not None and state.ev_connected
        self._sign(session.ref, "stop")  # only queued here; listeners of SessionStopped can find it
        if finished is not None:
            log.info(
                "connector %d: session %s stopped (%s), %.0f Wh", self.id, session.ref, reason.value, finished.energy_wh
            )
            self._emit(SessionStopped(self.id, finished, reason))
        self._on_controller_change()
        return finished

    # ----------------------------------------------------------------- signed meter readings
    def _sign(self, ref: str, which: str) -> None:
        """Ask a signing meter for a signed reading, in the background: never on the safety path."""
        meter = self.meter
        if not isinstance(meter, SignedMeter) or not meter.signs:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self._signed_reading(meter, ref, which), name=f"sign-{which}-{self.id}")
        self._signing[(ref, which)] = task
        task.add_done_callback(lambda _t: self._forget_signing((ref, which), task))

    def _forget_signing(self, key: tuple[str, str], task: asyncio.Task[str | None]) -> None:
        # Keep the finished task briefly so a consumer that asks late still gets its result.
        def forget() -> None:
            if self._signing.get(key) is task:
                del self._signing[key]

        self._clock.call_later(60.0, forget)

    async def _signed_reading(self, meter: SignedMeter, ref: str, which: str) -> str | None:
        try:
            async with asyncio.timeout(SIGNING_TIMEOUT_S):
                if which == "update":
                    return await meter.update_signed(ref)  # an intermediate reading: not kept in the session
                record = await (meter.start_signed(ref) if which == "start" else meter.stop_signed(ref))
        except Exception as exc:  # a meter that cannot sign must not disturb the session
            log.warning("connector %d: signed %s reading failed: %s", self.id, which, exc)
            return None
        try:
            if which == "start":
                self._sessions.set_signed(ref, start=record)
            else:
                self._sessions.set_signed(ref, stop=record)
        except StorageError as exc:
            log.error("connector %d: %s", self.id, exc)
        return record

    def signed_reading(self, ref: str, which: str) -> asyncio.Task[str | None] | None:
        """The signed "start"/"stop" reading of session ``ref`` in progress (or just done), if any; for
        "update" a fresh intermediate one (clock-aligned values) while ``ref`` is the running session."""
        if which == "update":
            running = self._signing.get((ref, which))
            if (running is None or running.done()) and self.session is not None and self.session.ref == ref:
                self._sign(ref, which)
        return self._signing.get((ref, which))

    async def switch_phases(self, phases: int) -> bool:
        """Switch the supply between 1 and 3 phases in the IEC 61851 order (agent/phase_switch.py): pause,
        relay open, switch, settle, resume. False if already there; raises PhaseSwitchRefused (board cannot,
        cap of ``max_phase_switches`` per session reached, ...) or PhaseSwitchFailed."""
        return await self.phase_switcher.switch(phases)

    def set_available(self, available: bool) -> None:
        self.available = available
        (self.controller.release_energy if available else self.controller.hold_energy)(EnergyHold.UNAVAILABLE)
        self._publish_status()

    def set_maintenance(self, on: bool) -> None:
        """Maintenance mode: the connector is Unavailable and a technician may drive relay and PWM."""
        self.maintenance = on
        (self.controller.hold_energy if on else self.controller.release_energy)(EnergyHold.MAINTENANCE)
        if not on:
            self.controller.end_manual()
        self._publish_status()

    def manual_relay(self, closed: bool) -> None:
        if closed and not self.maintenance:
            raise RuntimeError("manual relay close outside maintenance mode")
        self.controller.manual_relay(closed)

    def manual_pwm(self, duty_percent: float) -> None:
        if not self.maintenance:
            raise RuntimeError("manual PWM outside maintenance mode")
        self.controller.manual_pilot(duty_percent)

    # ----------------------------------------------------------------- status
    @property
    def faults(self) -> frozenset[Fault]:
        return frozenset(self.controller.active_faults | self.device_faults)

    def status(self) -> ConnectorStatus:
        ctrl_state = self.controller.state
        if self.faults & _FAULTING or ctrl_state is ChargeState.FAULT:
            return ConnectorStatus.FAULTED
        if self.session is not None:
            if ctrl_state is not ChargeState.CHARGING and self.energy_holds - {EnergyHold.NOT_AUTHORIZED}:
                # 1.6 section 7.7: the EVSE is not offering energy (smart charging, StartTransaction.conf
                # not Accepted, ...) -> SuspendedEVSE.
                return ConnectorStatus.SUSPENDED_EVSE
            return {
                ChargeState.CHARGING: ConnectorStatus.CHARGING,
                ChargeState.PAUSED_EVSE: ConnectorStatus.SUSPENDED_EVSE,
                ChargeState.UNAVAILABLE: ConnectorStatus.SUSPENDED_EVSE,
            }.get(ctrl_state, ConnectorStatus.SUSPENDED_EV)
        if not self.available or self.maintenance:
            return ConnectorStatus.UNAVAILABLE
        state = self.controller.cp_state
        if self.reservation is not None and self._pending is None and not self._finished_plugged:
            return ConnectorStatus.RESERVED
        if state is not None and state.ev_connected:
            return ConnectorStatus.FINISHING if self._finished_plugged else ConnectorStatus.PREPARING
        if self._pending is not None:
            return ConnectorStatus.PREPARING
        return ConnectorStatus.AVAILABLE

    def _publish_status(self) -> None:
        if self._in_event:
            return
        status = self.status()
        faults = self.faults
        if status != self._status or faults != self._status_faults:
            self._status = status
            self._status_faults = faults
            self._emit(StatusChanged(self.id, status, faults))
            self._refresh_display()

    def _refresh_display(self) -> None:
        if self.display is None:
            return
        status = self._status or self.status()
        sample = self.last_sample
        power = sample.power_w if sample else 0.0
        energy = self.session_energy_wh()
        duration = self._clock.wall() - self.session.start_wall if self.session else 0.0
        if status is ConnectorStatus.FAULTED:
            fault = sorted(self.faults)[0] if self.faults else Fault.INTERNAL
            fi = fault_info(fault)
            screen = Screen(self.id, ScreenState.FAULT, message=fi.driver_text, fault_code=fi.vendor_error_code,
                            support_contact=self._support_contact)
        elif status is ConnectorStatus.CHARGING:
            screen = Screen(self.id, ScreenState.CHARGING, power, energy, duration, "Charging")
        elif status in (ConnectorStatus.SUSPENDED_EV, ConnectorStatus.SUSPENDED_EVSE):
            screen = Screen(self.id, ScreenState.PAUSED, 0.0, energy, duration, "Charging paused")
        elif status is ConnectorStatus.FINISHING:
            screen = Screen(self.id, ScreenState.FINISHED, 0.0, self._last_energy, 0.0,
                            "Charging finished. Unplug your car.")
        elif status is ConnectorStatus.PREPARING:
            msg = "Plug in your car" if self._pending else "Tap your card to start"
            screen = Screen(self.id, ScreenState.AUTHORIZING, message=msg)
        elif status is ConnectorStatus.UNAVAILABLE:
            screen = Screen(self.id, ScreenState.UNAVAILABLE, message="Out of service. Please use another charger.",
                            support_contact=self._support_contact)
        else:
            screen = Screen(self.id, ScreenState.IDLE, message="Tap card or plug in")
        if self.display_extra:
            screen = dataclasses.replace(screen, extra=self.display_extra)
        screen = compose_screen(screen, self.operator_messages)
        try:
            self.display.show(screen)
        except Exception:  # a display must never take the connector down
            log.exception("connector %d: display failed", self.id)

    _last_energy = 0.0

    def session_energy_wh(self) -> float:
        if self.session is None:
            return 0.0
        energy = max(0.0, self._energy_now() - self.session.start_energy_wh)
        self._last_energy = energy
        return energy

    # ----------------------------------------------------------------- the station interface
    @property
    def settings(self) -> ConnectorSettings:
        return ConnectorSettings(self.connection_timeout_s, self.stop_on_ev_disconnect, self.unlock_on_ev_disconnect)

    def configure(self, settings: ConnectorSettings) -> None:
        self.connection_timeout_s = settings.connection_timeout_s
        self.stop_on_ev_disconnect = settings.stop_on_ev_disconnect
        self.unlock_on_ev_disconnect = settings.unlock_on_ev_disconnect

    def unlock(self) -> bool:
        """Open the lock on command (ends a hold after an EV-side disconnect); False if the command failed."""
        if self.lock is None or self.config.fixed_cable:
            return False
        self.lock_held_for = None
        try:
            self.lock.unlock()
        except Exception:
            log.exception("connector %d: unlock failed", self.id)
            return False
        return True

    def view(self) -> ConnectorView:
        """A frozen snapshot for the network side (agent.station_api)."""
        c = self.controller
        has_lock = self.lock is not None and not self.config.fixed_cable
        return ConnectorView(
            id=self.id,
            status=self.status(),
            faults=self.faults,
            available=self.available,
            maintenance=self.maintenance,
            session=self.session,
            pending_id_tag=self.pending_id_tag,
            session_energy_wh=self.session_energy_wh(),
            last_sample=self.last_sample,
            meter_latest=self.meter.latest if self.meter is not None else None,
            has_meter=self.meter is not None,
            cp_state=c.cp_state,
            ev_connected=c.ev_connected(),
            charge_state=c.state.value,
            offered_current_a=c.offered_current_a,
            duty_percent=c.duty_percent,
            relay_commanded_closed=c.relay_commanded_closed,
            relay_feedback_closed=c.relay_feedback_closed,
            energy_holds=self.energy_holds,
            has_lock=has_lock,
            locked=self.lock.locked if self.lock is not None else None,
            lock_held_for=self.lock_held_for,
            reservation=self.reservation,
            used_reservation=self.used_reservation,
            display_extra=self.display_extra,
            max_current_a=self.config.max_current_a,
            phases=self.config.phases,
            fixed_cable=self.config.fixed_cable,
            settings=self.settings,
            effective_limit_a=c.current_limit_a,
            binding_limit=c.binding_limit,
            site_limit_a=c.site_limit_a,
            # optional in a driver (hal.roles.ControlPilot gives None; roles are duck-typed)
            temperature_c=getattr(self.pilot, "temperature_c", None),
        )


# Energy holds that belong to one session and end with it.
_SESSION_HOLDS = (EnergyHold.INVALID_ID,)

# Faults that take the connector out of service. A silent meter or reader is reported (errorCode) but
# charging goes on: the safety path does not depend on them.
_FAULTING = frozenset(
    {
        Fault.RCD, Fault.GROUND, Fault.DIODE, Fault.OVERTEMP, Fault.OVERCURRENT, Fault.UNDERVOLTAGE,
        Fault.OVERVOLTAGE, Fault.WELD, Fault.LOCK, Fault.BOARD_SILENT, Fault.VENTILATION, Fault.INTERNAL,
    }
)

