"""The remembered composite limits (agent/ocpp/limit_loop.py CompositeMemos) of OCPP 1.6 GetCompositeSchedule,
as 2.0.1 has them: a unit test of what invalidates a memo (the profile set stored, the situation changing:
a session starting or stopping, its transaction id learnt; time needs nothing), and end to end over a real
websocket that a changed or cleared profile and a transaction starting or ending are seen by the very next
GetCompositeSchedule although the one before filled the memo."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

from agent import smart_charging as sc
from agent.db import connect, migrate
from agent.ocpp.limit_loop import CompositeMemos
from agent.ocpp.v16.smart_charging import COMPONENT, MIGRATIONS, SmartCharging
from tests.agent.ocpp.conftest import CP, TAG, Octt
from tests.agent.ocpp.test_octt_smart_charging import composite, profile, set_profile

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
EL = sc.Electrical(max_current_a=32.0, phases=3, voltage_v=230.0)
HOURLY = sc.Profile(1, 1, 0, sc.Purpose.TX_DEFAULT, sc.Kind.RECURRING,
                    sc.Schedule(sc.RateUnit.AMPS, tuple(sc.Period(h * 3600.0, 6.0 + h % 2) for h in range(24)), T0),
                    recurrency=sc.Recurrency.DAILY)


def test_what_invalidates_a_memo() -> None:
    memos = CompositeMemos(keys=2)
    idle = sc.Situation(1, EL)
    memo = memos.get(idle)
    first = sc.composite([HOURLY], idle, T0 + 10, 86400, memo=memo)
    assert memo and memos.get(idle) is memo  # the same situation: the same memo, reused
    # Time: a later request with the same memo gives what a fresh evaluation gives (absolute change times).
    later = T0 + 3 * 86400 + 1234.5
    assert sc.composite([HOURLY], idle, later, 86400, memo=memo) == sc.composite([HOURLY], idle, later, 86400)
    assert first.periods[1].amps != first.periods[0].amps
    # A session starting, its transaction id learnt, the session stopping: each another key, a fresh memo.
    started = dataclasses.replace(idle, tx_start=T0 + 5, cp_share=1)
    learnt = dataclasses.replace(started, transaction_id=7)
    assert memos.get(started) == {} and memos.get(learnt) == {}
    assert len(memos) == 2 and memos.get(idle) == {}  # at most ``keys``: the least recently used went
    # The profile set changing: every memo dropped (SmartCharging._store does it).
    memos.get(idle)[T0] = first.periods[0]
    memos.clear()
    assert len(memos) == 0 and memos.get(idle) == {}


def test_storing_the_profile_set_drops_the_memos(tmp_path: Path) -> None:
    """SmartCharging (1.6) on a state db of its own: a stored set (SetChargingProfile, ClearChargingProfile,
    a TxProfile removed at the end of its transaction all go through _store) leaves no memo behind."""
    db = connect(tmp_path / "state.db")
    migrate(db, COMPONENT, MIGRATIONS)
    feature = SmartCharging.__new__(SmartCharging)
    feature._db = db
    feature._memos = CompositeMemos()
    feature._changed = SimpleNamespace(set=lambda: None)  # type: ignore[assignment]
    feature._memos.get(sc.Situation(1, EL))[T0] = sc.CompositePeriod(T0, 6.0, 3)
    assert feature._store([HOURLY])
    assert len(feature._memos) == 0 and feature.profiles == [HOURLY]


async def test_a_changed_profile_is_seen_at_once(octt: Octt) -> None:
    agent = await octt.start_agent()
    await octt.booted()
    feature = agent.service.features.get("SmartCharging")
    hourly = profile(1, "TxDefaultProfile", [(h * 3600, 6.0 + h % 2) for h in range(24)],
                     kind="Recurring", recurrencyKind="Daily")
    assert await set_profile(octt, 1, hourly) == "Accepted"
    day = 12 * 3600  # 13 periods: within ChargingScheduleMaxPeriods (24), not clipped
    assert {limit for _, limit in await composite(octt, duration=day)} == {6.0, 7.0}
    assert {limit for _, limit in await composite(octt, duration=day)} == {6.0, 7.0}
    assert len(feature._memos) == 1  # the second request used the memo the first one filled

    changed = profile(1, "TxDefaultProfile", [(h * 3600, 8.0 + h % 2) for h in range(24)],
                      kind="Recurring", recurrencyKind="Daily")
    assert await set_profile(octt, 1, changed) == "Accepted"  # the same id: replaced
    assert {limit for _, limit in await composite(octt, duration=day)} == {8.0, 9.0}
    assert await octt.csms.send(CP, "ClearChargingProfile", {"id": 1}) == {"status": "Accepted"}
    assert await composite(octt, duration=day) == [(0, 32.0)]

    assert await set_profile(octt, 0, profile(2, "TxDefaultProfile", [(0, 20.0)])) == "Accepted"
    assert await composite(octt, duration=day) == [(0, 20.0)]
    await octt.charging()
    assert await set_profile(octt, 1, profile(3, "TxProfile", [(0, 10.0)])) == "Accepted"
    assert await composite(octt, duration=day) == [(0, 10.0)]
    assert (await agent.tap(TAG)).accepted  # the same card stops the transaction: its TxProfile goes
    await octt.wait("StopTransaction")
    assert await composite(octt, duration=day) == [(0, 20.0)]
