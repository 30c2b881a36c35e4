"""Site current allocation: share the per-phase capacity of the grid connection between charging sessions.

Pure functions (no I/O, no clock): the site controller passes in what it measured and applies what comes out.

Model. Each active session ("demand") draws the same current on every site phase it loads (a 3-phase EV on
L1, L2 and L3, a 1-phase EV on one). The shares are max-min fair per phase (progressive filling): every
session's offer rises at the same pace until it reaches its own limit (``limit_a``) or one of its phases is full;
a session frozen by one full phase leaves the rest of its other phases to the others. Then:

- Unused current is handed on. A session whose EV draws well below what it is offered (``drawn_a`` more than
  ``unused_below_a`` under ``offered_a``) is held at ``drawn_a + headroom_a`` (never below the 6 A floor) while
  the others are filled, and gets back whatever is still left afterwards (so with room for everybody nobody's
  offer moves because of it). The headroom is larger than the "unused" threshold, so an EV that keeps drawing
  what it can (say 11 A when held at 12 A) stays held, and an EV that uses its offer is released: no
  oscillation between the two.
- Nobody gets 0 < current < 6 A (IEC 61851-1: below 8 % duty is not an offer). While some session would get
  less, the lowest-priority one among those short of 6 A is paused (latest ``started_s``, then highest
  connector id) and the rest are shared again; paused sessions are re-admitted, highest priority first, when
  they fit. The order is stable: it depends only on the inputs.
- Results are rounded down to 0.1 A, so rounding never adds current.

Robustness: a capacity, limit or floor that is NaN, infinite, negative or absurd (> ``MAX_PLAUSIBLE_A``) counts
as 0 A available (the safe side); a drawn current that is not a finite non-negative number counts as unknown
(nothing is taken from that session); phases outside 1..3 are dropped and a demand naming none is treated as
loading all three (the conservative assumption).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from hal.types import GridSample

IEC_MIN_CURRENT_A = 6.0
MAX_PLAUSIBLE_A = 1000.0
_EPS = 1e-9

BINDING_CONNECTOR = "connector"
BINDING_SITE_FUSE = "site-fuse"
BINDING_SOLAR = "solar"
BINDING_FAILSAFE = "failsafe"
BINDING_INACTIVE = "inactive"


@dataclass(frozen=True, slots=True)
class Demand:
    """One connector's request for site current.

    ``limit_a``: the minimum of every per-connector limit (connector max, cable, OCPP limit, availability);
    0 means no current at all. ``phases``: the site phases (1..3) the EV loads now. ``drawn_a``: the largest
    measured phase current of this EV now; None when unknown or while the EV is still following an offer change
    (IEC 61851-1 allows it 5 s): then nothing is taken from it. ``offered_a``: the offer it is following now
    (None: compared with its own ``limit_a`` instead). ``started_s``: when the session started (any clock; a later
    start is paused first when current runs short).
    """

    connector_id: int
    limit_a: float
    phases: tuple[int, ...]
    drawn_a: float | None
    active: bool
    offered_a: float | None = None
    started_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Allocation:
    """``current_a`` 0 = pause, else >= the floor. ``binding``: which limit decided it: "connector" (its own
    ``limit_a``), the caller's ``binding_reason`` ("site-fuse", "solar", "failsafe") or "inactive"."""

    connector_id: int
    current_a: float
    binding: str


def _sane(value: float) -> float:
    """A current the caller gave us, or 0 when it is not a plausible non-negative finite number."""
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 or value > MAX_PLAUSIBLE_A:
        return 0.0
    return float(value)


def _phase_indexes(phases: tuple[int, ...]) -> tuple[int, ...]:
    valid = sorted({p - 1 for p in phases if isinstance(p, int) and 1 <= p <= 3})
    return tuple(valid) if valid else (0, 1, 2)


def _round_down(value: float) -> float:
    return math.floor(value * 10 + 1e-6) / 10


@dataclass(slots=True)
class _Want:
    index: int
    demand: Demand
    limit: float
    phases: tuple[int, ...]
    soft: float  # limit, or the drawn-current hold when the EV leaves part of its offer unused
    current: float = 0.0
    full_phase: bool = False


def _fill(capacity: list[float], wants: list[_Want], uppers: list[float]) -> None:
    """Progressive filling: raise every want's ``current`` by the same amount until it reaches its upper bound or
    one of its phases is full. ``capacity`` is consumed in place."""
    frozen = [upper - want.current <= _EPS for want, upper in zip(wants, uppers, strict=True)]
    while not all(frozen):
        step = math.inf
        for phase in range(3):
            users = sum(1 for w, f in zip(wants, frozen, strict=True) if not f and phase in w.phases)
            if users:
                step = min(step, capacity[phase] / users)
        for want, upper, is_frozen in zip(wants, uppers, frozen, strict=True):
            if not is_frozen:
                step = min(step, upper - want.current)
        step = max(step, 0.0)
        for want, is_frozen in zip(wants, frozen, strict=True):
            if not is_frozen:
                want.current += step
                for phase in want.phases:
                    capacity[phase] -= step
        for i, (want, upper) in enumerate(zip(wants, uppers, strict=True)):
            if frozen[i]:
                continue
            if any(capacity[p] <= _EPS for p in want.phases):
                frozen[i] = True
                want.full_phase = True
            elif upper - want.current <= _EPS:
                frozen[i] = True


def _share(capacity_a: Sequence[float], wants: list[_Want]) -> list[float]:
    """Fair shares of ``wants`` (first held at their soft bound, then the rest of the capacity to those held);
    returns the capacity left per phase."""
    capacity = list(capacity_a)
    for want in wants:
        want.current, want.full_phase = 0.0, False
    _fill(capacity, wants, [w.soft for w in wants])
    held = [w for w in wants if w.soft < w.limit and not w.full_phase and w.current >= w.soft - _EPS]
    if held:
        _fill(capacity, held, [w.limit for w in held])
    return capacity


def _priority_key(want: _Want) -> tuple[float, int]:
    """Larger = lower priority = paused first."""
    started = want.demand.started_s
    return (started if math.isfinite(started) else math.inf, want.demand.connector_id)


def allocate(
    capacity_a: tuple[float, float, float],
    demands: Sequence[Demand],
    *,
    min_current_a: float = IEC_MIN_CURRENT_A,
    binding_reason: str = BINDING_SITE_FUSE,
    headroom_a: float = 1.5,
    unused_below_a: float = 1.0,
) -> list[Allocation]:
    """Share ``capacity_a`` (the per-phase current the EVs may draw together) between ``demands``.

    Returns one Allocation per demand, in the order given. ``min_current_a`` is the floor (never below the IEC
    6 A): no allocation lies strictly between 0 and it.
    """
    floor = _sane(min_current_a)
    floor = max(floor, IEC_MIN_CURRENT_A) if floor > 0 else IEC_MIN_CURRENT_A
    capacity = [_sane(c) for c in tuple(capacity_a)[:3]]
    capacity += [0.0] * (3 - len(capacity))
    headroom = max(_sane(headroom_a), _sane(unused_below_a))

    result: list[Allocation | None] = [None] * len(demands)
    wants: list[_Want] = []
    for index, demand in enumerate(demands):
        if not demand.active:
            result[index] = Allocation(demand.connector_id, 0.0, BINDING_INACTIVE)
            continue
        limit = _sane(demand.limit_a)
        if limit < floor:
            result[index] = Allocation(demand.connector_id, 0.0, BINDING_CONNECTOR)
            continue
        soft = limit
        drawn = demand.drawn_a
        if drawn is not None and isinstance(drawn, (int, float)) and math.isfinite(drawn) and 0 <= drawn:
            offered = demand.offered_a
            if offered is not None and not (isinstance(offered, (int, float)) and math.isfinite(offered)):
                offered = None
            reference = offered if offered is not None else limit
            if drawn < reference - _sane(unused_below_a):
                soft = min(limit, max(floor, drawn + headroom))
        wants.append(_Want(index, demand, limit, _phase_indexes(demand.phases), soft))

    paused: list[_Want] = []
    running = sorted(wants, key=_priority_key)
    while running:
        _share(capacity, running)
        short = [w for w in running if w.current < floor - 1e-6]
        if not short:
            break
        victim = max(short, key=_priority_key)
        running.remove(victim)
        paused.append(victim)
    for candidate in sorted(paused, key=_priority_key):
        trial = [*running, candidate]
        _share(capacity, trial)
        if all(w.current >= floor - 1e-6 for w in trial):
            running = trial
            paused.remove(candidate)
    _share(capacity, running)

    for want in running:
        current = max(_round_down(want.current), floor)
        binding = BINDING_CONNECTOR if want.current >= want.limit - 1e-6 else binding_reason
        result[want.index] = Allocation(want.demand.connector_id, current, binding)
    for want in paused:
        result[want.index] = Allocation(want.demand.connector_id, 0.0, binding_reason)
    return [a for a in result if a is not None]


def ev_capacity(
    grid: GridSample, ev_current_a: tuple[float, float, float], fuse_a: float, margin_a: float
) -> tuple[float, float, float]:
    """Per-phase current the EVs may draw together: fuse - margin - (grid current - EV current).

    ``grid.current_a`` is signed (import positive); ``ev_current_a`` is what the EVs draw now on each site phase.
    The difference is the load that is not ours (house minus PV: negative while PV exports, which the fuse
    sees as relief). A grid current that is not finite, or a fuse/margin that makes no sense, gives 0 on that
    phase (pause: the safe side); an EV current that is not a finite non-negative number counts as 0 (the
    house then seems larger: also the safe side).
    """
    fuse = _sane(fuse_a)
    margin_ok = isinstance(margin_a, (int, float)) and math.isfinite(margin_a) and 0 <= margin_a <= fuse
    if not margin_ok:
        fuse = 0.0
    margin = margin_a if margin_ok else 0.0
    out: list[float] = []
    for phase in range(3):
        try:
            grid_a = float(grid.current_a[phase])
        except (IndexError, TypeError, ValueError):
            grid_a = math.nan
        ev_a = _sane(ev_current_a[phase]) if phase < len(ev_current_a) else 0.0
        if not math.isfinite(grid_a) or abs(grid_a) > MAX_PLAUSIBLE_A:
            out.append(0.0)
            continue
        other = grid_a - ev_a
        out.append(max(0.0, fuse - margin - other) if fuse > 0 else 0.0)
    return (out[0], out[1], out[2])


class Stabilizer:
    """Hysteresis on ``allocate()``'s results, so an input that wavers between two splits does not make the
    offers flip every step (each flip is a duty change and an EV ramp).

    ``step`` returns the previous result again unless one of these holds, then the new one replaces it:
    - it is the first, or the sessions changed (another connector set, one started, paused or resumed);
    - the previous result would exceed the capacity on a phase or a connector's own ``limit_a`` (never kept
      when that would exceed the fuse or a limit: decreases that are needed pass at once);
    - no current goes down by more than ``threshold_a`` while one goes up by more (more for some, less for
      none: e.g. the sun rises), at once;
    - ``hold_s`` has passed since the previous one was accepted and some current differs by more than
      ``threshold_a`` (a redistribution: some up, some down).
    Pure: the time is passed in."""

    def __init__(self, *, hold_s: float = 10.0, threshold_a: float = 0.5) -> None:
        self.hold_s = hold_s
        self.threshold_a = threshold_a
        self._kept: list[Allocation] | None = None
        self._since = -math.inf

    def reset(self) -> None:
        self._kept, self._since = None, -math.inf

    def step(self, now_s: float, capacity_a: tuple[float, float, float], demands: Sequence[Demand],
             allocations: Sequence[Allocation]) -> list[Allocation]:
        new = list(allocations)
        if self._must_replace(now_s, capacity_a, demands, new):
            self._kept, self._since = new, now_s
        assert self._kept is not None
        return list(self._kept)

    def _must_replace(self, now_s: float, capacity_a: tuple[float, float, float], demands: Sequence[Demand],
                      new: list[Allocation]) -> bool:
        kept = self._kept
        if kept is None or [a.connector_id for a in kept] != [a.connector_id for a in new]:
            return True
        if any((k.current_a > 0) != (n.current_a > 0) for k, n in zip(kept, new, strict=True)):
            return True  # a session starts, pauses or resumes
        load = [0.0, 0.0, 0.0]
        for allocation, demand in zip(kept, demands, strict=True):
            if allocation.current_a > _sane(demand.limit_a) + _EPS:
                return True
            for phase in _phase_indexes(demand.phases):
                load[phase] += allocation.current_a
        capacity = [_sane(c) for c in tuple(capacity_a)[:3]] + [0.0] * (3 - len(tuple(capacity_a)[:3]))
        if any(load[p] > capacity[p] + 1e-6 for p in range(3)):
            return True
        up = any(n.current_a - k.current_a > self.threshold_a for k, n in zip(kept, new, strict=True))
        down = any(k.current_a - n.current_a > self.threshold_a for k, n in zip(kept, new, strict=True))
        if up and not down:
            return True
        return (up or down) and (not math.isfinite(now_s) or now_s - self._since >= self.hold_s)
