"""Safety latency: time from the board's state-change frame (C->B, ->A, E, F, RCD) written on the pty to
the agent's relay-open command frame read back, over >= 1000 events, while each connector's meter is
polled at 1 Hz over Modbus TCP. The agent runs as its own process with the real drivers; this process
plays the boards (byte-exact pilot-board protocol on ptys) and serves the meters.

Prints JSON: p50/p99/max in ms, overall and per event kind. Goal: p99 <= 5 ms, max <= 20 ms (IEC: 100 ms).

``--hostile``: the same events while a hostile CSMS on 127.0.0.1 (bench/_hostile_csms.py, its own process)
keeps the agent's network side busy: largest composite schedules, frames just under the 64 KiB cap and
1 MB ones (reconnects), TriggerMessage up to 1000/s, SendLocalList of the maximum size, GetDiagnostics
uploads over HTTP and FTP. The agent (bench/_hostile_agent.py) runs the OCPP service as `cpagent run`
does. Same JSON, plus the load the CSMS achieved and the agent's event-loop lag; a relay that does not
open within 5 s is counted (relay_open_timeouts) and its sample is the time waited. The events stop
at HOSTILE_DEADLINE_S (completed: false then) so that the run stays under 6 minutes.
``HOSTILE_BUDGET_MS_PER_S=N`` sets the agent's [ocpp] request_budget_ms_per_s (1000: no budget; default 250).
``--events N`` overrides LATENCY_EVENTS (for trying it out); HOSTILE_LANES=triggers,frames,... runs only
those parts of the hostile load (composite, frames, triggers, local_list, diagnostics; empty: none).
``--hostile --ocpp 2.0.1`` (issue 14): the agent speaks OCPP 2.0.1 to bench/_hostile_csms201.py, which
installs the most charging profiles the agent allows and asks back to back for the largest
GetCompositeSchedule, GetChargingProfiles (-> ReportChargingProfiles) and GetBaseReport FullInventory
(-> NotifyReport); their times are in the same JSON (lanes composite, profiles, base_report).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import tty
from pathlib import Path

from drivers.serial.pilot_codec import (
    DUTY_F,
    DUTY_X1,
    CpStateReport,
    FaultReport,
    FrameDecoder,
    Hello,
    ProximityReport,
    RelayReport,
    Sender,
    SetDuty,
    SetRelay,
    StatusRequest,
    encode,
)
from hal.types import CpState, Fault
from simulator.meter import MeterEmulator
from simulator.physics import Plant

EVENTS = int(os.environ.get("LATENCY_EVENTS", "1000"))
CONNECTORS = int(os.environ.get("LATENCY_CONNECTORS", "6"))
KINDS = ("C->B", "->A", "E", "F", "RCD")
TAG = "BENCH00001"
HOSTILE_DEADLINE_S = 340.0


class BoardPlayer:
    """One pilot board, played by hand: reports exactly what the event schedule says."""

    def __init__(self, n: int) -> None:
        self.n = n
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        self.fd = master
        self._slave = slave
        self.path = os.ttyname(slave)
        os.set_blocking(master, False)
        self.decoder = FrameDecoder(Sender.HOST)
        self.seq = 0
        self.cp = CpState.A
        self.plugged = False
        self.faults: frozenset[Fault] = frozenset()
        self.relay = False
        self.duty: int | None = DUTY_X1
        self.relay_changed = asyncio.Event()
        self.duty_changed = asyncio.Event()
        self.trip_t0: float | None = None
        self.samples: list[tuple[str, float]] = []
        self.kind = ""

    def send(self, *messages: object) -> None:
        data = b"".join(encode(m, seq=self._next()) for m in messages)  # type: ignore[arg-type]
        os.write(self.fd, data)

    def _next(self) -> int:
        self.seq = (self.seq + 1) & 0xFF
        return self.seq

    def status(self) -> None:
        pp = ProximityReport(220, 32) if self.plugged else ProximityReport(None, None)
        self.send(CpStateReport(self.cp), pp, RelayReport(self.relay, self.relay), FaultReport(self.faults))

    def on_readable(self) -> None:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        now = time.perf_counter()
        for m in self.decoder.feed(data):
            if isinstance(m, SetRelay):
                if not m.close and self.trip_t0 is not None:
                    self.samples.append((self.kind, (now - self.trip_t0) * 1000.0))
                    self.trip_t0 = None
                self.relay = m.close
                self.send(RelayReport(self.relay, self.relay))  # mirror contact follows at once
                self.relay_changed.set()
            elif isinstance(m, SetDuty):
                self.duty = m.duty
                self.duty_changed.set()
                if self.cp.letter in "BCD":  # like a real board: the digit follows our own PWM
                    self.set_cp(self.cp.letter)
            elif isinstance(m, StatusRequest):
                self.send(Hello(1, 0, 0, 1, 2000, 250))
                self.status()

    @property
    def pwm(self) -> bool:
        return self.duty is not None and self.duty not in (DUTY_X1, DUTY_F)

    def set_cp(self, letter: str) -> None:
        self.cp = CpState(letter if letter in "AEF" else f"{letter}{2 if self.pwm else 1}")
        self.send(CpStateReport(self.cp))

    async def wait(self, predicate: object, limit_s: float = 20.0) -> None:
        deadline = time.monotonic() + limit_s
        while not predicate():  # type: ignore[operator]
            if time.monotonic() > deadline:
                raise TimeoutError(f"board {self.n}: timed out (cp={self.cp} duty={self.duty} relay={self.relay})")
            await asyncio.sleep(0.005)

    async def heartbeat(self) -> None:
        while True:
            self.status()
            await asyncio.sleep(0.2)

    async def charging(self) -> None:
        """Bring the connector to C2 with the relay closed."""
        if self.faults:
            self.faults = frozenset()
            self.send(FaultReport(self.faults))
        if not self.plugged:
            self.plugged = True
            self.status()
        if self.cp.letter not in "BC":
            self.set_cp("B")
        await self.wait(lambda: self.pwm)
        self.set_cp("B")
        await asyncio.sleep(0.01)
        self.set_cp("C")
        await self.wait(lambda: self.relay)

    async def trip(self, kind: str) -> None:
        await asyncio.sleep(random.uniform(0.02, 0.12))
        self.kind = kind
        self.trip_t0 = time.perf_counter()
        if kind == "C->B":
            self.set_cp("B")
        elif kind == "->A":
            self.plugged = False
            self.cp = CpState.A
            self.send(CpStateReport(CpState.A))
            self.send(ProximityReport(None, None))
        elif kind == "E":
            self.set_cp("E")
        elif kind == "F":
            self.set_cp("F")
        else:
            self.faults = frozenset({Fault.RCD})
            self.send(FaultReport(self.faults))
        await self.wait(lambda: not self.relay, 5)
        if kind in ("E", "F"):
            await asyncio.sleep(0.05)
            self.set_cp("B")


async def play(board: BoardPlayer, count: int, offset: int) -> None:
    for i in range(count):
        await board.charging()
        await board.trip(KINDS[(i + offset) % len(KINDS)])


async def play_hostile(board: BoardPlayer, count: int, offset: int, stalls: list[str], timeouts: list[float]) -> None:
    """As play(), but one stuck event is recorded instead of ending the run: a session that does not
    start (stalls) is retried; a relay that does not open within 5 s keeps the time waited as its sample."""
    for i in range(count):
        try:
            await board.charging()
        except TimeoutError as exc:
            stalls.append(str(exc))
            continue
        kind = KINDS[(i + offset) % len(KINDS)]
        try:
            await board.trip(kind)
        except TimeoutError:
            if board.trip_t0 is not None:
                waited = (time.perf_counter() - board.trip_t0) * 1000.0
                board.samples.append((kind, waited))
                timeouts.append(waited)
                board.trip_t0 = None


async def run(hostile: bool = False, single_process: bool = False, ocpp: str = "1.6") -> dict[str, object]:
    loop = asyncio.get_running_loop()
    boards = [BoardPlayer(n) for n in range(1, CONNECTORS + 1)]
    meters = [MeterEmulator(Plant(), transport="tcp") for _ in boards]
    for m in meters:
        await m.start()
    with tempfile.TemporaryDirectory(prefix="cpagent-latency-") as tmp:
        lines = ['[station]', 'id = "BENCH"', f'state_dir = "{tmp}/state"', f'diag_socket = "{tmp}/diag.sock"',
                 "", "[authorization]", f'allow = ["{TAG}"]', ""]
        for b, m in zip(boards, meters, strict=True):
            lines += [f"[devices.board{b.n}]", 'driver = "pilot-board-serial"', f'port = "{b.path}"', "",
                      f"[devices.meter{b.n}]", 'driver = "modbus-meter"', 'transport = "tcp"',
                      'host = "127.0.0.1"', f"port = {m.port}", "poll_interval_s = 1.0", ""]
        for b in boards:
            lines += ["[[connectors]]", f"id = {b.n}", "max_current_a = 32", f'pilot = "board{b.n}"',
                      f'meter = "meter{b.n}"', ""]
        config = Path(tmp) / "agent.toml"
        csms: subprocess.Popen[str] | None = None
        agent_cmd = [sys.executable, str(Path(__file__).with_name("_latency_agent.py")), str(config), TAG]
        if hostile:
            csms = subprocess.Popen(  # noqa: ASYNC220 - started once, outside the measured path
                [sys.executable, str(Path(__file__).with_name(
                    "_hostile_csms201.py" if ocpp == "2.0.1" else "_hostile_csms.py")), TAG, tmp],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )
            assert csms.stdout is not None
            port = json.loads(await asyncio.to_thread(csms.stdout.readline))["port"]
            budget = os.environ.get("HOSTILE_BUDGET_MS_PER_S")  # e.g. 1000: the agent without the request budget
            lines += ["[ocpp]", f'endpoint = "ws://127.0.0.1:{port}"', "reconnect_cap_s = 2",
                      *([f"request_budget_ms_per_s = {float(budget)}"] if budget else []),
                      *([f'version = "{ocpp}"'] if ocpp == "2.0.1" else []), ""]
            agent_cmd = [sys.executable, str(Path(__file__).with_name("_hostile_agent.py")), str(config), TAG,
                         str(Path(tmp) / "lag.json"), *(["--single-process"] if single_process else [])]
        config.write_text("\n".join(lines))
        for b in boards:
            loop.add_reader(b.fd, b.on_readable)
        beats = [asyncio.create_task(b.heartbeat()) for b in boards]
        agent = subprocess.Popen(  # noqa: ASYNC220 - started once, outside the measured path
            agent_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        stalls: list[str] = []
        timeouts: list[float] = []
        completed = True
        extra: dict[str, object] = {}
        try:
            per_board = -(-EVENTS // len(boards))
            started = time.monotonic()
            if not hostile:
                await asyncio.gather(*(play(b, per_board, i) for i, b in enumerate(boards)))
            else:
                players = [asyncio.create_task(play_hostile(b, per_board, i, stalls, timeouts))
                           for i, b in enumerate(boards)]
                done, pending = await asyncio.wait(players, timeout=HOSTILE_DEADLINE_S)
                completed = not pending
                for t in pending:
                    t.cancel()
                await asyncio.gather(*players, return_exceptions=True)
                for t in done:
                    t.result()  # anything but a timeout is a bug of the bench: raise it
            elapsed = time.monotonic() - started
            if hostile:
                extra["agent_peak_rss_mb"] = peak_rss_mb(agent.pid)
        finally:
            agent.terminate()
            try:
                agent.wait(timeout=10)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
            if csms is not None:
                csms.terminate()
                out, _ = await asyncio.to_thread(csms.communicate, timeout=30)
                with contextlib.suppress(ValueError, IndexError):
                    extra.update(json.loads(out.strip().splitlines()[-1]))
                with contextlib.suppress(OSError, ValueError):
                    extra.update(json.loads((Path(tmp) / "lag.json").read_text()))
            for t in beats:
                t.cancel()
            for m in meters:
                await m.stop()
    samples = [s for b in boards for s in b.samples]
    result = summarize(samples, elapsed, sum(m.requests_served for m in meters))
    if hostile:
        mode = "hostile" if ocpp != "2.0.1" else "hostile-201"
        result = {"mode": mode, **result, "completed": completed, "sessions_not_started": len(stalls),
                  "relay_open_timeouts": len(timeouts), **extra}
    return result


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM of a process (Linux), in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(samples: list[tuple[str, float]], elapsed: float, meter_requests: int) -> dict[str, object]:
    all_ms = [ms for _, ms in samples]
    result: dict[str, object] = {
        "n": len(all_ms),
        "connectors": CONNECTORS,
        "p50_ms": round(statistics.median(all_ms), 3),
        "p99_ms": round(pct(all_ms, 0.99), 3),
        "max_ms": round(max(all_ms), 3),
        "meter_requests_served": meter_requests,
        "duration_s": round(elapsed, 1),
        "per_kind": {
            kind: {"n": len(v), "p50_ms": round(statistics.median(v), 3), "p99_ms": round(pct(v, 0.99), 3),
                   "max_ms": round(max(v), 3)}
            for kind in KINDS if (v := [ms for k, ms in samples if k == kind])
        },
        "goals": {"p99_ms": "<= 5", "max_ms": "<= 20"},
    }
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--hostile", action="store_true", help="a hostile CSMS keeps the network side busy")
    parser.add_argument("--events", type=int, help=f"number of events (default LATENCY_EVENTS or {EVENTS})")
    parser.add_argument("--ocpp", choices=("1.6", "2.0.1"), default="1.6",
                        help="with --hostile: the protocol of the agent and the hostile CSMS")
    parser.add_argument("--single-process", action="store_true",
                        help="with --hostile: the OCPP side in the control side's process and loop (the old design)")
    args = parser.parse_args()
    if args.events:
        EVENTS = args.events
    print(json.dumps(asyncio.run(run(hostile=args.hostile, single_process=args.single_process, ocpp=args.ocpp))))
