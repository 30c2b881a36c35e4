"""OCTT 2.0.1 harness: the bundled CSMS speaking ocpp2.0.1 on 127.0.0.1 (real websockets, the library's
strict schemas on the CSMS side), the simulator rig (real ptys, Modbus TCP) underneath, and the agent
(Station + the 2.0.1 OcppService) in-process, restartable on the same state directory to play power
losses and resets; or ``cpagent run`` as a real process (``start_process``) for kill -9 trials.

The agent's configuration is the rig's agent.toml with ``[ocpp] version = "2.0.1"`` (the rig writes it)
plus an ``[ocpp.variables]`` table per start, loaded by ``agent.config.load`` as on a device.

Tests look like the 1.6 ones (tests/agent/ocpp/conftest.py)::

    async def test_tc_b_01_cs(octt: Octt201) -> None:
        await octt.start_agent({"OCPPCommCtrlr/HeartbeatInterval": 60})
        boot = await octt.wait("BootNotification")
        await octt.wait_status("Available", evse_id=1)
        result = await octt.send("GetVariables", {...})
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import pytest

from agent.config import AgentConfig, load
from agent.station import Station
from simulator.csms import Csms, Received
from simulator.rig import Rig, RigOptions
from tests.agent.ocpp.inprocess import CP as CP
from tests.agent.ocpp.inprocess import InProcessAgent, OcttCase, harness_on
from tests.polling import eventually as eventually

TAG = "DEADBEEF01"
TAG2 = "04A1B2C3D4"
ISO14443 = "ISO14443"
REPO = Path(__file__).resolve().parents[4]

# Device-model presets every start gets unless a test overrides them: short waits keep the suite fast.
# ("Component[.instance]/Variable[.instance]" = value, as in [ocpp.variables]; tests override what they
# exercise). Only variables of the 2.0.1 device model (agent/ocpp/v201/device_model.py) may appear here.
FAST_VARIABLES: dict[str, object] = {
    "OCPPCommCtrlr/RetryBackOffWaitMinimum": 1,  # redial 1 s after a lost connection, no doubling, no random
    "OCPPCommCtrlr/RetryBackOffRandomRange": 0,
    "OCPPCommCtrlr/RetryBackOffRepeatTimes": 0,
    "OCPPCommCtrlr/MessageAttemptInterval.TransactionEvent": 1,
    "SampledDataCtrlr/TxUpdatedInterval": 0,  # no periodic meter values unless a test asks for them
    "TxCtrlr/EVConnectionTimeOut": 30,
}


class NetworkSide(Protocol):
    """What the harness needs of the 2.0.1 service (agent/ocpp/v201/service.py OcppService)."""

    async def run(self) -> None: ...

    async def stop(self) -> None: ...


def make_service(station: Station, config: AgentConfig) -> NetworkSide:
    """The 2.0.1 network side over this station, as the agent's single-process path builds it."""
    from agent.ocpp.v201.service import OcppService

    service: NetworkSide = OcppService(station, config)
    return service


def toml_value(value: object) -> str:
    """A TOML value for a preset: booleans, numbers and strings (a JSON string is a TOML basic string)."""
    if isinstance(value, bool | int | float | str):
        return json.dumps(value)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return json.dumps(list(value))
    raise TypeError(f"unsupported preset value {value!r}")


def write_config(rig: Rig, variables: Mapping[str, object], name: str = "agent201.toml") -> Path:
    """The rig's agent.toml plus an [ocpp.variables] table, as a file of its own (the rig's stays as is)."""
    text = (rig.dir / "agent.toml").read_text(encoding="utf-8")
    if variables:
        text += "\n[ocpp.variables]\n" + "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in variables.items())
    path = rig.dir / name
    path.write_text(text, encoding="utf-8")
    return path


class Agent201(InProcessAgent):
    """One agent process: Station + the 2.0.1 OcppService on the rig's devices and state directory."""

    def __init__(self, rig: Rig, variables: Mapping[str, object]) -> None:
        super().__init__(rig)
        self.variables = dict(variables)

    def config(self) -> AgentConfig:
        config = load(write_config(self.rig, {**FAST_VARIABLES, **self.variables}))
        assert config.ocpp.version == "2.0.1"
        return config

    def make_service(self, station: Station, config: AgentConfig) -> Any:
        return make_service(station, config)

    def again(self) -> Agent201:
        return Agent201(self.rig, self.variables)


class AgentProcess:
    """``cpagent run`` (both sides, as on a device) on the rig's config; ``kill()`` is a power loss."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "run", "--config", str(self.config_path), *extra],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def kill(self) -> None:
        """kill -9 of the whole agent (the supervisor's children die with it: PDEATHSIG)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def terminate(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        code = self.process.returncode
        self.process = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""


class Octt201(OcttCase):
    """What a 2.0.1 test case drives: CSMS, rig and agent."""

    agent: Agent201 | None

    def __init__(self, csms: Csms, rig: Rig) -> None:
        super().__init__(csms, rig)
        self.process: AgentProcess | None = None

    async def shutdown(self) -> None:
        await super().shutdown()
        if self.process is not None:
            self.process.kill()

    # -- the agent --------------------------------------------------------------------------------

    async def start_agent(self, variables: Mapping[str, object] | None = None) -> Agent201:
        self.agent = Agent201(self.rig, variables or {})
        await self.agent.start()
        return self.agent

    def start_process(self, variables: Mapping[str, object] | None = None, *extra: str) -> AgentProcess:
        """``cpagent run`` as its own processes (the two-process agent) on this rig."""
        path = write_config(self.rig, {**FAST_VARIABLES, **(variables or {})}, "agent201-process.toml")
        if self.process is None:
            self.process = AgentProcess(path, self.rig.dir / "agent-process.log")
        self.process.config_path = path
        self.process.start(*extra)
        return self.process

    # -- the CSMS ---------------------------------------------------------------------------------

    async def send(self, action: str, payload: Mapping[str, Any], *, validate: bool = True) -> dict[str, Any]:
        """A CSMS -> station CALL (2.0.1, camelCase as on the wire); raises CsmsCallError on CALLERROR."""
        return await self.csms.send(CP, action, payload, validate=validate)

    async def wait_status(
        self, status: str, evse_id: int = 1, connector_id: int = 1, within: float = 8.0, count: int = 1
    ) -> Received:
        """The count-th StatusNotification with this connectorStatus for this EVSE/connector."""

        def found() -> Received | None:
            matches = [m for m in self.msgs("StatusNotification")
                       if m.payload.get("evseId") == evse_id and m.payload.get("connectorId") == connector_id
                       and m.payload.get("connectorStatus") == status]
            return matches[count - 1] if len(matches) >= count else None

        result: Received = await eventually(
            found, within, f"StatusNotification {status} on EVSE {evse_id} connector {connector_id}")
        return result

    def tx_events(self, transaction_id: str | None = None) -> list[dict[str, Any]]:
        """TransactionEvent payloads as received (optionally of one transaction), in arrival order."""
        return [m.payload for m in self.msgs("TransactionEvent")
                if transaction_id is None or m.payload["transactionInfo"]["transactionId"] == transaction_id]

    def transaction_ids(self) -> list[str]:
        """The station-generated transactionIds in the order their first event arrived."""
        seen: dict[str, None] = {}
        for payload in self.tx_events():
            seen.setdefault(payload["transactionInfo"]["transactionId"], None)
        return list(seen)

    async def wait_tx_event(self, event_type: str, *, within: float = 8.0, count: int = 1,
                            where: Callable[[dict[str, Any]], bool] = lambda _: True) -> dict[str, Any]:
        """The count-th TransactionEvent of this eventType (Started/Updated/Ended) matching ``where``."""

        def found() -> dict[str, Any] | None:
            matches = [p for p in self.tx_events() if p["eventType"] == event_type and where(p)]
            return matches[count - 1] if len(matches) >= count else None

        result: dict[str, Any] = await eventually(found, within, f"TransactionEvent {event_type}")
        return result

    async def wait_charging_state(self, state: str, within: float = 8.0) -> dict[str, Any]:
        """The first TransactionEvent reporting transactionInfo.chargingState == state."""

        def found() -> dict[str, Any] | None:
            return next((p for p in self.tx_events() if p["transactionInfo"].get("chargingState") == state), None)

        result: dict[str, Any] = await eventually(found, within, f"chargingState {state}")
        return result

    async def plugged(self, connector_id: int = 1) -> None:
        """Plug the EV in and wait until the station sees it."""
        self.ctl("plug", connector=connector_id)
        assert self.agent is not None and self.agent.station is not None
        station = self.agent.station
        await eventually(lambda: station.connectors[connector_id].controller.cp_state is not None
                         and station.connectors[connector_id].controller.cp_state.ev_connected,
                         what="EV connected")

    async def charging(self, id_token: str = TAG) -> dict[str, Any]:
        """Plug in, present a card, wait for chargingState Charging; return the Started event."""
        assert self.agent is not None
        await self.plugged()
        decision = await self.agent.tap(id_token)
        assert decision.accepted
        await self.wait_charging_state("Charging")
        return await self.wait_tx_event("Started")


def new_csms() -> Csms:
    return Csms(accept=[TAG, TAG2], heartbeat_interval=300, version="2.0.1")


@contextlib.asynccontextmanager
async def octt_on(directory: Path, csms: Csms, **rig_options: Any) -> AsyncIterator[Octt201]:
    """The harness on a rig in ``directory`` (``rig_options``: more RigOptions) against a started CSMS (for
    fixtures outside this directory)."""
    options = RigOptions(directory=directory, csms_url=csms.url, charge_point_id=CP, ocpp_version="2.0.1",
                         **rig_options)
    async with harness_on(Octt201, csms, options) as harness:
        yield harness


@pytest.fixture
async def csms() -> AsyncIterator[Csms]:
    server = new_csms()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def octt(tmp_path: Path, csms: Csms) -> AsyncIterator[Octt201]:
    async with octt_on(tmp_path, csms) as harness:
        yield harness
