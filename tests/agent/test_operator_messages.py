"""The control side's composition of operator messages with its own screens (agent/operator_messages.py)."""

from __future__ import annotations

from agent.operator_messages import compose_screen
from agent.station_api import MessagePriority, OperatorMessage
from drivers.serial.nextion import layout
from hal.types import Screen, ScreenState

P = MessagePriority


def test_most_urgent_applicable_message_is_shown() -> None:
    idle = Screen(1, ScreenState.IDLE, message="Tap card or plug in", extra=(("price", "0.30/kWh"),))
    normal = OperatorMessage(1, "Free coffee inside")
    front = OperatorMessage(2, "Closing at 22:00", P.IN_FRONT)
    charging_only = OperatorMessage(3, "Charging happily", P.ALWAYS_FRONT, (ScreenState.CHARGING,))
    shown = compose_screen(idle, (normal, front, charging_only))
    assert dict(shown.extra) == {"price": "0.30/kWh", "message": "Closing at 22:00"}
    assert shown.message == "Tap card or plug in"  # IN_FRONT does not replace the guidance
    assert compose_screen(idle, ()) is idle
    charging = compose_screen(Screen(1, ScreenState.CHARGING, message="Charging"), (normal, front, charging_only))
    assert charging.message == "Charging happily" and dict(charging.extra)["message"] == "Charging happily"
    assert layout(charging)[1][4] == "Charging happily"  # on the Nextion page's free line


def test_fault_screen_is_never_hidden() -> None:
    fault = Screen(1, ScreenState.FAULT, message="Earth fault", fault_code="E12", support_contact="+41 00")
    shown = compose_screen(fault, (OperatorMessage(9, "Welcome!", P.ALWAYS_FRONT),))
    assert (shown.message, shown.fault_code, shown.support_contact) == ("Earth fault", "E12", "+41 00")
    assert dict(shown.extra)["message"] == "Welcome!"
    _, lines = layout(shown)
    assert lines[1] == "Earth fault" and lines[3] == "Code: E12" and lines[5] == "Welcome!"
    assert compose_screen(fault, (OperatorMessage(9, "x", states=(ScreenState.IDLE,)),)) is fault
