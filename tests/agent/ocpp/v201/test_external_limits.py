"""OCPP 2.0.1 K11-K13: the site limit reported as an external charging limit (agent/ocpp/v201/external_limits.py).

End to end: the bundled 2.0.1 CSMS (real websocket, the library's schemas), the simulated site (house load,
the site meter as an SDM630 over Modbus TCP) on a 40 A connection, the agent's Station with its
SiteController and the 2.0.1 service. Plus the pure rules (what binds, what is significant)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.energy.site import ConnectorLoad
from agent.ocpp.v201.external_limits import ExternalLimit, external_limit, notify_payload, significant
from simulator.csms import Csms
from tests.agent.ocpp.v201.conftest import Octt201, eventually, octt_on
from tests.agent.test_site_controller import Harness

FUSE_A = 40.0  # 39 A for the EV: the connector's own 32 A binds while the house is quiet


def test_only_a_binding_site_allocation_is_an_external_limit() -> None:
    assert external_limit(25.7, "site-fuse") == ExternalLimit(25.7, "site-fuse")
    assert external_limit(6.0, "failsafe") == ExternalLimit(6.0, "failsafe")
    assert external_limit(0.0, "solar") == ExternalLimit(0.0, "solar")
    assert external_limit(39.0, "connector") is None  # the allocation is above the connector's own limit
    assert external_limit(20.0, "ocpp") is None  # a CSMS profile binds: not external
    assert external_limit(None, "connector") is None
    assert external_limit(float("nan"), "site-fuse") is None


def test_what_is_significant() -> None:
    fuse = ExternalLimit(20.0, "site-fuse")
    assert significant(None, fuse, 10.0) and significant(fuse, None, 10.0)  # set / released
    assert not significant(fuse, ExternalLimit(21.9, "site-fuse"), 10.0)  # 9.5 %
    assert significant(fuse, ExternalLimit(17.9, "site-fuse"), 10.0)  # 10.5 %
    assert significant(fuse, ExternalLimit(20.0, "solar"), 10.0)  # no longer grid critical
    assert significant(ExternalLimit(0.0, "solar"), ExternalLimit(6.0, "solar"), 10.0)  # resume
    assert significant(ExternalLimit(6.0, "solar"), ExternalLimit(0.0, "solar"), 100.0)  # pause
    assert significant(fuse, ExternalLimit(20.1, "site-fuse"), 0.0)  # 0 %: every change
    payload = notify_payload(1, ExternalLimit(12.5, "solar"), with_schedule=True, phases=3, start="T")
    assert payload["chargingLimit"] == {"chargingLimitSource": "EMS", "isGridCritical": False}
    assert payload["chargingSchedule"][0]["chargingSchedulePeriod"] == [
        {"startPeriod": 0, "limit": 12.5, "numberPhases": 3}]
    assert "chargingSchedule" not in notify_payload(1, ExternalLimit(12.5, "site-fuse"), with_schedule=False,
                                                    phases=3, start="T")


def test_an_overload_pause_is_notified_before_the_allocation() -> None:
    """What the end-to-end test below meets on a loaded machine (replayed on the FakeClock with the figures of
    such a run): the house load steps in while the EV draws ~29 A of its 32 A and the pilot may change its duty
    only in 2.7 s. Over the 40 A fuse, the site controller pauses it at once (a grid-critical 0 A external
    limit, a pause: significant), then hands it its share (a resume: significant again)."""
    def ev(offered: float, drawn: float, due: float) -> ConnectorLoad:
        return ConnectorLoad(connector_id=1, active=True, own_limit_a=32.0, offered_a=offered, relay_closed=True,
                             site_phases=(1, 2, 3), measured_a=(drawn, drawn, drawn), duty_due_s=due)

    h = Harness([ev(32.0, 28.6, -math.inf)], fuse=FUSE_A)
    h.run(0.5, answer=(28.6, 28.6, 28.6))  # the house is quiet
    assert h.applied[1] == (32.0, "site-fuse")  # not below the connector's own 32 A: no external limit
    h.loads = [ev(32.0, 28.6, h.clock.monotonic() + 0.5 + 2.7)]
    h.run(0.5, answer=(41.9, 41.9, 41.9))  # + 13.3 A of house load
    paused = external_limit(*h.applied[1])  # below the connector's own limit: it binds
    assert paused == ExternalLimit(0.0, "site-fuse") and paused.grid_critical
    h.loads = [ev(0.0, 31.2, h.clock.monotonic() + 2.2)]  # X1; the EV has not yet stopped drawing
    h.run(0.5, answer=(44.5, 44.5, 44.5))
    share = external_limit(*h.applied[1])
    assert share is not None and share.reason == "site-fuse" and 25.0 < share.amps < 26.0
    assert significant(None, paused, 10.0) and significant(paused, share, 10.0)
    # The same house load with the duty window open (unloaded, the EV still at its first 6 A is the usual
    # case): the lowering acts now, no pause, the allocation is the first external limit.
    h = Harness([ev(32.0, 28.6, -math.inf)], fuse=FUSE_A)
    h.run(0.5, answer=(28.6, 28.6, 28.6))
    h.run(0.5, answer=(41.9, 41.9, 41.9))
    first = external_limit(*h.applied[1])
    assert first is not None and first.reason == "site-fuse" and 25.0 < first.amps < 26.0


@pytest.fixture
async def site_octt(tmp_path: Path, csms: Csms) -> AsyncIterator[Octt201]:
    async with octt_on(tmp_path, csms, site_fuse_a=FUSE_A, site_meter="tcp") as harness:
        yield harness


async def test_site_limit_notified_when_it_binds_and_changes_significantly_cleared_when_lifted(
    site_octt: Octt201,
) -> None:
    octt = site_octt
    agent = await octt.start_agent({"SmartChargingCtrlr/NotifyChargingLimitWithSchedules": True})
    await octt.booted()
    await octt.charging()
    assert agent.station is not None
    c1 = agent.station.connectors[1]
    await eventually(lambda: c1.view().binding_limit == "connector", 8, "the connector's own 32 A binding")
    await asyncio.sleep(1.2)
    # Before the site meter's first reading the failsafe current binds: if the CSMS heard of it, it also
    # hears of its release (at the next look, which a loaded machine may delay past the 1.2 s). Either way
    # the CSMS then knows of no external limit.
    await eventually(lambda: len(octt.msgs("ClearedChargingLimit")) == len(octt.msgs("NotifyChargingLimit")), 8,
                     "the failsafe limit released")
    before = len(octt.msgs("NotifyChargingLimit"))

    def rate_events() -> list[dict[str, object]]:
        return [e for e in octt.tx_events() if e["triggerReason"] == "ChargingRateChanged"]

    # The failsafe's release may also have changed the charging rate (6 -> 32 A, if the session had started
    # under it): that ChargingRateChanged leaves through the outbox, counted once it is empty.
    await eventually(lambda: agent.service is not None and agent.service.outbox.depth() == 0, 8, "outbox drained")
    rates = len(rate_events())

    # A 9.2 kW house load (13.3 A per phase): 40 - 1 - 13.3 = 25.7 A for the EV, the site binds (K11).
    # Unloaded, the EV still draws the failsafe 6 A here: the pilot's first duty window (5 s after its first
    # offer) has not let the connector's 32 A through yet, and the allocation is notified once. A loaded
    # machine may take the test past that window (or the site meter answered before the session and the first
    # offer was 32 A): the house load then meets an EV ramping up towards 32 A; once the site is over its 40 A
    # fuse while the lowering to the allocation must wait for the next duty window, the site controller pauses
    # the EV at once (X1, agent/energy/site.py overload_pauses) and hands it its share at its next step. The
    # CSMS then also hears of that pause, a grid-critical 0 A limit, and of the resume, before or after the
    # allocation (test_an_overload_pause_is_notified_before_the_allocation replays it), and, when the contactor
    # opened in the pause while the site meter still saw the EV, of a lower share for a step. So wait for the
    # state in which no overload can come any more (the EV charging again, offered and drawing at most its
    # share) and the CSMS knows the station's external limit (nothing pending), not for the first notification.
    octt.ctl("site", action="load", value=9.2)
    limits = agent.service.features["ExternalLimits"]

    def notified() -> list[dict[str, Any]]:
        return [m.payload for m in octt.msgs("NotifyChargingLimit")[before:]]

    def limit_of(payload: dict[str, Any]) -> float:
        return float(payload["chargingSchedule"][0]["chargingSchedulePeriod"][0]["limit"])

    def share_followed_and_notified() -> bool:
        view, sample = c1.view(), c1.meter.latest if c1.meter is not None else None
        share = view.site_limit_a
        if view.binding_limit != "site-fuse" or not share or sample is None:
            return False  # the house load not seen yet, or paused now
        drawing = max(a for a in sample.current_a if a is not None)
        offered = c1.controller.offered_current_a
        return (0 < offered <= share + 0.05 and c1.controller.relay_commanded_closed and drawing <= share + 1.0
                and not limits.pending() and bool(notified()) and limit_of(notified()[-1]) > 0)

    await eventually(share_followed_and_notified, 20, "the EV following its share, the CSMS notified of it")
    notifications = before + len(notified())
    for payload in notified():
        assert payload["evseId"] == 1
        assert payload["chargingLimit"] == {"chargingLimitSource": "EMS", "isGridCritical": True}
        (schedule,) = payload["chargingSchedule"]  # NotifyChargingLimitWithSchedules = true
        assert schedule["chargingRateUnit"] == "A"
        assert 0 <= limit_of(payload) < 27.0, "never more than the 9.2 kW leave"
    last = limit_of(notified()[-1])
    assert 24.0 < last < 27.0
    # What the CSMS has is the station's record of it, and the station's limit now is not significantly
    # (LimitChangeSignificance, 10 %) off it (nothing pending above); with a pause the share may have
    # been computed while the EV's current moved.
    assert limits.reported[1] == ExternalLimit(last, "site-fuse")
    # 32 -> 25.7 A is a significant change of the charging rate: an Updated ChargingRateChanged (K11.FR.04);
    # a pause, its resume (and a lower share for a step) are more. Counted once the outbox is empty.
    rate_changed = await octt.wait_tx_event("Updated", where=lambda e: e["triggerReason"] == "ChargingRateChanged",
                                            count=rates + 1)
    assert rate_changed["transactionInfo"]["transactionId"] == octt.transaction_ids()[-1]
    await eventually(lambda: agent.service.outbox.depth() == 0, 8, "outbox drained")
    rates = len(rate_events())

    # 9.6 kW: 40 - 1 - 13.9 = 25.1 A, 0.6 A less (2 %), below LimitChangeSignificance (10 %): applied, not
    # reported.
    octt.ctl("site", action="load", value=9.6)
    await eventually(lambda: 0 < (c1.view().site_limit_a or 99.0) <= 25.1, 8, "the lower allocation")
    await asyncio.sleep(1.2)  # more than one look (POLL_S)
    assert len(octt.msgs("NotifyChargingLimit")) == notifications
    assert len(rate_events()) == rates

    # The house is quiet again: the connector's own limit binds, the external limit is released (K13).
    octt.ctl("site", action="load", value=0.0)
    cleared = await octt.wait("ClearedChargingLimit", count=before + 1, within=10)
    assert cleared.payload == {"chargingLimitSource": "EMS", "evseId": 1}
    assert c1.view().binding_limit == "connector"
    # Back to the connector's 32 A: the rate changed by more than 10 % again (K13.FR.03).
    await eventually(lambda: len(rate_events()) == rates + 1, 5, "the ChargingRateChanged of the release")


# ----------------------------------------------------------------------------- the class, on stubs


class _View:
    def __init__(self, site: float | None, binding: str, limit: float, session: str | None) -> None:
        self.site_limit_a, self.binding_limit, self.effective_limit_a = site, binding, limit
        self.session = None if session is None else type("S", (), {"ref": session})()
        self.phases = 3


class _Service:
    def __init__(self) -> None:
        self.views: dict[int, _View] = {}
        self.rate_calls: list[int] = []
        self.station = type("Station", (), {"connector_views": lambda _s: self.views})()
        self.variables = type("Vars", (), {"value": lambda _s, *_a, **_k: 10.0})()
        self.config = type("C", (), {"site": type("Site", (), {"enabled": True})()})()
        self.features = {"Transactions": type("Tx", (), {
            "charging_rate_changed": lambda _s, evse: self.rate_calls.append(evse) is None})()}


def test_rate_changes_only_for_a_transaction_an_external_limit_moved_significantly() -> None:
    from agent.ocpp.v201.external_limits import ExternalLimits

    svc = _Service()
    limits = ExternalLimits(svc)
    svc.views = {1: _View(39.0, "connector", 32.0, "s1"), 2: _View(10.0, "site-fuse", 10.0, None)}
    assert limits.rate_changes() == [] and set(limits.pending()) == {2}  # EVSE 2: idle but limited (K12)
    svc.views[1] = _View(25.7, "site-fuse", 25.7, "s1")  # the site binds: 32 -> 25.7 A
    assert limits.rate_changes() == [1]
    svc.views[1] = _View(25.1, "site-fuse", 25.1, "s1")  # 2 %: not significant
    assert limits.rate_changes() == []
    svc.views[1] = _View(39.0, "connector", 32.0, "s1")  # released: 25.7 -> 32 A (K13.FR.03)
    assert limits.rate_changes() == [1]
    svc.views[1] = _View(39.0, "ocpp", 16.0, "s1")  # a CSMS profile lowers it: 32 -> 16 A, reported too
    assert limits.rate_changes() == [1]
    svc.views[1] = _View(39.0, "ocpp", 15.0, "s1")  # 6 %: not significant
    assert limits.rate_changes() == []
    svc.views[1] = _View(39.0, "connector", 32.0, "s1")  # the profile cleared: 16 -> 32 A
    assert limits.rate_changes() == [1]
    svc.views[1] = _View(39.0, "cable", 20.0, "s1")  # the cable's own rating is no charging-rate change
    assert limits.rate_changes() == []
    svc.views[1] = _View(20.0, "site-fuse", 20.0, "s2")  # a new session starts from its own rate
    assert limits.rate_changes() == []
    assert svc.rate_calls == [1, 1, 1, 1]
