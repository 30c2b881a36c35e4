"""The charging controller: HAL inputs -> ``iec61851`` state machine -> pilot and relay commands.

Every input call settles the machine and applies the outputs before it returns, so the de-energising
cases (C->B, A, E, F, CP lost, safety faults) open the relay inside the call, never via a timer.
Timers (on the injected clock) only ever move things forward that have to wait: the 300 ms F hold,
the 3 s X1 hold, the 5 s spacing of duty changes, the 6 s forced open under load, the 1 s weld check
and the 7 s over-current trip.

Decisions where the brief left a choice:
- FAULT drives F for 300 ms, then X1 (F again while unavailable): the EV sees no PWM either way, and in
  X1 we can still see it unplug. PWM comes back no earlier than 3 s after it stopped.
- Starting PWM from X1/F is not a "duty change": it is applied at once (the 3 s X1 hold already gave the
  EV its time) but it starts the 5 s window for the next change.
- ``offered_current_a`` is what the pilot signals now (0 without PWM); ``current_limit_a`` is the target.
- 5.9..6.1 A offers 6 A (EVerest rounding), so the pause threshold is 5.9 A.
- CP E, or CP lost after having been seen, is a pilot error: FAULT without a ``Fault`` code
  (``status().pilot_error``). CP F that we did not cause means "EV unknown": no power, presence kept.
- METER_SILENT / METER_IMPLAUSIBLE / READER_SILENT are reported but do not stop charging.
- Unplugging holds ``EnergyHold.NOT_AUTHORIZED`` again (a new EV needs a new authorization); latches survive it.
- Energy is withheld for named reasons (``EnergyHold``), held and released only by whoever set them: the
  controller offers energy only while none is held, and no pilot change or timer releases one.
- A diode fault seen while our PWM is on stays until the EV is unplugged or an operator clears it: the
  board checks the diode only on the PWM's negative half, so its flag dropping with the PWM says nothing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from agent.iec61851 import ChargeMachine, ChargeState, duty_for_current, offered_current
from agent.station_api import NON_BLOCKING_FAULTS, EnergyHold
from hal.clock import Clock, TimerHandle
from hal.roles import ControlPilot, PowerSwitch
from hal.types import CpState, Fault

__all__ = ["ChargeController", "ChargeState", "ControlLimits", "ControllerStatus", "EnergyHold", "duty_for_current"]

log = logging.getLogger("cpagent.charge_control")

FAULT_HOLD_S = 0.3  # Table A.5: F at least 300 ms after a fault
X1_HOLD_S = 3.0  # T_STEP_X1: X1 at least 3 s before PWM comes back
DUTY_CHANGE_INTERVAL_S = 5.0  # at most one duty change per 5 s
# A failsafe lowering (site meter lost) waits at most this long for the 5 s window; beyond it the
# connector pauses in X1 at once (not a duty change) and offers the failsafe current after T_STEP_X1.
FAILSAFE_WAIT_S = 0.5
STOP_UNDER_LOAD_S = 6.0  # seq 10.2: PWM off while the EV keeps drawing -> open after 6 s
WELD_CHECK_S = 1.0  # feedback still closed this long after opening -> welded

LATCHING = frozenset({Fault.RCD, Fault.GROUND, Fault.WELD, Fault.OVERCURRENT})
NON_BLOCKING = NON_BLOCKING_FAULTS
_RELAY_CLOSED_IN = frozenset({ChargeState.CHARGING, ChargeState.STOPPING})
_PWM_IN = frozenset({ChargeState.READY, ChargeState.CHARGING, ChargeState.PAUSED_EV})
_F = 0.0  # pilot output encoding: None = X1, 0.0 = F, > 0 = PWM duty
UNTIL_UNPLUG = frozenset({Fault.DIODE})  # kept (when seen under PWM) until the EV leaves or an operator clears


_OUT_OF_SERVICE = frozenset({EnergyHold.UNAVAILABLE, EnergyHold.MAINTENANCE})


@dataclass(frozen=True)
class ControlLimits:
    max_current_a: float
    phases: int = 3
    ventilation_available: bool = False
    overcurrent_margin_a: float = 0.5
    overcurrent_factor: float = 1.10
    overcurrent_time_s: float = 7.0
    fixed_cable: bool = False  # tethered cable: no PP, never "no cable"


@dataclass(frozen=True, slots=True)
class ControllerStatus:
    state: ChargeState
    cp_state: CpState | None
    offered_current_a: float
    duty_percent: float | None
    relay_commanded_closed: bool
    relay_feedback_closed: bool | None
    active_faults: frozenset[Fault]
    current_limit_a: float
    energy_allowed: bool
    available: bool
    energy_holds: frozenset[EnergyHold]
    pilot_error: bool
    binding_limit: str = "connector"
    site_limit_a: float | None = None


class _Timers:
    """Named one-shot timers; starting a name again replaces it."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._handles: dict[str, TimerHandle] = {}

    def start(self, name: str, delay: float, callback: Callable[[], None]) -> None:
        self.cancel(name)

        def fire() -> None:
            self._handles.pop(name, None)
            callback()

        self._handles[name] = self._clock.call_later(delay, fire)

    def armed(self, name: str) -> bool:
        return name in self._handles

    def cancel(self, name: str) -> None:
        handle = self._handles.pop(name, None)
        if handle is not None:
            handle.cancel()


class _Unset:
    pass


_UNSET = _Unset()


def _sane(amps: float | None) -> float | None:
    if amps is None:
        return None
    return amps if math.isfinite(amps) and amps >= 0 else 0.0  # garbage limits pause, never raise


class ChargeController:
    # Slots for the attributes set at start (a __dict__ past 30 keys is a full table per instance: ~1.2 kB more per
    # station in cpsim fleet); __dict__ and __weakref__ keep everything else (new attributes, tests' patches) working.
    __slots__ = ("__dict__", "__weakref__", "_ampacity", "_board_flags", "_clock", "_cp", "_cp_seen", "_currents",
                 "_device_faults", "_duty", "_duty_changed_at", "_ev_present", "_external_limit", "_failsafe_pause",
                 "_fault_hold_until", "_feedback", "_holds", "_last_status", "_latched", "_machine", "_manual_pilot",
                 "_manual_relay", "_on_change", "_pilot", "_pwm_restart_at", "_pwm_seen", "_relay_closed",
                 "_relay_opened_at", "_rerun", "_running", "_signalled_a", "_site_limit", "_site_reason",
                 "_stop_deadline", "_switch", "_timers", "_until_unplug", "_was_connected", "limits")

    def __init__(
        self,
        clock: Clock,
        pilot: ControlPilot,
        switch: PowerSwitch,
        limits: ControlLimits,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._clock = clock
        self._pilot = pilot
        self._switch = switch
        self.limits = limits
        self._on_change = on_change
        self._timers = _Timers(clock)
        # inputs
        self._cp: CpState | None = pilot.cp_state
        self._cp_seen = self._cp is not None
        self._ev_present = self._cp is not None and self._cp.ev_connected
        self._ampacity: float | None = None
        self._feedback: bool | None = switch.feedback_closed
        self._board_flags: frozenset[Fault] = frozenset()
        self._device_faults: set[Fault] = set()
        self._latched: set[Fault] = set()
        self._until_unplug: set[Fault] = set()  # UNTIL_UNPLUG faults seen under our PWM
        self._currents: tuple[float | None, ...] = (None, None, None)
        self._holds: set[EnergyHold] = {EnergyHold.NOT_AUTHORIZED}
        self._external_limit: float | None = None
        self._site_limit: float | None = None  # the site allocation (agent/energy), None = no site limit
        self._site_reason = "site-fuse"
        self._failsafe_pause = False  # X1 now: a failsafe lowering could not wait for the duty window
        # maintenance mode (UNAVAILABLE, no EV): a technician drives relay and pilot by hand
        self._manual_relay = False
        self._manual_pilot: float | _Unset | None = _UNSET
        # outputs and their times
        self._relay_closed = False
        self._duty: float | None = None
        self._signalled_a = 0.0
        self._pwm_seen = False  # the board has reported x2 since our PWM (re)started
        now = clock.monotonic()
        self._relay_opened_at = now
        self._fault_hold_until = -math.inf
        self._pwm_restart_at = -math.inf
        self._duty_changed_at = -math.inf
        self._stop_deadline = math.inf
        self._was_connected = self.ev_connected()
        self._running = False
        self._rerun = False
        self._machine = ChargeMachine(self, on_enter=self._entered)
        # Take ownership of the outputs in a known safe state before anything else happens.
        self._hal(switch.open_relay)
        self._hal(pilot.set_x1)
        self._timers.start("weld", WELD_CHECK_S, self._check_weld)
        self._last_status = self.status()
        self._run()

    # ------------------------------------------------------------------ inputs
    def on_cp_state(self, state: CpState | None) -> None:
        self._cp = state
        if state is not None:
            self._cp_seen = True
            if state.letter in "ABCD":
                self._ev_present = state.ev_connected
            if state.pwm and self._duty:
                self._pwm_seen = True
        self._run()

    def on_relay_feedback(self, closed: bool) -> None:
        self._feedback = closed
        if not self._relay_closed:
            if not closed:
                self._timers.cancel("weld")
            elif self._clock.monotonic() >= self._relay_opened_at + WELD_CHECK_S:
                self._latch_weld()
            elif not self._timers.armed("weld"):
                self._timers.start(
                    "weld", self._relay_opened_at + WELD_CHECK_S - self._clock.monotonic(), self._check_weld
                )
        self._run()

    def on_proximity(self, ampacity_a: float | None) -> None:
        self._ampacity = _sane(ampacity_a)
        self._run()

    def on_fault_flags(self, active: frozenset[Fault]) -> None:
        self._board_flags = frozenset(active)
        self._latched |= active & LATCHING
        if self._duty is not None and self._duty != _F:  # checked under our PWM: a finding about this EV
            for fault in (active & UNTIL_UNPLUG) - self._until_unplug:
                log.warning("%s under PWM: kept until the EV is unplugged or the fault is cleared", fault.value)
                self._until_unplug.add(fault)
        self._run()

    def on_device_fault(self, fault: Fault, active: bool) -> None:
        if active:
            self._device_faults.add(fault)
            if fault in LATCHING:
                self._latched.add(fault)
        else:
            self._device_faults.discard(fault)
            if fault is Fault.BOARD_SILENT and not self._relay_closed:
                # Our open command only reaches the board now (start-up, reconnect): judge the
                # mirror contact from this moment, not from when the command was queued.
                self._relay_opened_at = self._clock.monotonic()
                self._timers.start("weld", WELD_CHECK_S, self._check_weld)
        self._run()

    def on_measured_current(self, amps_per_phase: tuple[float | None, float | None, float | None]) -> None:
        self._currents = tuple(amps_per_phase)
        self._supervise_overcurrent()

    def hold_energy(self, reason: EnergyHold) -> None:
        """Withhold energy for ``reason`` until ``release_energy(reason)``; de-energises inside the call."""
        if reason is EnergyHold.ZERO_LIMIT:
            raise ValueError("ZERO_LIMIT follows the current limit (set_external_limit), it is not held")
        if reason not in self._holds:
            self._holds.add(reason)
            self._run()

    def release_energy(self, reason: EnergyHold) -> None:
        """End ``reason``; energy is offered again only if no other reason is held."""
        if reason is EnergyHold.ZERO_LIMIT:
            raise ValueError("ZERO_LIMIT follows the current limit (set_external_limit), it is not held")
        if reason in self._holds:
            self._holds.discard(reason)
            self._run()

    @property
    def energy_holds(self) -> frozenset[EnergyHold]:
        """Every reason energy is withheld now (empty = energy may flow)."""
        derived = set() if self.current_available() else {EnergyHold.ZERO_LIMIT}
        return frozenset(self._holds | derived)

    def set_energy_allowed(self, allowed: bool) -> None:
        """The EV plugged in now is authorized (True) or not: releases or holds NOT_AUTHORIZED only."""
        (self.release_energy if allowed else self.hold_energy)(EnergyHold.NOT_AUTHORIZED)

    def set_external_limit(self, amps: float | None) -> None:
        self._external_limit = _sane(amps)
        self._run()

    def set_site_limit(self, amps: float | None, reason: str = "site-fuse") -> None:
        """The site allocation (agent/energy): one more limit, min with the others; ``reason`` names it
        when it binds ("site-fuse", "solar", "failsafe"). None lifts it. 0 pauses (X1)."""
        amps = _sane(amps)
        if amps == self._site_limit and reason == self._site_reason:
            return
        self._site_limit = amps
        self._site_reason = reason
        self._run()

    def set_available(self, available: bool) -> None:
        """Operator availability: releases or holds UNAVAILABLE only."""
        (self.release_energy if available else self.hold_energy)(EnergyHold.UNAVAILABLE)

    def clear_faults(self) -> bool:
        """Operator clear of latched faults; True once none is left (those whose cause persists stay)."""
        live = self._live_faults()
        self._latched = {f for f in self._latched if f in live or (f is Fault.WELD and self._feedback is not False)}
        self._until_unplug &= live
        self._run()
        return not self._latched and not self._until_unplug

    # ------------------------------------------------------------------ maintenance
    def _manual_allowed(self) -> bool:
        # While unavailable the pilot sits at F, which hides a newly plugged EV from the CP; a cable in a
        # socket still shows on PP, so either sign of a vehicle ends manual control.
        cable = not self.limits.fixed_cable and self._ampacity is not None
        return self.state is ChargeState.UNAVAILABLE and not self._ev_present and not cable

    def manual_relay(self, closed: bool) -> None:
        """Technician's relay command; closing only while UNAVAILABLE with no EV (opening always)."""
        if closed and not self._manual_allowed():
            raise RuntimeError("manual relay close needs the connector unavailable and no EV connected")
        self._manual_relay = closed
        self._run()

    def manual_pilot(self, duty_percent: float) -> None:
        """Technician's pilot command: 0 = F, 100 = X1, else PWM duty. UNAVAILABLE with no EV only."""
        if not self._manual_allowed():
            raise RuntimeError("manual pilot needs the connector unavailable and no EV connected")
        if not 0.0 <= duty_percent <= 100.0:
            raise ValueError("duty must be within 0..100")
        self._manual_pilot = None if duty_percent >= 100.0 else float(duty_percent)
        self._run()

    def end_manual(self) -> None:
        self._manual_relay = False
        self._manual_pilot = _UNSET
        self._run()

    # ------------------------------------------------------------------ status
    @property
    def state(self) -> ChargeState:
        return self._machine.state

    @property
    def cp_state(self) -> CpState | None:
        return self._cp

    @property
    def offered_current_a(self) -> float:
        return self._signalled_a

    @property
    def duty_percent(self) -> float | None:
        return self._duty

    @property
    def relay_commanded_closed(self) -> bool:
        return self._relay_closed

    @property
    def relay_feedback_closed(self) -> bool | None:
        return self._feedback

    @property
    def active_faults(self) -> frozenset[Fault]:
        return frozenset(self._live_faults() | self._latched | self._until_unplug)

    def _named_limits(self) -> list[tuple[str, float]]:
        """Every limit that applies now, in the order that names a tie: the connector's own limits
        first, the site allocation last (it binds only when it is strictly lower)."""
        named: list[tuple[str, float | None]] = [("connector", self.limits.max_current_a)]
        if not self.limits.fixed_cable:
            named.append(("cable", self._ampacity))
        named.append(("ocpp", self._external_limit))
        named.append((self._site_reason, self._site_limit))
        return [(name, amps) for name, amps in named if amps is not None]

    @property
    def current_limit_a(self) -> float:
        """The effective limit: the minimum of every limit (connector, cable, OCPP, site allocation)."""
        return min(amps for _, amps in self._named_limits())

    @property
    def binding_limit(self) -> str:
        """Which limit sets ``current_limit_a``: "connector", "cable", "ocpp" or the site's reason."""
        limits = self._named_limits()
        lowest = min(amps for _, amps in limits)
        return next(name for name, amps in limits if amps == lowest)

    @property
    def own_limit_a(self) -> float:
        """The effective limit without the site allocation (what this connector could take)."""
        own = [self.limits.max_current_a, self._external_limit]
        if not self.limits.fixed_cable:
            own.append(self._ampacity)
        return min(x for x in own if x is not None)

    @property
    def site_limit_a(self) -> float | None:
        return self._site_limit

    @property
    def duty_change_due_s(self) -> float:
        """Monotonic time from which the next PWM duty change is allowed (one per DUTY_CHANGE_INTERVAL_S)."""
        return self._duty_changed_at + DUTY_CHANGE_INTERVAL_S

    def status(self) -> ControllerStatus:
        return ControllerStatus(
            state=self.state,
            cp_state=self._cp,
            offered_current_a=self._signalled_a,
            duty_percent=self._duty,
            relay_commanded_closed=self._relay_closed,
            relay_feedback_closed=self._feedback,
            active_faults=self.active_faults,
            current_limit_a=self.current_limit_a,
            energy_allowed=self.energy_allowed(),
            available=self.available(),
            energy_holds=self.energy_holds,
            pilot_error=self._pilot_error(),
            binding_limit=self.binding_limit,
            site_limit_a=self._site_limit,
        )

    # ------------------------------------------------------------------ guards (named in the table)
    def fault_present(self) -> bool:
        return bool(self.active_faults - NON_BLOCKING) or self._pilot_error()

    def fault_hold_over(self) -> bool:
        return self._clock.monotonic() >= self._fault_hold_until

    def available(self) -> bool:
        return not self._holds & _OUT_OF_SERVICE

    def ev_connected(self) -> bool:
        return self._ev_present and (self.limits.fixed_cable or self._ampacity is not None)

    def energy_allowed(self) -> bool:
        # The held reasons; a limit below 6 A is the table's own guard (current_available: pause in X1).
        return not self._holds

    def current_available(self) -> bool:
        return not self._failsafe_pause and duty_for_current(self.current_limit_a) is not None

    def pwm_restart_allowed(self) -> bool:
        return self._clock.monotonic() >= self._pwm_restart_at

    def ev_requests_energy(self) -> bool:
        cp = self._cp
        return cp is not None and (cp.letter == "C" or (cp.letter == "D" and self.limits.ventilation_available))

    def ev_ready_for_power(self) -> bool:
        # The board must have reported our PWM (C2/D2) since it started, not a stale x2 from before:
        # that is also when it checks the diode.
        return (
            self.ev_requests_energy()
            and self._cp is not None
            and self._cp.pwm
            and self._pwm_seen
            and Fault.DIODE not in self.active_faults
        )

    def pwm_reported(self) -> bool:
        return self._cp is not None and self._cp.pwm

    def stop_done(self) -> bool:
        return not self.ev_requests_energy() or self._clock.monotonic() >= self._stop_deadline

    # ------------------------------------------------------------------ internals
    def _pilot_error(self) -> bool:
        return self._cp is CpState.E or (self._cp is None and self._cp_seen)

    def _live_faults(self) -> set[Fault]:
        live = set(self._board_flags) | self._device_faults
        if self._cp is not None and self._cp.letter == "D" and not self.limits.ventilation_available:
            live.add(Fault.VENTILATION)
        return live

    def _entered(self, state: ChargeState) -> None:
        now = self._clock.monotonic()
        if state is ChargeState.FAULT:
            log.warning("charging fault: %s", sorted(self.active_faults) or "pilot error")
            self._fault_hold_until = now + FAULT_HOLD_S
            self._timers.start("fault_hold", FAULT_HOLD_S, self._run)
        elif state is ChargeState.STOPPING:
            self._stop_deadline = now + STOP_UNDER_LOAD_S
            self._timers.start("stop", STOP_UNDER_LOAD_S, self._run)

    def _run(self) -> None:
        if self._running:  # re-entered from a HAL command or on_change: finish the outer pass first
            self._rerun = True
            return
        self._running = True
        try:
            self._rerun = True
            while self._rerun:
                self._rerun = False
                connected = self.ev_connected()
                if self._was_connected and not connected:
                    self._holds.add(EnergyHold.NOT_AUTHORIZED)  # unplug ends the authorization too
                    self._until_unplug.clear()  # and what was found about that EV
                self._was_connected = connected
                self._machine.settle()
                self._apply_outputs()
        finally:
            self._running = False
        if self.state is not ChargeState.STOPPING:
            self._timers.cancel("stop")
        if self.state is not ChargeState.FAULT:
            self._timers.cancel("fault_hold")
        self._supervise_overcurrent()
        status = self.status()
        if status != self._last_status:
            self._last_status = status
            if self._on_change is not None:
                try:
                    self._on_change()
                except Exception:
                    log.exception("on_change listener failed")

    def _desired_pilot(self) -> float | None:
        state = self.state
        if not isinstance(self._manual_pilot, _Unset) and self._manual_allowed():
            return self._manual_pilot
        if state is ChargeState.UNAVAILABLE or (
            state is ChargeState.FAULT and (not self.available() or not self.fault_hold_over())
        ):
            return _F
        if state in _PWM_IN:
            return duty_for_current(self.current_limit_a)
        return None

    def _apply_outputs(self) -> None:
        now = self._clock.monotonic()
        close = self.state in _RELAY_CLOSED_IN or (self._manual_relay and self._manual_allowed())
        if self._manual_relay and not close:
            self._manual_relay = False  # an EV arrived or the fault path took over: manual control ends
        if self._relay_closed and not close:  # de-energise first, then talk to the EV
            self._relay_closed = False
            self._relay_opened_at = now
            self._hal(self._switch.open_relay)
            self._timers.start("weld", WELD_CHECK_S, self._check_weld)
        target = self._desired_pilot()
        if target is None or target == _F:
            if self._duty != target:
                self._set_pilot(target)
        elif self._duty is None or self._duty == _F:
            self._set_pilot(target)  # PWM start: not a change, but it opens the 5 s window
        elif target != self._duty:
            due = self._duty_changed_at + DUTY_CHANGE_INTERVAL_S
            if now >= due:
                self._set_pilot(target)
            elif target < self._duty and self.binding_limit == "failsafe" and due - now > FAILSAFE_WAIT_S:
                self._failsafe_pause = True  # the safe current cannot wait for the window: X1 on the next pass
                self._rerun = True
            elif not self._timers.armed("duty"):
                self._timers.start("duty", due - now, self._run)  # the latest limit wins when it fires
        if self._failsafe_pause and (self._duty is None or self._duty == _F):
            self._failsafe_pause = False  # paused: PWM comes back at the failsafe current after the X1 hold
            self._rerun = True
        if close and not self._relay_closed:
            self._relay_closed = True
            self._timers.cancel("weld")
            self._hal(self._switch.close_relay)

    def _set_pilot(self, target: float | None) -> None:
        now = self._clock.monotonic()
        was_pwm = self._duty is not None and self._duty != _F
        self._duty = target
        if target is None:
            self._hal(self._pilot.set_x1)
        elif target == _F:
            self._hal(self._pilot.set_f)
        else:
            self._duty_changed_at = now
            self._signalled_a = offered_current(self.current_limit_a) or 0.0
            self._hal(lambda: self._pilot.set_duty(target))
            return
        self._signalled_a = 0.0
        self._pwm_seen = False
        self._timers.cancel("duty")
        if was_pwm:
            self._pwm_restart_at = now + X1_HOLD_S
            self._timers.start("x1_hold", X1_HOLD_S, self._run)

    def _check_weld(self) -> None:
        # A silent board's last feedback is stale (its own keep-alive opens the relay): judge it once it speaks.
        if not self._relay_closed and self._feedback is True and Fault.BOARD_SILENT not in self._device_faults:
            self._latch_weld()
            self._run()

    def _latch_weld(self) -> None:
        if Fault.WELD not in self._latched:
            log.error("contactor still closed %.1f s after the open command: welded", WELD_CHECK_S)
        self._latched.add(Fault.WELD)

    def _overcurrent(self) -> bool:
        if not self._relay_closed or self._signalled_a <= 0:
            return False
        lim = self.limits
        threshold = (self._signalled_a + lim.overcurrent_margin_a) * lim.overcurrent_factor
        return any(a is not None and a > threshold for a in self._currents)

    def _supervise_overcurrent(self) -> None:
        if not self._overcurrent():
            self._timers.cancel("overcurrent")
        elif not self._timers.armed("overcurrent"):
            self._timers.start("overcurrent", self.limits.overcurrent_time_s, self._trip_overcurrent)

    def _trip_overcurrent(self) -> None:
        if self._overcurrent():
            log.error(
                "over-current for %.1f s: %s A at %.1f A offered",
                self.limits.overcurrent_time_s,
                self._currents,
                self._signalled_a,
            )
            self._latched.add(Fault.OVERCURRENT)
            self._run()

    def _hal(self, command: Callable[[], None]) -> None:
        # A driver error must not stop the remaining commands; the MCU keep-alive is the backstop.
        try:
            command()
        except Exception:
            log.exception("HAL command failed")
