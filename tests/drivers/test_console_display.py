from __future__ import annotations

import asyncio
import io

import pytest

from drivers.console_display import ConsoleDisplay, create, format_screen
from hal import DeviceError, Role, Screen, ScreenState
from hal.registry import load_driver


def test_changed_screens_are_logged_once_and_kept_per_connector(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="cpagent.display")
    display = create("display", {})
    idle = Screen(connector_id=1, state=ScreenState.IDLE, message="Tap your card")
    charging = Screen(connector_id=2, state=ScreenState.CHARGING, power_w=7360.0, energy_wh=1234.0, duration_s=3725)
    display.show(idle)
    display.show(idle)
    display.show(charging)
    lines = [r.getMessage() for r in caplog.records if r.name == "cpagent.display"]
    assert lines == [
        "connector 1: idle | 'Tap your card'",
        "connector 2: charging | 7.4 kW | 1.23 kWh | 1:02:05",
    ]
    assert display.screens == {1: idle, 2: charging}
    assert display.counters() == {"lines": 2}
    assert display.roles == frozenset({Role.DISPLAY})


def test_fault_screen_line() -> None:
    screen = Screen(
        connector_id=1,
        state=ScreenState.FAULT,
        message="Out of order",
        fault_code="RCD",
        support_contact="+49 30 1234",
        extra=(("id", "E42"),),
    )
    assert format_screen(screen) == "connector 1: fault | 'Out of order' | fault RCD | support +49 30 1234 | id=E42"


def test_stream_output() -> None:
    out = io.StringIO()
    display = ConsoleDisplay("d", stream=out)
    display.show(Screen(connector_id=1, state=ScreenState.FINISHED, energy_wh=500.0))
    assert out.getvalue() == "connector 1: finished | 0.50 kWh\n"
    assert create("d", {"stream": "stdout"})._stream is not None


def test_invalid_settings() -> None:
    with pytest.raises(DeviceError, match=r"devices\.d\.stream"):
        create("d", {"stream": "file"})
    with pytest.raises(DeviceError, match=r"devices\.d\.colour"):
        create("d", {"colour": True})


async def test_run_waits_until_cancelled() -> None:
    task = asyncio.create_task(create("d", {}).run())
    await asyncio.sleep(0.05)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_registered_as_driver() -> None:
    assert load_driver("console-display") is create
