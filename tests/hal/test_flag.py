"""hal.flag.Flag behaves as asyncio.Event where the agent uses it, in less memory."""

from __future__ import annotations

import asyncio
import contextlib
import tracemalloc

from hal.flag import Flag, first_set


async def test_set_wakes_every_waiter_and_stays_set_until_cleared() -> None:
    flag = Flag()
    woken: list[int] = []

    async def waiter(n: int) -> None:
        assert await flag.wait() is True
        woken.append(n)

    tasks = [asyncio.create_task(waiter(n)) for n in range(3)]
    await asyncio.sleep(0)
    assert not flag.is_set() and woken == []
    flag.set()
    flag.set()  # twice: no harm
    await asyncio.gather(*tasks)
    assert sorted(woken) == [0, 1, 2]
    assert flag.is_set()
    assert await asyncio.wait_for(flag.wait(), 1) is True  # set: returns at once
    flag.clear()
    assert not flag.is_set()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(0.01):
            await flag.wait()
        raise AssertionError("a cleared flag woke a waiter")
    assert flag._waiters is None  # the timed-out waiter removed itself


async def test_a_cancelled_waiter_leaves_and_the_others_still_wake() -> None:
    flag = Flag()
    first = asyncio.create_task(flag.wait())
    second = asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert first.cancelled()
    assert flag._waiters is not None and len(flag._waiters) == 1
    flag.set()
    assert await asyncio.wait_for(second, 1) is True


async def test_set_then_clear_before_the_waiter_runs_still_wakes_it_as_event_does() -> None:
    results = []
    for kind in (asyncio.Event, Flag):
        flag = kind()
        task = asyncio.create_task(flag.wait())
        await asyncio.sleep(0)
        flag.set()
        flag.clear()
        results.append(await asyncio.wait_for(task, 1))
    assert results == [True, True]


def test_an_unwaited_flag_costs_a_tenth_of_an_event() -> None:
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        events = [asyncio.Event() for _ in range(200)]
        middle = tracemalloc.take_snapshot()
        flags = [Flag() for _ in range(200)]
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    per_event = sum(s.size_diff for s in middle.compare_to(before, "lineno")) / len(events)
    per_flag = sum(s.size_diff for s in after.compare_to(middle, "lineno")) / len(flags)
    assert per_flag * 5 < per_event, (per_flag, per_event)


async def test_first_set_returns_on_any_flag_and_leaves_no_waiter_behind() -> None:
    a, b, c = Flag(), Flag(), Flag()
    task = asyncio.create_task(first_set(a, b, c))
    await asyncio.sleep(0)
    assert not task.done()
    b.set()
    await asyncio.wait_for(task, 1)
    assert a._waiters is None and c._waiters is None
    await asyncio.wait_for(first_set(a, b), 1)  # one already set: at once
    cancelled = asyncio.create_task(first_set(a, c))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    assert cancelled.cancelled() and a._waiters is None and c._waiters is None


async def test_wait_for_answers_as_wait_under_asyncio_timeout() -> None:
    flag = Flag()
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await flag.wait_for(0.05) is False  # timed out: False, no TimeoutError
    assert loop.time() - started >= 0.04
    assert flag._waiters is None
    assert await flag.wait_for(0) is False and await flag.wait_for(-1.0) is False  # as asyncio.timeout(<= 0)
    waiting = asyncio.create_task(flag.wait_for(30.0))
    await asyncio.sleep(0)
    flag.set()
    flag.clear()  # set then cleared before the waiter runs: still woken, as by Event
    assert await asyncio.wait_for(waiting, 1) is True
    flag.set()
    assert await flag.wait_for(0) is True and await flag.wait_for(None) is True  # set: at once
    flag.clear()
    unbounded = asyncio.create_task(flag.wait_for(None))
    await asyncio.sleep(0.02)
    assert not unbounded.done()
    flag.set()
    assert await asyncio.wait_for(unbounded, 1) is True


async def test_wait_for_cancelled_leaves_no_waiter_and_no_timer() -> None:
    flag = Flag()
    loop = asyncio.get_running_loop()
    timers = len(loop._scheduled)  # type: ignore[attr-defined]
    task = asyncio.create_task(flag.wait_for(30.0))
    await asyncio.sleep(0)
    assert flag._waiters is not None and len(flag._waiters) == 1
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert flag._waiters is None
    assert all(h.cancelled() for h in list(loop._scheduled)[timers:])  # type: ignore[attr-defined]
    other = asyncio.create_task(flag.wait())  # the flag still works for the next waiter
    await asyncio.sleep(0)
    flag.set()
    assert await asyncio.wait_for(other, 1) is True
