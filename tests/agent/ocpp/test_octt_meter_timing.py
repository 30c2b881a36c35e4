"""When sampled and clock-aligned MeterValues are taken, and when held StatusNotifications go out, after a
CSMS changes the governing key at run time (ChangeConfiguration over the real websocket).

OCPP 1.6 section 9.1 (configuration keys):
- MeterValueSampleInterval: "Interval between sampling of metering (or other) data, intended to be
  transmitted by MeterValues.req PDUs. For charging session data (ConnectorId>0), samples are acquired and
  transmitted periodically at this interval from the start of the charging transaction. A value of '0'
  (numeric zero), by convention, is to be interpreted to mean that no sampled data should be transmitted."
- ClockAlignedDataInterval: "Size (in seconds) of the clock-aligned data interval. This is the size (in
  seconds) of the set of evenly spaced aggregation intervals per day, starting at 00:00:00 (midnight)."
- MinimumStatusDuration: "Specifies the minimum duration that a Charge Point or Connector status is stable
  before a StatusNotification.req PDU is sent to the Central System."
Section 5.3 (ChangeConfiguration): a changed value takes effect without a reboot (the keys here are not
RebootRequired), so the schedule follows the new value from the next sample on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import Any

import pytest

from agent.outbox import METER_VALUES
from simulator.csms import Received
from tests.agent.ocpp.conftest import CP, TAG, Agent, Octt, eventually

DECLARED_SAMPLE_INTERVAL = "60"  # the key's declared default, as on a station nobody has configured
TOLERANCE_S = 0.4  # scheduling + websocket latency on a loaded 2-core machine


async def change(octt: Octt, key: str, value: str) -> str:
    answer = await octt.csms.send(CP, "ChangeConfiguration", {"key": key, "value": value})
    return str(answer["status"])


async def start_with_declared_sample_interval(octt: Octt) -> Agent:
    """The harness presets MeterValueSampleInterval=0 for speed; put back the declared default (60 s) so the
    run-time change below is made against what a real station runs with."""
    agent = await octt.start_agent(MeterValueSampleInterval=DECLARED_SAMPLE_INTERVAL)
    assert agent.service is not None
    spec = agent.service.store.spec("MeterValueSampleInterval")
    assert spec is not None and spec.default == DECLARED_SAMPLE_INTERVAL
    await octt.booted()
    return agent


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def stamps(messages: list[Received] | list[dict[str, Any]], context: str) -> list[float]:
    """Timestamps of the meterValues with the given context, in the order sent."""
    out = []
    for m in messages:
        payload = m.payload if isinstance(m, Received) else m
        for value in payload["meterValue"]:
            if any(sv.get("context") == context for sv in value["sampledValue"]):
                out.append(epoch(value["timestamp"]))
    return out


def periodic(octt: Octt) -> list[float]:
    return stamps(octt.msgs("MeterValues"), "Sample.Periodic")


def assert_on_grid(offsets: list[float], expected: list[float]) -> None:
    assert len(offsets) == len(expected), f"sample offsets {offsets}, expected {expected}"
    for got, want in zip(offsets, expected, strict=True):
        assert abs(got - want) <= TOLERANCE_S, f"sample offsets {offsets}, expected {expected}"


async def test_sample_interval_changed_at_boot_counts_from_transaction_start_and_mid_session_change(
    octt: Octt,
) -> None:
    agent = await start_with_declared_sample_interval(octt)
    # At boot, before any transaction: 60 -> 3. No 60 s sleep may still be running.
    assert await change(octt, "MeterValueSampleInterval", "3") == "Accepted"
    start = await octt.charging()
    t0 = epoch(start.payload["timestamp"])
    await octt.wait("MeterValues", count=3, within=11)
    assert_on_grid([t - t0 for t in periodic(octt)], [3, 6, 9])
    # Mid-session 3 -> 2 (at ~9.1 s): the next sample is the next multiple of 2 s since the start (10 s), not
    # the end of the running 3 s wait (12 s).
    assert await change(octt, "MeterValueSampleInterval", "2") == "Accepted"
    await octt.wait("MeterValues", count=5, within=5)
    assert_on_grid([t - t0 for t in periodic(octt)], [3, 6, 9, 10, 12])
    assert all(m.payload["transactionId"] == 1 for m in octt.msgs("MeterValues"))
    octt.ctl("unplug")
    await octt.wait("StopTransaction")
    assert agent.connector.session is None


async def test_sample_interval_zero_is_off_and_turning_it_on_later_works(octt: Octt) -> None:
    await start_with_declared_sample_interval(octt)
    assert await change(octt, "MeterValueSampleInterval", "0") == "Accepted"
    start = await octt.charging()
    t0 = epoch(start.payload["timestamp"])
    await asyncio.sleep(2.5)
    assert octt.msgs("MeterValues") == []  # 0: no sampled data
    switched_on = time.time()
    assert await change(octt, "MeterValueSampleInterval", "1") == "Accepted"
    await octt.wait("MeterValues", count=2, within=4)
    offsets = [t - t0 for t in periodic(octt)][:2]
    # On whole seconds of the transaction, from the first one after the change.
    first = float(round(offsets[0]))
    assert switched_on - t0 < first <= switched_on - t0 + 1 + TOLERANCE_S, (switched_on - t0, offsets)
    assert_on_grid(offsets, [first, first + 1])
    octt.ctl("unplug")
    await octt.wait("StopTransaction")


async def test_clock_aligned_interval_change_takes_effect_at_once(octt: Octt) -> None:
    await octt.start_agent()
    await octt.booted()
    assert await change(octt, "ClockAlignedDataInterval", "900") == "Accepted"  # every quarter hour
    await octt.charging()
    await asyncio.sleep(0.5)
    changed = time.time()
    # 900 -> 2: the next boundary is recomputed now (midnight + k * 2 s), not after the quarter hour.
    assert await change(octt, "ClockAlignedDataInterval", "2") == "Accepted"
    await octt.wait("MeterValues", count=2, within=5)
    aligned = stamps(octt.msgs("MeterValues"), "Sample.Clock")[:2]
    assert len(aligned) == 2
    assert changed - TOLERANCE_S < aligned[0] <= changed + 2 + TOLERANCE_S
    for stamp in aligned:  # on the clock's 2 s boundaries (since midnight UTC)
        assert round(stamp, 3) % 2 == 0, aligned
    assert aligned[1] - aligned[0] == pytest.approx(2, abs=0.01)
    assert all(m.payload["transactionId"] == 1 for m in octt.msgs("MeterValues"))
    octt.ctl("unplug")
    await octt.wait("StopTransaction")


async def test_offline_started_transaction_is_sampled_on_schedule_and_delivered_later(octt: Octt) -> None:
    agent = await start_with_declared_sample_interval(octt)
    assert await change(octt, "MeterValueSampleInterval", "2") == "Accepted"
    assert await change(octt, "AllowOfflineTxForUnknownId", "true") == "Accepted"
    assert agent.service is not None
    service = agent.service
    await octt.csms.outage(8.0)
    await eventually(lambda: not service.online, 5, "agent offline")
    octt.ctl("plug")
    await eventually(lambda: agent.connector.controller.cp_state is not None
                     and agent.connector.controller.cp_state.ev_connected, what="EV connected")
    assert (await agent.tap(TAG)).accepted
    session = agent.connector.session
    assert session is not None

    def queued_samples() -> list[dict[str, Any]]:
        return [e.payload for e in service.outbox.entries() if e.action == METER_VALUES]

    # Produced and queued durably while the CSMS is unreachable.
    await eventually(lambda: len(queued_samples()) >= 2, 5.5, "two sampled MeterValues in the outbox")
    assert not service.online
    assert octt.msgs("StartTransaction") == []
    # Delivered after the reconnect, behind the Start, with the real transactionId, on the 2 s grid.
    await octt.wait("MeterValues", count=2, within=10)
    start = octt.msgs("StartTransaction")[0]
    t0 = epoch(start.payload["timestamp"])
    offsets = [t - t0 for t in periodic(octt)][:2]
    assert_on_grid(offsets, [2, 4])
    assert all(m.payload["transactionId"] == 1 for m in octt.msgs("MeterValues"))
    octt.ctl("unplug")
    stop = await octt.wait("StopTransaction")
    assert stop.payload["transactionId"] == 1


def connector_statuses(octt: Octt) -> list[str]:
    return [m.payload["status"] for m in octt.msgs("StatusNotification") if m.payload["connectorId"] == 1]


async def test_minimum_status_duration_change_releases_held_statuses_at_once(
    octt: Octt, caplog: pytest.LogCaptureFixture
) -> None:
    """Bound (decided here): configuration integers have at most 18 digits, so the largest value accepted is
    999 999 999 999 999 999 s; it is Accepted and held without any timer error; 10^18 is Rejected."""
    await octt.start_agent()
    await octt.booted()
    await octt.wait_status("Available")
    assert await change(octt, "MinimumStatusDuration", str(10**18)) == "Rejected"
    assert await change(octt, "MinimumStatusDuration", str(10**18 - 1)) == "Accepted"
    before = len(connector_statuses(octt))
    with caplog.at_level(logging.WARNING):
        for action in ("plug", "unplug", "plug"):  # three status changes, all held
            octt.ctl(action)
            await asyncio.sleep(0.6)
        await asyncio.sleep(0.8)
        assert connector_statuses(octt)[before:] == []
        # Back to 0: every change is reported, and the held ones are re-evaluated now, not at a reconnect.
        assert await change(octt, "MinimumStatusDuration", "0") == "Accepted"
        await eventually(lambda: len(connector_statuses(octt)) >= before + 3, 2, "the held statuses")
    assert connector_statuses(octt)[before:] == ["Preparing", "Available", "Preparing"]
    assert len(octt.csms.handshakes) == 1  # no reconnect involved
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
