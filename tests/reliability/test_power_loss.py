"""Power loss: kill -9 the real agent process at random moments of charging sessions (boot, authorize,
start, meter values, stop, replay of a queue after an outage), restart it, and check at the CSMS that every
session has exactly one StartTransaction and one StopTransaction (byte-identical resends allowed only when
the kill fell between the CSMS receiving a message and the agent committing its ack: delivery is
at-least-once), energy is monotonic, no transactionId is -1 or unknown, nothing is lost."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

from tests.reliability.harness import CP, TAG, World, check, eventually, trials

TRIALS = trials(5, 200)
SESSION_S = 4.0  # plug .. unplug of one undisturbed session


async def booted(world: World, boots_before: int) -> None:
    await world.csms.wait_for(CP, "BootNotification", count=boots_before + 1, within=15)


async def session(world: World, starts_before: int) -> None:
    world.ctl("plug")
    await asyncio.sleep(0.3)
    world.ctl("tap", id_tag=TAG)
    await world.csms.wait_for(CP, "StartTransaction", count=starts_before + 1, within=10)
    await asyncio.sleep(1.5)
    world.ctl("unplug")


def phase(world: World, since: float, booted_at: float | None) -> str:
    if booted_at is None:
        return "boot"
    recent = [m.action for m in world.msgs() if m.at >= since and m.action != "StatusNotification"]
    names = {"Authorize": "authorize", "StartTransaction": "start", "MeterValues": "meter values",
             "StopTransaction": "stop"}
    return names.get(recent[-1], "idle") if recent else "idle"


def settled(world: World) -> bool:
    verdict = check(world.msgs())
    return not verdict.problems


def power_off_plant(world: World) -> None:
    for sim in world.rig.connectors.values():
        sim.plant.relay_commanded_closed = False
        sim.plant.pwm_duty = None


async def test_kill_9_at_random_moments_loses_nothing(world: World) -> None:
    rng = random.Random(1961)
    kills: list[float] = []
    outages: list[float] = []
    phases: Counter[str] = Counter()
    t0 = time.monotonic()
    for trial in range(TRIALS):
        boots = len(world.msgs("BootNotification"))
        replay = trial % 4 == 3  # every 4th trial: queue up during an outage, kill during the replay
        world.agent.start()
        run_started = time.time()
        if rng.random() < 0.15:  # during boot
            await asyncio.sleep(rng.uniform(0.2, 0.9))
            booted_at = next((m.at for m in world.msgs("BootNotification")[boots:]), None)
            kills.append(time.time())
            phases[phase(world, run_started, booted_at)] += 1
            world.agent.kill()
            power_off_plant(world)
            world.agent.start()
            boots = len(world.msgs("BootNotification"))
        await booted(world, boots)
        starts = len(world.msgs("StartTransaction"))
        flow = asyncio.create_task(session(world, starts))
        if replay:
            await asyncio.sleep(1.2)
            outages.append(time.time())  # the drop, like a kill, can eat a CALLRESULT: resend allowed
            await world.csms.outage(1.5)
            await asyncio.sleep(1.5)
            await world.csms.wait_connected(CP, within=10)
            await asyncio.sleep(rng.uniform(0.0, 0.6))
            phases["replay"] += 1
        else:
            await asyncio.wait({flow}, timeout=rng.uniform(0.0, SESSION_S))
            phases[phase(world, run_started, run_started)] += 1
        kills.append(time.time())
        world.agent.kill()
        flow.cancel()
        await asyncio.gather(flow, return_exceptions=True)
        power_off_plant(world)
        boots = len(world.msgs("BootNotification"))
        world.agent.start()
        await booted(world, boots)
        world.ctl("unplug")
        try:
            await eventually(lambda: settled(world), 20, "every session closed at the CSMS")
        except AssertionError:
            raise AssertionError(f"trial {trial}: {check(world.msgs()).problems}\n{world.log_tail()}") from None
        world.agent.kill()
    verdict = check(world.msgs())
    print(f"\npower loss: {TRIALS} trials, {len(kills)} kills in {time.monotonic() - t0:.0f} s, phases {dict(phases)}, "
          f"{verdict.sessions} sessions, duplicates: start {verdict.duplicate_starts}, stop "
          f"{verdict.duplicate_stops}, meter values {verdict.duplicate_meter_values}")
    assert verdict.problems == []
    assert verdict.sessions >= 1
    # At-least-once, honestly: a resend is only acceptable when a kill fell right after the CSMS received
    # the first copy (before the agent could commit the ack); every duplicate must be such a copy.
    seen: dict[tuple[str, str], float] = {}
    for m in world.msgs():
        if m.action not in ("StartTransaction", "StopTransaction", "MeterValues"):
            continue
        key = (m.action, repr(sorted(m.payload.items())))
        if key in seen:
            first = seen[key]
            assert any(first - 0.5 <= k <= first + 1.0 for k in kills + outages), \
                f"{m.action} resent without a kill or drop in its window"
        else:
            seen[key] = m.at
