"""A whole simulated chargepoint (cpsim's Rig) and the real agent Station in one event loop: every
byte between them goes over real ptys and real Modbus TCP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.config import load
from agent.events import StationEvent
from agent.station import Station
from hal.tasks import cancel_and_wait
from simulator.rig import Rig, RigOptions


@dataclass
class Bench:
    rig: Rig
    station: Station
    task: asyncio.Task[None]
    events: list[StationEvent] = field(default_factory=list)

    async def wait_for(self, predicate: Callable[[], object], limit_s: float = 10.0, what: str = "condition") -> float:
        start = time.monotonic()
        while not predicate():
            if time.monotonic() - start > limit_s:
                raise AssertionError(f"timed out after {limit_s} s waiting for {what}")
            await asyncio.sleep(0.02)
        return time.monotonic() - start

    def ctl(self, **request: object) -> dict[str, object]:
        return self.rig.control(dict(request))


async def start_bench(directory: Path, **options: object) -> Bench:
    rig = Rig(RigOptions(directory=directory, **options))  # type: ignore[arg-type]
    await rig.start()
    station = Station(load(directory / "agent.toml"))
    bench = Bench(rig, station, asyncio.create_task(station.run()))
    station.subscribe(bench.events.append)
    c1 = station.connectors[1]
    await bench.wait_for(lambda: c1.controller.cp_state is not None, 5, "first CP state from the board")
    return bench


async def stop_bench(bench: Bench) -> None:
    await cancel_and_wait(bench.task)
    bench.station.close()
    await bench.rig.stop()


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    b = await start_bench(tmp_path / "rig")
    try:
        yield b
    finally:
        await stop_bench(b)
