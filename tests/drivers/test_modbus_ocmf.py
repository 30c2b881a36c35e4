"""Signed meter values end to end: the driver asks the OCMF meter emulator to sign transaction start and
stop over real Modbus frames (TCP and RTU), and the records verify with the key read from the meter."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from drivers.modbus.meter import ModbusMeter, create
from drivers.modbus.ocmf import parse_ocmf, verify_ocmf
from drivers.modbus.transport import PymodbusReader, TcpLink
from hal import DeviceError, HalEvent, MeterSample
from simulator.meter import MeterEmulator
from simulator.physics import Plant


@pytest.fixture
def plant() -> Plant:
    plant = Plant()
    plant.energy_wh = 4_321.0
    return plant


@pytest.fixture(params=["tcp", "rtu"])
async def signing(request: pytest.FixtureRequest, plant: Plant) -> AsyncIterator[tuple[MeterEmulator, ModbusMeter]]:
    async with MeterEmulator(plant, "ocmf", transport=request.param) as emulator:
        settings: dict[str, Any] = {"model": "ocmf", "transport": request.param, "poll_interval_s": 0.05,
                                    "timeout_s": 0.5}  # fmt: skip
        if request.param == "tcp":
            settings.update(host="127.0.0.1", port=emulator.tcp_port)
        else:
            settings.update(serial_port=emulator.port_path)
        meter = create(f"ocmf-{request.param}", settings)
        task = asyncio.create_task(meter.run())  # polling goes on while signing: they must not interleave
        try:
            for _ in range(250):
                if meter.latest is not None:
                    break
                await asyncio.sleep(0.02)
            assert meter.latest is not None
            yield emulator, meter
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_signed_start_and_stop_verify_with_the_meters_key(
    signing: tuple[MeterEmulator, ModbusMeter], plant: Plant
) -> None:
    emulator, meter = signing
    samples: list[MeterSample] = []

    def record(event: HalEvent) -> None:
        if isinstance(event, MeterSample):
            samples.append(event)

    meter.subscribe(record)
    key = await meter.public_key()
    assert emulator.signer is not None and key == emulator.signer.public_key

    start = await meter.start_signed("tx-0042")
    assert verify_ocmf(start, key)
    parsed = parse_ocmf(start)
    assert parsed.payload["ID"] == "tx-0042" and parsed.payload["PG"] == "T1"
    assert parsed.reading["TX"] == "B" and parsed.reading["RU"] == "kWh"
    assert parsed.reading["RV"] == pytest.approx(4.321)
    signed_samples = [s for s in samples if s.signed_data is not None]
    assert [s.signed_data for s in signed_samples] == [start]
    assert signed_samples[0].energy_import_wh == pytest.approx(4_321.0, abs=1.0)

    plant.energy_wh += 7_000.0
    stop = await meter.stop_signed("tx-0042")
    assert verify_ocmf(stop, key)
    parsed_stop = parse_ocmf(stop)
    assert parsed_stop.reading["TX"] == "E" and parsed_stop.payload["PG"] == "T2"
    assert parsed_stop.reading["RV"] == pytest.approx(11.321)
    assert [s.signed_data for s in samples if s.signed_data is not None] == [start, stop]
    assert emulator.signer.records == [start, stop]
    assert meter.counters()["polls_failed"] == 0, "signing and polling never interleaved"

    # The record is forwarded verbatim; changing a single reading breaks the signature.
    assert not verify_ocmf(stop.replace(json.dumps(parsed_stop.reading["RV"]), "99.999"), key)
    # Ordinary samples after the stop carry no signature.
    count = len(samples)
    for _ in range(100):
        if len(samples) > count:
            break
        await asyncio.sleep(0.02)
    assert samples[-1].signed_data is None


async def test_bad_transaction_reference_is_refused(signing: tuple[MeterEmulator, ModbusMeter]) -> None:
    _, meter = signing
    with pytest.raises(DeviceError, match="transaction reference"):
        await meter.start_signed("x" * 40)


async def test_meter_refuses_an_unknown_command(plant: Plant) -> None:
    async with MeterEmulator(plant, "ocmf", transport="tcp") as emulator:
        assert emulator.tcp_port is not None and emulator.signer is not None
        layout = emulator.signer.layout
        reader = PymodbusReader(TcpLink("127.0.0.1", emulator.tcp_port), device_id=1, timeout_s=0.5)
        await reader.connect()
        try:
            await reader.write(layout.command, [7, 0x7478])
            status, length, key_length = await reader.read(3, layout.status, 3)
            assert (status, length, key_length) == (3, 0, 91)
        finally:
            reader.close()


async def test_a_meter_without_signing_says_so(plant: Plant) -> None:
    async with MeterEmulator(plant, "sdm630", transport="tcp") as emulator:
        meter = create("plain", {"transport": "tcp", "port": emulator.tcp_port})
        assert not meter.signs
        with pytest.raises(DeviceError, match="does not sign"):
            await meter.start_signed("tx-1")
