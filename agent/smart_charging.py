"""Charging profiles (OCPP 1.6 section 3.13), protocol-neutral and pure: the profile model, validation,
stacking, and the composite limit as a function of time. No I/O, no clock: every function takes the
time (UTC epoch seconds) it is asked about.

Rules implemented here:
- Within one purpose the valid profile with the highest stack level that has a period running at ``t``
  wins; when its schedule has ended (``duration``) or not yet begun, the next lower one applies.
- Same id replaces; same purpose + stack level + connector replaces.
- Absolute starts at ``start`` (else when installed); Recurring repeats ``start`` daily/weekly;
  Relative starts with the transaction (or at the query time without one).
- Composite = min(ChargePointMaxProfile, TxProfile if one applies else TxDefaultProfile, connector max).
  A connector-specific TxDefaultProfile beats one on connector 0 at the same stack level.
- Watts become amps per phase through the period's phases (else the connector's) and the voltage.
- A limit below the winning schedule's ``min_rate`` would charge inefficiently: it becomes 0 (pause).
- ChargePointMaxProfile is for the whole charge point: it is shared equally by the connectors that
  have a transaction (``cp_share``).
- The composite schedule starts at the instant asked for; its periods start on whole seconds from there,
  strictly increasing, equal neighbours merged. Its cost is bounded by what the station advertises: at
  most ``max_periods`` periods over at most ``MAX_COMPOSITE_S`` (the result says how far it got), and the
  breakpoints are generated lazily in time order, so a long request costs no more than a short one.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

DAY_S = 86400.0
WEEK_S = 7 * DAY_S
HORIZON_S = WEEK_S + DAY_S  # how far ahead the next change is looked for
DEFAULT_VOLTAGE_V = 230.0
MAX_COMPOSITE_S = int(HORIZON_S)  # a composite schedule covers at most this much (a week + a day)
MAX_COMPOSITE_PERIODS = 1000  # hard cap whatever ChargingScheduleMaxPeriods says
# A composite evaluates each change this long after it: float sums like start + 0.3 - start may land a hair
# before the boundary (times on the wire have milliseconds, so nothing real happens in between).
_SETTLE_S = 1e-4
MAX_LIMIT = 1e7  # A or W; more is no limit any charge point could follow (10 MW)
# Times a profile may name (startSchedule, validFrom, validTo): 1970-01-01 .. 3000-01-01.
MIN_TIME = 0.0
MAX_TIME = 32_503_680_000.0


class Purpose(StrEnum):
    CHARGE_POINT_MAX = "ChargePointMaxProfile"
    TX_DEFAULT = "TxDefaultProfile"
    TX = "TxProfile"


class Kind(StrEnum):
    ABSOLUTE = "Absolute"
    RECURRING = "Recurring"
    RELATIVE = "Relative"


class Recurrency(StrEnum):
    DAILY = "Daily"
    WEEKLY = "Weekly"


class RateUnit(StrEnum):
    AMPS = "A"
    WATTS = "W"


@dataclass(frozen=True)
class Period:
    start_s: float  # offset from the schedule start
    limit: float  # in the schedule's unit
    phases: int | None = None


@dataclass(frozen=True)
class Schedule:
    unit: RateUnit
    periods: tuple[Period, ...]
    start: float | None = None  # epoch s; ignored for Relative
    duration_s: float | None = None
    min_rate: float | None = None


@dataclass(frozen=True)
class Profile:
    id: int
    connector_id: int
    stack_level: int
    purpose: Purpose
    kind: Kind
    schedule: Schedule
    recurrency: Recurrency | None = None
    valid_from: float | None = None
    valid_to: float | None = None
    transaction_id: int | str | None = None  # 1.6: an integer; 2.0.1: a string
    installed_at: float = 0.0


@dataclass(frozen=True)
class Limits:
    """What the station allows (the OCPP configuration keys)."""

    max_stack_level: int = 10
    allowed_units: frozenset[RateUnit] = frozenset({RateUnit.AMPS, RateUnit.WATTS})
    max_periods: int = 24
    max_installed: int = 10


@dataclass(frozen=True)
class Electrical:
    """One connector's electrical facts for W <-> A conversion."""

    max_current_a: float
    phases: int = 3
    voltage_v: float = DEFAULT_VOLTAGE_V

    def amps(self, limit: float, unit: RateUnit, phases: int | None) -> float:
        if unit is RateUnit.AMPS:
            return limit
        return limit / (self.voltage_v * (phases or self.phases))

    def watts(self, amps: float, phases: int | None = None) -> float:
        return amps * self.voltage_v * (phases or self.phases)


@dataclass(frozen=True)
class CompositePeriod:
    start: float  # epoch s
    amps: float
    phases: int


@dataclass(frozen=True)
class Situation:
    """What the composite depends on besides the profiles, for one connector."""

    connector_id: int
    electrical: Electrical
    transaction_id: int | str | None = None
    tx_start: float | None = None  # epoch s; None = no transaction
    cp_share: int = 1  # connectors sharing the ChargePointMaxProfile


# -- validation and stacking ---------------------------------------------------------------------


def problems(profile: Profile, limits: Limits, connector_ids: Iterable[int]) -> list[str]:
    """Why this profile cannot be installed (empty = fine). State-dependent rules (TxProfile needs a
    transaction) are the caller's."""
    out: list[str] = []
    s = profile.schedule
    if profile.connector_id != 0 and profile.connector_id not in set(connector_ids):
        out.append(f"no connector {profile.connector_id}")
    if profile.purpose is Purpose.CHARGE_POINT_MAX and profile.connector_id != 0:
        out.append("ChargePointMaxProfile is for connector 0 only")
    if profile.purpose is Purpose.TX and profile.connector_id == 0:
        out.append("TxProfile needs a connector")
    if profile.transaction_id is not None and profile.purpose is not Purpose.TX:
        out.append("transactionId only with TxProfile")
    if not 0 <= profile.stack_level <= limits.max_stack_level:
        out.append(f"stackLevel outside 0..{limits.max_stack_level}")
    if s.unit not in limits.allowed_units:
        out.append(f"chargingRateUnit {s.unit.value} not allowed")
    if not 1 <= len(s.periods) <= limits.max_periods:
        out.append(f"1..{limits.max_periods} periods needed")
    starts = [p.start_s for p in s.periods]
    if starts and starts[0] != 0:
        out.append("the first period must start at 0")
    if not all(math.isfinite(x) for x in starts):
        out.append("period starts must be finite")
    if any(b <= a for a, b in itertools.pairwise(starts)):
        out.append("period starts must increase")
    if any(not (math.isfinite(p.limit) and 0 <= p.limit <= MAX_LIMIT) for p in s.periods):
        out.append(f"limits must be 0..{MAX_LIMIT:g}")
    if any(p.phases is not None and not 1 <= p.phases <= 3 for p in s.periods):
        out.append("numberPhases must be 1..3")
    if s.duration_s is not None and not (math.isfinite(s.duration_s) and s.duration_s > 0):
        out.append("duration must be > 0")
    if s.min_rate is not None and not (math.isfinite(s.min_rate) and 0 <= s.min_rate <= MAX_LIMIT):
        out.append(f"minChargingRate must be 0..{MAX_LIMIT:g}")
    times = (s.start, profile.valid_from, profile.valid_to)
    if any(x is not None and not MIN_TIME <= x < MAX_TIME for x in times):
        out.append("times must lie between 1970 and 3000")
    if profile.kind is Kind.RECURRING and (profile.recurrency is None or s.start is None):
        out.append("Recurring needs recurrencyKind and startSchedule")
    if profile.valid_from is not None and profile.valid_to is not None and profile.valid_to <= profile.valid_from:
        out.append("validTo must be after validFrom")
    return out


def _replaced_by(old: Profile, new: Profile) -> bool:
    same_slot = (old.purpose, old.stack_level, old.connector_id) == (new.purpose, new.stack_level, new.connector_id)
    return old.id == new.id or same_slot


def install(profiles: Sequence[Profile], new: Profile, limits: Limits) -> list[Profile] | None:
    """The installed set after adding ``new`` (replacing what it replaces); None if that would exceed
    MaxChargingProfilesInstalled."""
    kept = [p for p in profiles if not _replaced_by(p, new)]
    if len(kept) + 1 > limits.max_installed:
        return None
    return [*kept, new]


def clear(
    profiles: Sequence[Profile],
    profile_id: int | None = None,
    connector_id: int | None = None,
    purpose: Purpose | None = None,
    stack_level: int | None = None,
) -> tuple[list[Profile], list[Profile]]:
    """(kept, removed). An id selects that profile only; otherwise every given criterion must match
    (none given = all)."""

    def selected(p: Profile) -> bool:
        if profile_id is not None:
            return p.id == profile_id
        return (
            (connector_id is None or p.connector_id == connector_id)
            and (purpose is None or p.purpose is purpose)
            and (stack_level is None or p.stack_level == stack_level)
        )

    removed = [p for p in profiles if selected(p)]
    return [p for p in profiles if not selected(p)], removed


# -- evaluation ----------------------------------------------------------------------------------


def _every(profile: Profile) -> float:
    return DAY_S if profile.recurrency is Recurrency.DAILY else WEEK_S


def schedule_start(profile: Profile, t: float, tx_start: float | None, anchor: float | None = None) -> float | None:
    """Start of the schedule instance that covers ``t`` (None: not defined at ``t``). A Relative profile
    starts with the transaction; without one at ``anchor`` (a composite schedule's start) or else at ``t``."""
    s = profile.schedule
    if profile.kind is Kind.RELATIVE:
        if tx_start is not None:
            return tx_start
        return t if anchor is None else anchor
    if profile.kind is Kind.RECURRING:
        if s.start is None or profile.recurrency is None:
            return None
        every = _every(profile)
        return s.start + math.floor((t - s.start) / every) * every
    return s.start if s.start is not None else profile.installed_at


def _valid(profile: Profile, t: float) -> bool:
    return (profile.valid_from is None or t >= profile.valid_from) and (
        profile.valid_to is None or t < profile.valid_to
    )


def _period_start(period: Period) -> float:
    return period.start_s


def period_at(profile: Profile, t: float, tx_start: float | None, anchor: float | None = None) -> Period | None:
    """The period of ``profile`` in force at ``t``, if any."""
    if not _valid(profile, t):
        return None
    start = schedule_start(profile, t, tx_start, anchor)
    if start is None:
        return None
    offset = t - start
    s = profile.schedule
    if offset < 0 or (s.duration_s is not None and offset >= s.duration_s):
        return None
    index = bisect.bisect_right(s.periods, offset, key=_period_start) - 1  # starts increase (validated)
    return s.periods[index] if index >= 0 else None


def _winner(
    candidates: Iterable[Profile], t: float, tx_start: float | None, connector_id: int, anchor: float | None = None
) -> tuple[Profile, Period] | None:
    # Highest stack level first; a connector-specific profile before a connector-0 one.
    ordered = sorted(candidates, key=lambda p: (p.stack_level, p.connector_id == connector_id), reverse=True)
    for profile in ordered:
        period = period_at(profile, t, tx_start, anchor)
        if period is not None:
            return profile, period
    return None


def _applicable(profiles: Iterable[Profile], situation: Situation) -> list[Profile]:
    """The profiles that can take part in this connector's composite (others never matter)."""
    cid = situation.connector_id

    def takes_part(p: Profile) -> bool:
        if p.purpose is Purpose.CHARGE_POINT_MAX:
            return True
        if cid == 0:
            return False
        if p.purpose is Purpose.TX_DEFAULT:
            return p.connector_id in (0, cid)
        return (situation.tx_start is not None and p.connector_id == cid
                and (p.transaction_id is None or p.transaction_id == situation.transaction_id))

    return [p for p in profiles if takes_part(p)]


def limit_at(
    profiles: Sequence[Profile], situation: Situation, t: float, *, anchor: float | None = None
) -> CompositePeriod:
    """The composite limit (amps per phase) for one connector at ``t``. ``anchor``: where a Relative
    profile starts when there is no transaction (default: at ``t``)."""
    el = situation.electrical
    cid = situation.connector_id
    amps = el.max_current_a
    phases = el.phases
    tx_start = situation.tx_start
    cp_max = _winner((p for p in profiles if p.purpose is Purpose.CHARGE_POINT_MAX), t, tx_start, cid, anchor)
    if cp_max is not None:
        profile, period = cp_max
        share = max(1, situation.cp_share) if cid != 0 else 1
        amps = min(amps, el.amps(period.limit, profile.schedule.unit, period.phases) / share)
        phases = period.phases or phases
    if cid == 0:  # the grid connection: only the ChargePointMaxProfile speaks for it
        return CompositePeriod(t, max(0.0, amps), phases)
    tx = None
    if tx_start is not None:
        tx = _winner(
            (p for p in profiles if p.purpose is Purpose.TX and p.connector_id == cid
             and (p.transaction_id is None or p.transaction_id == situation.transaction_id)),
            t, tx_start, cid, anchor,
        )
    if tx is None:
        tx = _winner(
            (p for p in profiles if p.purpose is Purpose.TX_DEFAULT and p.connector_id in (0, cid)),
            t, tx_start, cid, anchor,
        )
    if tx is not None:
        profile, period = tx
        unit = profile.schedule.unit
        amps = min(amps, el.amps(period.limit, unit, period.phases))
        phases = period.phases or phases
        min_rate = profile.schedule.min_rate
        if min_rate is not None and amps < el.amps(min_rate, unit, period.phases):
            amps = 0.0
    return CompositePeriod(t, max(0.0, amps), phases)


def _change_times(profile: Profile, begin: float, tx_start: float | None, anchor: float | None) -> Iterator[float]:
    """Times >= ``begin``, ascending and lazily (a Recurring profile's never end), where this profile's
    contribution may change: period starts, the end of its duration, validFrom/validTo."""
    s = profile.schedule
    validity = sorted(x for x in (profile.valid_from, profile.valid_to) if x is not None and x >= begin)
    offsets = sorted({p.start_s for p in s.periods} | ({s.duration_s} if s.duration_s is not None else set()))
    start = schedule_start(profile, begin, tx_start, anchor)

    def instances() -> Iterator[float]:
        if start is None:
            return
        if profile.kind is not Kind.RECURRING:
            yield from (start + o for o in offsets if start + o >= begin)
            return
        every = _every(profile)
        within = [o for o in offsets if o < every]  # an instance ends where the next one begins
        if not within:
            return
        k = 0
        while True:
            base = start + k * every
            yield from (base + o for o in within if base + o >= begin)
            k += 1

    return heapq.merge(validity, instances())


def _times(
    profiles: Sequence[Profile], begin: float, tx_start: float | None, anchor: float | None = None
) -> Iterator[float]:
    """``begin``, then every time after it where some profile's contribution may change; ascending, no
    repeats, lazily."""
    last = begin
    yield begin
    for t in heapq.merge(*(_change_times(p, begin, tx_start, anchor) for p in profiles)):
        if t > last:
            last = t
            yield t


MEMO_ENTRIES = 4096  # change times remembered per ``composite`` memo


@dataclass(frozen=True)
class Composite:
    """A composite schedule: ``periods[i].start`` is ``begin`` + a whole number of seconds, strictly
    increasing, the first one at ``begin``; it covers ``duration_s`` seconds from ``begin``."""

    begin: float
    duration_s: int
    periods: tuple[CompositePeriod, ...]


def composite(
    profiles: Sequence[Profile],
    situation: Situation,
    begin: float,
    duration_s: int | float,
    max_periods: int = MAX_COMPOSITE_PERIODS,
    memo: dict[float, CompositePeriod] | None = None,
) -> Composite:
    """The composite schedule from ``begin`` for ``duration_s`` seconds, clipped to ``MAX_COMPOSITE_S`` and
    to ``max_periods`` periods (then it covers up to where the next period would start). A limit that
    changes within a second counts from the nearest whole second; the last change within one second wins.
    Cost: O(change points up to where it stops), never O(duration).

    ``memo``: the limits at change times found by earlier calls with the same profiles and situation (the
    caller keys it so; at most ``MEMO_ENTRIES`` are kept). Without a Relative profile the limit at a time
    does not depend on ``begin``, so a repeated request only evaluates the times it has not seen."""
    wanted = int(min(duration_s, MAX_COMPOSITE_S)) if duration_s > 0 else 0  # NaN: 0
    cap = max(1, min(max_periods, MAX_COMPOSITE_PERIODS))
    relevant = _applicable(profiles, situation)
    if memo is not None and any(p.kind is Kind.RELATIVE for p in relevant):
        memo = None  # a Relative profile without a transaction starts at ``begin``
    out: list[CompositePeriod] = []
    covered = wanted
    for t in _times(relevant, begin, situation.tx_start, begin):
        offset = math.floor(t - begin + 0.5)
        if offset >= wanted and out:
            break
        found = memo.get(t) if memo is not None else None
        if found is None:
            found = limit_at(relevant, situation, t + _SETTLE_S, anchor=begin)
            if memo is not None and t != begin and len(memo) < MEMO_ENTRIES:  # ``begin`` itself: new each time
                memo[t] = found
        period = CompositePeriod(begin + offset, found.amps, found.phases)
        if out and out[-1].start == period.start:
            out.pop()  # the later change within the same second wins
        if out and (round(out[-1].amps, 3), out[-1].phases) == (round(period.amps, 3), period.phases):
            continue
        if len(out) >= cap:
            covered = offset
            break
        out.append(period)
    return Composite(begin, covered, tuple(out))


def capped(schedule: Composite, amps: float | None) -> Composite:
    """``schedule`` with no period above ``amps`` (an external limit such as the site allocation of local
    energy management: a profile can lower the result, never raise it above that); equal neighbours merge."""
    if amps is None or not math.isfinite(amps):
        return schedule
    out: list[CompositePeriod] = []
    for period in schedule.periods:
        period = CompositePeriod(period.start, min(period.amps, max(0.0, amps)), period.phases)
        if out and (round(out[-1].amps, 3), out[-1].phases) == (round(period.amps, 3), period.phases):
            continue
        out.append(period)
    return Composite(schedule.begin, schedule.duration_s, tuple(out))


def next_change(profiles: Sequence[Profile], situation: Situation, after: float) -> float | None:
    """The first time after ``after`` at which some profile's contribution may change."""
    relevant = [p for p in profiles if not (p.kind is Kind.RELATIVE and situation.tx_start is None)]
    # (a Relative profile without a transaction starts with one: nothing to wait for until then)
    for t in _times(relevant, after, situation.tx_start):
        if t > after:
            return t if t < after + HORIZON_S else None
    return None


def for_transaction(profile: Profile, transaction_id: int | str) -> Profile:
    return replace(profile, transaction_id=transaction_id)
