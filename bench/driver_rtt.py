"""Frame round-trip time of each board/reader driver against its emulator: the driver writes a command
frame, the emulator answers on the same bus, and the driver raises the resulting HAL event. Everything
runs over the real transports (pty serial, python-can virtual bus). Meter round trips are in
bench/meter_bus.py.

- pilot-board-serial / pilot-board-can: close_relay() -> RelayFeedback(closed) and back (mirror contact)
- openevse: set_f() ($FD) -> PilotStateChanged(F) and set_x1() ($FS) -> PilotStateChanged(A) via $AT
- pn532: a card placed in the field -> IdToken (bounded by the 0.25 s poll interval, by design)
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from drivers.can.pilot_board import CanPilotBoard
from drivers.serial.openevse import OpenEvse
from drivers.serial.pilot_board import PilotBoard
from drivers.serial.pn532 import Pn532Reader
from hal.types import CpState, HalEvent, PilotStateChanged, RelayFeedback
from simulator.can_pilot_board import CanPilotBoardEmulator
from simulator.openevse import OpenEvseEmulator
from simulator.physics import Plant
from simulator.pilot_board import PilotBoardEmulator
from simulator.pn532 import Pn532Emulator

N = 200


async def _until(predicate: Callable[[], bool], limit_s: float = 5.0) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("no answer")
        await asyncio.sleep(0)


async def _round_trips(
    device: Any, command: Callable[[int], None], matches: Callable[[HalEvent, int], bool]
) -> list[float]:
    seen: list[tuple[float, HalEvent]] = []
    device.subscribe(lambda e: seen.append((time.perf_counter(), e)))
    out: list[float] = []
    for i in range(N):
        mark = len(seen)
        t0 = time.perf_counter()
        command(i)
        await _until(lambda mark=mark, i=i: any(matches(e, i) for _, e in seen[mark:]))
        t1 = next(t for t, e in seen[mark:] if matches(e, i))
        out.append((t1 - t0) * 1000)
        await asyncio.sleep(0.005)
    return out


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50_ms": round(statistics.median(ordered), 3),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 3),
            "max_ms": round(ordered[-1], 3)}


async def _with(tasks: list[asyncio.Task[Any]], body: Any) -> Any:
    try:
        return await body
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def serial_pilot() -> dict[str, float]:
    emu = PilotBoardEmulator(Plant())
    tasks = [asyncio.create_task(emu.run())]
    await _until(lambda: emu.port_path is not None)
    board = PilotBoard("b", emu.port_path)
    tasks.append(asyncio.create_task(board.run()))
    await _until(lambda: board.cp_state is not None)

    def cmd(i: int) -> None:
        (board.close_relay if i % 2 == 0 else board.open_relay)()

    return _stats(await _with(tasks, _round_trips(board, cmd, lambda e, i: e == RelayFeedback(i % 2 == 0))))


async def can_pilot() -> dict[str, float]:
    channel = f"bench-{uuid.uuid4().hex}"
    emu = CanPilotBoardEmulator(Plant(), channel=channel, node_id=1)
    board = CanPilotBoard("b", interface="virtual", channel=channel, node_id=1)
    tasks = [asyncio.create_task(emu.run()), asyncio.create_task(board.run())]
    await _until(lambda: board.cp_state is not None)

    def cmd(i: int) -> None:
        (board.close_relay if i % 2 == 0 else board.open_relay)()

    return _stats(await _with(tasks, _round_trips(board, cmd, lambda e, i: e == RelayFeedback(i % 2 == 0))))


async def openevse() -> dict[str, float]:
    emu = OpenEvseEmulator(Plant())
    tasks = [asyncio.create_task(emu.run())]
    await _until(lambda: emu.port_path is not None)
    board = OpenEvse("e", emu.port_path)
    tasks.append(asyncio.create_task(board.run()))
    await _until(lambda: board.cp_state is not None)

    def cmd(i: int) -> None:
        (board.set_f if i % 2 == 0 else board.set_x1)()

    want = {0: CpState.F, 1: CpState.A}
    return _stats(await _with(tasks, _round_trips(
        board, cmd, lambda e, i: isinstance(e, PilotStateChanged) and e.state is want[i % 2])))


async def pn532() -> dict[str, float]:
    emu = Pn532Emulator()
    tasks = [asyncio.create_task(emu.run())]
    await _until(lambda: emu.port_path is not None)
    reader = Pn532Reader("r", emu.port_path, repeat_suppress_s=0.0)
    tasks.append(asyncio.create_task(reader.run()))
    out: list[float] = []

    async def body() -> list[float]:
        tokens = reader.tokens()
        await asyncio.sleep(0.5)
        for i in range(40):
            uid = f"{0x04A10000 + i:08X}"
            t0 = time.perf_counter()
            emu.tap(uid, hold_s=0.6)
            while (await anext(tokens)).uid != uid:
                pass
            out.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(0.7)
        return out

    return _stats(await _with(tasks, body()))


async def main() -> dict[str, object]:
    result: dict[str, object] = {"n": N}
    for name, fn in (("pilot_serial", serial_pilot), ("pilot_can", can_pilot), ("openevse", openevse),
                     ("pn532_tap_to_token", pn532)):
        for key, value in (await fn()).items():
            result[f"{name}_{key}"] = value
    # The emulated boards report relay/state changes on their 10 ms tick, so p99 includes up to one tick.
    result["goals"] = {"pilot_serial_p99_ms": "<= 15", "pilot_can_p99_ms": "<= 15", "openevse_p99_ms": "<= 50",
                       "pn532_tap_to_token_p99_ms": "<= 500"}
    result["notes"] = "emulators answer on a 10 ms tick; PN532 is polled every 250 ms by design"
    return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
