"""Pn532Reader against the PN532 emulator over a real pty: setup, cards, repeat suppression, silence."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from drivers.serial import pn532_codec as codec
from drivers.serial.pn532 import Pn532Reader, create
from hal import DeviceError, DeviceFaultChanged, Fault, HalEvent, IdToken
from hal.registry import load_driver
from simulator.pn532 import Pn532Emulator
from tests.drivers.helpers import wait_for


def test_entry_point_and_settings() -> None:
    assert load_driver("pn532") is create
    reader = create("r", {"port": "/dev/ttyS2"})
    assert (reader.baudrate, reader.poll_interval_s, reader.silence_timeout_s) == (115200, 0.25, 2.0)
    bad_settings = (
        ({}, "port"),
        ({"port": "/x", "baudrate": 1}, "baudrate"),
        ({"port": "/x", "poll_interval_s": 0}, "poll_interval_s"),
        ({"port": "/x", "nfc": 1}, "nfc"),
    )
    for bad, key in bad_settings:
        with pytest.raises(DeviceError, match=rf"^devices\.r\.{key}: "):
            create("r", bad)


def test_a_card_held_still_is_reported_once() -> None:
    now = [0.0]
    reader = Pn532Reader("r", "/dev/null", repeat_suppress_s=1.0, monotonic=lambda: now[0])
    assert reader.present(["DEADBEEF"]) == [IdToken("DEADBEEF", "ISO14443")]
    for _ in range(8):
        now[0] += 0.25
        assert reader.present(["DEADBEEF"]) == []
    now[0] += 1.5  # taken away and tapped again
    assert reader.present(["DEADBEEF"]) == [IdToken("DEADBEEF", "ISO14443")]
    assert reader.present(["04A1B2C3D4E5F6"]) == [IdToken("04A1B2C3D4E5F6", "ISO14443")]
    assert reader.counters()["repeats_suppressed"] == 8


class Rig:
    def __init__(self) -> None:
        self.emulator = Pn532Emulator()
        self.reader: Pn532Reader | None = None
        self.events: list[HalEvent] = []
        self.tokens: list[IdToken] = []
        self.tasks: list[asyncio.Task[Any]] = []

    async def collect(self) -> None:
        assert self.reader is not None
        async for token in self.reader.tokens():
            self.tokens.append(token)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig()
    r.tasks.append(asyncio.create_task(r.emulator.run()))
    await wait_for(lambda: r.emulator.port_path, 2, "pty")
    assert r.emulator.port_path is not None
    r.reader = Pn532Reader("reader", r.emulator.port_path, poll_interval_s=0.05, silence_timeout_s=0.6,
                           answer_timeout_s=0.15)  # fmt: skip
    r.reader.subscribe(r.events.append)
    r.tasks += [asyncio.create_task(r.reader.run()), asyncio.create_task(r.collect())]
    try:
        yield r
    finally:
        for t in r.tasks:
            t.cancel()
        await asyncio.gather(*r.tasks, return_exceptions=True)


async def test_setup_then_polling(rig: Rig) -> None:
    await wait_for(lambda: rig.emulator.commands.count(codec.CMD_IN_LIST_PASSIVE_TARGET) >= 3, 3, "polls")
    assert rig.emulator.commands[:3] == [codec.CMD_SAM_CONFIGURATION, codec.CMD_RF_CONFIGURATION,
                                         codec.CMD_GET_FIRMWARE_VERSION]  # fmt: skip
    assert rig.reader is not None and rig.reader.firmware == codec.FirmwareVersion(0x32, 1, 6, 7)
    assert rig.tokens == [] and rig.events == []


@pytest.mark.parametrize("uid", ["DEADBEEF", "04a1b2c3d4e5f6"])
async def test_a_tap_gives_one_token(rig: Rig, uid: str) -> None:
    await wait_for(lambda: codec.CMD_IN_LIST_PASSIVE_TARGET in rig.emulator.commands, 3, "polling")
    rig.emulator.tap(uid, hold_s=0.5)  # ~10 polls see the card
    await wait_for(lambda: rig.tokens, 2, "token")
    await asyncio.sleep(0.6)
    assert rig.tokens == [IdToken(uid.upper(), "ISO14443")]
    assert rig.reader is not None and rig.reader.counters()["repeats_suppressed"] >= 3


async def test_silent_reader_is_a_fault_and_recovers(rig: Rig) -> None:
    await wait_for(lambda: codec.CMD_IN_LIST_PASSIVE_TARGET in rig.emulator.commands, 3, "polling")
    rig.emulator.silent = True
    took = await wait_for(lambda: rig.events, 3, "READER_SILENT")
    assert 0.5 < took < 2.0
    event = rig.events[0]
    assert isinstance(event, DeviceFaultChanged) and event.fault is Fault.READER_SILENT and event.active
    rig.emulator.silent = False
    await wait_for(lambda: len(rig.events) == 2, 2, "recovery")
    assert rig.events[1] == DeviceFaultChanged(Fault.READER_SILENT, False, "reader answering")
    rig.emulator.tap("CAFEBABE")
    await wait_for(lambda: rig.tokens, 2, "token after recovery")


async def test_garbage_on_the_line_is_counted_and_polling_goes_on(rig: Rig) -> None:
    await wait_for(lambda: codec.CMD_IN_LIST_PASSIVE_TARGET in rig.emulator.commands, 3, "polling")
    bad = bytearray(codec.response(0x4A, b"\x00"))
    bad[-2] ^= 0xFF
    rig.emulator.write_raw(b"\xff\x00\xff\x07\x01junk" + bytes(bad))
    rig.emulator.tap("11223344")
    await wait_for(lambda: rig.tokens, 2, "token")
    assert rig.reader is not None
    assert rig.reader.decoder.errors >= 1 and rig.events == []


async def test_port_missing_is_reader_silent() -> None:
    reader = Pn532Reader("r", "/dev/does-not-exist")
    events: list[HalEvent] = []
    reader.subscribe(events.append)
    task = asyncio.create_task(reader.run())
    await wait_for(lambda: events, 2, "fault")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert isinstance(events[0], DeviceFaultChanged) and events[0].fault is Fault.READER_SILENT
