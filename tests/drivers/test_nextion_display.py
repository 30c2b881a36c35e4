"""NextionDisplay against the Nextion emulator over a real pty: pages and texts, errors, silence."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from drivers.serial.nextion import NextionDisplay, create
from hal import DeviceError, Screen, ScreenState
from hal.registry import load_driver
from simulator.nextion import NextionEmulator
from tests.drivers.helpers import wait_for


def test_entry_point_and_settings() -> None:
    assert load_driver("nextion") is create
    display = create("d", {"port": "/dev/ttyS3"})
    assert (display.port, display.baudrate, display.connector_id) == ("/dev/ttyS3", 9600, None)
    bad_settings = (
        ({}, "port"),
        ({"port": "/x", "baudrate": 0}, "baudrate"),
        ({"port": "/x", "connector_id": 0}, "connector_id"),
        ({"port": "/x", "x": 1}, "x"),
    )
    for bad, key in bad_settings:
        with pytest.raises(DeviceError, match=rf"^devices\.d\.{key}: "):
            create("d", bad)


def test_show_without_a_port_never_raises() -> None:
    display = NextionDisplay("d", "/dev/null")
    display.show(Screen(1, ScreenState.IDLE, message="Tap card or plug in"))
    assert display.counters()["tx_dropped"] == 7


class Pair:
    def __init__(self) -> None:
        self.emulator = NextionEmulator()
        self.display: NextionDisplay | None = None
        self.tasks: list[asyncio.Task[None]] = []


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    p = Pair()
    p.tasks.append(asyncio.create_task(p.emulator.run()))
    await wait_for(lambda: p.emulator.port_path, 2, "pty")
    assert p.emulator.port_path is not None
    p.display = NextionDisplay("display", p.emulator.port_path)
    p.tasks.append(asyncio.create_task(p.display.run()))
    await wait_for(lambda: p.emulator.bkcmd == 3, 3, "bkcmd=3")
    try:
        yield p
    finally:
        for t in p.tasks:
            t.cancel()
        await asyncio.gather(*p.tasks, return_exceptions=True)


async def test_screens_reach_the_display(pair: Pair) -> None:
    display, emulator = pair.display, pair.emulator
    assert display is not None
    display.show(Screen(1, ScreenState.CHARGING, 11040.0, 2500.0, 125.0, "Charging"))
    await wait_for(lambda: "Tap your card to stop" in emulator.shown(), 3, "charging screen")
    assert emulator.page_name == "charging"
    assert emulator.texts["t1"] == "Power: 11.0 kW" and emulator.texts["t2"] == "Energy: 2.50 kWh"
    display.show(Screen(1, ScreenState.FINISHED, 0.0, 2600.0, 0.0, 'Done. Unplug "your" car\\now',
                        extra=(("cost", "EUR 0.91"),)))  # fmt: skip
    await wait_for(lambda: emulator.page_name == "finished" and emulator.texts["t5"], 3, "finished screen")
    assert emulator.texts["t5"] == 'Done. Unplug "your" car\\now'  # escaped on the wire, intact on screen
    assert emulator.texts["t2"] == "Duration: 0:02:05" and emulator.texts["t3"] == "Cost: EUR 0.91"
    await wait_for(lambda: display.counters()["acks"] >= 15, 2, "acks")
    assert display.counters()["errors"] == 0 and display.counters()["unanswered"] == 0


async def test_display_errors_are_counted_and_logged_once(pair: Pair, caplog: pytest.LogCaptureFixture) -> None:
    display = pair.display
    assert display is not None
    caplog.set_level(logging.WARNING, "cpagent.drivers.nextion")
    for _ in range(3):
        display._write('t9.txt="x"')  # no such component in this HMI
        display._write("t1.pco=63488")  # an attribute the design does not allow
        display._write("bogus")
    await wait_for(lambda: display.counters()["errors"] == 9, 3, "error replies")
    assert len([r for r in caplog.records if "reports" in r.getMessage()]) == 3  # one per kind


async def test_silent_display_is_counted(pair: Pair, caplog: pytest.LogCaptureFixture) -> None:
    display, emulator = pair.display, pair.emulator
    assert display is not None
    emulator.silent = True
    display.show(Screen(1, ScreenState.IDLE, message="Tap card or plug in"))
    await wait_for(lambda: display.counters()["unanswered"] >= 7, 3, "unanswered")
    assert any("not acknowledging" in r.getMessage() for r in caplog.records)
    emulator.silent = False
    display.show(Screen(1, ScreenState.AUTHORIZING, message="Plug in your car"))
    await wait_for(lambda: "Plug in your car" in emulator.shown(), 3, "display back")


async def test_touch_and_junk_do_not_disturb(pair: Pair) -> None:
    display, emulator = pair.display, pair.emulator
    assert display is not None
    emulator.touch(3)
    emulator.write_raw(b"\x99junk\xff\xff\xff")
    display.show(Screen(1, ScreenState.IDLE, message="Tap card or plug in"))
    await wait_for(lambda: "Tap card or plug in" in emulator.shown(), 3, "idle screen")
    await wait_for(lambda: display.counters()["touches"] == 1 and display.counters()["bad_replies"] == 1, 2)
