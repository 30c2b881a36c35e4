"""The meter driver against the meter emulator over real Modbus frames: TCP on 127.0.0.1 and RTU on a pty."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from drivers.modbus.meter import ModbusMeter, create
from drivers.modbus.transport import ModbusIOError, PymodbusReader, RtuLink
from hal import DeviceFaultChanged, Fault, HalEvent, MeterSample
from simulator.meter import MeterEmulator
from simulator.physics import Plant
from tests.drivers.helpers import wait_for


@dataclass
class Recorder:
    events: list[tuple[float, HalEvent]] = field(default_factory=list)

    def __call__(self, event: HalEvent) -> None:
        self.events.append((time.monotonic(), event))

    def samples(self) -> list[MeterSample]:
        return [e for _, e in self.events if isinstance(e, MeterSample)]

    def faults(self) -> list[tuple[Fault, bool]]:
        return [(e.fault, e.active) for _, e in self.events if isinstance(e, DeviceFaultChanged)]


@pytest.fixture
def plant() -> Plant:
    plant = Plant()
    plant.plugged = True
    plant.relay_commanded_closed = True
    plant.current_a = 16.0
    plant.energy_wh = 12_345.0
    return plant


@pytest.fixture(params=["tcp", "rtu"])
async def link(request: pytest.FixtureRequest, plant: Plant) -> AsyncIterator[tuple[MeterEmulator, ModbusMeter]]:
    async with MeterEmulator(plant) as emulator:
        settings: dict[str, Any] = {"poll_interval_s": 0.1, "timeout_s": 0.3}
        if request.param == "tcp":
            settings.update(transport="tcp", host="127.0.0.1", port=emulator.tcp_port)
        else:
            settings.update(transport="rtu", serial_port=emulator.port_path, baudrate=9600)
        meter = create(f"meter-{request.param}", settings)
        task = asyncio.create_task(meter.run())
        try:
            yield emulator, meter
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


async def test_values_follow_the_plant(link: tuple[MeterEmulator, ModbusMeter], plant: Plant) -> None:
    emulator, meter = link
    recorder = Recorder()
    meter.subscribe(recorder)
    await wait_for(lambda: meter.latest is not None)
    sample = meter.latest
    assert sample is not None
    assert sample.energy_import_wh == pytest.approx(12_345.0, abs=1.0)  # float32 kWh on the wire
    assert sample.power_w == pytest.approx(16.0 * 230.0 * 3)
    assert sample.voltage_v == (230.0, 230.0, 230.0)
    assert sample.current_a == (16.0, 16.0, 16.0)
    assert abs(sample.timestamp - time.time()) < 2.0

    plant.ev.phases = 1
    plant.energy_wh += 500.0
    await wait_for(lambda: (s := meter.latest) is not None and s.energy_import_wh > 12_800.0)
    sample = meter.latest
    assert sample is not None
    assert sample.energy_import_wh == pytest.approx(12_845.0, abs=1.0)
    assert sample.current_a == (16.0, 0.0, 0.0)
    assert sample.power_w == pytest.approx(16.0 * 230.0)
    energies = [s.energy_import_wh for s in recorder.samples()]
    assert energies == sorted(energies)
    assert emulator.requests_served >= 4
    assert meter.counters()["polls_ok"] >= 2 and meter.counters()["polls_failed"] == 0


async def test_energy_going_backwards_is_a_fault(link: tuple[MeterEmulator, ModbusMeter], plant: Plant) -> None:
    _, meter = link
    recorder = Recorder()
    meter.subscribe(recorder)
    await wait_for(lambda: meter.latest is not None)
    plant.energy_wh = 10_000.0
    await wait_for(lambda: (Fault.METER_IMPLAUSIBLE, True) in recorder.faults())
    assert meter.latest is None
    await asyncio.sleep(0.3)
    assert all(s.energy_import_wh > 12_000.0 for s in recorder.samples())
    plant.energy_wh = 12_400.0
    await wait_for(lambda: (Fault.METER_IMPLAUSIBLE, False) in recorder.faults())
    assert meter.latest is not None and meter.latest.energy_import_wh == pytest.approx(12_400.0, abs=1.0)


async def test_silent_meter_and_recovery(link: tuple[MeterEmulator, ModbusMeter]) -> None:
    emulator, meter = link
    recorder = Recorder()
    meter.subscribe(recorder)
    await wait_for(lambda: meter.latest is not None)
    emulator.silent = True
    await wait_for(lambda: (Fault.METER_SILENT, True) in recorder.faults(), limit_s=5.0)
    last_sample_at = max(t for t, e in recorder.events if isinstance(e, MeterSample))
    fault_at = next(t for t, e in recorder.events if isinstance(e, DeviceFaultChanged))
    assert fault_at - last_sample_at <= 3.2
    assert meter.latest is None
    samples_while_silent = len(recorder.samples())
    await asyncio.sleep(0.3)
    assert len(recorder.samples()) == samples_while_silent, "nothing published while silent"
    assert meter.counters()["polls_failed"] >= 2

    emulator.silent = False
    await wait_for(lambda: (Fault.METER_SILENT, False) in recorder.faults(), limit_s=5.0)
    await wait_for(lambda: meter.latest is not None)
    assert recorder.faults() == [(Fault.METER_SILENT, True), (Fault.METER_SILENT, False)]


async def test_rtu_emulator_ignores_other_device_ids_like_an_rs485_slave(plant: Plant) -> None:
    async with MeterEmulator(plant, transport="rtu") as emulator:
        assert emulator.tcp_port is None and emulator.port_path is not None
        link = RtuLink(emulator.port_path)
        other = PymodbusReader(link, device_id=2, timeout_s=0.2)
        await other.connect()
        try:
            with pytest.raises(ModbusIOError, match="no answer"):
                await other.read(4, 0x48, 2)
        finally:
            other.close()
        ours = PymodbusReader(link, device_id=1, timeout_s=0.5)
        await ours.connect()
        try:
            assert len(await ours.read(4, 0x48, 2)) == 2
            with pytest.raises(ModbusIOError, match="exception 2"):
                await ours.read(4, 0x200, 2)  # outside the map: illegal data address
        finally:
            ours.close()


async def test_tcp_only_emulator(plant: Plant) -> None:
    async with MeterEmulator(plant, transport="tcp") as emulator:
        assert emulator.port_path is None and emulator.port == emulator.tcp_port
        assert emulator.tcp_port is not None and emulator.tcp_port > 0


# Energy resolution on the wire: float32 kWh, 0.01 kWh (ABB), 0.1 kWh (EM340).
RESOLUTION_WH = {"sdm630": 1.0, "sdm120": 1.0, "abb_b23": 10.0, "em340": 100.0, "ocmf": 1.0}


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
@pytest.mark.parametrize("model", sorted(RESOLUTION_WH))
async def test_every_model_end_to_end(model: str, transport: str, plant: Plant) -> None:
    """The emulator serves each model from the same map file the driver reads."""
    plant.ev.phases = 1
    async with MeterEmulator(plant, model, transport=transport) as emulator:
        if model == "abb_b23":
            emulator.overrides["voltage_l2"] = None  # the meter reports all-0xFF: not available
        settings: dict[str, Any] = {"model": model, "transport": transport, "poll_interval_s": 0.1, "timeout_s": 0.3}
        if transport == "tcp":
            settings.update(host="127.0.0.1", port=emulator.tcp_port)
        else:
            settings.update(serial_port=emulator.port_path)
        meter = create(f"meter-{model}", settings)
        task = asyncio.create_task(meter.run())
        try:
            await wait_for(lambda: meter.latest is not None)
            sample = meter.latest
            assert sample is not None
            assert sample.energy_import_wh == pytest.approx(12_345.0, abs=RESOLUTION_WH[model])
            assert sample.power_w == pytest.approx(16.0 * 230.0, rel=1e-3)
            assert sample.voltage_v[0] == pytest.approx(230.0) and sample.current_a[0] == pytest.approx(16.0)
            if model == "abb_b23":
                assert sample.voltage_v[1] is None
            plant.energy_wh += 1000.0
            await wait_for(lambda: (s := meter.latest) is not None and s.energy_import_wh > 13_000.0)
            assert meter.counters()["polls_failed"] == 0
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
