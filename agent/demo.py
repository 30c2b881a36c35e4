"""`cpagent sim` / `make demo`: start the simulator as its own process (real ptys and Modbus between
the two), run the agent against it, play plug -> tap card -> charge -> unplug, and print a timeline
a person can read. Exit 0 only if the session completed with energy > 0."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.config import load
from agent.events import SessionStarted, SessionStopped, StationEvent, StatusChanged, TokenPresented
from agent.station import Station, mask

DEMO_TAG = "DEADBEEF01"


class Timeline:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def line(self, text: str) -> None:
        print(f"{time.monotonic() - self.t0:7.2f}s  {text}", flush=True)


async def _ctl(directory: Path, **request: Any) -> dict[str, Any]:
    from simulator.control import send_async

    return await send_async(directory, request)


async def _wait_for(predicate: Any, limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def run_demo(connectors: int, charge_seconds: float, keep_dir: Path | None) -> int:
    with contextlib.ExitStack() as stack:
        directory = keep_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cpagent-sim-")))
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "agent.toml").unlink(missing_ok=True)
        sim = subprocess.Popen(  # noqa: ASYNC220 - started once, before the agent runs
            [sys.executable, "-m", "simulator.cli", "up", "--dir", str(directory), "--connectors", str(connectors),
             "--no-csms"],
            stdout=subprocess.DEVNULL,
        )
        try:
            return await _play(directory, charge_seconds, sim)
        finally:
            sim.terminate()
            try:
                sim.wait(timeout=10)
            except subprocess.TimeoutExpired:
                sim.kill()


async def _play(directory: Path, charge_seconds: float, sim: subprocess.Popen[bytes]) -> int:
    tl = Timeline()
    await _wait_for(lambda: (directory / "agent.toml").exists() or sim.poll() is not None, 20, "the simulator")
    if sim.poll() is not None:
        print("simulator failed to start", file=sys.stderr)
        return 1
    config = load(directory / "agent.toml")
    station = Station(config)
    stopped: list[SessionStopped] = []
    started: list[SessionStarted] = []

    def on_event(event: StationEvent) -> None:
        if isinstance(event, StatusChanged):
            faults = f" faults={','.join(sorted(f.value for f in event.faults))}" if event.faults else ""
            tl.line(f"connector {event.connector_id} status -> {event.status.value}{faults}")
        elif isinstance(event, SessionStarted):
            started.append(event)
            tl.line(f"connector {event.connector_id} session started for {mask(event.session.id_tag)} "
                    f"at {event.session.start_energy_wh:.1f} Wh")
        elif isinstance(event, SessionStopped):
            stopped.append(event)
            tl.line(f"connector {event.connector_id} session stopped ({event.reason.value})")
        elif isinstance(event, TokenPresented):
            verdict = "accepted" if event.accepted else "rejected"
            tl.line(f"card {mask(event.id_tag)} {verdict} at connector {event.connector_id}")

    station.subscribe(on_event)
    task = asyncio.create_task(station.run())
    connector = station.connectors[1]
    last_line = ""

    async def sampler() -> None:
        nonlocal last_line
        while True:
            c = connector.controller
            duty = c.duty_percent
            pwm = "X1" if duty is None else ("F" if duty == 0 else f"{duty:.1f}%")
            relay = "closed" if c.relay_feedback_closed else "open"
            sample = connector.last_sample
            power = sample.power_w if sample else 0.0
            energy = connector.session_energy_wh()
            cp = c.cp_state.value if c.cp_state else "?"
            text = (f"CP={cp:3} PWM={pwm:>6} ({c.offered_current_a:.0f} A) relay={relay:6} "
                    f"power={power / 1000:6.2f} kW  session energy={energy:7.1f} Wh")
            if text != last_line:
                tl.line(text)
                last_line = text
            await asyncio.sleep(1.0)

    sample_task = asyncio.create_task(sampler())
    try:
        await _wait_for(lambda: connector.controller.cp_state is not None, 10, "the pilot board")
        tl.line("scenario: plug in the EV")
        await _ctl(directory, cmd="plug", connector=1)
        await _wait_for(lambda: connector.controller.cp_state is not None
                        and connector.controller.cp_state.ev_connected, 5, "EV connected")
        tl.line(f"scenario: tap card {mask(DEMO_TAG)}")
        await _ctl(directory, cmd="tap", id_tag=DEMO_TAG)
        await _wait_for(lambda: connector.controller.relay_feedback_closed is True, 15, "the contactor to close")
        tl.line(f"scenario: charging for {charge_seconds:.0f} s")
        await asyncio.sleep(charge_seconds)
        tl.line("scenario: unplug the EV")
        await _ctl(directory, cmd="unplug", connector=1)
        await _wait_for(lambda: bool(stopped), 10, "the session to stop")
        await asyncio.sleep(0.5)
    except TimeoutError as exc:
        tl.line(f"FAILED: {exc}")
    finally:
        sample_task.cancel()
        task.cancel()
        await asyncio.gather(task, sample_task, return_exceptions=True)
        station.close()
    if not stopped:
        print("no session completed", file=sys.stderr)
        return 1
    s = stopped[-1].session
    summary = {
        "session": s.ref,
        "id_tag": mask(s.id_tag),
        "duration_s": round((s.stop_wall or s.start_wall) - s.start_wall, 1),
        "energy_wh": round(s.energy_wh, 1),
        "start_meter_wh": round(s.start_energy_wh, 1),
        "stop_meter_wh": round(s.stop_energy_wh or 0.0, 1),
        "stop_reason": s.stop_reason,
    }
    print("\nsession summary: " + json.dumps(summary, indent=2))
    return 0 if s.energy_wh > 0 else 1
