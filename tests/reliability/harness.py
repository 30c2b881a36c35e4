"""Reliability harness: the real agent process (`python -m agent.cli run`), the simulator rig and the
bundled CSMS in this test's event loop, a TCP proxy between agent and CSMS to play network faults, and
the invariant checker every trial ends with.

Trial counts: reduced in `make test`, full with `make soak` (CPAGENT_SOAK=1)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from simulator.csms import Csms, Received
from simulator.rig import Rig, RigOptions
from tests.polling import eventually as eventually  # with an explicit within: trials take longer

ROOT = Path(__file__).resolve().parents[2]
SOAK = os.environ.get("CPAGENT_SOAK", "") not in ("", "0")
CP = "CPREL1"
TAG = "DEADBEEF01"
TX_ACTIONS = ("StartTransaction", "MeterValues", "StopTransaction")
# The reader driver reports a card that is still in the field once: the same UID again within
# repeat_suppress_s (2 s) of its last frame counts as held, not as a new tap (it also keeps a double tap
# from stopping the session it just started). A trial that taps the same card twice must wait longer.
TAP_SPACING_S = 2.5
FRAME_LOG = "csms-frames.jsonl"


def agent_processes(supervisor: int) -> dict[str, int]:
    """`cpagent run` (the supervisor, agent/split.py) and its sides by role: "supervisor", "control", "network"."""
    found = {"supervisor": supervisor}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == supervisor and b"agent.cli" in argv:
            for role in ("control", "network"):
                if role.encode() in argv:
                    found[role] = int(entry)
    return found


def trials(reduced: int, full: int) -> int:
    return full if SOAK else reduced


# Fast settings so that a trial takes seconds: 1 s meter values, quick retries, pings to catch half-open
# sockets, and a 1 s redial cap. MessageTimeout stays at the production default (30 s): a dead connection
# is found by the 1 s pings (the pending CALL then fails as ConnectionLost), so a short MessageTimeout only
# turns a slow answer on a loaded machine into a resend of a message the CSMS already processed.
KEYS = {
    "MeterValueSampleInterval": "1",
    "HeartbeatInterval": "300",
    "TransactionMessageRetryInterval": "1",
    "TransactionMessageAttempts": "5",
    "ConnectionTimeOut": "60",
    "MessageTimeout": "30",
    "WebSocketPingInterval": "1",
}


def write_agent_toml(directory: Path, keys: dict[str, str]) -> None:
    """The rig's agent.toml plus a 1 s redial cap and the OCPP keys above."""
    path = directory / "agent.toml"
    toml = path.read_text().replace("[ocpp]\n", "[ocpp]\nreconnect_cap_s = 1.0\n", 1)
    toml += "\n[ocpp.keys]\n" + "".join(f'{k} = "{v}"\n' for k, v in keys.items())
    path.write_text(toml)


class AgentProcess:
    """`python -m agent.cli run --config DIR/agent.toml` as a child process; kill -9 plays a power loss."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.starts = 0
        self.kills: list[Cut] = []  # every kill -9, stamped here so that no kill goes unrecorded

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
            begin = time.time()
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.kills.append(Cut("kill", begin, time.time()))
            self.proc = None

    def terminate(self) -> None:
        """SIGTERM and wait, blocking: only outside an event loop that serves the agent (the CSMS, rig and
        proxy of a World live in the test's loop and could not answer the agent's goodbye): use stop()."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None

    async def stop(self, within: float = 10.0) -> None:
        """SIGTERM, then wait for the exit without blocking the event loop, so that the CSMS, the rig and the
        proxy in this loop go on answering while the agent shuts down; SIGKILL after ``within`` seconds."""
        proc = self.proc
        if proc is None:
            return
        proc.terminate()
        if not await _exited(proc, within):
            proc.kill()
            await _exited(proc, within)
        self.proc = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


async def _exited(proc: subprocess.Popen[bytes], within: float) -> bool:
    """Poll until ``proc`` has exited (True) or ``within`` seconds passed (False), yielding to the loop."""
    deadline = time.monotonic() + within
    while proc.poll() is None:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


class FaultProxy:
    """TCP proxy agent <-> CSMS on 127.0.0.1 that can refuse dials, go silent (half-open: the sockets stay
    open but no byte passes, so only a missing pong reveals it) or cut a connection in the middle of a
    frame."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.cut_next = False
        self.cuts = 0
        self.cut_events: list[tuple[Cut, bytes]] = []  # each mid-frame cut with the chunk it destroyed
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
                    begin = time.time()
                    writer.write(chunk[: len(chunk) // 2])
                    await writer.drain()
                    for w in pair:
                        w.transport.abort()
                    self.cut_events.append((Cut("mid-frame", begin, time.time()), chunk))
                    return
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            for w in pair:
                w.transport.abort()


@dataclass(frozen=True)
class Cut:
    """A moment the test took the agent's connection away: a kill -9 or a dropped/cut/silenced connection.
    ``begin`` is stamped just before the act, ``end`` just after (wall clock, like the CSMS records)."""

    kind: str
    begin: float
    end: float


@dataclass
class World:
    """Rig + CSMS (+ optional proxy) in this loop, the agent as a process."""

    directory: Path
    rig: Rig
    csms: Csms
    agent: AgentProcess
    proxy: FaultProxy | None = None
    drops: list[Cut] = field(default_factory=list)  # connection faults the trial played (not kills)
    last_tap: float = float("-inf")  # monotonic

    async def tap(self, id_tag: str) -> None:
        """Present the card, as a new tap: no sooner than TAP_SPACING_S after the previous one."""
        await asyncio.sleep(max(0.0, self.last_tap + TAP_SPACING_S - time.monotonic()))
        self.ctl("tap", id_tag=id_tag)
        self.last_tap = time.monotonic()

    def cuts(self) -> list[Cut]:
        """Every kill and connection fault so far, in time order."""
        mid_frame = [cut for cut, _ in self.proxy.cut_events] if self.proxy else []
        return sorted([*self.agent.kills, *self.drops, *mid_frame], key=lambda c: c.begin)

    @property
    def frame_log(self) -> Path:
        return self.directory / FRAME_LOG

    def resends(self) -> Resends:
        return explain_resends(self.msgs(), self.frame_log, self.cuts(), self.destroyed_chunks())

    def destroyed_chunks(self) -> list[bytes]:
        return [chunk for _, chunk in self.proxy.cut_events] if self.proxy else []

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
                     keys: dict[str, str] | None = None, ocpp_version: str | None = None) -> World:
    """``ocpp_version`` "2.0.1": the CSMS speaks it and the agent's [ocpp] version says so."""
    os.makedirs(directory, exist_ok=True)
    # The frame log (one JSON line per frame, both ways, with time and message id) is the evidence the
    # duplicate checks read: it shows whether a CALLRESULT was sent before a kill or a drop.
    csms = Csms(accept=[TAG], heartbeat_interval=300, log_path=directory / FRAME_LOG,
                version=ocpp_version or "1.6")
    await csms.start()
    fault_proxy: FaultProxy | None = None
    url = csms.url
    if proxy:
        fault_proxy = FaultProxy(csms.port)
        await fault_proxy.start()
        url = fault_proxy.url
    rig = Rig(RigOptions(directory=directory, connectors=connectors, csms_url=url, charge_point_id=CP,
                         ocpp_version=ocpp_version))
    await rig.start()
    write_agent_toml(directory, {**KEYS, **(keys or {})})
    agent = AgentProcess(directory / "agent.toml", directory / "agent.log")
    return World(directory, rig, csms, agent, fault_proxy)


async def close_world(world: World) -> None:
    await world.agent.stop()
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


# -- at-least-once, precisely ----------------------------------------------------------------------

# An answer the CSMS wrote this shortly before a cut may still have been in flight (loopback, proxy) or
# read but not yet committed by the agent (parse + one fsync of the ack). Everything answered earlier
# reached the agent before the cut: a resend of it is a real duplicate.
IN_FLIGHT_S = 0.05


def answer_times(frame_log: Path) -> dict[str, float]:
    """unique id -> wall time the CSMS wrote its CALLRESULT/CALLERROR, from the CSMS frame log."""
    answers: dict[str, float] = {}
    for line in frame_log.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        frame = record["frame"]
        if record["dir"] == "out" and isinstance(frame, list) and len(frame) >= 2 and frame[0] in (3, 4):
            stamp = datetime.fromisoformat(record["t"].replace("Z", "+00:00")).timestamp()
            answers.setdefault(str(frame[1]), stamp)
    return answers


@dataclass
class Resends:
    """Identical resends of transaction messages, each explained by a cut or reported as a problem."""

    allowed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def explain_resends(messages: list[Received], frame_log: Path, cuts: list[Cut],
                    destroyed: Sequence[bytes] = ()) -> Resends:
    """A resend is allowed only when the first copy's CALLRESULT could not have reached the agent before
    the cut that ended the connection the first copy came on: the CSMS log shows it was never written,
    written after the cut began (or within IN_FLIGHT_S before it), or it was in the chunk a mid-frame cut
    destroyed. The cut that ended a connection: for a kill, the first one after which the CSMS had not yet
    heard the new process's BootNotification (a killed process's last frames may be read just after the
    kill); for a drop, the first one that ended after the copy arrived."""
    answers = answer_times(frame_log)
    boots = [m.at for m in messages if m.action == "BootNotification"]
    horizons: list[tuple[float, Cut]] = []
    for c in cuts:
        if c.kind == "kill":
            horizons.append((next((t for t in boots if t > c.end), float("inf")), c))
        else:
            horizons.append((c.end, c))
    result = Resends()
    first: dict[tuple[str, str], Received] = {}
    for m in messages:
        if m.action not in TX_ACTIONS:
            continue
        key = (m.action, repr(_key(m.payload)))
        original = first.setdefault(key, m)
        if original is m:
            continue
        answered = answers.get(original.unique_id)
        what = f"{m.action} {m.payload.get('transactionId', m.payload.get('timestamp'))}"
        cut = next((c for horizon, c in horizons if original.at <= horizon and c.begin <= m.at), None)
        if cut is None:
            result.problems.append(f"{what}: resent at {m.at:.3f} without a cut after the first copy")
            continue
        lost = any(original.unique_id.encode() in chunk for chunk in destroyed)
        if answered is None or answered >= cut.begin - IN_FLIGHT_S or lost:
            margin = "never answered" if answered is None else f"answered {answered - cut.begin:+.3f} s from it"
            result.allowed.append(f"{what}: {cut.kind} at {cut.begin:.3f}, first copy {margin}"
                                  f"{' (answer in the destroyed chunk)' if lost else ''}")
        else:
            result.problems.append(f"{what}: first copy answered {cut.begin - answered:.3f} s before the "
                                   f"{cut.kind} at {cut.begin:.3f}, yet resent at {m.at:.3f}")
    return result
