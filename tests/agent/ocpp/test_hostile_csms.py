"""A hostile central system (issue 11 items 10, 12, 14): the bundled CSMS on 127.0.0.1 answers with values
that are schema-valid or nearly so but unusable. The agent (Station + OcppService on the simulator rig) must
keep every task alive, answer every CALL once, and never wedge its transaction queue."""

from __future__ import annotations

import json
import logging
import math
import time
from datetime import UTC, datetime
from typing import Any

import pytest

import simulator.csms
from agent.ocpp.v16.meter_values import ocpp_time
from agent.ocpp.v16.pricing import VENDOR_ID
from simulator.csms import CsmsCallError
from tests.agent.ocpp.conftest import CP, TAG, Octt, eventually

POISON = "9999-12-31T23:59:59-12:00"  # schema-valid date-time; 10000-01-01T11:59:59Z in UTC


def parsed(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def sane(stamp: str) -> bool:
    """Within a day of the real time: what a timestamp must be when the CSMS clock was refused."""
    return abs(parsed(stamp) - time.time()) < 86400


async def change(octt: Octt, key: str, value: str) -> None:
    """ChangeConfiguration at run time, over the websocket, as a CSMS does it."""
    assert (await octt.csms.send(CP, "ChangeConfiguration", {"key": key, "value": value}))["status"] == "Accepted"


# -- item 10: clock poisoning ------------------------------------------------------------------------------


def test_timestamp_formatter_never_raises() -> None:
    for wall in (1e20, -1e20, math.inf, -math.inf, math.nan, 253402300800.0 + 43200):
        text = ocpp_time(wall)
        assert text.endswith("Z") and datetime.fromisoformat(text.replace("Z", "+00:00")).year >= 1970
    assert ocpp_time(1_767_225_600.0) == "2026-01-01T00:00:00.000Z"


async def test_absurd_csms_time_is_refused_and_every_task_keeps_working(
    octt: Octt, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """BootNotification.conf and Heartbeat.conf carry currentTime 9999-12-31T23:59:59-12:00 (schema-valid).
    The offset it implies is refused (kept at the old value); statuses, Start, heartbeats and a reconnect
    all work, the refusal is logged once, and a later sane currentTime is followed again."""
    monkeypatch.setattr(simulator.csms, "utc_now_iso", lambda: POISON)
    caplog.set_level(logging.WARNING)
    agent = await octt.start_agent()
    await octt.booted()  # the StatusNotification used to fail: year 10000 is out of range
    assert agent.service is not None
    assert agent.service.clock_offset_s == 0.0
    assert all(sane(m.payload["timestamp"]) for m in octt.msgs("StatusNotification"))

    await change(octt, "HeartbeatInterval", "1")
    await octt.wait("Heartbeat", count=3, within=8)  # the heartbeat task survives poisoned answers

    start = await octt.charging()
    assert sane(start.payload["timestamp"])
    assert all(sane(m.payload["timestamp"]) for m in octt.msgs("StatusNotification"))

    # A reconnect refreshes the statuses (it used to fail in _refresh_statuses every time).
    connections = len(octt.csms.handshakes)
    await octt.csms.drop(CP)
    await eventually(lambda: len(octt.csms.handshakes) > connections, what="redial")
    await octt.csms.wait_connected(CP)
    count = len(octt.msgs("StatusNotification"))
    trigger = await octt.csms.send(CP, "TriggerMessage", {"requestedMessage": "StatusNotification",
                                                         "connectorId": 1})
    assert trigger["status"] == "Accepted"
    await eventually(lambda: len(octt.msgs("StatusNotification")) > count, what="triggered status")
    assert sane(octt.msgs("StatusNotification")[-1].payload["timestamp"])

    refused = [r for r in caplog.records if "currentTime" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in refused]  # once, not per heartbeat
    assert agent.service.clock_offset_s == 0.0

    # A usable time is followed again: the CSMS clock an hour ahead.
    ahead = datetime.fromtimestamp(time.time() + 3600, UTC).isoformat().replace("+00:00", "Z")
    monkeypatch.setattr(simulator.csms, "utc_now_iso", lambda: ahead)
    await eventually(lambda: agent.service is not None and abs(agent.service.clock_offset_s - 3600) < 60,
                     within=5, what="clock offset follows a sane CSMS time")


# -- item 12: handlers given overflowing numbers answer Rejected or a CALLERROR ------------------------------


async def test_overflowing_numbers_in_handlers_are_rejected_not_internal_errors(
    octt: Octt, caplog: pytest.LogCaptureFixture
) -> None:
    await octt.start_agent()
    await octt.booted()
    start = await octt.charging()
    transaction_id = octt.transaction_id()
    assert start.payload["idTag"] == TAG
    caplog.set_level(logging.ERROR)

    # SendLocalList listVersion 2**70: OCPP 1.6 integer is 32 bit.
    with pytest.raises(CsmsCallError) as caught:
        await octt.csms.send(CP, "SendLocalList", {"listVersion": 2**70, "updateType": "Full",
                                                   "localAuthorizationList": []})
    assert caught.value.code == "PropertyConstraintViolation"

    async def cost(message_id: str, data: str) -> str:
        answer = await octt.csms.send(CP, "DataTransfer", {"vendorId": VENDOR_ID, "messageId": message_id,
                                                           "data": data})
        return str(answer["status"])

    # Money beyond any register: Decimal arithmetic overflowed (decimal.Overflow is no ValueError).
    assert await cost("RunningCost", json.dumps({"transactionId": transaction_id, "cost": "1E+999999"})) == "Rejected"
    assert await cost("RunningCost", f'{{"transactionId": {transaction_id}, "cost": 1E+999999}}') == "Rejected"
    assert await cost("FinalCost", f'{{"transactionId": {transaction_id}, "cost": 1e30}}') == "Rejected"
    # Nesting deeper than the JSON parser's stack inside the data string.
    nested = "[" * 30_000 + "]" * 30_000  # 60 kB: still under the frame limit
    deep = f'{{"transactionId": {transaction_id}, "cost": 1, "x": {nested}}}'
    assert await cost("RunningCost", deep) == "Rejected"
    # Not-JSON constants and an unusable transaction id.
    assert await cost("RunningCost", f'{{"transactionId": {transaction_id}, "cost": NaN}}') == "Rejected"
    assert await cost("RunningCost", '{"transactionId": Infinity, "cost": 1}') == "Rejected"
    assert await cost("RunningCost", '{"transactionId": 1e999, "cost": 1}') == "Rejected"
    # A sane RunningCost still works afterwards.
    assert await cost("RunningCost", json.dumps({"transactionId": transaction_id, "cost": 1.25})) == "Accepted"
    handler_failures = [r for r in caplog.records if "failed" in r.getMessage() or r.exc_info]
    assert handler_failures == [], [r.getMessage() for r in handler_failures]


# -- item 14: a reply the agent cannot use ------------------------------------------------------------------


async def test_unusable_start_transaction_conf_is_counted_then_dropped_never_a_wedge(
    octt: Octt, monkeypatch: pytest.MonkeyPatch
) -> None:
    """StartTransaction.conf {"transactionId": 2**70} is schema-valid JSON but no OCPP 1.6 integer (32 bit)
    and no SQLite integer (64 bit). It counts as a failed attempt like a CALLERROR; after
    TransactionMessageAttempts the Start is dropped with a record and the queue moves on, on the same
    connection."""
    agent = await octt.start_agent()
    await octt.booted()
    await change(octt, "TransactionMessageAttempts", "2")
    await change(octt, "TransactionMessageRetryInterval", "1")
    monkeypatch.setattr(octt.csms, "_next_transaction_id", lambda: 2**70)
    connections = len(octt.csms.handshakes)

    octt.ctl("plug")
    await eventually(lambda: agent.connector.controller.cp_state is not None
                     and agent.connector.controller.cp_state.ev_connected, what="EV connected")
    assert (await agent.tap(TAG)).accepted
    await octt.wait("StartTransaction", count=2, within=8)
    assert agent.service is not None
    await eventually(lambda: agent.service is not None and agent.service.outbox.dropped(), what="Start dropped")
    action, _, reason = agent.service.outbox.dropped()[0]
    assert action == "StartTransaction" and "transactionId" in reason
    await octt.wait_status("Charging")
    monkeypatch.undo()
    # Nothing is blocked: the next queued message (the Stop, carrying -1 for the dropped Start) is delivered.
    octt.ctl("unplug")
    stop = await octt.wait("StopTransaction", within=10)
    assert stop.payload["transactionId"] == -1
    assert len(octt.msgs("StartTransaction")) == 2  # counted attempts, no resend loop
    assert len(octt.csms.handshakes) == connections  # the agent never closed and redialled over it


async def test_heartbeat_and_boot_replies_of_the_wrong_kind_are_survived(
    octt: Octt, monkeypatch: pytest.MonkeyPatch
) -> None:
    """currentTime that parses but is no date at all, and a negative one: refused, nothing dies."""
    agent = await octt.start_agent()
    await octt.booted()
    assert agent.service is not None
    offset = agent.service.clock_offset_s  # learnt from the sane boot
    await change(octt, "HeartbeatInterval", "1")
    for bad in ("0001-01-01T00:00:00+14:00", "1970-01-01T00:00:00Z"):
        monkeypatch.setattr(simulator.csms, "utc_now_iso", lambda bad=bad: bad)
        count = len(octt.msgs("Heartbeat"))
        await octt.wait("Heartbeat", count=count + 2, within=8)
    assert agent.service.clock_offset_s == offset
    answer: Any = await octt.csms.send(CP, "TriggerMessage", {"requestedMessage": "Heartbeat"})
    assert answer["status"] == "Accepted"
