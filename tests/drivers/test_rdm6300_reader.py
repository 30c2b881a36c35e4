"""Rdm6300Reader against Rdm6300Emulator over a real pty."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from drivers.serial.rdm6300 import Rdm6300Reader, create
from drivers.serial.rdm6300_codec import encode_frame
from hal import DeviceError, DeviceFaultChanged, Fault, HalEvent, IdToken
from hal.clock import FakeClock
from hal.registry import load_driver
from simulator.rdm6300 import Rdm6300Emulator
from tests.drivers.helpers import wait_for


class Collector:
    def __init__(self, reader: Rdm6300Reader) -> None:
        self.tokens: list[IdToken] = []
        self._task = asyncio.create_task(self._collect(reader))

    async def _collect(self, reader: Rdm6300Reader) -> None:
        async for token in reader.tokens():
            self.tokens.append(token)

    async def close(self) -> None:
        self._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self._task


@pytest.fixture
async def emulator() -> AsyncIterator[Rdm6300Emulator]:
    async with Rdm6300Emulator() as emulator:
        yield emulator


async def start(reader: Rdm6300Reader) -> asyncio.Task[None]:
    task = asyncio.create_task(reader.run())
    await asyncio.sleep(0.05)  # let it open the port before the card is presented
    return task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_tap_gives_one_token(emulator: Rdm6300Emulator) -> None:
    assert emulator.port_path is not None
    clock = FakeClock()
    reader = create("rfid", {"port": emulator.port_path})
    reader.clock = clock
    collector = Collector(reader)
    task = await start(reader)
    try:
        emulator.tap("62e3086ced")
        await wait_for(lambda: reader.counters()["frames"] == 3)
        await asyncio.sleep(0.05)
        assert collector.tokens == [IdToken(uid="62E3086CED", kind="RFID125")]
        assert reader.counters()["repeats_suppressed"] == 2

        clock.advance(1.0)  # still held: the reader keeps repeating
        emulator.tap("62E3086CED")
        await wait_for(lambda: reader.counters()["frames"] == 6)
        assert len(collector.tokens) == 1

        clock.advance(2.5)  # taken away and presented again
        emulator.tap("62E3086CED")
        await wait_for(lambda: len(collector.tokens) == 2)

        emulator.tap("0100000001")  # another card at once
        await wait_for(lambda: len(collector.tokens) == 3)
        assert collector.tokens[-1].uid == "0100000001"
    finally:
        await collector.close()
        await stop(task)


async def test_corrupt_bytes_on_the_line_are_counted_and_dropped(emulator: Rdm6300Emulator) -> None:
    assert emulator.port_path is not None
    reader = create("rfid", {"port": emulator.port_path})
    collector = Collector(reader)
    task = await start(reader)
    try:
        emulator.send_raw(b"\xff\x00noise" + encode_frame("1122334455")[:7] + b"\x02ABC")
        emulator.tap("62E3086CED", repeats=1)
        await wait_for(lambda: len(collector.tokens) == 1)
        assert collector.tokens[0].uid == "62E3086CED"
        assert reader.counters()["bad_frames"] >= 2
    finally:
        await collector.close()
        await stop(task)


async def test_silent_emulator_sends_nothing(emulator: Rdm6300Emulator) -> None:
    assert emulator.port_path is not None
    reader = create("rfid", {"port": emulator.port_path})
    task = await start(reader)
    try:
        emulator.silent = True
        emulator.tap("62E3086CED")
        await asyncio.sleep(0.2)
        assert reader.counters()["frames"] == 0
    finally:
        await stop(task)


async def test_port_loss_is_reader_silent_and_reopen_recovers(tmp_path: Path) -> None:
    link = tmp_path / "ttyRFID"  # a stable name, as udev would give, re-pointed to a new pty
    first = Rdm6300Emulator()
    first.open()
    assert first.port_path is not None
    os.symlink(first.port_path, link)
    reader = create("rfid", {"port": str(link)})
    events: list[HalEvent] = []
    reader.subscribe(events.append)
    collector = Collector(reader)
    task = await start(reader)
    second = Rdm6300Emulator()
    try:
        first.close()
        await wait_for(lambda: DeviceFaultChanged in {type(e) for e in events})
        fault = events[0]
        assert isinstance(fault, DeviceFaultChanged) and (fault.fault, fault.active) == (Fault.READER_SILENT, True)

        second.open()
        assert second.port_path is not None
        link.unlink()
        os.symlink(second.port_path, link)
        await wait_for(lambda: any(isinstance(e, DeviceFaultChanged) and not e.active for e in events), limit_s=5.0)
        await asyncio.sleep(0.05)
        second.tap("62E3086CED")
        await wait_for(lambda: len(collector.tokens) == 1)
        assert [e.active for e in events if isinstance(e, DeviceFaultChanged)] == [True, False]
    finally:
        await collector.close()
        await stop(task)
        second.close()


async def test_missing_port_is_a_fault_not_a_crash(tmp_path: Path) -> None:
    reader = create("rfid", {"port": str(tmp_path / "nothing")})
    events: list[HalEvent] = []
    reader.subscribe(events.append)
    task = await start(reader)
    try:
        await wait_for(lambda: bool(events))
        assert events == [DeviceFaultChanged(Fault.READER_SILENT, True, events[0].detail)]  # type: ignore[union-attr]
        assert not task.done()
    finally:
        await stop(task)


@pytest.mark.parametrize(
    ("settings", "where"),
    [
        ({}, "devices.r.port"),
        ({"port": ""}, "devices.r.port"),
        ({"port": "/dev/x", "baudrate": "fast"}, "devices.r.baudrate"),
        ({"port": "/dev/x", "repeat_suppress_s": -1}, "devices.r.repeat_suppress_s"),
        ({"port": "/dev/x", "prot": 1}, "devices.r.prot"),
    ],
)
def test_invalid_settings(settings: dict[str, Any], where: str) -> None:
    with pytest.raises(DeviceError, match=where.replace(".", r"\.")):
        create("r", settings)


def test_registered_as_driver() -> None:
    assert load_driver("rdm6300") is create
    reader = create("r", {"port": "/dev/ttyS1"})
    assert reader.baudrate == 9600 and reader.repeat_suppress_s == 2.0
