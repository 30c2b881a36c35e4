"""IEC 61851-1 charging states, the transition table (as data) and the duty-cycle formula.

The table is a list of guarded moves on one trigger, ``step``. Guards are names of predicates on a
``Guards`` object (the controller); the machine holds no timers and issues no commands, it only picks
the next state. Rows are tried top to bottom for the current state and the first whose guards pass
wins, so the safety rows come first. ``ChargeMachine.settle`` steps until nothing moves.

What each state drives (see ``charge_control``): relay closed only in CHARGING and STOPPING; PWM in
READY, CHARGING and PAUSED_EV; F in UNAVAILABLE and for the first 300 ms of FAULT; X1 otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any, NamedTuple, Protocol

from transitions import Machine

log = logging.getLogger("cpagent.iec61851")


class ChargeState(StrEnum):
    IDLE = "idle"  # no EV (state A, or no cable in a socket outlet)
    CONNECTED = "connected"  # EV present, energy not allowed: X1, relay open
    READY = "ready"  # energy allowed, PWM on, EV has not asked yet
    CHARGING = "charging"  # EV asks (C/D) with PWM on: relay closed
    PAUSED_EV = "paused_ev"  # PWM on, EV went back to B after charging
    PAUSED_EVSE = "paused_evse"  # energy allowed but the limit is below 6 A: X1
    STOPPING = "stopping"  # X1 under load: waiting up to 6 s for the EV to leave C
    FAULT = "fault"  # relay open; F held >= 300 ms, then X1 so plug/unplug stays visible
    UNAVAILABLE = "unavailable"  # operator set the connector inoperative: F, relay open


class Guards(Protocol):
    """Predicates the table refers to by name."""

    def fault_present(self) -> bool: ...
    def fault_hold_over(self) -> bool: ...
    def available(self) -> bool: ...
    def ev_connected(self) -> bool: ...
    def energy_allowed(self) -> bool: ...
    def current_available(self) -> bool: ...
    def pwm_restart_allowed(self) -> bool: ...
    def ev_ready_for_power(self) -> bool: ...
    def ev_requests_energy(self) -> bool: ...
    def stop_done(self) -> bool: ...
    def pwm_reported(self) -> bool: ...


class Row(NamedTuple):
    sources: tuple[ChargeState, ...]
    dest: ChargeState
    when: tuple[str, ...] = ()  # all must hold
    unless: tuple[str, ...] = ()  # none may hold


S = ChargeState
_ALL = tuple(S)
_PLUGGED = (S.CONNECTED, S.READY, S.CHARGING, S.PAUSED_EV, S.PAUSED_EVSE, S.STOPPING)
_PWM_ON = (S.READY, S.PAUSED_EV)

TRANSITIONS: tuple[Row, ...] = (
    # Safety first: these pre-empt everything and open the relay in the same call.
    Row(tuple(s for s in _ALL if s is not S.FAULT), S.FAULT, when=("fault_present",)),
    Row(tuple(s for s in _ALL if s not in (S.FAULT, S.UNAVAILABLE)), S.UNAVAILABLE, unless=("available",)),
    Row(_PLUGGED, S.IDLE, unless=("ev_connected",)),
    # Leave FAULT only once the fault is gone and F has been held 300 ms.
    Row((S.FAULT,), S.UNAVAILABLE, when=("fault_hold_over",), unless=("fault_present", "available")),
    Row((S.FAULT,), S.IDLE, when=("fault_hold_over",), unless=("fault_present", "ev_connected")),
    Row((S.FAULT,), S.CONNECTED, when=("fault_hold_over",), unless=("fault_present",)),
    Row((S.UNAVAILABLE,), S.IDLE, when=("available",), unless=("ev_connected",)),
    Row((S.UNAVAILABLE,), S.CONNECTED, when=("available",)),
    Row((S.IDLE,), S.CONNECTED, when=("ev_connected",)),
    # Energy allowed: offer current by PWM, or pause in X1 while the limit is below 6 A.
    Row((S.CONNECTED,), S.PAUSED_EVSE, when=("energy_allowed",), unless=("current_available",)),
    Row(
        (S.CONNECTED, S.PAUSED_EVSE),
        S.READY,
        when=("energy_allowed", "current_available", "pwm_restart_allowed"),
    ),
    Row((S.PAUSED_EVSE,), S.CONNECTED, unless=("energy_allowed",)),
    Row(_PWM_ON, S.CONNECTED, unless=("energy_allowed",)),
    Row(_PWM_ON, S.PAUSED_EVSE, unless=("current_available",)),
    Row(_PWM_ON, S.CHARGING, when=("ev_ready_for_power",)),
    # Charging: the EV stopping opens the relay at once; we stopping goes through X1 first.
    Row((S.CHARGING,), S.PAUSED_EV, unless=("ev_requests_energy",)),
    Row((S.CHARGING,), S.STOPPING, unless=("energy_allowed",)),
    Row((S.CHARGING,), S.STOPPING, unless=("current_available",)),
    # The board says our PWM is off (C1/D1) though we drive it: doubt about the hardware, stop as under load.
    Row((S.CHARGING,), S.STOPPING, unless=("pwm_reported",)),
    Row((S.STOPPING,), S.PAUSED_EVSE, when=("stop_done", "energy_allowed")),
    Row((S.STOPPING,), S.CONNECTED, when=("stop_done",)),
)

_MAX_STEPS = 16  # the longest chain is FAULT -> CONNECTED -> READY -> CHARGING; more means a cycle


class _Guard:
    """A guard of the table by name: calls that predicate of the stepping machine's ``guards``. The
    ``transitions.Machine`` built from a table is shared by every ChargeMachine of that table (it holds no
    model: each step passes its own), so a connector costs a few hundred bytes instead of a machine
    (about 35 kB and 1.4 ms to build each)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, event: Any) -> bool:
        return bool(getattr(event.model.guards, self.name)())

    def __repr__(self) -> str:
        return self.name


def _entered(event: Any) -> None:
    event.model.entered()


_MACHINES: dict[tuple[Row, ...], Any] = {}  # one transitions.Machine per table, shared by its ChargeMachines


def _shared_machine(table: tuple[Row, ...]) -> Any:
    machine = _MACHINES.get(table)
    if machine is None:
        rows = [
            {
                "trigger": "step",
                "source": list(r.sources),
                "dest": r.dest,
                "conditions": [_Guard(n) for n in r.when],
                "unless": [_Guard(n) for n in r.unless],
            }
            for r in table
        ]
        machine = Machine(
            model=None,  # models are not registered: each ChargeMachine steps itself through the shared events
            states=ChargeState,
            initial=S.IDLE,
            transitions=rows,
            auto_transitions=False,
            ignore_invalid_triggers=True,
            send_event=True,  # guards and the state-change callback get the event, hence the model
            after_state_change=_entered,
        )
        _MACHINES[table] = machine
    return machine


class ChargeMachine:
    """Typed wrapper around ``transitions.Machine`` (which has no stubs). It is the machine's model: it
    holds the state, the guards and the entry callback; the Machine itself is shared (``_shared_machine``)."""

    __slots__ = ("_on_enter", "_step", "guards", "state")

    def __init__(
        self,
        guards: Guards,
        *,
        on_enter: Callable[[ChargeState], None] | None = None,
        initial: ChargeState = S.IDLE,
        table: Sequence[Row] = TRANSITIONS,
    ) -> None:
        table = tuple(table)
        for name in {n for r in table for n in (*r.when, *r.unless)}:
            if not callable(getattr(guards, name)):  # AttributeError here = typo in the table
                raise TypeError(f"guard {name!r} of the charge table is not callable on {type(guards).__name__}")
        self.state: ChargeState = initial
        self.guards = guards
        self._on_enter = on_enter
        self._step = _shared_machine(table).events["step"]

    def entered(self) -> None:
        if self._on_enter is not None:
            self._on_enter(self.state)

    def step(self) -> bool:
        """One move along the first row whose guards pass; False when none does."""
        return bool(self._step.trigger(self))

    def settle(self) -> ChargeState:
        for _ in range(_MAX_STEPS):
            if not self.step():
                return self.state
        # A cycle is a bug in the table; stop here so the caller still applies this state's outputs.
        log.error("charge state machine does not settle (stuck around %s)", self.state)
        return self.state


# ----------------------------------------------------------------------------- duty cycle
PWM_MIN_A = 6.0
PWM_MAX_A = 80.0


def offered_current(amps: float) -> float | None:
    """The current a PWM for ``amps`` actually signals (EVerest edge handling); None below 6 A."""
    if amps < 5.9:
        return None
    if amps <= 6.1:
        return PWM_MIN_A
    if 51.0 < amps < 52.5:
        return 51.0  # the norm leaves a gap between the two formulas
    return min(amps, PWM_MAX_A)


def duty_for_current(amps: float) -> float | None:
    """PWM duty in percent (0.01 % resolution) for a current limit; None = no valid PWM (pause)."""
    current = offered_current(amps)
    if current is None:
        return None
    if current == PWM_MIN_A:
        return 10.0
    duty = current / 0.6 if current <= 51.0 else current / 2.5 + 64.0
    return round(duty, 2)
