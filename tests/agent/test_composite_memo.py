"""agent.smart_charging.composite with a memo (what OCPP 2.0.1 GetCompositeSchedule keeps per EVSE situation,
issue 14 budget): the same answer as without one for requests at any instants, recurring and absolute profiles
with validity windows, phases and W; a Relative profile turns the memo off (it starts at ``begin``)."""

from __future__ import annotations

import random

from agent import smart_charging as sc
from agent.smart_charging import Kind, Period, Profile, Purpose, RateUnit, Recurrency, Schedule, Situation

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
EL = sc.Electrical(max_current_a=32.0, phases=3, voltage_v=230.0)


def _profiles(rnd: random.Random) -> list[Profile]:
    out = [Profile(1, 0, 0, Purpose.CHARGE_POINT_MAX, Kind.RECURRING,
                   Schedule(RateUnit.WATTS, tuple(Period(h * 3600 - (7 if h else 0), 11000.0 + 500 * (h % 3), 3)
                                                  for h in range(24)), T0, 86400),
                   recurrency=Recurrency.DAILY)]
    for pid in range(2, 12):
        periods = sorted({0.0, *(float(rnd.randrange(1, 86400)) for _ in range(rnd.randrange(1, 10)))})
        kind = rnd.choice([Kind.RECURRING, Kind.ABSOLUTE])
        start = T0 + rnd.randrange(-86400, 86400) + rnd.random()
        out.append(Profile(pid, rnd.choice([0, 1]), pid, Purpose.TX_DEFAULT, kind,
                           Schedule(RateUnit.AMPS, tuple(Period(s, float(rnd.randrange(6, 32)), rnd.choice([None, 1]))
                                                         for s in periods), start,
                                    rnd.choice([None, 3600.0, 86400.0])),
                           recurrency=Recurrency.DAILY if kind is Kind.RECURRING else None,
                           valid_from=rnd.choice([None, T0 + rnd.randrange(0, 172800)]),
                           valid_to=rnd.choice([None, T0 + rnd.randrange(172800, 400000)])))
    return out


def test_memo_gives_the_same_composite_at_any_instant() -> None:
    rnd = random.Random(14)
    for _ in range(4):
        profiles = _profiles(rnd)
        situation = Situation(1, EL, transaction_id="tx", tx_start=T0 + 10.5, cp_share=2)
        memo: dict[float, sc.CompositePeriod] = {}
        for _ in range(25):
            begin = T0 + rnd.uniform(0, 3 * 86400)
            duration = rnd.choice([60, 3600, 86400, 2**31 - 1])
            expected = sc.composite(profiles, situation, begin, duration, 24)
            assert sc.composite(profiles, situation, begin, duration, 24, memo=memo) == expected
        assert 0 < len(memo) <= sc.MEMO_ENTRIES


def test_a_relative_profile_turns_the_memo_off() -> None:
    relative = Profile(9, 1, 5, Purpose.TX_DEFAULT, Kind.RELATIVE,
                       Schedule(RateUnit.AMPS, (Period(0, 10.0), Period(30, 16.0)), None, 120))
    situation = Situation(1, EL)  # no transaction: the Relative profile starts at ``begin``
    memo: dict[float, sc.CompositePeriod] = {}
    first = sc.composite([relative], situation, T0, 300, memo=memo)
    later = sc.composite([relative], situation, T0 + 7.25, 300, memo=memo)
    assert memo == {}
    assert [(p.start - first.begin, p.amps) for p in first.periods] == [(0, 10.0), (30, 16.0), (120, 32.0)]
    assert [(p.start - later.begin, p.amps) for p in later.periods] == [(0, 10.0), (30, 16.0), (120, 32.0)]
