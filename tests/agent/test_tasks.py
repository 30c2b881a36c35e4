"""Cancellation that a library swallowed (Python 3.11 wait_for) must still end our tasks."""

from __future__ import annotations

import asyncio

from hal.tasks import cancel_and_wait, raise_if_cancelling


async def _swallows_first_cancel(laps: list[int], *, check: bool) -> None:
    swallowed = False
    while True:
        if check:
            raise_if_cancelling()
        laps.append(1)
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            if swallowed:
                raise
            swallowed = True  # what wait_for does when its inner future completes at the same moment


def test_a_loop_that_checks_ends_after_one_cancel_even_if_it_was_swallowed() -> None:
    async def scenario() -> None:
        laps: list[int] = []
        task = asyncio.create_task(_swallows_first_cancel(laps, check=True))
        await asyncio.sleep(0.03)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=1)
        assert task in done and task.cancelled()

    asyncio.run(scenario())


def test_cancel_and_wait_cancels_again_a_task_that_ignored_the_first_cancel() -> None:
    async def scenario() -> None:
        laps: list[int] = []
        task = asyncio.create_task(_swallows_first_cancel(laps, check=False))
        await asyncio.sleep(0.03)
        await asyncio.wait_for(cancel_and_wait(task, retry_s=0.05), timeout=2)
        assert task.cancelled()
        assert len(laps) >= 2  # it really kept running after the first cancel

    asyncio.run(scenario())


def test_cancel_and_wait_retrieves_failures_and_tolerates_finished_tasks() -> None:
    async def boom() -> None:
        raise ValueError("x")

    async def scenario() -> None:
        failed = asyncio.create_task(boom())
        await asyncio.sleep(0)
        finished = asyncio.create_task(asyncio.sleep(0))
        await asyncio.sleep(0.01)
        await cancel_and_wait(failed, finished)
        assert isinstance(failed.exception(), ValueError)

    asyncio.run(scenario())
