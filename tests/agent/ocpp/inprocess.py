"""What the OCTT harnesses of both versions (tests/agent/ocpp/conftest.py, tests/agent/ocpp/v201/conftest.py)
share: the agent as Station + OcppService in this process on the rig's devices and state directory,
restartable on the same state to play power losses and resets, and the CSMS/rig side a test case drives."""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from agent.config import AgentConfig
from agent.station import Station
from simulator.csms import Csms, Received
from simulator.rig import Rig, RigOptions

CP = "CP1"
Case = TypeVar("Case", bound="OcttCase")


class InProcessAgent(ABC):
    """One agent process; a subclass gives its version's ``config()``, ``make_service()`` and ``again()``."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.station: Station | None = None
        self.service: Any = None
        self._tasks: list[asyncio.Task[Any]] = []

    @abstractmethod
    def config(self) -> AgentConfig:
        raise NotImplementedError

    @abstractmethod
    def make_service(self, station: Station, config: AgentConfig) -> Any:
        raise NotImplementedError

    @abstractmethod
    def again(self) -> InProcessAgent:
        """A new agent with the same settings (for a restart on the same state directory)."""
        raise NotImplementedError

    async def start(self) -> Any:
        config = self.config()
        self.station = Station(config)
        try:
            self.service = self.make_service(self.station, config)
        except BaseException:
            self.station.close()
            self.station = None
            raise
        self._tasks = [asyncio.create_task(self.station.run()), asyncio.create_task(self.service.run())]
        return self.service

    async def stop(self) -> None:
        """Stop the process abruptly (as a power loss would): no goodbye, state stays on disk."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:  # bounded: a hung shutdown must fail this test, not stall the suite
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

    async def tap(self, id_token: str, connector_id: int | None = 1) -> Any:
        """Present a card at the reader's software entry (the rig's ``tap`` goes through the real reader)."""
        assert self.station is not None
        return await self.station.present_token(id_token, connector_id)


class OcttCase(ABC):
    """What a test case drives: CSMS, rig and agent (the version's harness adds its messages' helpers)."""

    def __init__(self, csms: Csms, rig: Rig) -> None:
        self.csms = csms
        self.rig = rig
        self.agent: Any = None

    async def shutdown(self) -> None:
        """The end of a test: whatever agent still runs is stopped."""
        if self.agent is not None:
            await self.agent.stop()

    async def restart_agent(self) -> Any:
        assert self.agent is not None
        agent = self.agent.again()
        await self.agent.stop()
        self.agent = agent
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

    @abstractmethod
    async def wait_status(self, status: str, *args: Any, **kwargs: Any) -> Received:
        raise NotImplementedError

    async def booted(self) -> None:
        await self.wait("BootNotification")
        await self.wait_status("Available", 1)


@contextlib.asynccontextmanager
async def harness_on(case: type[Case], csms: Csms, options: RigOptions) -> AsyncIterator[Case]:
    """A test case's harness on a started rig against a started CSMS; agent and rig stopped at the end."""
    rig = Rig(options)
    await rig.start()
    harness = case(csms, rig)
    try:
        yield harness
    finally:
        await harness.shutdown()
        await rig.stop()
