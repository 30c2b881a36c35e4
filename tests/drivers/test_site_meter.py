"""The SiteMeter role of the modbus-meter driver: the pure codec part (signed per-phase current from
|I| and the sign of the phase's active power), and the role over real Modbus frames against the meter
emulator (TCP, and RTU with a connector meter on the same RS-485 line, one bus scheduler)."""

from __future__ import annotations

import asyncio
import time

import pytest

from drivers.modbus.bus import BusReader
from drivers.modbus.codec import (
    IncompleteReading,
    available_maps,
    build_grid_sample,
    decode_batch,
    load_map,
    plan_reads,
    supports_grid,
)
from drivers.modbus.meter import create
from hal import GridSample, Role, SiteMeter
from simulator.meter import MeterEmulator, RtuBusEmulator
from simulator.physics import Plant
from tests.drivers.helpers import wait_for


def three_phase(**values: float | None) -> dict[str, float | None]:
    base: dict[str, float | None] = {f"{q}_l{i}": 0.0 for q in ("current", "power") for i in (1, 2, 3)}
    base.update(values)
    return base


def test_current_takes_the_sign_of_the_phase_power() -> None:
    grid = build_grid_sample(
        three_phase(
            current_l1=10.0, power_l1=2300.0, current_l2=4.0, power_l2=-920.0, current_l3=-3.0, power_l3=-690.0
        ),
        timestamp=12.5,
    )
    assert grid == GridSample(current_a=(10.0, -4.0, -3.0), power_w=(2300.0, -920.0, -690.0), timestamp=12.5)


def test_single_phase_meter_signs_l1_with_the_total_power() -> None:
    grid = build_grid_sample({"current_l1": 8.0, "power": -1840.0}, timestamp=1.0)
    assert grid.current_a == (-8.0, 0.0, 0.0) and grid.power_w == (-1840.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (three_phase(power_l2=None), "L2"),
        (three_phase(current_l3=None), "L3"),
        (three_phase(current_l1=5000.0, power_l1=1.0), "5000 A on L1"),
    ],
)
def test_missing_or_nonsense_phase_is_an_incomplete_reading(values: dict[str, float | None], message: str) -> None:
    with pytest.raises(IncompleteReading, match=message):
        build_grid_sample(values, timestamp=1.0)


def test_which_maps_can_be_a_site_meter() -> None:
    capable = {model for model in available_maps() if supports_grid(load_map(model))}
    assert {"sdm630", "em340", "abb_b23", "sdm120"} <= capable
    assert "ocmf" not in capable  # per-phase current but no per-phase power: the sign is unknown


def test_abb_b23_per_phase_power_is_signed_int32_hundredths() -> None:
    memory = {0x5B0C: [0x0000, 0x0640], 0x5B16: [0xFFFD, 0xB610], 0x5B18: [0x0000, 0x2710]}  # 16 A, -1500 W, 100 W
    values: dict[str, float | None] = {}
    for request in plan_reads(load_map("abb_b23")):
        words: list[int] = []
        for address in range(request.address, request.address + request.count):
            block = next((a for a in memory if a <= address < a + 2), None)
            words.append(memory[block][address - block] if block is not None else 0)
        values.update(decode_batch(request, words))
    assert values["power_l1"] == pytest.approx(-1500.0) and values["power_l2"] == pytest.approx(100.0)
    grid = build_grid_sample(values, timestamp=0.0)
    assert grid.current_a[0] == pytest.approx(-16.0) and grid.current_a[1] == 0.0


def exporting(emulator: MeterEmulator) -> None:
    """A connection point exporting on L1 (PV), importing on L2 and L3."""
    emulator.overrides.update(
        current_l1=12.0, power_l1=-2760.0, current_l2=5.0, power_l2=1150.0, current_l3=2.0, power_l3=460.0
    )


async def test_site_meter_role_over_modbus_tcp() -> None:
    async with MeterEmulator(Plant(), "sdm630", transport="tcp") as emulator:
        exporting(emulator)
        settings = {"transport": "tcp", "port": emulator.tcp_port, "poll_interval_s": 0.1, "timeout_s": 0.5}
        meter = create("grid", settings)
        assert Role.SITE_METER in meter.roles
        site = meter.role(Role.SITE_METER)
        assert isinstance(site, SiteMeter) and site.latest() is None
        task = asyncio.create_task(meter.run())
        try:
            await wait_for(lambda: site.latest() is not None)
            grid = site.latest()
            assert grid is not None
            assert grid.current_a == pytest.approx((-12.0, 5.0, 2.0))
            assert grid.power_w == pytest.approx((-2760.0, 1150.0, 460.0))
            assert abs(grid.timestamp - time.time()) < 2.0
            emulator.silent = True  # a dead meter: the role goes None with the driver's silence rule (< 3 s)
            silenced = time.monotonic()
            await wait_for(lambda: site.latest() is None, limit_s=3.5)
            assert time.monotonic() - silenced <= 3.0
            emulator.silent = False
            await wait_for(lambda: site.latest() is not None)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_site_meter_shares_the_rs485_line_with_a_connector_meter() -> None:
    bus = RtuBusEmulator()
    charging = Plant()
    charging.plugged = charging.relay_commanded_closed = True
    charging.current_a, charging.energy_wh = 16.0, 5_000.0
    connector_meter = MeterEmulator(charging, "sdm630", device_id=1, transport="rtu", bus=bus)
    grid_meter = MeterEmulator(Plant(), "em340", device_id=2, transport="rtu", bus=bus)
    exporting(grid_meter)
    for emulator in (connector_meter, grid_meter):
        await emulator.start()
    common = {"transport": "rtu", "serial_port": bus.port_path, "poll_interval_s": 0.1, "timeout_s": 0.3}
    meter1 = create("meter1", {**common, "device_id": 1})
    grid = create("grid", {**common, "model": "em340", "device_id": 2})
    assert isinstance(meter1.reader, BusReader) and isinstance(grid.reader, BusReader)
    assert meter1.reader.bus is grid.reader.bus, "one scheduler for the line"
    tasks = [asyncio.create_task(m.run()) for m in (meter1, grid)]
    try:
        site = grid.role(Role.SITE_METER)
        await wait_for(lambda: site.latest() is not None and meter1.latest is not None)
        reading = site.latest()
        assert reading is not None and reading.current_a == pytest.approx((-12.0, 5.0, 2.0))
        sample = meter1.latest
        assert sample is not None and sample.current_a[0] == pytest.approx(16.0)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for emulator in (connector_meter, grid_meter):
            await emulator.stop()
