"""OCTT-style harness: the bundled CSMS on 127.0.0.1 (real websockets), the simulator rig (real ptys and
Modbus TCP) underneath, and the agent (Station + OcppService) in-process, restartable on the same
state directory to play power losses and resets."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.config import AgentConfig, load
from agent.ocpp.v16.link import Backoff
from agent.ocpp.v16.service import OcppService
from agent.station import Station
from simulator.csms import Csms, Received
from simulator.rig import Rig, RigOptions
from tests.agent.ocpp.inprocess import CP as CP
from tests.agent.ocpp.inprocess import InProcessAgent, OcttCase, harness_on
from tests.polling import eventually as eventually

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


class Agent(InProcessAgent):
    """One agent process: Station + OcppService on the rig's devices and state directory."""

    def __init__(self, rig: Rig, keys: dict[str, str]) -> None:
        super().__init__(rig)
        self.keys = keys
        self.service: OcppService | None = None

    def config(self) -> AgentConfig:
        config = load(self.rig.dir / "agent.toml")
        return dataclasses.replace(config, ocpp=dataclasses.replace(config.ocpp, keys={**FAST_KEYS, **self.keys}))

    def make_service(self, station: Station, config: AgentConfig) -> OcppService:
        return OcppService(station, config, backoff=Backoff(base=0.05, cap=0.3, jitter=0.0))

    def again(self) -> Agent:
        return Agent(self.rig, self.keys)


class Octt(OcttCase):
    """What a test case drives: CSMS, rig and agent."""

    agent: Agent | None

    async def start_agent(self, **keys: str) -> Agent:
        self.agent = Agent(self.rig, {k: str(v) for k, v in keys.items()})
        await self.agent.start()
        return self.agent

    async def wait_status(self, status: str, connector_id: int = 1, within: float = 8.0) -> Received:
        def found() -> Received | None:
            for m in self.msgs("StatusNotification"):
                if m.payload["connectorId"] == connector_id and m.payload["status"] == status:
                    return m
            return None

        result: Received = await eventually(found, within, f"StatusNotification {status} on {connector_id}")
        return result

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
    async with harness_on(Octt, csms, RigOptions(directory=tmp_path, csms_url=csms.url, charge_point_id=CP)) as h:
        yield h
