"""Reliability harness: the real agent process (`python -m agent.cli run`), the simulator rig and the
bundled CSMS in this test's event loop, a TCP proxy between agent and CSMS to play network faults, and
the invariant checker every trial ends with.

Trial counts: reduced in `make test`, full with `make soak` (CPAGENT_SOAK=1)."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulator.csms import Csms, Received
from simulator.rig import Rig, RigOptions

ROOT = Path(__file__).resolve().parents[2]
SOAK = os.environ.get("CPAGENT_SOAK", "") not in ("", "0")
CP = "CPREL1"
TAG = "DEADBEEF01"
TX_ACTIONS = ("StartTransaction", "MeterValues", "StopTransaction")


def trials(reduced: int, full: int) -> int:
    return full if SOAK else reduced


# Fast settings so that a trial takes seconds: 1 s meter values, quick retries, pings to catch half-open
# sockets, and a 1 s redial cap.
KEYS = {
    "MeterValueSampleInterval": "1",
    "HeartbeatInterval": "300",
    "TransactionMessageRetryInterval": "1",
    "TransactionMessageAttempts": "5",
    "ConnectionTimeOut": "60",
    "MessageTimeout": "3",
    "WebSocketPingInterval": "1",
}


def write_agent_toml(directory: Path, keys: dict[str, str]) -> None:
    """The rig's agent.toml plus a 1 s redial cap and the OCPP keys above."""
    path = directory / "agent.toml"
    toml = path.read_text().replace("[ocpp]\n", "[ocpp]\nreconnect_cap_s = 1.0\n", 1)
    toml += "\n[ocpp.keys]\n" + "".join(f'{k} = "{v}"\n' for k, v in keys.items())
    path.write_text(toml)


async def eventually(predicate: Callable[[], Any], within: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.02)


class AgentProcess:
    """`python -m agent.cli run --config DIR/agent.toml` as a child process; kill -9 plays a power loss."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.starts = 0

    def start(self) -> None:
        assert self.proc is None
        log = self.log_path.open("ab")
        self.started_at = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--config", str(self.config)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye, exactly like pulling the plug."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def terminate(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class FaultProxy:
    """TCP proxy agent <-> CSMS on 127.0.0.1 that can refuse dials, go silent (half-open: the sockets stay
    open but no byte passes, so only a missing pong reveals it) or cut a connection in the middle of a
    frame."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.cut_next = False
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._silent: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def refuse(self) -> None:
        """Close the listener (dials get ECONNREFUSED) and abort every connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        self.abort_all()

    async def refuse_new(self) -> None:
        """Close the listener only: current connections carry on (or stay silent)."""
        if self._server is not None:
            self._server.close()
            self._server = None

    async def accept_again(self) -> None:
        while self._server is None:
            try:
                await self.start()
            except OSError:
                await asyncio.sleep(0.2)

    def silence_current(self) -> None:
        """Half-open: every current connection stops passing bytes, without closing."""
        self._silent |= self._pairs

    def abort_all(self) -> None:
        for a, b in list(self._pairs):
            a.transport.abort()
            b.transport.abort()
        self._pairs.clear()

    async def stop(self) -> None:
        await self.refuse()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        await asyncio.gather(
            self._pump(reader, up_writer, pair, downstream=False),
            self._pump(up_reader, writer, pair, downstream=True),
            return_exceptions=True,
        )
        self._pairs.discard(pair)
        self._silent.discard(pair)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter], *, downstream: bool) -> None:
        try:
            while chunk := await reader.read(65536):
                if pair in self._silent:
                    continue  # half-open: swallow everything, close nothing
                if downstream and self.cut_next and len(chunk) > 2:
                    self.cut_next = False
                    self.cuts += 1
                    writer.write(chunk[: len(chunk) // 2])
                    await writer.drain()
                    for w in pair:
                        w.transport.abort()
                    return
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            for w in pair:
                w.transport.abort()


@dataclass
class World:
    """Rig + CSMS (+ optional proxy) in this loop, the agent as a process."""

    directory: Path
    rig: Rig
    csms: Csms
    agent: AgentProcess
    proxy: FaultProxy | None = None

    def ctl(self, cmd: str, **args: Any) -> dict[str, Any]:
        return self.rig.control({"cmd": cmd, **args})

    def msgs(self, action: str | None = None) -> list[Received]:
        return self.csms.messages(CP, action)

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.agent.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def plug_state(self, connector: int = 1) -> dict[str, Any]:
        state: dict[str, Any] = self.rig.state()["connectors"][str(connector)]
        return state


async def open_world(directory: Path, *, connectors: int = 1, proxy: bool = False,
                     keys: dict[str, str] | None = None) -> World:
    csms = Csms(accept=[TAG], heartbeat_interval=300)
    await csms.start()
    fault_proxy: FaultProxy | None = None
    url = csms.url
    if proxy:
        fault_proxy = FaultProxy(csms.port)
        await fault_proxy.start()
        url = fault_proxy.url
    rig = Rig(RigOptions(directory=directory, connectors=connectors, csms_url=url, charge_point_id=CP))
    await rig.start()
    write_agent_toml(directory, {**KEYS, **(keys or {})})
    agent = AgentProcess(directory / "agent.toml", directory / "agent.log")
    return World(directory, rig, csms, agent, fault_proxy)


async def close_world(world: World) -> None:
    world.agent.terminate()
    if world.proxy is not None:
        await world.proxy.stop()
    await world.rig.stop()
    await world.csms.stop()


# -- invariants ------------------------------------------------------------------------------------


@dataclass
class Verdict:
    """What the CSMS saw, per charging session (a session = one distinct StartTransaction payload)."""

    sessions: int = 0
    duplicate_starts: int = 0  # byte-identical resends (at-least-once window), detectable by payload
    duplicate_stops: int = 0
    duplicate_meter_values: int = 0
    problems: list[str] = field(default_factory=list)


def _key(payload: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted((k, repr(v)) for k, v in payload.items()))


def check(messages: list[Received], *, expect_sessions: int | None = None) -> Verdict:
    """Every session: >= 1 identical Start (duplicates only as exact copies), exactly one distinct Stop,
    everything in between carrying a transactionId the CSMS gave that session (never -1), energy monotonic,
    and nothing after its Stop."""
    verdict = Verdict()
    starts: dict[tuple[Any, ...], list[Received]] = defaultdict(list)
    order: list[tuple[Any, ...]] = []
    for m in messages:
        if m.action == "StartTransaction":
            k = _key(m.payload)
            if k not in starts:
                order.append(k)
            starts[k].append(m)
    verdict.sessions = len(order)
    verdict.duplicate_starts = sum(len(v) - 1 for v in starts.values())
    # The CSMS numbers transactions 1, 2, ... in the order it received the Starts.
    start_msgs = [m for m in messages if m.action == "StartTransaction"]
    tid_session = {i + 1: _key(m.payload) for i, m in enumerate(start_msgs)}
    stops: dict[tuple[Any, ...], list[Received]] = defaultdict(list)
    meters: dict[tuple[Any, ...], list[Received]] = defaultdict(list)
    seen_mv: set[tuple[Any, ...]] = set()
    for m in messages:
        if m.action not in ("MeterValues", "StopTransaction"):
            continue
        tid = m.payload.get("transactionId")
        if m.action == "MeterValues" and tid is None:
            continue  # not transaction-related
        if tid == -1 or tid not in tid_session:
            verdict.problems.append(f"{m.action} with transactionId {tid} (known: {sorted(tid_session)})")
            continue
        session = tid_session[tid]
        if m.action == "StopTransaction":
            stops[session].append(m)
        else:
            mk = _key(m.payload)
            if mk in seen_mv:
                verdict.duplicate_meter_values += 1
            seen_mv.add(mk)
            if stops[session]:
                verdict.problems.append(f"MeterValues after the Stop of transaction {tid}")
            stamp = m.payload["meterValue"][0]["timestamp"]
            if meters[session] and stamp < meters[session][-1].payload["meterValue"][0]["timestamp"]:
                verdict.problems.append(f"MeterValues of transaction {tid} out of order at {stamp}")
            meters[session].append(m)
    for session in order:
        start = starts[session][0].payload
        session_stops = stops.get(session, [])
        distinct = {_key(s.payload) for s in session_stops}
        if len(distinct) != 1:
            verdict.problems.append(f"session {start['timestamp']}: {len(distinct)} distinct StopTransactions")
            continue
        verdict.duplicate_stops += len(session_stops) - 1
        stop = session_stops[0].payload
        energy = [float(start["meterStart"])]
        for mv in meters.get(session, []):
            for value in mv.payload["meterValue"]:
                for sv in value["sampledValue"]:
                    if sv.get("measurand", "Energy.Active.Import.Register") == "Energy.Active.Import.Register":
                        scale = 1000.0 if sv.get("unit") == "kWh" else 1.0
                        energy.append(float(sv["value"]) * scale)
        energy.append(float(stop["meterStop"]))
        if any(b < a - 1.0 for a, b in itertools.pairwise(energy)):
            verdict.problems.append(f"session {start['timestamp']}: energy not monotonic: {energy}")
    if expect_sessions is not None and verdict.sessions != expect_sessions:
        verdict.problems.append(f"{verdict.sessions} sessions at the CSMS, expected {expect_sessions}")
    return verdict
