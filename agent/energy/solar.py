"""Solar surplus charging: when to run, how much current, on how many phases.

Pure (no I/O, no clock: the time is passed in, any monotonic seconds). One ``SolarPolicy`` per charging session
(create it when the session starts: the phase-switch cap is per session); ``SolarSite`` shares one site's surplus
between several sessions, each with its own policy.

Surplus (W) = export at the connection point + what the EV(s) draw now, i.e. the power the EVs could take
without importing. The rules (the shape users of SmartEVSE/evcc expect, none of the toggling they report):

- ``solar``: start only when the surplus has covered the minimum charging power (``min_current_a`` x phases x
  230 V) for ``solar_start_delay_s`` and the session has been paused for ``solar_min_pause_s``; stop only when,
  at the minimum current, the site would import more than ``solar_import_margin_w`` for ``solar_stop_delay_s``
  and the session has run for ``solar_min_run_s``. In between the current follows the surplus (never below
  ``min_current_a``). So the contactor toggles at most once per min run + min pause, and import beyond the
  margin lasts at most max(stop delay, min run) after a drop of the surplus.
- ``solar+min``: never paused for lack of sun; the current is max(min_current_a, surplus current): the grid
  supplies at most the minimum, the sun everything above it (the session "always gets" ``min_current_a``).
- Phases (``phase_switching``, the board able to and the cap not reached): start on 3 phases only when the
  surplus has covered 3 x 6 A for the start delay, else on 1; a running 3-phase session whose surplus stays
  below the 3-phase minimum (less the margin) for the stop delay goes to 1 phase instead of stopping; a running
  1-phase session goes to 3 when the surplus has covered the 3-phase minimum for the start delay. At most
  ``max_phase_switches`` per session and one per ``solar_min_run_s``. While a switch is under way (the phases
  reported differ from the ones asked for) the decision holds and the pause it causes is not a stop.
- In ``off`` and ``grid-limit`` there is no solar limit: ``run`` is True and ``current_a`` is infinite.

Nonsense in (a NaN surplus, time going backwards) counts as no surplus / no time passed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import pairwise

MODES = ("off", "grid-limit", "solar", "solar+min")
SOLAR_MODES = ("solar", "solar+min")
NOMINAL_VOLTAGE_V = 230.0
SWITCH_TIMEOUT_S = 60.0  # a phase switch not reported done by then is given up (the reported phases count)
# After the rules decide to stop: the EV stops within 6 s of X1 (else the contactor opens under it), plus the
# site meter's poll and the controller's step that saw the import.
SOLAR_STOP_ALLOWANCE_S = 8.0


def longest_import_s(stop_delay_s: float, min_run_s: float) -> float:
    """The longest charging import beyond ``solar_import_margin_w`` that the ``solar`` rules let happen: the
    stop waits for the stop delay, or for the rest of the min run when the sun goes right after a start, then
    the EV stops. The goal "no import beyond the margin for longer than the min pause" needs
    ``solar_min_pause_s >= longest_import_s(...)`` (agent/config.py refuses a [site] that breaks it)."""
    return max(stop_delay_s, min_run_s) + SOLAR_STOP_ALLOWANCE_S


@dataclass(frozen=True, slots=True)
class SolarSettings:
    """The ``[site]`` values the solar rules use (names as in the TOML) and the per-session phase-switch cap."""

    mode: str = "solar"
    min_current_a: float = 6.0
    phase_switching: bool = False
    max_phase_switches: int = 4
    solar_start_delay_s: float = 30.0
    solar_stop_delay_s: float = 60.0
    solar_min_run_s: float = 100.0
    solar_min_pause_s: float = 120.0
    solar_import_margin_w: float = 200.0
    voltage_v: float = NOMINAL_VOLTAGE_V

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode: {self.mode!r} is not one of {', '.join(MODES)}")
        if not (math.isfinite(self.min_current_a) and 6.0 <= self.min_current_a <= 80.0):
            raise ValueError(f"min_current_a: {self.min_current_a!r} is not between 6 and 80 A")
        if not 0 <= self.max_phase_switches <= 1000:
            raise ValueError(f"max_phase_switches: {self.max_phase_switches!r} is not between 0 and 1000")
        for name in ("solar_start_delay_s", "solar_stop_delay_s", "solar_min_run_s", "solar_min_pause_s",
                     "solar_import_margin_w"):  # fmt: skip
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: {value!r} is not a finite number >= 0")
        if not (math.isfinite(self.voltage_v) and 50 <= self.voltage_v <= 500):
            raise ValueError(f"voltage_v: {self.voltage_v!r} is not between 50 and 500 V")

    def min_power_w(self, phases: int) -> float:
        """Power of a session at ``min_current_a`` on ``phases`` phases."""
        return self.min_current_a * phases * self.voltage_v


@dataclass(frozen=True, slots=True)
class SolarDecision:
    """``run`` False = pause; ``current_a`` per phase (0 when paused); ``phases`` to supply (a change is a
    switch request); ``reason`` for the log and ``cpctl status``."""

    run: bool
    current_a: float
    phases: int
    reason: str


def _since(flag: bool, since: float | None, now: float) -> float | None:
    """Start of the current stretch of ``flag`` being true."""
    if not flag:
        return None
    return now if since is None else since


class SolarPolicy:
    """Run/pause, current and phases of one session from the surplus it may use; see the module doc."""

    def __init__(self, settings: SolarSettings) -> None:
        self.settings = settings
        self.phase_switches = 0  # switches asked for in this session
        self._now = -math.inf
        self._observed: bool | None = None
        self._observed_since = -math.inf  # when the observed running state last changed
        self._start_ok_since: float | None = None
        self._three_ok_since: float | None = None
        self._low_since: float | None = None
        self._pending: int | None = None
        self._pending_at = -math.inf
        self._last_switch_at = -math.inf

    def step(self, now_s: float, surplus_w: float, running: bool, phases: int, phase_switching: bool) -> SolarDecision:
        """``running``: the session is drawing (contactor closed, offer > 0) now; ``phases``: the phases supplied
        now (as the board reports); ``phase_switching``: this connector's board can switch and the EV is not
        known to be 1-phase only."""
        s = self.settings
        if math.isfinite(now_s) and now_s > self._now:
            self._now = now_s
        now = self._now
        surplus = surplus_w if math.isfinite(surplus_w) else 0.0
        phases = phases if phases in (1, 2, 3) else 3
        if s.mode not in SOLAR_MODES:
            return SolarDecision(True, math.inf, phases, "no-solar-limit")

        if self._pending is not None:
            if (phases == self._pending and running) or now - self._pending_at > SWITCH_TIMEOUT_S:
                self._pending = None
                if not self._observed:  # a switch before a start: the run starts now
                    self._observed, self._observed_since = running, now
                # a switch while running is no new run: the min run and a running stop delay go on
            else:
                return SolarDecision(True, self._current(surplus, self._pending), self._pending, "phase-switch")
        if running != self._observed:
            if self._observed is not None:
                self._observed_since = now
            self._observed = running

        can_switch = (
            s.phase_switching
            and phase_switching
            and self.phase_switches < s.max_phase_switches
            and now - self._last_switch_at >= s.solar_min_run_s
        )
        margin = s.solar_import_margin_w
        start_need = s.min_power_w(1 if can_switch else phases)
        self._start_ok_since = _since(surplus >= start_need, self._start_ok_since, now)
        self._three_ok_since = _since(surplus >= s.min_power_w(3), self._three_ok_since, now)
        self._low_since = _since(surplus < s.min_power_w(phases) - margin, self._low_since, now)
        low_long = self._low_since is not None and now - self._low_since >= s.solar_stop_delay_s
        three_long = self._three_ok_since is not None and now - self._three_ok_since >= s.solar_start_delay_s

        if s.mode == "solar+min" or running:
            ran_long = now - self._observed_since >= s.solar_min_run_s
            one_phase_ok = surplus >= s.min_power_w(1) - margin
            if low_long and can_switch and phases > 1 and (one_phase_ok or not ran_long or s.mode == "solar+min"):
                return self._switch(now, surplus, 1, "surplus below the 3-phase minimum: to 1 phase")
            if phases == 1 and can_switch and three_long:
                return self._switch(now, surplus, 3, "surplus covers 3 x min current: to 3 phases")
            if s.mode == "solar+min":
                return SolarDecision(True, self._current(surplus, phases), phases, "solar+min")
            if low_long:
                if ran_long:
                    return SolarDecision(False, 0.0, phases, "importing beyond the margin: pause")
                return SolarDecision(True, s.min_current_a, phases, "min run time")
            return SolarDecision(True, self._current(surplus, phases), phases, "surplus")

        if now - self._observed_since < s.solar_min_pause_s:
            return SolarDecision(False, 0.0, phases, "min pause time")
        if self._start_ok_since is None or now - self._start_ok_since < s.solar_start_delay_s:
            return SolarDecision(False, 0.0, phases, "waiting for surplus")
        target = phases
        if can_switch:
            target = 3 if three_long else 1
        if target != phases:
            return self._switch(now, surplus, target, f"start on {target} phase{'s' if target > 1 else ''}")
        return SolarDecision(True, self._current(surplus, phases), phases, "surplus: start")

    def _current(self, surplus_w: float, phases: int) -> float:
        return max(self.settings.min_current_a, surplus_w / (phases * self.settings.voltage_v))

    def _switch(self, now: float, surplus_w: float, target: int, reason: str) -> SolarDecision:
        self.phase_switches += 1
        self._last_switch_at = self._pending_at = now
        self._pending = target
        self._three_ok_since = None
        return SolarDecision(True, self._current(surplus_w, target), target, reason)


@dataclass(frozen=True, slots=True)
class SolarSession:
    """One session that takes part in solar charging, for ``SolarSite.step``. ``drawn_w``: what its EV draws now
    (all phases); ``limit_a``: the most it can take per phase (its other limits)."""

    connector_id: int
    running: bool
    phases: int
    drawn_w: float
    limit_a: float = 32.0
    phase_switching: bool = False
    offered_a: float | None = None  # what the pilot offers now (None: taken to be the last grant)
    settled: bool = True  # the EV has had its reaction time since the offer last changed

def _split(available_w: float, items: list[tuple[float, float, int]], voltage: float) -> list[float]:
    """Per-phase currents (min_a <= I <= cap_a) with the same current for all, as far as their bounds allow,
    using ``available_w`` in total (all at their minimum when it does not cover that)."""
    if not items:
        return []

    def used(level: float) -> float:
        return sum(voltage * p * min(max(level, lo), hi) for lo, hi, p in items)

    # used() is piecewise linear and non-decreasing in the level: find the piece where it reaches available_w
    points = sorted({x for lo, hi, _ in items for x in (lo, hi)})
    level = points[-1]
    if used(level) > available_w:
        level = points[0]
        for left, right in pairwise(points):
            at_left, at_right = used(left), used(right)
            if at_right > available_w:
                if at_right > at_left and at_left < available_w:
                    level = left + (right - left) * (available_w - at_left) / (at_right - at_left)
                else:
                    level = left
                break
    return [min(max(level, lo), hi) for lo, hi, _ in items]


class SolarSite:
    """Shares one site's surplus between sessions, each with its own ``SolarPolicy``.

    ``step`` takes the sessions in priority order (first = kept running longest). Each policy sees the surplus
    left after the minimum power of the higher-priority sessions that run (or what such a session's EV draws
    plus 1.5 A when that is less: a full battery does not hold the sun from the others), so when the sun fades
    the lowest-priority session pauses first (after its own delays); the sessions that run then share the
    whole surplus with the same current per phase as far as their limits allow, an EV that draws more than
    1 A below what it was granted being held at its draw + 1.5 A while the others need it. A connector
    missing from a step's list has no session any more: its policy (and its phase-switch count) is dropped.
    """

    HOLD_HEADROOM_A = 1.5
    UNUSED_BELOW_A = 1.0

    def __init__(self, settings: SolarSettings) -> None:
        self.settings = settings
        self.policies: dict[int, SolarPolicy] = {}
        self._granted: dict[int, float] = {}

    def step(self, now_s: float, grid_power_w: float, sessions: Sequence[SolarSession]) -> dict[int, SolarDecision]:
        """``grid_power_w``: total signed power at the connection point (import positive)."""
        s = self.settings
        ids = {session.connector_id for session in sessions}
        for gone in [cid for cid in self.policies if cid not in ids]:
            del self.policies[gone]
            self._granted.pop(gone, None)
        grid = grid_power_w if math.isfinite(grid_power_w) else 0.0
        draws = {x.connector_id: max(x.drawn_w, 0.0) if math.isfinite(x.drawn_w) else 0.0 for x in sessions}
        available = sum(draws.values()) - grid
        decisions: dict[int, SolarDecision] = {}
        reserved = 0.0
        for session in sessions:
            policy = self.policies.setdefault(session.connector_id, SolarPolicy(s))
            decision = policy.step(now_s, available - reserved, session.running, session.phases,
                                   session.phase_switching)  # fmt: skip
            decisions[session.connector_id] = decision
            if decision.run:
                need = s.min_power_w(decision.phases)
                if session.running:
                    headroom = self.HOLD_HEADROOM_A * decision.phases * s.voltage_v
                    need = min(need, draws[session.connector_id] + headroom)
                reserved += need
        if s.mode not in SOLAR_MODES:
            return decisions
        running = [x for x in sessions if decisions[x.connector_id].run]
        bounds: list[tuple[float, float, int]] = []
        held: list[tuple[float, float, int]] = []
        for x in running:
            phases = decisions[x.connector_id].phases
            limit = max(x.limit_a if math.isfinite(x.limit_a) else s.min_current_a, s.min_current_a)
            bounds.append((s.min_current_a, limit, phases))
            drawn_a = draws[x.connector_id] / (phases * s.voltage_v)
            granted = self._granted.get(x.connector_id)
            # Unused only against what the EV is really offered (a grant waits for the duty window) and once
            # the EV has had time to follow it: else the split flips between held and not held every step.
            reference = granted if x.offered_a is None or granted is None else min(granted, x.offered_a)
            if x.running and x.settled and reference is not None and drawn_a < reference - self.UNUSED_BELOW_A:
                limit = min(limit, max(s.min_current_a, drawn_a + self.HOLD_HEADROOM_A))
            held.append((s.min_current_a, limit, phases))
        currents = _split(available, held, s.voltage_v)
        if sum(c * p * s.voltage_v for c, (_, _, p) in zip(currents, held, strict=True)) < available - 1.0:
            currents = _split(available, bounds, s.voltage_v)  # room for all: nobody is held back
        for x, current in zip(running, currents, strict=True):
            decisions[x.connector_id] = replace(decisions[x.connector_id], current_a=current)
        self._granted = {x.connector_id: c for x, c in zip(running, currents, strict=True)}
        return decisions
