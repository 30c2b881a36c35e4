"""ModbusMeter freshness and plausibility rules with a FakeClock and a scripted register reader
(the bus itself is exercised in test_modbus_backtoback.py), plus settings validation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from drivers.modbus.bus import BusReader
from drivers.modbus.codec import RegisterMap, encode_register, load_map
from drivers.modbus.meter import ModbusMeter, create
from drivers.modbus.transport import ModbusIOError, PymodbusReader, RtuLink, TcpLink
from hal import DeviceError, DeviceFaultChanged, Fault, HalEvent, MeterSample
from hal.clock import FakeClock
from hal.registry import load_driver


class ScriptedReader:
    """Answers reads from a table of canonical values, or fails while ``failing`` is set."""

    def __init__(self, register_map: RegisterMap) -> None:
        self.register_map = register_map
        self.values: dict[str, float | None] = {"energy_import": 1000.0, "power": 0.0}
        self.failing = False
        self.connected = True

    async def connect(self) -> None:
        self.connected = True

    async def read(self, function: int, address: int, count: int) -> list[int]:
        if self.failing:
            raise ModbusIOError("no answer")
        words = [0] * count
        for spec in self.register_map.registers:
            if spec.function == function and address <= spec.address and spec.end <= address + count:
                value = self.values.get(spec.quantity, 0.0)
                encoded = encode_register(spec, value) if value is not None else [0x7FC0, 0]  # NaN
                words[spec.address - address : spec.end - address] = encoded
        return words

    def close(self) -> None:
        self.connected = False


@pytest.fixture
def rig() -> tuple[ModbusMeter, ScriptedReader, FakeClock, list[HalEvent]]:
    clock = FakeClock()
    reader = ScriptedReader(load_map("sdm630"))
    meter = ModbusMeter("meter1", load_map("sdm630"), reader, poll_interval_s=1.0, clock=clock)
    events: list[HalEvent] = []
    meter.subscribe(events.append)
    return meter, reader, clock, events


def faults(events: list[HalEvent]) -> list[tuple[Fault, bool]]:
    return [(e.fault, e.active) for e in events if isinstance(e, DeviceFaultChanged)]


async def test_good_poll_publishes_a_sample_with_the_answer_time(rig: Any) -> None:
    meter, reader, clock, events = rig
    reader.values.update(energy_import=2500.0, power=7360.0, voltage_l1=230.0, current_l1=32.0)
    sample = await meter.poll_once()
    assert sample is not None and meter.latest == sample
    assert sample.energy_import_wh == 2500.0 and sample.power_w == 7360.0
    assert sample.voltage_v[0] == 230.0 and sample.current_a[0] == 32.0
    assert sample.timestamp == clock.wall()
    assert events == [sample]
    assert meter.counters()["polls_ok"] == 1 and meter.counters()["frames"] == 2


async def test_silent_meter_faults_within_3_s_and_never_republishes(rig: Any) -> None:
    meter, reader, clock, events = rig
    meter._arm_silence_timer()
    await meter.poll_once()
    reader.failing = True
    for _ in range(2):
        clock.advance(1.0)
        assert await meter.poll_once() is None
    assert meter.latest is not None  # 2 s old: still fresh
    assert faults(events) == []
    clock.advance(1.0)  # 3 s after the last answer
    assert faults(events) == [(Fault.METER_SILENT, True)]
    assert meter.latest is None
    clock.advance(10.0)
    await meter.poll_once()
    assert faults(events) == [(Fault.METER_SILENT, True)], "the fault is raised once"
    assert sum(isinstance(e, MeterSample) for e in events) == 1, "no stale sample re-published"
    assert meter.counters()["polls_failed"] == 3

    reader.failing = False
    sample = await meter.poll_once()
    assert faults(events)[-1] == (Fault.METER_SILENT, False)
    assert sample is not None and meter.latest == sample and sample.timestamp == clock.wall()


async def test_latest_goes_none_even_if_the_timer_has_not_run(rig: Any) -> None:
    meter, _, clock, _ = rig
    await meter.poll_once()
    clock._now += 3.5  # time passes without timers firing (a blocked loop)
    assert meter.latest is None


async def test_meter_that_never_answers_is_silent_within_3_s(rig: Any) -> None:
    meter, reader, clock, events = rig
    reader.failing = True
    meter._arm_silence_timer()
    await meter.poll_once()
    clock.advance(2.4)
    assert faults(events) == []  # not before its silence time...
    clock.advance(0.2)
    assert faults(events) == [(Fault.METER_SILENT, True)]  # ...and well inside the 3 s rule


async def test_energy_going_backwards_is_a_fault_not_a_value(rig: Any) -> None:
    meter, reader, _, events = rig
    reader.values["energy_import"] = 5000.0
    await meter.poll_once()
    reader.values["energy_import"] = 4000.0
    assert await meter.poll_once() is None
    assert meter.latest is None
    assert faults(events) == [(Fault.METER_IMPLAUSIBLE, True)]
    assert [e.energy_import_wh for e in events if isinstance(e, MeterSample)] == [5000.0]
    await meter.poll_once()
    assert faults(events) == [(Fault.METER_IMPLAUSIBLE, True)]
    assert meter.counters()["implausible"] == 2
    reader.values["energy_import"] = 5001.0
    sample = await meter.poll_once()
    assert sample is not None and sample.energy_import_wh == pytest.approx(5001.0, abs=0.01)  # float32 kWh
    assert faults(events) == [(Fault.METER_IMPLAUSIBLE, True), (Fault.METER_IMPLAUSIBLE, False)]


async def test_missing_energy_is_implausible(rig: Any) -> None:
    meter, reader, _, events = rig
    reader.values["energy_import"] = None
    assert await meter.poll_once() is None
    assert faults(events) == [(Fault.METER_IMPLAUSIBLE, True)]


async def test_errors_are_logged_once_not_per_poll(rig: Any, caplog: pytest.LogCaptureFixture) -> None:
    meter, reader, _, _ = rig
    reader.failing = True
    caplog.set_level("WARNING", logger="cpagent.drivers.modbus")
    for _ in range(5):
        await meter.poll_once()
    assert len([r for r in caplog.records if r.name == "cpagent.drivers.modbus"]) == 1


# ------------------------------------------------------------------ settings


def test_create_tcp_defaults() -> None:
    meter = create("m", {"transport": "tcp", "port": 1502})
    assert isinstance(meter.reader, PymodbusReader)
    assert meter.reader.link == TcpLink("127.0.0.1", 1502)
    assert meter.reader.device_id == 1 and meter.poll_interval_s == 1.0
    assert meter.register_map.model == "sdm630"


def test_create_rtu() -> None:
    meter = create("m", {"transport": "rtu", "serial_port": "/dev/ttyS1", "parity": "E", "stopbits": 1, "device_id": 7})
    assert isinstance(meter.reader, BusReader)
    assert meter.reader.link == RtuLink("/dev/ttyS1", 9600, "E", 1, 8)
    assert meter.reader.device_id == 7


def test_meters_on_one_serial_port_share_one_bus() -> None:
    port = "/dev/ttyTEST-shared"
    first = create("m1", {"transport": "rtu", "serial_port": port, "device_id": 1})
    second = create("m2", {"transport": "rtu", "serial_port": port, "device_id": 2, "timeout_s": 0.5})
    other = create("m3", {"transport": "rtu", "serial_port": port + "-other", "device_id": 1})
    assert isinstance(first.reader, BusReader) and isinstance(second.reader, BusReader)
    assert isinstance(other.reader, BusReader)
    assert first.reader.bus is second.reader.bus
    assert other.reader.bus is not first.reader.bus


@pytest.mark.parametrize(
    ("setting", "value"), [("baudrate", 19200), ("parity", "E"), ("stopbits", 2), ("bytesize", 7)]
)
def test_meters_on_one_port_must_agree_on_line_settings(setting: str, value: object) -> None:
    port = f"/dev/ttyTEST-{setting}"
    kept = create("m1", {"transport": "rtu", "serial_port": port})
    with pytest.raises(DeviceError, match=rf"devices\.m2\.{setting}: .*same {setting}"):
        create("m2", {"transport": "rtu", "serial_port": port, "device_id": 2, setting: value})
    kept.reader.close()  # a bus nobody uses any more may be set up anew with other settings
    assert create("m3", {"transport": "rtu", "serial_port": port, setting: value}).reader.link != kept.reader.link


@pytest.mark.parametrize(
    ("settings", "where"),
    [
        ({}, "devices.m.transport"),
        ({"transport": "udp"}, "devices.m.transport"),
        ({"transport": "tcp", "port": 0}, "devices.m.port"),
        ({"transport": "tcp", "port": "502"}, "devices.m.port"),
        ({"transport": "rtu"}, "devices.m.serial_port"),
        ({"transport": "rtu", "serial_port": "/dev/x", "parity": "X"}, "devices.m.parity"),
        ({"transport": "rtu", "serial_port": "/dev/x", "stopbits": 3}, "devices.m.stopbits"),
        ({"transport": "tcp", "device_id": 0}, "devices.m.device_id"),
        ({"transport": "tcp", "poll_interval_s": 10}, "devices.m.poll_interval_s"),
        ({"transport": "tcp", "timeout_s": -1}, "devices.m.timeout_s"),
        ({"transport": "tcp", "model": "nosuch"}, "devices.m.model"),
        ({"transport": "tcp", "hots": "x"}, "devices.m.hots"),
    ],
)
def test_invalid_settings_name_the_key(settings: dict[str, Any], where: str) -> None:
    with pytest.raises(DeviceError, match=where.replace(".", r"\.")):
        create("m", settings)


def test_registered_as_driver() -> None:
    assert load_driver("modbus-meter") is create


async def test_run_survives_a_failing_listener_and_reconnects() -> None:
    reader = ScriptedReader(load_map("sdm630"))
    reader.connected = False
    meter = ModbusMeter("m", load_map("sdm630"), reader, poll_interval_s=0.01)
    calls: list[HalEvent] = []

    def broken_listener(event: HalEvent) -> None:
        calls.append(event)
        raise RuntimeError("agent bug")

    meter.subscribe(broken_listener)
    task = asyncio.create_task(meter.run())
    try:
        for _ in range(200):
            if meter.counters()["polls_ok"] >= 3:
                break
            await asyncio.sleep(0.01)
        assert meter.counters()["polls_ok"] >= 3 and not task.done()
        assert meter.counters()["reconnects"] == 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert not reader.connected, "the link is closed when the task ends"
