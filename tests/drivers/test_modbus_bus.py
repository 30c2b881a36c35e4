"""Several RTU meters on one pty (one RS-485 line): one scheduler, one request at a time, each meter at its
own poll period; the emulator answers several device ids on that pty."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from drivers.modbus.bus import BusReader, SharedRtuBus
from drivers.modbus.meter import ModbusMeter, create
from drivers.modbus.transport import ModbusIOError, RtuLink
from hal import DeviceFaultChanged, Fault, HalEvent
from simulator.meter import MeterEmulator, RtuBusEmulator
from simulator.physics import Plant
from tests.drivers.helpers import wait_for


def make_plant(energy_wh: float, current_a: float) -> Plant:
    plant = Plant()
    plant.plugged = True
    plant.relay_commanded_closed = True
    plant.current_a = current_a
    plant.energy_wh = energy_wh
    return plant


MODELS = {1: "sdm630", 2: "abb_b23", 3: "em340"}


@pytest.fixture
async def line() -> AsyncIterator[tuple[RtuBusEmulator, dict[int, MeterEmulator], dict[int, ModbusMeter]]]:
    bus = RtuBusEmulator()
    emulators = {n: MeterEmulator(make_plant(10_000.0 * n, 6.0 * n), model, device_id=n, transport="rtu", bus=bus)
                 for n, model in MODELS.items()}  # fmt: skip
    for emulator in emulators.values():
        await emulator.start()
    assert len({e.port_path for e in emulators.values()}) == 1, "one pty for every meter"
    periods = {1: 0.05, 2: 0.15, 3: 0.15}
    meters = {
        n: create(f"meter{n}", {"model": model, "transport": "rtu", "serial_port": bus.port_path, "device_id": n,
                                "poll_interval_s": periods[n], "timeout_s": 0.3})
        for n, model in MODELS.items()
    }  # fmt: skip
    tasks = [asyncio.create_task(m.run()) for m in meters.values()]
    try:
        yield bus, emulators, meters
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for emulator in emulators.values():
            await emulator.stop()


async def test_meters_share_one_bus_and_each_reads_its_own_plant(line: Any) -> None:
    bus, _, meters = line
    readers = [m.reader for m in meters.values()]
    assert all(isinstance(r, BusReader) for r in readers) and len({id(r.bus) for r in readers}) == 1
    await wait_for(lambda: all(m.counters()["polls_ok"] >= 3 for m in meters.values()))
    for n, meter in meters.items():
        sample = meter.latest
        assert sample is not None
        assert sample.energy_import_wh == pytest.approx(10_000.0 * n, abs=100.0)
        assert sample.current_a[0] == pytest.approx(6.0 * n)
    assert all(m.counters()["polls_failed"] == 0 for m in meters.values()), "no garbled or lost frame"
    shared: SharedRtuBus = readers[0].bus
    assert shared.stats.failed == 0 and shared.stats.frames >= 9
    assert bus.frames_seen >= shared.stats.frames - 3  # the last requests may still be in flight
    # Meter 1 polls every 50 ms, the others every 150 ms: each keeps its own period.
    assert meters[1].counters()["polls_ok"] > 1.5 * meters[2].counters()["polls_ok"]


async def test_a_silent_meter_does_not_stop_the_others(line: Any) -> None:
    _, emulators, meters = line
    await wait_for(lambda: all(m.latest is not None for m in meters.values()))
    faults: list[tuple[Fault, bool]] = []

    def record(event: HalEvent) -> None:
        if isinstance(event, DeviceFaultChanged):
            faults.append((event.fault, event.active))

    meters[2].subscribe(record)
    emulators[2].silent = True  # no answer at all, as an RS-485 slave that lost power
    await wait_for(lambda: (Fault.METER_SILENT, True) in faults)
    before = {n: meters[n].counters()["polls_ok"] for n in (1, 3)}
    await wait_for(lambda: all(meters[n].counters()["polls_ok"] >= before[n] + 3 for n in (1, 3)))
    assert meters[1].latest is not None and meters[3].latest is not None and meters[2].latest is None
    emulators[2].silent = False
    await wait_for(lambda: (Fault.METER_SILENT, False) in faults)


async def test_bus_closes_the_port_when_the_last_meter_stops() -> None:
    bus_emulator = RtuBusEmulator()
    emulator = MeterEmulator(make_plant(1000.0, 0.0), transport="rtu", bus=bus_emulator)
    async with emulator:
        bus = SharedRtuBus(RtuLink(str(bus_emulator.port_path)))
        first, second = bus.reader(1, 0.3), bus.reader(1, 0.3)
        await first.connect()
        await second.connect()
        assert len(await first.read(4, 0x48, 2)) == 2
        first.close()
        assert second.connected and bus.in_use
        second.close()
        assert not bus.in_use
        await asyncio.sleep(0)
        assert not bus.connected
        with pytest.raises(ModbusIOError, match="not connected"):
            await second.read(4, 0x48, 2)


async def test_scheduler_runs_requests_strictly_one_at_a_time() -> None:
    bus = SharedRtuBus(RtuLink("/dev/null-bus"))
    active: list[int] = []
    overlaps = 0
    order: list[int] = []

    def job(n: int) -> Any:
        async def run(_: object) -> int:
            nonlocal overlaps
            overlaps += bool(active)
            active.append(n)
            await asyncio.sleep(0.005)  # a frame in flight: other submitters are waiting meanwhile
            await asyncio.sleep(0)
            active.remove(n)
            order.append(n)
            return n

        return run

    results = await asyncio.gather(*(bus.submit(job(n)) for n in range(20)))
    assert results == list(range(20)) and order == list(range(20)) and overlaps == 0

    # A caller that gives up while queued is skipped; one that gives up mid-frame does not cut the frame.
    slow = asyncio.create_task(bus.submit(job(100)))
    queued = asyncio.create_task(bus.submit(job(101)))
    await asyncio.sleep(0.001)
    slow.cancel()
    queued.cancel()
    assert await bus.submit(job(102)) == 102
    assert order[-2:] == [100, 102] and overlaps == 0


async def test_a_failing_job_fails_only_its_caller() -> None:
    bus = SharedRtuBus(RtuLink("/dev/null-bus"))

    async def broken(_: object) -> None:
        raise ModbusIOError("no answer")

    async def fine(_: object) -> str:
        return "ok"

    outcome = await asyncio.gather(bus.submit(broken), bus.submit(fine), return_exceptions=True)
    assert isinstance(outcome[0], ModbusIOError) and outcome[1] == "ok"
