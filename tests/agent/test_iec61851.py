"""IEC 61851-1 control rules, one group per rule, all on the FakeClock.

The pilot and switch fakes write into one shared log of (time, command, arg) so tests can check both
the deadline (same fake instant = 0 ms) and the order (relay opened before the pilot changes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest

from agent.charge_control import ChargeController, ChargeState, ControlLimits
from agent.iec61851 import TRANSITIONS, ChargeMachine, Row, duty_for_current, offered_current
from hal.clock import FakeClock
from hal.roles import ControlPilot, PowerSwitch
from hal.types import CpState, Fault

S = ChargeState
T0 = 1000.0  # FakeClock start

Log = list[tuple[float, str, float | None]]


class FakePilot(ControlPilot):
    def __init__(self, clock: FakeClock, log: Log) -> None:
        self.clock, self.log = clock, log

    @property
    def cp_state(self) -> CpState | None:
        return None

    def set_duty(self, duty_percent: float) -> None:
        self.log.append((self.clock.monotonic(), "duty", duty_percent))

    def set_x1(self) -> None:
        self.log.append((self.clock.monotonic(), "x1", None))

    def set_f(self) -> None:
        self.log.append((self.clock.monotonic(), "f", None))

    def keep_alive(self) -> None:
        pass


class FakeSwitch(PowerSwitch):
    def __init__(self, clock: FakeClock, log: Log) -> None:
        self.clock, self.log = clock, log

    @property
    def feedback_closed(self) -> bool | None:
        return None

    def close_relay(self) -> None:
        self.log.append((self.clock.monotonic(), "close", None))

    def open_relay(self) -> None:
        self.log.append((self.clock.monotonic(), "open", None))


@dataclass
class Rig:
    clock: FakeClock
    ctl: ChargeController
    log: Log = field(default_factory=list)
    changes: int = 0

    @property
    def now(self) -> float:
        return self.clock.monotonic()

    def since(self, t: float) -> Log:
        return [entry for entry in self.log if entry[0] >= t]

    def commands(self, *names: str) -> Log:
        return [entry for entry in self.log if entry[1] in names]

    def last(self, *names: str) -> tuple[float, str, float | None]:
        return self.commands(*names)[-1]

    def advance_to(self, t: float) -> None:
        self.clock.advance(t - self.now)

    def charge(self) -> float:
        """Plug in, authorize, EV asks for energy; returns the time the relay closed."""
        c = self.ctl
        c.on_cp_state(CpState.B1)
        c.set_energy_allowed(True)
        c.on_cp_state(CpState.B2)
        c.on_cp_state(CpState.C2)
        assert c.state is S.CHARGING
        t = self.last("close")[0]
        self.clock.advance(1.0)  # later commands get their own timestamps
        return t


def make_rig(limits: ControlLimits | None = None) -> Rig:
    clock = FakeClock()
    log: Log = []
    holder: list[Rig] = []

    def on_change() -> None:
        holder[0].changes += 1

    ctl = ChargeController(
        clock,
        FakePilot(clock, log),
        FakeSwitch(clock, log),
        limits or ControlLimits(max_current_a=32.0, fixed_cable=True),
        on_change=lambda: on_change() if holder else None,
    )
    rig = Rig(clock, ctl, log)
    holder.append(rig)
    return rig


@pytest.fixture
def rig() -> Rig:
    return make_rig()


# ----------------------------------------------------------------------------- duty formula
@pytest.mark.parametrize(
    ("amps", "duty"),
    [
        (0.0, None),
        (5.0, None),
        (5.89, None),
        (5.9, 10.0),
        (6.0, 10.0),
        (6.1, 10.0),
        (6.2, 10.33),
        (10.0, 16.67),
        (13.0, 21.67),
        (16.0, 26.67),
        (32.0, 53.33),
        (50.9, 84.83),
        (51.0, 85.0),
        (51.7, 85.0),
        (52.4, 85.0),
        (52.5, 85.0),
        (63.0, 89.2),
        (70.0, 92.0),
        (80.0, 96.0),
        (100.0, 96.0),
    ],
)
def test_duty_for_current_table(amps: float, duty: float | None) -> None:
    assert duty_for_current(amps) == duty


@pytest.mark.parametrize(
    ("amps", "current"), [(5.8, None), (5.95, 6.0), (6.1, 6.0), (16.0, 16.0), (52.0, 51.0), (63.0, 63.0), (90.0, 80.0)]
)
def test_offered_current_is_what_the_duty_encodes(amps: float, current: float | None) -> None:
    assert offered_current(amps) == current


# ----------------------------------------------------------------------------- the table as data
def test_table_is_data_every_state_can_be_left_and_every_guard_exists(rig: Rig) -> None:
    assert all(row.dest in S for row in TRANSITIONS)
    assert {s for row in TRANSITIONS for s in row.sources} == set(S)
    names = {n for row in TRANSITIONS for n in (*row.when, *row.unless)}
    assert all(callable(getattr(rig.ctl, n)) for n in names)
    ChargeMachine(rig.ctl)  # binds every guard name: a typo fails here


def test_safety_rows_come_first() -> None:
    assert [row.dest for row in TRANSITIONS[:3]] == [S.FAULT, S.UNAVAILABLE, S.IDLE]


def test_machine_that_never_settles_logs_and_stops(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    ping_pong = (Row((S.IDLE,), S.CONNECTED), Row((S.CONNECTED,), S.IDLE))
    machine = ChargeMachine(rig.ctl, table=ping_pong)
    assert machine.settle() in (S.IDLE, S.CONNECTED)
    assert "does not settle" in caplog.text


class _Flags:
    """Guards as plain flags (every predicate of the table), for machines stepped without a controller."""

    def __init__(self, **on: bool) -> None:
        self.on = {"available": True, "current_available": True, "pwm_restart_allowed": True,
                   "ev_requests_energy": True, "pwm_reported": True, **on}

    def __getattr__(self, name: str) -> object:
        if name.startswith("_") or name == "on":
            raise AttributeError(name)
        return lambda: self.on.get(name, False)


def test_connectors_share_one_machine_and_keep_their_own_state() -> None:
    entered: list[tuple[str, ChargeState]] = []
    ga, gb = _Flags(), _Flags()
    a = ChargeMachine(ga, on_enter=lambda s: entered.append(("a", s)))  # type: ignore[arg-type]
    b = ChargeMachine(gb, on_enter=lambda s: entered.append(("b", s)))  # type: ignore[arg-type]
    assert a._step is b._step  # one transitions.Machine for the table, not one per connector
    ga.on.update(ev_connected=True, energy_allowed=True, ev_ready_for_power=True)
    assert a.settle() is S.CHARGING
    assert b.settle() is S.IDLE
    assert entered == [("a", S.CONNECTED), ("a", S.READY), ("a", S.CHARGING)]
    gb.on.update(fault_present=True)
    assert b.settle() is S.FAULT and a.state is S.CHARGING
    assert entered[-1] == ("b", S.FAULT)
    with pytest.raises(AttributeError):
        ChargeMachine(object(), table=(Row((S.IDLE,), S.CONNECTED, when=("ev_conected",)),))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- relay opens in the call
@pytest.mark.parametrize(
    ("cp", "state"),
    [
        (CpState.B2, S.PAUSED_EV),
        (CpState.B1, S.PAUSED_EV),
        (CpState.A, S.IDLE),
        (CpState.E, S.FAULT),
        (CpState.F, S.PAUSED_EV),
        (None, S.FAULT),
    ],
)
def test_pilot_change_opens_relay_synchronously(rig: Rig, cp: CpState | None, state: ChargeState) -> None:
    rig.charge()
    rig.clock.advance(10.0)
    t = rig.now
    rig.ctl.on_cp_state(cp)
    assert rig.last("open", "close") == (t, "open", None)  # 0 ms on the fake clock, inside the call
    assert rig.ctl.state is state
    assert not rig.ctl.relay_commanded_closed


@pytest.mark.parametrize(
    "fault",
    [Fault.RCD, Fault.GROUND, Fault.OVERTEMP, Fault.DIODE, Fault.OVERVOLTAGE, Fault.UNDERVOLTAGE],
)
def test_board_safety_fault_opens_relay_before_pilot_goes_f(rig: Rig, fault: Fault) -> None:
    rig.charge()
    rig.clock.advance(10.0)
    t = rig.now
    rig.ctl.on_fault_flags(frozenset({fault}))
    assert rig.since(t) == [(t, "open", None), (t, "f", None)]
    assert rig.ctl.state is S.FAULT
    assert fault in rig.ctl.active_faults


def test_board_silent_opens_relay_synchronously(rig: Rig) -> None:
    rig.charge()
    t = rig.now
    rig.ctl.on_device_fault(Fault.BOARD_SILENT, True)
    assert rig.since(t)[0] == (t, "open", None)
    assert rig.ctl.state is S.FAULT


# ----------------------------------------------------------------------------- closing
def test_closes_only_on_c2_with_energy_allowed(rig: Rig) -> None:
    c = rig.ctl
    c.on_cp_state(CpState.B1)
    c.on_cp_state(CpState.C1)  # EV asks, not authorized: X1, relay open
    assert c.state is S.CONNECTED and c.duty_percent is None
    c.on_cp_state(CpState.C2)  # a stray C2 report without our PWM changes nothing
    assert c.state is S.CONNECTED
    c.set_energy_allowed(True)
    assert c.state is S.READY and c.duty_percent == 53.33
    assert not rig.commands("close")
    rig.clock.advance(0.5)
    c.on_cp_state(CpState.C1)  # board has not seen the PWM yet
    assert not rig.commands("close")
    c.on_cp_state(CpState.C2)
    assert rig.last("close") == (rig.now, "close", None)  # well within the 3 s
    assert c.state is S.CHARGING and c.relay_commanded_closed


def test_diode_fault_blocks_closing(rig: Rig) -> None:
    c = rig.ctl
    c.on_cp_state(CpState.B1)
    c.set_energy_allowed(True)
    c.on_cp_state(CpState.B2)
    c.on_fault_flags(frozenset({Fault.DIODE}))
    c.on_cp_state(CpState.C2)
    rig.clock.advance(5.0)
    assert not rig.commands("close")
    assert c.state is S.FAULT


def test_state_d_with_ventilation_closes() -> None:
    r = make_rig(ControlLimits(max_current_a=16.0, fixed_cable=True, ventilation_available=True))
    r.ctl.on_cp_state(CpState.B1)
    r.ctl.set_energy_allowed(True)
    r.ctl.on_cp_state(CpState.D2)
    assert r.ctl.state is S.CHARGING and r.commands("close")


def test_state_d_without_ventilation_means_no_power(rig: Rig) -> None:
    c = rig.ctl
    c.on_cp_state(CpState.B1)
    c.set_energy_allowed(True)
    c.on_cp_state(CpState.D2)
    assert not rig.commands("close")
    assert Fault.VENTILATION in c.active_faults and c.state is S.FAULT


def test_c_to_d_without_ventilation_opens_relay(rig: Rig) -> None:
    rig.charge()
    t = rig.now
    rig.ctl.on_cp_state(CpState.D2)
    assert rig.last("open", "close") == (t, "open", None)
    assert Fault.VENTILATION in rig.ctl.active_faults


def test_ventilation_fault_clears_when_ev_leaves_d(rig: Rig) -> None:
    rig.ctl.on_cp_state(CpState.D1)
    rig.ctl.on_cp_state(CpState.B1)
    rig.clock.advance(0.3)
    assert rig.ctl.state is S.CONNECTED and not rig.ctl.active_faults


# ----------------------------------------------------------------------------- PWM off under load
def test_stop_under_load_forces_relay_open_after_6_s(rig: Rig) -> None:
    rig.charge()
    t = rig.now
    rig.ctl.set_energy_allowed(False)
    assert rig.since(t) == [(t, "x1", None)]  # PWM off at once, relay still closed
    assert rig.ctl.state is S.STOPPING and rig.ctl.relay_commanded_closed
    rig.clock.advance(5.99)
    assert not rig.commands("open")[1:]
    rig.clock.advance(0.01)
    assert rig.last("open", "close") == (t + 6.0, "open", None)
    assert rig.ctl.state is S.CONNECTED


def test_board_dropping_our_pwm_under_load_stops_and_opens_after_6_s(rig: Rig) -> None:
    rig.charge()
    t = rig.now
    rig.ctl.on_cp_state(CpState.C1)  # the board reports no PWM although we never turned it off
    assert rig.ctl.state is S.STOPPING and rig.since(t) == [(t, "x1", None)]
    rig.clock.advance(6.0)
    assert rig.last("open", "close") == (t + 6.0, "open", None)
    assert not rig.ctl.relay_commanded_closed


def test_ev_leaving_c_during_stop_opens_at_once_and_cancels_timer(rig: Rig) -> None:
    rig.charge()
    rig.ctl.set_energy_allowed(False)
    rig.clock.advance(2.0)
    rig.ctl.on_cp_state(CpState.B1)
    assert rig.last("open", "close") == (rig.now, "open", None)
    rig.clock.advance(10.0)
    assert len(rig.commands("open")) == 2  # the one at start-up and this one
    assert rig.ctl.state is S.CONNECTED


# ----------------------------------------------------------------------------- duty change spacing
def test_duty_changes_are_spaced_5_s_and_latest_wins(rig: Rig) -> None:
    t0 = rig.charge()
    rig.ctl.set_external_limit(16.0)
    rig.clock.advance(1.0)
    rig.ctl.set_external_limit(10.0)
    assert rig.last("duty") == (t0, "duty", 53.33) and rig.ctl.offered_current_a == 32.0
    rig.advance_to(t0 + 5.0)
    assert rig.commands("duty")[1:] == [(t0 + 5.0, "duty", 16.67)]
    assert rig.ctl.offered_current_a == 10.0
    rig.advance_to(t0 + 20.0)
    rig.ctl.set_external_limit(20.0)  # quiet for > 5 s: applied at once
    assert rig.last("duty") == (t0 + 20.0, "duty", 33.33)


def test_pause_to_x1_is_never_delayed(rig: Rig) -> None:
    t0 = rig.charge()  # PWM started at t0, the clock is now t0 + 1 s
    rig.ctl.set_external_limit(3.0)
    assert rig.last("duty", "x1") == (t0 + 1.0, "x1", None)
    assert rig.ctl.state is S.STOPPING
    rig.advance_to(t0 + 7.0)  # EV ignored the X1: forced open after 6 s, then paused
    assert rig.last("open", "close") == (t0 + 7.0, "open", None)
    assert rig.ctl.state is S.PAUSED_EVSE


def test_pwm_restart_after_x1_is_not_rate_limited_but_opens_the_window(rig: Rig) -> None:
    t0 = rig.charge()
    rig.ctl.set_external_limit(3.0)  # X1 at t0+1
    rig.ctl.on_cp_state(CpState.B1)
    rig.clock.advance(0.5)
    rig.ctl.set_external_limit(16.0)
    assert rig.ctl.state is S.PAUSED_EVSE and rig.ctl.duty_percent is None
    rig.advance_to(t0 + 4.0)  # 3 s after X1, only 4 s after the previous PWM change
    assert rig.last("duty", "x1") == (t0 + 4.0, "duty", 26.67)
    rig.clock.advance(0.5)
    rig.ctl.set_external_limit(20.0)
    rig.advance_to(t0 + 8.99)
    assert rig.last("duty")[2] == 26.67
    rig.advance_to(t0 + 9.0)
    assert rig.last("duty") == (t0 + 9.0, "duty", 33.33)


# ----------------------------------------------------------------------------- offered current
def test_offered_current_is_min_of_connector_cable_and_external_limit() -> None:
    r = make_rig(ControlLimits(max_current_a=32.0))
    c = r.ctl
    c.on_proximity(20.0)
    c.on_cp_state(CpState.B1)
    c.set_energy_allowed(True)
    assert c.duty_percent == 33.33 and c.current_limit_a == 20.0
    r.clock.advance(5.0)
    c.set_external_limit(16.0)
    assert c.duty_percent == 26.67
    r.clock.advance(5.0)
    c.set_external_limit(None)
    assert c.duty_percent == 33.33
    r.clock.advance(5.0)
    c.on_proximity(63.0)
    assert c.duty_percent == 53.33 and c.offered_current_a == 32.0


def test_limit_below_6_a_pauses_in_x1_and_resumes_after_3_s(rig: Rig) -> None:
    c = rig.ctl
    c.on_cp_state(CpState.B1)
    c.set_energy_allowed(True)
    c.on_cp_state(CpState.B2)
    rig.clock.advance(10.0)
    t = rig.now
    c.set_external_limit(5.0)
    assert c.state is S.PAUSED_EVSE and rig.last("duty", "x1") == (t, "x1", None)
    c.on_cp_state(CpState.B1)
    rig.clock.advance(1.0)
    c.set_external_limit(6.0)
    assert c.state is S.PAUSED_EVSE
    rig.advance_to(t + 2.99)
    assert c.duty_percent is None
    rig.advance_to(t + 3.0)
    assert c.state is S.READY and rig.last("duty", "x1") == (t + 3.0, "duty", 10.0)


@pytest.mark.parametrize("limit", [-1.0, math.nan, math.inf * -1, 0.0, 5.89])
def test_no_invalid_duty_ever(rig: Rig, limit: float) -> None:
    c = rig.ctl
    c.set_external_limit(limit)
    c.on_cp_state(CpState.B1)
    c.set_energy_allowed(True)
    c.on_cp_state(CpState.C1)
    rig.clock.advance(30.0)
    assert c.state is S.PAUSED_EVSE and not rig.commands("duty") and not rig.commands("close")


def test_connected_before_authorization_then_pause_without_pwm(rig: Rig) -> None:
    rig.ctl.set_external_limit(4.0)
    rig.ctl.on_cp_state(CpState.B1)
    assert rig.ctl.state is S.CONNECTED
    rig.ctl.set_energy_allowed(True)
    assert rig.ctl.state is S.PAUSED_EVSE
    rig.ctl.set_energy_allowed(False)
    assert rig.ctl.state is S.CONNECTED


# ----------------------------------------------------------------------------- proximity
def test_socket_without_cable_offers_nothing() -> None:
    r = make_rig(ControlLimits(max_current_a=32.0))
    c = r.ctl
    c.on_cp_state(CpState.B1)
    c.set_energy_allowed(True)
    assert c.state is S.IDLE and c.duty_percent is None
    c.on_proximity(32.0)
    assert c.state is S.READY and c.duty_percent == 53.33


def test_cable_pulled_from_socket_opens_relay_at_once() -> None:
    r = make_rig(ControlLimits(max_current_a=32.0))
    r.ctl.on_proximity(32.0)
    r.charge()
    t = r.now
    r.ctl.on_proximity(None)
    assert r.since(t)[:2] == [(t, "open", None), (t, "x1", None)]
    assert r.ctl.state is S.IDLE


def test_fixed_cable_ignores_proximity(rig: Rig) -> None:
    rig.ctl.on_proximity(13.0)
    rig.charge()
    assert rig.ctl.duty_percent == 53.33


# ----------------------------------------------------------------------------- fault hold (F >= 300 ms)
def test_f_is_held_300_ms_after_a_short_fault(rig: Rig) -> None:
    rig.charge()
    t = rig.now
    rig.ctl.on_fault_flags(frozenset({Fault.OVERTEMP}))
    rig.clock.advance(0.1)
    rig.ctl.on_fault_flags(frozenset())
    assert rig.ctl.state is S.FAULT and rig.last("duty", "x1", "f") == (t, "f", None)
    rig.advance_to(t + 0.299)
    assert rig.ctl.state is S.FAULT
    rig.advance_to(t + 0.3)
    assert rig.ctl.state is S.CONNECTED and rig.last("duty", "x1", "f") == (t + 0.3, "x1", None)
    rig.advance_to(t + 3.0)  # PWM returns 3 s after it stopped; the EV asks again
    assert rig.ctl.state is S.READY and rig.last("duty") == (t + 3.0, "duty", 53.33)


def test_persisting_fault_goes_from_f_to_x1_after_300_ms(rig: Rig) -> None:
    rig.ctl.on_cp_state(CpState.B1)
    rig.clock.advance(1.0)
    t = rig.now
    rig.ctl.on_fault_flags(frozenset({Fault.OVERTEMP}))
    rig.clock.advance(5.0)
    assert rig.since(t) == [(t, "f", None), (t + 0.3, "x1", None)]
    assert rig.ctl.state is S.FAULT


def test_fault_while_unavailable_keeps_f(rig: Rig) -> None:
    rig.ctl.set_available(False)
    rig.ctl.on_fault_flags(frozenset({Fault.OVERTEMP}))
    rig.clock.advance(5.0)
    assert rig.ctl.state is S.FAULT and rig.ctl.duty_percent == 0.0
    rig.ctl.on_fault_flags(frozenset())
    assert rig.ctl.state is S.UNAVAILABLE and rig.ctl.duty_percent == 0.0


# ----------------------------------------------------------------------------- over-current
def _charge_at(r: Rig, amps: float) -> float:
    r.ctl.set_external_limit(amps)
    return r.charge()


def test_overcurrent_for_7_s_trips() -> None:
    r = make_rig()
    _charge_at(r, 16.0)  # threshold (16 + 0.5) * 1.1 = 18.15 A
    t = r.now
    r.ctl.on_measured_current((16.0, 18.2, None))
    r.advance_to(t + 6.99)
    r.ctl.on_measured_current((16.0, 18.2, None))
    assert r.ctl.state is S.CHARGING
    r.advance_to(t + 7.0)
    assert r.last("open", "close") == (t + 7.0, "open", None)
    assert r.ctl.state is S.FAULT and Fault.OVERCURRENT in r.ctl.active_faults


def test_overcurrent_must_be_continuous() -> None:
    r = make_rig()
    _charge_at(r, 16.0)
    for _ in range(3):
        r.ctl.on_measured_current((18.2, 18.2, 18.2))
        r.clock.advance(5.0)
        r.ctl.on_measured_current((18.1, 18.0, 17.0))  # at or below threshold: timer cancelled
        r.clock.advance(1.0)
    r.clock.advance(30.0)
    assert r.ctl.state is S.CHARGING


def test_overcurrent_rule_is_configurable() -> None:
    limits = ControlLimits(
        max_current_a=16.0, fixed_cable=True, overcurrent_margin_a=0.0, overcurrent_factor=1.0, overcurrent_time_s=2.0
    )
    r = make_rig(limits)
    r.charge()
    t = r.now
    r.ctl.on_measured_current((16.1, None, None))
    r.advance_to(t + 2.0)
    assert r.ctl.state is S.FAULT


def test_overcurrent_is_latched_until_cleared() -> None:
    r = make_rig()
    _charge_at(r, 16.0)
    r.ctl.on_measured_current((25.0, 25.0, 25.0))
    r.clock.advance(7.0)
    r.ctl.on_measured_current((0.0, 0.0, 0.0))
    r.ctl.on_relay_feedback(False)
    r.clock.advance(60.0)
    assert r.ctl.state is S.FAULT
    closes = len(r.commands("close"))
    assert r.ctl.clear_faults() is True
    assert r.ctl.state is S.READY and not r.ctl.active_faults  # PWM again; the old C2 report is stale
    assert len(r.commands("close")) == closes


# ----------------------------------------------------------------------------- welded contactor
def test_feedback_closed_1_s_after_open_is_a_weld(rig: Rig) -> None:
    rig.charge()
    rig.ctl.on_relay_feedback(True)
    rig.ctl.on_cp_state(CpState.B2)
    t = rig.now
    rig.advance_to(t + 0.99)
    assert rig.ctl.state is S.PAUSED_EV
    rig.advance_to(t + 1.0)
    assert rig.ctl.state is S.FAULT and Fault.WELD in rig.ctl.active_faults
    assert rig.ctl.clear_faults() is False  # mirror contact still says closed
    rig.ctl.on_cp_state(CpState.C2)
    rig.clock.advance(60.0)
    assert rig.ctl.state is S.FAULT and rig.last("open", "close")[1] == "open"
    rig.ctl.on_relay_feedback(False)
    assert rig.ctl.state is S.FAULT  # still latched until the operator clears
    assert rig.ctl.clear_faults() is True
    assert rig.ctl.state is S.READY and rig.last("open", "close")[1] == "open"
    rig.ctl.on_cp_state(CpState.C2)  # the board confirms the new PWM
    assert rig.ctl.state is S.CHARGING and rig.last("open", "close") == (rig.now, "close", None)


def test_feedback_opening_in_time_is_no_weld(rig: Rig) -> None:
    rig.charge()
    rig.ctl.on_relay_feedback(True)
    rig.ctl.on_cp_state(CpState.B2)
    rig.clock.advance(0.2)
    rig.ctl.on_relay_feedback(False)
    rig.clock.advance(10.0)
    assert rig.ctl.state is S.PAUSED_EV and not rig.ctl.active_faults


def test_late_closed_feedback_after_open_is_a_weld_at_once(rig: Rig) -> None:
    rig.clock.advance(5.0)
    rig.ctl.on_relay_feedback(True)  # we commanded open at start-up
    assert rig.ctl.state is S.FAULT and Fault.WELD in rig.ctl.active_faults


# ----------------------------------------------------------------------------- latching and self-clearing
@pytest.mark.parametrize("fault", [Fault.RCD, Fault.GROUND])
def test_board_ground_faults_latch_until_cleared(rig: Rig, fault: Fault) -> None:
    rig.charge()
    rig.ctl.on_fault_flags(frozenset({fault}))
    rig.clock.advance(1.0)
    assert rig.ctl.clear_faults() is False  # flag still up
    rig.ctl.on_fault_flags(frozenset())
    rig.clock.advance(60.0)
    assert rig.ctl.state is S.FAULT and fault in rig.ctl.active_faults
    assert rig.ctl.clear_faults() is True
    assert rig.ctl.state is S.READY and not rig.ctl.active_faults


@pytest.mark.parametrize("fault", [Fault.OVERTEMP, Fault.DIODE, Fault.OVERVOLTAGE, Fault.UNDERVOLTAGE])
def test_other_board_faults_clear_with_the_flag(rig: Rig, fault: Fault) -> None:
    rig.ctl.on_cp_state(CpState.B1)
    rig.ctl.on_fault_flags(frozenset({fault}))
    rig.clock.advance(1.0)
    rig.ctl.on_fault_flags(frozenset())
    assert rig.ctl.state is S.CONNECTED and not rig.ctl.active_faults


def test_diode_fault_under_pwm_is_kept_until_unplug(rig: Rig) -> None:
    """The board checks the diode only on the PWM's negative half: the flag drops with our PWM, which says
    nothing about the EV. Kept (F/X1, relay open, no PWM retry) until the EV leaves (issue 11 item 8)."""
    t0 = rig.charge()
    pwm_starts = len(rig.commands("duty"))
    rig.ctl.on_fault_flags(frozenset({Fault.DIODE}))
    assert rig.ctl.state is S.FAULT and not rig.ctl.relay_commanded_closed
    rig.ctl.on_fault_flags(frozenset())  # the board no longer sees it: no PWM, no check
    rig.ctl.on_cp_state(CpState.B1)
    rig.advance_to(t0 + 60.0)
    assert rig.ctl.state is S.FAULT and rig.ctl.active_faults == {Fault.DIODE}
    assert rig.last("duty", "x1", "f")[1] == "x1" and len(rig.commands("duty")) == pwm_starts  # no PWM retry
    rig.ctl.on_cp_state(CpState.A)  # unplugged
    rig.clock.advance(0.1)
    assert rig.ctl.state is S.IDLE and not rig.ctl.active_faults


def test_diode_fault_under_pwm_cleared_by_the_operator(rig: Rig) -> None:
    t0 = rig.charge()
    rig.ctl.on_fault_flags(frozenset({Fault.DIODE}))
    rig.ctl.on_fault_flags(frozenset())
    rig.advance_to(t0 + 10.0)
    assert rig.ctl.state is S.FAULT
    assert rig.ctl.clear_faults() is True
    assert rig.ctl.state is S.READY and not rig.ctl.active_faults  # the PWM (and the diode check) again


def test_device_faults_clear_by_themselves(rig: Rig) -> None:
    rig.ctl.on_cp_state(CpState.B1)
    rig.ctl.on_device_fault(Fault.BOARD_SILENT, True)
    assert rig.ctl.state is S.FAULT
    rig.clock.advance(2.0)
    rig.ctl.on_device_fault(Fault.BOARD_SILENT, False)
    assert rig.ctl.state is S.CONNECTED


def test_meter_silent_is_reported_but_does_not_stop_charging(rig: Rig) -> None:
    rig.charge()
    rig.ctl.on_device_fault(Fault.METER_SILENT, True)
    assert rig.ctl.state is S.CHARGING and Fault.METER_SILENT in rig.ctl.active_faults
    rig.ctl.on_device_fault(Fault.METER_SILENT, False)
    assert not rig.ctl.active_faults


def test_pilot_error_e_faults_until_a_valid_state(rig: Rig) -> None:
    rig.ctl.on_cp_state(CpState.E)
    assert rig.ctl.state is S.FAULT and rig.ctl.status().pilot_error
    rig.clock.advance(1.0)
    rig.ctl.on_cp_state(CpState.A)
    assert rig.ctl.state is S.IDLE and not rig.ctl.status().pilot_error


def test_unknown_pilot_at_start_up_is_not_a_fault(rig: Rig) -> None:
    assert rig.ctl.state is S.IDLE and rig.ctl.cp_state is None
    assert rig.log == [(T0, "open", None), (T0, "x1", None)]


# ----------------------------------------------------------------------------- unplug, availability
def test_unplug_ends_everything(rig: Rig) -> None:
    rig.charge()
    t = rig.now
    rig.ctl.on_cp_state(CpState.A)
    assert rig.since(t) == [(t, "open", None), (t, "x1", None)]
    assert rig.ctl.state is S.IDLE and not rig.ctl.status().energy_allowed
    rig.clock.advance(10.0)
    rig.ctl.on_cp_state(CpState.B1)  # next EV needs a new authorization
    assert rig.ctl.state is S.CONNECTED and rig.ctl.duty_percent is None


def test_unplug_keeps_latched_fault(rig: Rig) -> None:
    rig.charge()
    rig.ctl.on_fault_flags(frozenset({Fault.RCD}))
    rig.clock.advance(1.0)
    rig.ctl.on_fault_flags(frozenset())
    rig.ctl.on_cp_state(CpState.A)
    assert rig.ctl.state is S.FAULT and rig.ctl.duty_percent is None  # X1 after the hold: unplug visible
    assert rig.ctl.clear_faults() is True
    assert rig.ctl.state is S.IDLE


def test_unavailable_drives_f_and_opens_relay_at_once(rig: Rig) -> None:
    rig.charge()
    t = rig.now
    rig.ctl.set_available(False)
    assert rig.since(t) == [(t, "open", None), (t, "f", None)]
    assert rig.ctl.state is S.UNAVAILABLE
    rig.ctl.on_cp_state(CpState.F)
    rig.clock.advance(1.0)
    rig.ctl.set_available(True)
    assert rig.ctl.state is S.CONNECTED and rig.last("duty", "x1", "f") == (t + 1.0, "x1", None)
    rig.ctl.on_cp_state(CpState.C1)
    rig.advance_to(t + 3.0)
    assert rig.ctl.state is S.READY


# ----------------------------------------------------------------------------- status and on_change
def test_on_change_fires_on_status_changes_only(rig: Rig) -> None:
    rig.ctl.on_cp_state(CpState.B1)
    n = rig.changes
    assert n >= 1
    rig.ctl.on_cp_state(CpState.B1)
    rig.ctl.set_external_limit(None)
    assert rig.changes == n
    rig.ctl.set_energy_allowed(True)
    assert rig.changes == n + 1
    st = rig.ctl.status()
    assert (st.state, st.duty_percent, st.offered_current_a, st.relay_commanded_closed) == (S.READY, 53.33, 32.0, False)


def test_on_change_may_call_back_into_the_controller() -> None:
    clock = FakeClock()
    log: Log = []
    ctl: ChargeController | None = None

    def authorize_on_plug() -> None:
        assert ctl is not None
        if ctl.state is S.CONNECTED:
            ctl.set_energy_allowed(True)

    ctl = ChargeController(
        clock, FakePilot(clock, log), FakeSwitch(clock, log), ControlLimits(16.0, fixed_cable=True), authorize_on_plug
    )
    ctl.on_cp_state(CpState.B1)
    assert ctl.state is S.READY and log[-1] == (T0, "duty", 26.67)
