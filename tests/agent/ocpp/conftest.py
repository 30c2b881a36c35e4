"""OCTT-style harness: the bundled CSMS on 127.0.0.1 (real websockets), the simulator rig (real ptys and
Modbus TCP) underneath, and the agent (Station + OcppService) in-process, restartable on the same
state directory to play power losses and resets."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig, load
from agent.ocpp.v16.link import Backoff
from agent.ocpp.v16.service import OcppService
from agent.station import Station
from simulator.csms import Csms, Received
from simulator.rig import Rig, RigOptions

CP = "CP1"
TAG = "DEADBEEF01"
TAG2 = "04A1B2C3D4"

# Small intervals keep the suite fast; tests override what they exercise.
FAST_KEYS = {
    "MeterValueSampleInterval": "0",
    "HeartbeatInterval": "300",
    "TransactionMessageRetryInterval": "1",
    "ConnectionTimeOut": "30",
    "MessageTimeout": "5",
}


async def eventually(predicate: Callable[[], Any], within: float = 8.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.02)


class Agent:
    """One agent process: Station + OcppService on the rig's devices and state directory."""

    def __init__(self, rig: Rig, keys: dict[str, str]) -> None:
        self.rig = rig
        self.keys = keys
        self.station: Station | None = None
        self.service: OcppService | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    def config(self) -> AgentConfig:
        config = load(self.rig.dir / "agent.toml")
        return dataclasses.replace(config, ocpp=dataclasses.replace(config.ocpp, keys={**FAST_KEYS, **self.keys}))

    async def start(self) -> OcppService:
        config = self.config()
        self.station = Station(config)
        self.service = OcppService(self.station, config, backoff=Backoff(base=0.05, cap=0.3, jitter=0.0))
        self._tasks = [asyncio.create_task(self.station.run()), asyncio.create_task(self.service.run())]
        return self.service

    async def stop(self) -> None:
        """Stop the process abruptly (as a power loss would): no goodbye, state stays on disk."""
        for task in self._tasks:
            task.cancel()
        # Bounded: a hung shutdown must fail this test, not stall the suite.
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        self._tasks = []
        if self.service is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.service.stop(), 10)
        if self.station is not None:
            self.station.close()
        self.station = None
        self.service = None

    @property
    def connector(self) -> Any:
        assert self.station is not None
        return self.station.connectors[1]

    async def tap(self, id_tag: str, connector_id: int | None = 1) -> Any:
        assert self.station is not None
        return await self.station.present_token(id_tag, connector_id)


class Octt:
    """What a test case drives: CSMS, rig and agent."""

    def __init__(self, csms: Csms, rig: Rig) -> None:
        self.csms = csms
        self.rig = rig
        self.agent: Agent | None = None

    async def start_agent(self, **keys: str) -> Agent:
        self.agent = Agent(self.rig, {k: str(v) for k, v in keys.items()})
        await self.agent.start()
        return self.agent

    async def restart_agent(self) -> Agent:
        assert self.agent is not None
        keys = self.agent.keys
        await self.agent.stop()
        self.agent = Agent(self.rig, keys)
        await self.agent.start()
        return self.agent

    async def power_loss(self) -> None:
        """The whole station loses power: the agent dies and the board drops the contactor and PWM."""
        assert self.agent is not None
        await self.agent.stop()
        for sim in self.rig.connectors.values():
            sim.plant.relay_commanded_closed = False
            sim.plant.pwm_duty = None

    def ctl(self, cmd: str, **args: Any) -> dict[str, Any]:
        return self.rig.control({"cmd": cmd, **args})

    def msgs(self, action: str | None = None) -> list[Received]:
        return self.csms.messages(CP, action)

    async def wait(self, action: str, count: int = 1, within: float = 8.0) -> Received:
        return await self.csms.wait_for(CP, action, count=count, within=within)

    async def wait_status(self, status: str, connector_id: int = 1, within: float = 8.0) -> Received:
        def found() -> Received | None:
            for m in self.msgs("StatusNotification"):
                if m.payload["connectorId"] == connector_id and m.payload["status"] == status:
                    return m
            return None

        result: Received = await eventually(found, within, f"StatusNotification {status} on {connector_id}")
        return result

    async def booted(self) -> None:
        await self.wait("BootNotification")
        await self.wait_status("Available", 1)

    async def charging(self, id_tag: str = TAG) -> Received:
        """Plug in, present a card, and wait for the Start and for Charging."""
        assert self.agent is not None
        self.ctl("plug")
        await eventually(lambda: self.agent and self.agent.connector.controller.cp_state is not None
                         and self.agent.connector.controller.cp_state.ev_connected, what="EV connected")
        decision = await self.agent.tap(id_tag)
        assert decision.accepted
        start = await self.wait("StartTransaction")
        await self.wait_status("Charging")
        return start

    def transaction_id(self, count: int = 1) -> int:
        """The id the CSMS handed out for the count-th StartTransaction (it counts from 1)."""
        return count


@pytest.fixture
async def csms() -> AsyncIterator[Csms]:
    server = Csms(accept=["DEADBEEF01", "04A1B2C3D4"], heartbeat_interval=300)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def octt(tmp_path: Path, csms: Csms) -> AsyncIterator[Octt]:
    rig = Rig(RigOptions(directory=tmp_path, csms_url=csms.url, charge_point_id=CP))
    await rig.start()
    harness = Octt(csms, rig)
    try:
        yield harness
    finally:
        if harness.agent is not None:
            await harness.agent.stop()
        await rig.stop()
