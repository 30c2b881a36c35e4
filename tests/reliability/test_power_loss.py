"""Power loss: kill -9 the real agent process at random moments of charging sessions (boot, authorize,
start, meter values, stop, replay of a queue after an outage), restart it, and check at the CSMS that every
session has exactly one StartTransaction and one StopTransaction (byte-identical resends allowed only when
the CSMS frame log shows the first copy's CALLRESULT could not have reached the agent before a kill or a
drop: delivery is at-least-once; see harness.explain_resends), energy is monotonic, no transactionId is -1
or unknown, nothing is lost. Every kill is recorded by AgentProcess.kill, including the one that ends each
trial right after the CSMS saw the session's Stop (which often lands in that ack window on purpose)."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

from tests.reliability.harness import CP, TAG, Cut, World, check, eventually, trials

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
            begin = time.time()  # the drop, like a kill, can eat a CALLRESULT: a resend may follow
            await world.csms.outage(1.5)
            world.drops.append(Cut("drop", begin, time.time()))
            await asyncio.sleep(1.5)
            await world.csms.wait_connected(CP, within=10)
            await asyncio.sleep(rng.uniform(0.0, 0.6))
            phases["replay"] += 1
        else:
            await asyncio.wait({flow}, timeout=rng.uniform(0.0, SESSION_S))
            phases[phase(world, run_started, run_started)] += 1
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
    resends = world.resends()
    print(f"\npower loss: {TRIALS} trials, {len(world.agent.kills)} kills, {len(world.drops)} drops in "
          f"{time.monotonic() - t0:.0f} s, phases {dict(phases)}, {verdict.sessions} sessions, duplicates: start "
          f"{verdict.duplicate_starts}, stop {verdict.duplicate_stops}, meter values "
          f"{verdict.duplicate_meter_values}; allowed resends:", *resends.allowed, sep="\n  ")
    assert verdict.problems == []
    assert verdict.sessions >= 1
    assert resends.problems == []
    assert len(resends.allowed) == (verdict.duplicate_starts + verdict.duplicate_stops
                                    + verdict.duplicate_meter_values)
