"""A 2.0.1 report cut by the connection (agent/ocpp/v201/reports.py), for ReportChargingProfiles (K09),
NotifyDisplayMessages (O03/O04) and NotifyMonitoringReport (N03; its uncut path end to end in
test_tc_n_monitoring): the rest is dropped with one warning naming the messages not sent (the CSMS asks
again), or, with OCPPCommCtrlr.QueueAllMessages true, queued in the durable outbox from the message in flight
on, at most one cut report per action. Unit tests of the report path (the service's send and outbox stand
in); the queued payloads are the ones the outbox's generic 2.0.1 delivery can send (its camelCase ->
dataclass -> camelCase round trip keeps them)."""

from __future__ import annotations

import dataclasses
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from ocpp.charge_point import camel_to_snake_case, remove_nones, snake_to_camel_case
from ocpp.v201 import call

from agent.ocpp.v201.rpc import CallErrorReceived, ConnectionLost
from agent.ocpp.v201.smart_charging import REPORT_CHUNK, SmartCharging

LOGGER = "cpagent.ocpp.v201.reports"


class FakeService:
    """request_payload fails from the ``fail_at``-th message on; the outbox records what is queued."""

    def __init__(self, *, fail_at: int, error: Exception, queue_all: bool, waiting: bool = False) -> None:
        self.sent: list[dict[str, Any]] = []
        self.queued: list[tuple[str, dict[str, Any]]] = []
        self.fail_at, self.error, self.queue_all = fail_at, error, queue_all
        self.variables = SimpleNamespace(boolean=lambda component, variable: self.queue_all)
        self.outbox = SimpleNamespace(has_action=lambda action: waiting)
        self.link = SimpleNamespace(session=None)

    async def request_payload(self, action: str, payload: dict[str, Any], *, while_pending: bool = False) -> None:
        if len(self.sent) >= self.fail_at:
            raise self.error
        self.sent.append(payload)

    def enqueue(self, action: str, payload: dict[str, Any]) -> int:
        self.queued.append((action, payload))
        return len(self.queued)


def smart_charging_on(service: FakeService) -> SmartCharging:
    feature = SmartCharging.__new__(SmartCharging)
    profiles = [SimpleNamespace(id=n, connector_id=1 + n % 2, transaction_id=None) for n in range(3 * REPORT_CHUNK)]
    feature._svc = service  # type: ignore[assignment]
    feature.selected = lambda evse_id, criterion: profiles  # type: ignore[method-assign,assignment]
    feature._report_body = lambda p: {  # type: ignore[method-assign,assignment]
        "id": p.id, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile", "chargingProfileKind": "Absolute",
        "chargingSchedule": [{"id": 1, "chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0,
                                                                                           "limit": 16.0}]}]}
    return feature


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


async def test_cut_report_dropped_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    service = FakeService(fail_at=1, error=ConnectionLost("connection lost"), queue_all=False)
    await smart_charging_on(service).after_get_charging_profiles(request_id=7, charging_profile={})
    assert len(service.sent) == 1 and service.sent[0]["tbc"] is True and service.queued == []
    assert warnings(caplog) == [
        "ReportChargingProfiles 7: messages 2-4 of 4 not sent (connection lost); report dropped (the CSMS asks again)"]
    error = CallErrorReceived("ReportChargingProfiles", "InternalError", "no", {})
    refused = FakeService(fail_at=0, error=error, queue_all=True)
    await smart_charging_on(refused).after_get_charging_profiles(request_id=8, charging_profile={})
    assert refused.queued == [] and "report dropped" in warnings(caplog)[-1]  # a CALLERROR is never queued


async def test_cut_report_queued_with_queue_all_messages_once_per_action(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    service = FakeService(fail_at=2, error=ConnectionLost("connection lost"), queue_all=True)
    await smart_charging_on(service).after_get_charging_profiles(request_id=9, charging_profile={})
    assert len(service.sent) == 2
    assert [(a, p["evseId"], p["tbc"]) for a, p in service.queued] == [
        ("ReportChargingProfiles", 2, True), ("ReportChargingProfiles", 2, False)]
    assert warnings(caplog)[-1].endswith("queued until the reconnect (OCPPCommCtrlr.QueueAllMessages)")
    # What the outbox's generic delivery does with a queued entry gives the same message back.
    for action, payload in service.queued:
        request = getattr(call, action)(**camel_to_snake_case(payload))
        assert remove_nones(snake_to_camel_case(dataclasses.asdict(request))) == payload
    # A second report cut while one waits: dropped, the queue does not grow.
    again = FakeService(fail_at=0, error=ConnectionLost("connection lost"), queue_all=True, waiting=True)
    await smart_charging_on(again).after_get_charging_profiles(request_id=10, charging_profile={})
    assert again.queued == []
    assert warnings(caplog)[-1].endswith("a cut ReportChargingProfiles already waits in the queue")


async def test_display_messages_report_takes_the_same_path(caplog: pytest.LogCaptureFixture) -> None:
    from agent.ocpp.v201.display import DisplayMessages

    caplog.set_level(logging.WARNING, logger=LOGGER)
    service = FakeService(fail_at=1, error=ConnectionLost("connection lost"), queue_all=True)
    display = DisplayMessages.__new__(DisplayMessages)
    display._svc = service  # type: ignore[assignment]
    display._pending_reports = {3: [{"id": n, "priority": "NormalCycle",
                                     "message": {"format": "UTF8", "content": f"m{n}"}} for n in range(25)]}
    await display.after_get_display_messages(request_id=3)
    assert [len(p["messageInfo"]) for p in service.sent] == [10]
    assert [(a, len(p["messageInfo"]), p["tbc"]) for a, p in service.queued] == [
        ("NotifyDisplayMessages", 10, True), ("NotifyDisplayMessages", 5, False)]
    for action, payload in service.queued:
        request = getattr(call, action)(**camel_to_snake_case(payload))
        assert remove_nones(snake_to_camel_case(dataclasses.asdict(request))) == payload
    assert warnings(caplog) == ["NotifyDisplayMessages 3: messages 2-3 of 3 not sent (connection lost); "
                                "queued until the reconnect (OCPPCommCtrlr.QueueAllMessages)"]
