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
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

DAY_S = 86400.0
WEEK_S = 7 * DAY_S
HORIZON_S = WEEK_S + DAY_S  # how far ahead the next change is looked for
DEFAULT_VOLTAGE_V = 230.0


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
    transaction_id: int | None = None
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
    transaction_id: int | None = None
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
    if any(b <= a for a, b in itertools.pairwise(starts)):
        out.append("period starts must increase")
    if any(not math.isfinite(p.limit) or p.limit < 0 for p in s.periods):
        out.append("limits must be >= 0")
    if any(p.phases is not None and not 1 <= p.phases <= 3 for p in s.periods):
        out.append("numberPhases must be 1..3")
    if s.duration_s is not None and s.duration_s <= 0:
        out.append("duration must be > 0")
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


def schedule_start(profile: Profile, t: float, tx_start: float | None) -> float | None:
    """Start of the schedule instance that covers ``t`` (None: not defined at ``t``)."""
    s = profile.schedule
    if profile.kind is Kind.RELATIVE:
        return t if tx_start is None else tx_start
    if profile.kind is Kind.RECURRING:
        if s.start is None or profile.recurrency is None:
            return None
        every = DAY_S if profile.recurrency is Recurrency.DAILY else WEEK_S
        return s.start + math.floor((t - s.start) / every) * every
    return s.start if s.start is not None else profile.installed_at


def _valid(profile: Profile, t: float) -> bool:
    return (profile.valid_from is None or t >= profile.valid_from) and (
        profile.valid_to is None or t < profile.valid_to
    )


def period_at(profile: Profile, t: float, tx_start: float | None) -> Period | None:
    """The period of ``profile`` in force at ``t``, if any."""
    if not _valid(profile, t):
        return None
    start = schedule_start(profile, t, tx_start)
    if start is None:
        return None
    offset = t - start
    s = profile.schedule
    if offset < 0 or (s.duration_s is not None and offset >= s.duration_s):
        return None
    current = None
    for p in s.periods:
        if p.start_s <= offset:
            current = p
    return current


def _winner(
    candidates: Iterable[Profile], t: float, tx_start: float | None, connector_id: int
) -> tuple[Profile, Period] | None:
    # Highest stack level first; a connector-specific profile before a connector-0 one.
    ordered = sorted(candidates, key=lambda p: (p.stack_level, p.connector_id == connector_id), reverse=True)
    for profile in ordered:
        period = period_at(profile, t, tx_start)
        if period is not None:
            return profile, period
    return None


def limit_at(profiles: Sequence[Profile], situation: Situation, t: float) -> CompositePeriod:
    """The composite limit (amps per phase) for one connector at ``t``."""
    el = situation.electrical
    cid = situation.connector_id
    amps = el.max_current_a
    phases = el.phases
    cp_max = _winner((p for p in profiles if p.purpose is Purpose.CHARGE_POINT_MAX), t, situation.tx_start, cid)
    if cp_max is not None:
        profile, period = cp_max
        share = max(1, situation.cp_share) if cid != 0 else 1
        amps = min(amps, el.amps(period.limit, profile.schedule.unit, period.phases) / share)
        phases = period.phases or phases
    if cid == 0:  # the grid connection: only the ChargePointMaxProfile speaks for it
        return CompositePeriod(t, max(0.0, amps), phases)
    tx = None
    if situation.tx_start is not None:
        tx = _winner(
            (p for p in profiles if p.purpose is Purpose.TX and p.connector_id == cid
             and (p.transaction_id is None or p.transaction_id == situation.transaction_id)),
            t, situation.tx_start, cid,
        )
    if tx is None:
        tx = _winner(
            (p for p in profiles if p.purpose is Purpose.TX_DEFAULT and p.connector_id in (0, cid)),
            t, situation.tx_start, cid,
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


def _breakpoints(profile: Profile, begin: float, end: float, tx_start: float | None) -> set[float]:
    """Times in [begin, end) where this profile's contribution may change."""
    s = profile.schedule
    points = {x for x in (profile.valid_from, profile.valid_to) if x is not None}
    starts: list[float] = []
    first = schedule_start(profile, begin, tx_start)
    if first is not None:
        starts.append(first)
        if profile.kind is Kind.RECURRING:
            every = DAY_S if profile.recurrency is Recurrency.DAILY else WEEK_S
            while starts[-1] + every < end:
                starts.append(starts[-1] + every)
    for start in starts:
        points.update(start + p.start_s for p in s.periods)
        if s.duration_s is not None:
            points.add(start + s.duration_s)
    return {x for x in points if begin <= x < end}


def composite(
    profiles: Sequence[Profile], situation: Situation, begin: float, duration_s: float
) -> list[CompositePeriod]:
    """The composite schedule over [begin, begin + duration_s): periods where the limit changes."""
    end = begin + duration_s
    times = {begin}
    for profile in profiles:
        times |= _breakpoints(profile, begin, end, situation.tx_start)
    out: list[CompositePeriod] = []
    for t in sorted(times):
        period = limit_at(profiles, situation, t)
        if not out or (round(out[-1].amps, 3), out[-1].phases) != (round(period.amps, 3), period.phases):
            out.append(period)
    return out


def next_change(profiles: Sequence[Profile], situation: Situation, after: float) -> float | None:
    """The first time after ``after`` at which some profile's contribution may change."""
    times: set[float] = set()
    for profile in profiles:
        if profile.kind is Kind.RELATIVE and situation.tx_start is None:
            continue  # starts with a transaction: nothing to wait for until then
        times |= _breakpoints(profile, after, after + HORIZON_S, situation.tx_start)
    later = [x for x in times if x > after]
    return min(later) if later else None


def for_transaction(profile: Profile, transaction_id: int) -> Profile:
    return replace(profile, transaction_id=transaction_id)
