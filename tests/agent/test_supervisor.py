from __future__ import annotations

import asyncio

from agent.supervisor import Supervisor


async def test_crashing_task_restarts_and_other_task_keeps_running() -> None:
    crashes: list[str] = []
    ticks = 0
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.01)
        raise RuntimeError("boom")

    async def steady() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    gave_up: list[str] = []
    sup = Supervisor(base_delay_s=0.01, max_delay_s=0.05, max_crashes=4,
                     on_crash=lambda n, e: crashes.append(n), on_give_up=gave_up.append)
    sup.spawn("flaky", flaky)
    sup.spawn("steady", steady)
    for _ in range(200):
        if gave_up:
            break
        await asyncio.sleep(0.01)
    assert gave_up == ["flaky"]
    assert runs == 4 and crashes == ["flaky"] * 4
    assert sup.tasks["flaky"].gave_up and not sup.tasks["flaky"].alive
    assert not sup.healthy()
    before = ticks
    await asyncio.sleep(0.05)
    assert ticks > before  # the rest of the station keeps going
    await sup.stop()
