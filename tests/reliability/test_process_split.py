"""Issue 12: the control side and the network side of `cpagent run` are two processes (agent/split.py).

The real `python -m agent.cli run` (the supervisor with its two children) against the simulator rig and the
bundled CSMS on 127.0.0.1:
- the network side's event loop frozen for 5 s (SIGSTOP, harsher than a handler sleeping synchronously) while
  the EV goes C -> B: the relay-open frame reaches the board within 100 ms (IEC 61851-1);
- kill -9 of the network side mid-session: charging goes on, the supervisor restarts it, the session's
  messages reach the CSMS afterwards, exactly one StartTransaction and one StopTransaction;
- kill -9 of the control side mid-session: the board's keep-alive opens the relay, the network side reports
  the connector Faulted to the CSMS, the supervisor restarts the control side and the connector recovers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

from tests.reliability.harness import CP, TAG, TAP_SPACING_S, World, agent_processes, eventually

IEC_RELAY_OPEN_S = 0.100
BOARD_KEEPALIVE_S = 2.0  # the pilot board opens its relays when the agent's keep-alives stop


def child_pid(world: World, role: str) -> int | None:
    """The pid of the supervisor's `role` side ("control" or "network"), if it runs."""
    assert world.agent.proc is not None
    return agent_processes(world.agent.proc.pid).get(role)


def connector(world: World) -> dict[str, object]:
    state: dict[str, object] = world.rig.state()["connectors"]["1"]
    return state


async def charging(world: World) -> None:
    world.agent.start()
    await eventually(lambda: world.csms.messages(CP, "BootNotification"), 15, "BootNotification")
    world.rig.control({"cmd": "plug", "connector": 1})
    await asyncio.sleep(0.5)
    world.rig.control({"cmd": "tap", "id_tag": TAG})
    await eventually(lambda: world.csms.messages(CP, "StartTransaction"), 15, "StartTransaction")
    await eventually(lambda: connector(world)["relay_closed"] and float(str(connector(world)["power_w"])) > 0, 15,
                     "energy flowing")


def statuses(world: World, status: str) -> list[object]:
    return [m for m in world.csms.messages(CP, "StatusNotification")
            if m.payload["connectorId"] == 1 and m.payload["status"] == status]


async def test_relay_opens_within_100_ms_while_the_network_side_is_frozen(world: World) -> None:
    await charging(world)
    network = child_pid(world, "network")
    assert network is not None
    os.kill(network, signal.SIGSTOP)
    try:
        await asyncio.sleep(0.5)
        world.rig.control({"cmd": "ev", "connector": 1, "action": "pause"})  # the EV goes C -> B
        plant = world.rig.connectors[1].plant
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while plant.cp_state().value[0] != "B":
            assert loop.time() < deadline, "the EV never went to B"
            await asyncio.sleep(0.0005)
        seen_b = time.monotonic()
        while plant.relay_commanded_closed:
            assert loop.time() < deadline, "the relay was never opened"
            await asyncio.sleep(0.0005)
        latency = time.monotonic() - seen_b
        assert latency <= IEC_RELAY_OPEN_S, f"relay opened {latency * 1000:.1f} ms after C->B"
        await asyncio.sleep(4.5)  # the 5 s freeze of the network side ends
    finally:
        os.kill(network, signal.SIGCONT)
    assert child_pid(world, "network") == network  # frozen, not killed


async def test_kill_9_of_the_network_side_keeps_charging_and_loses_nothing(world: World) -> None:
    await charging(world)
    network = child_pid(world, "network")
    assert network is not None
    energy_before = float(str(connector(world)["energy_wh"]))
    boots = len(world.csms.messages(CP, "BootNotification"))
    os.kill(network, signal.SIGKILL)
    await asyncio.sleep(3)
    assert connector(world)["relay_closed"], "charging stopped with the network side"
    assert float(str(connector(world)["energy_wh"])) > energy_before
    await eventually(lambda: child_pid(world, "network") not in (None, network), 15, "a new network side")
    await eventually(lambda: statuses(world, "Charging")[-1] is not statuses(world, "Charging")[0], 15,
                     "the new network side's status report")
    # A reconnect, not a boot of the charge point: a CSMS may take a BootNotification for a reboot.
    assert len(world.csms.messages(CP, "BootNotification")) == boots
    startups = [m for m in world.csms.messages(CP, "SecurityEventNotification")
                if m.payload["type"] == "StartupOfTheDevice"]
    assert len(startups) == 1
    await asyncio.sleep(TAP_SPACING_S)
    world.rig.control({"cmd": "tap", "id_tag": TAG})  # the same card stops the session
    await eventually(lambda: world.csms.messages(CP, "StopTransaction"), 15, "StopTransaction")
    await asyncio.sleep(1)
    assert len(world.csms.messages(CP, "StartTransaction")) == 1
    assert len(world.csms.messages(CP, "StopTransaction")) == 1
    # PWM off first; the relay opens once the EV has stopped drawing (IEC 61851-1 sequence 10.2)
    await eventually(lambda: not connector(world)["relay_closed"], 10, "the relay open after the stop")


async def test_kill_9_of_the_control_side_opens_the_relay_and_is_reported(world: World) -> None:
    await charging(world)
    control = child_pid(world, "control")
    assert control is not None
    os.kill(control, signal.SIGKILL)
    killed = time.monotonic()
    plant = world.rig.connectors[1].plant
    while plant.relay_commanded_closed:
        assert time.monotonic() - killed < BOARD_KEEPALIVE_S + 1.0, "the board kept the relay closed"
        await asyncio.sleep(0.01)
    await eventually(lambda: statuses(world, "Faulted"), 10, "StatusNotification Faulted from the network side")
    await eventually(lambda: child_pid(world, "control") not in (None, control), 15, "a new control side")
    faulted = len(world.csms.messages(CP, "StatusNotification"))

    def recovered() -> bool:
        later = world.csms.messages(CP, "StatusNotification")[faulted:]
        return any(m.payload["connectorId"] == 1 and m.payload["status"] != "Faulted" for m in later)

    await eventually(recovered, 20, "the connector reported again after the control side came back")
    assert len(world.csms.messages(CP, "StopTransaction")) <= 1
