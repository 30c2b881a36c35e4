"""OCPP 2.0.1 K11-K13: the site limit reported as an external charging limit (agent/ocpp/v201/external_limits.py).

End to end: the bundled 2.0.1 CSMS (real websocket, the library's schemas), the simulated site (house load,
the site meter as an SDM630 over Modbus TCP) on a 40 A connection, the agent's Station with its
SiteController and the 2.0.1 service. Plus the pure rules (what binds, what is significant)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.ocpp.v201.external_limits import ExternalLimit, external_limit, notify_payload, significant
from simulator.csms import Csms
from tests.agent.ocpp.v201.conftest import Octt201, eventually, octt_on

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

    # A 9.2 kW house load (13.3 A per phase): 40 - 1 - 13.3 = 25.7 A for the EV, the site binds (K11).
    octt.ctl("site", action="load", value=9.2)
    first = await octt.wait("NotifyChargingLimit", count=before + 1, within=10)
    assert first.payload["evseId"] == 1
    assert first.payload["chargingLimit"] == {"chargingLimitSource": "EMS", "isGridCritical": True}
    (schedule,) = first.payload["chargingSchedule"]  # NotifyChargingLimitWithSchedules = true
    assert schedule["chargingRateUnit"] == "A"
    assert schedule["chargingSchedulePeriod"][0]["limit"] == pytest.approx(c1.view().site_limit_a, abs=0.05)
    assert 24.0 < schedule["chargingSchedulePeriod"][0]["limit"] < 27.0
    # 32 -> 25.7 A is a significant change of the charging rate: an Updated ChargingRateChanged (K11.FR.04).
    rate_changed = await octt.wait_tx_event("Updated", where=lambda e: e["triggerReason"] == "ChargingRateChanged")
    assert rate_changed["transactionInfo"]["transactionId"] == octt.transaction_ids()[-1]

    # 9.6 kW: 0.6 A less (2 %), below LimitChangeSignificance (10 %): applied, not reported.
    octt.ctl("site", action="load", value=9.6)
    await eventually(lambda: (c1.view().site_limit_a or 99.0) < schedule["chargingSchedulePeriod"][0]["limit"] - 0.3,
                     8, "the lower allocation")
    await asyncio.sleep(1.2)  # more than one look (POLL_S)
    assert len(octt.msgs("NotifyChargingLimit")) == before + 1

    def rate_events() -> list[dict[str, object]]:
        return [e for e in octt.tx_events() if e["triggerReason"] == "ChargingRateChanged"]

    assert len(rate_events()) == 1

    # The house is quiet again: the connector's own limit binds, the external limit is released (K13).
    octt.ctl("site", action="load", value=0.0)
    cleared = await octt.wait("ClearedChargingLimit", count=before + 1, within=10)
    assert cleared.payload == {"chargingLimitSource": "EMS", "evseId": 1}
    assert c1.view().binding_limit == "connector"
    # Back to the connector's 32 A: the rate changed by more than 10 % again (K13.FR.03).
    await eventually(lambda: len(rate_events()) == 2, 5, "the second ChargingRateChanged")


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
