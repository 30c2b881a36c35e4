"""OCPP 2.0.1 reconnect back-off (OCPPCommCtrlr RetryBackOff*): WaitMinimum + random(0, RandomRange),
the wait doubled RepeatTimes times, then kept; read from the device model, live."""

from __future__ import annotations

import random

from agent.ocpp.v201.link import RetryBackOff


def test_wait_doubles_repeat_times_then_stays() -> None:
    backoff = RetryBackOff(wait_minimum=3, random_range=10, repeat_times=2)
    rng = random.Random(7)
    for attempt, base in [(0, 3), (1, 6), (2, 12), (3, 12), (50, 12)]:
        delays = [backoff.delay(attempt, rng) for _ in range(200)]
        assert base <= min(delays) and max(delays) <= base + 10
        assert max(delays) - min(delays) > 5  # the random range is really used


def test_no_random_range_no_repeats() -> None:
    backoff = RetryBackOff(wait_minimum=1, random_range=0, repeat_times=0)
    assert [backoff.delay(n, random.Random(1)) for n in range(4)] == [1.0, 1.0, 1.0, 1.0]

def test_doubling_stops_at_the_cap() -> None:
    backoff = RetryBackOff(wait_minimum=100, random_range=0, repeat_times=100, cap=300)
    assert [backoff.delay(n, random.Random(1)) for n in (0, 1, 2, 10**6)] == [100.0, 200.0, 300.0, 300.0]
    above = RetryBackOff(wait_minimum=3600, random_range=0, repeat_times=3, cap=300)
    assert above.delay(5, random.Random(1)) == 3600.0  # WaitMinimum is never cut
