"""Backend outages while charging: connection refused, HTTP 503 on the upgrade, a half-open socket that
stops passing bytes (only the missing pong reveals it), and a drop in the middle of a frame, each at a
random point of a session for a random time. Everything queued must arrive in order with the right
transactionId (never -1: the real id is always known), each session with exactly one distinct Stop, and
an identical resend only where the CSMS frame log shows the first copy's CALLRESULT could not have reached
the agent before the fault (harness.explain_resends).

Durations: 0.3-2 s in `make test`; 1-8 s in `make soak` (the spec's 1-120 s scaled down so that 200
trials fit in ~20 min; the agent's redial cap is 1 s in these trials, so longer outages only add waiting)."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

from tests.reliability.harness import CP, SOAK, TAG, Cut, World, check, eventually, trials

TRIALS = trials(4, 200)
DURATION = (1.0, 8.0) if SOAK else (0.3, 2.0)
KINDS = ("refused", "http503", "half-open", "mid-frame")


async def fault(world: World, kind: str, seconds: float) -> None:
    proxy = world.proxy
    assert proxy is not None
    begin = time.time()
    if kind == "refused":
        await proxy.refuse()
        world.drops.append(Cut(kind, begin, time.time()))
        await asyncio.sleep(seconds)
        await proxy.accept_again()
    elif kind == "http503":
        await world.csms.outage(seconds, http_status=503)
        world.drops.append(Cut(kind, begin, time.time()))
        await asyncio.sleep(seconds)
    elif kind == "half-open":
        proxy.silence_current()
        world.drops.append(Cut(kind, begin, time.time()))
        await proxy.refuse_new()
        await asyncio.sleep(seconds)
        await proxy.accept_again()
    else:
        proxy.cut_next = True
        await eventually(lambda: not proxy.cut_next, 30, "a frame to cut")
        await proxy.refuse_new()
        await asyncio.sleep(seconds)
        await proxy.accept_again()


async def test_outages_at_random_points_deliver_everything_in_order(proxied_world: World) -> None:
    world = proxied_world
    rng = random.Random(2024)
    kinds: Counter[str] = Counter()
    t0 = time.monotonic()
    world.agent.start()
    await world.csms.wait_for(CP, "BootNotification", within=15)
    for trial in range(TRIALS):
        kind = KINDS[trial % len(KINDS)]
        kinds[kind] += 1
        starts = len(world.msgs("StartTransaction"))
        await world.csms.wait_connected(CP, within=20)
        world.ctl("plug")
        await asyncio.sleep(0.3)
        await world.tap(TAG)  # a short trial may end < 2 s after its tap: a new tap waits (TAP_SPACING_S)
        try:
            await world.csms.wait_for(CP, "StartTransaction", count=starts + 1, within=15)
        except TimeoutError:
            raise AssertionError(f"trial {trial}: no Start 15 s after plug+tap\n{world.log_tail()}") from None
        await asyncio.sleep(rng.uniform(0.0, 1.5))
        outage = asyncio.create_task(fault(world, kind, rng.uniform(*DURATION)))
        await asyncio.sleep(rng.uniform(0.2, 2.5))  # the session ends during or after the outage
        world.ctl("unplug")
        await outage
        try:
            await eventually(lambda: not check(world.msgs()).problems, 30, "every session delivered")
        except AssertionError:
            problems = check(world.msgs()).problems
            raise AssertionError(f"trial {trial} ({kind}): {problems}\n{world.log_tail()}") from None
    verdict = check(world.msgs(), expect_sessions=TRIALS)
    resends = world.resends()
    assert world.agent.alive, world.log_tail()
    print(f"\noutages: {TRIALS} trials {dict(kinds)} in {time.monotonic() - t0:.0f} s, {verdict.sessions} sessions, "
          f"resends: start {verdict.duplicate_starts}, stop {verdict.duplicate_stops}, "
          f"meter values {verdict.duplicate_meter_values}, frames cut {world.proxy.cuts if world.proxy else 0}; "
          "allowed resends:", *resends.allowed, sep="\n  ")
    assert verdict.problems == []
    assert resends.problems == []
    assert len(resends.allowed) == (verdict.duplicate_starts + verdict.duplicate_stops
                                    + verdict.duplicate_meter_values)
