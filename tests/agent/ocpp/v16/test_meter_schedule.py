"""The sampling schedules of OCPP 1.6 section 9.1 as pure functions: MeterValueSampleInterval counted from the
start of the transaction (9.1.18), ClockAlignedDataInterval on evenly spaced intervals per day from 00:00:00
(9.1.2). The timing over a real websocket is in tests/agent/ocpp/test_octt_meter_timing.py."""

from __future__ import annotations

import calendar

import pytest

from agent.ocpp.v16 import meter_values as mv

MIDNIGHT = float(calendar.timegm((2026, 12, 3, 0, 0, 0)))


def test_sampled_values_are_counted_from_the_transaction_start() -> None:
    start = 1000.25
    assert mv.next_sample_due(start, 3, start) == start + 3
    assert mv.next_sample_due(start, 3, start + 2.9) == start + 3
    assert mv.next_sample_due(start, 3, start + 3) == start + 6  # strictly after: never the same sample twice
    # A new interval keeps the transaction's grid: 60 -> 2 at 9.1 s gives 10 s, not 9.1 + 2.
    assert mv.next_sample_due(start, 2, start + 9.1) == start + 10
    assert mv.next_sample_due(start, 3, start - 5) == start + 3  # asked before the start


def test_clock_aligned_boundaries_start_at_midnight_utc() -> None:
    assert mv.next_aligned_boundary(MIDNIGHT + 1, 900) == MIDNIGHT + 900
    assert mv.next_aligned_boundary(MIDNIGHT + 900, 900) == MIDNIGHT + 1800  # strictly after
    assert mv.next_aligned_boundary(MIDNIGHT - 0.5, 900) == MIDNIGHT
    # 7 h does not divide a day: 21:00 is the last boundary, the next day starts again at 00:00.
    assert mv.next_aligned_boundary(MIDNIGHT + 21 * 3600 + 1, 7 * 3600) == MIDNIGHT + 86400
    # An interval of a day or more: once a day, at midnight.
    assert mv.next_aligned_boundary(MIDNIGHT + 5, 10**9) == MIDNIGHT + 86400


@pytest.mark.parametrize("value, effective", [(0, 0), (-5, 0), (60, 60), (10**18 - 1, mv.MAX_INTERVAL_S)])
def test_any_accepted_interval_gives_a_finite_schedule(value: int, effective: int) -> None:
    """Keys accept up to 18 digits; the schedule clamps so its float arithmetic never overflows or loses the
    grid (a value this large simply never comes due while the station runs)."""
    assert mv.effective_interval(value) == effective
    if effective:
        due = mv.next_sample_due(1000.0, effective, 1000.0)
        assert due == 1000.0 + effective
