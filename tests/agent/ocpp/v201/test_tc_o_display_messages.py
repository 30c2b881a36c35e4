"""OCPP 2.0.1 Advanced User Interface (O01-O06) over real websockets, checked on the Nextion emulator's
screen (the real serial driver on a pty): SetDisplayMessage with priorities, states, validity windows and a
transaction, GetDisplayMessages -> NotifyDisplayMessages, ClearDisplayMessage; a fault screen stays.
Named after the use cases: the OCTT Part 6 edition at hand (Core & Advanced Security) has no O test cases."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.ocpp.v201.display import StoredMessage
from simulator.csms import Csms
from simulator.nextion import NextionEmulator
from tests.agent.ocpp.v201.conftest import TAG, Octt201, eventually, octt_on


@pytest.fixture
async def hmi_octt(tmp_path: Path, csms: Csms) -> AsyncIterator[Octt201]:
    async with octt_on(tmp_path, csms, display="nextion") as harness:
        yield harness


def _iso(seconds_from_now: float) -> str:
    moment = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds_from_now)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def info(message_id: int, text: str, priority: str = "NormalCycle", **more: Any) -> dict[str, Any]:
    return {"message": {"id": message_id, "priority": priority,
                        "message": {"format": "UTF8", "language": "en", "content": text}, **more}}


def hmi(octt: Octt201) -> NextionEmulator:
    display = octt.rig.display
    assert isinstance(display, NextionEmulator)
    return display


async def test_o01_o03_o04_o05_o06_messages_on_the_display(hmi_octt: Octt201, monkeypatch: pytest.MonkeyPatch) -> None:
    """O01 (priorities: AlwaysFront / InFront before NormalCycle, NormalCycle in turns; states: a Charging-only
    message waits for charging; a fault screen stays), O06 replace by id, O03/O04 Get, O05 Clear."""
    octt = hmi_octt
    await octt.start_agent()
    await octt.booted()
    screen = hmi(octt)
    await eventually(lambda: "Tap card or plug in" in screen.shown(), what="idle screen")
    assert (await octt.send("SetDisplayMessage", info(1, "Free coffee inside")))["status"] == "Accepted"
    await eventually(lambda: screen.texts["t4"] == "Free coffee inside", what="normal message on the HMI")
    assert "Tap card or plug in" in screen.shown()  # beside our own guidance
    assert (await octt.send("SetDisplayMessage", info(1, "Free tea inside")))["status"] == "Accepted"
    await eventually(lambda: screen.texts["t4"] == "Free tea inside", what="O06 replaced by id")
    assert (await octt.send("SetDisplayMessage", info(1, "Free coffee inside")))["status"] == "Accepted"
    await eventually(lambda: screen.texts["t4"] == "Free coffee inside", what="O06 replaced back")
    monkeypatch.setattr("agent.ocpp.v201.display.CYCLE_S", 0.3)
    assert (await octt.send("SetDisplayMessage", info(7, "Wifi: guest")))["status"] == "Accepted"
    await eventually(lambda: screen.texts["t4"] == "Wifi: guest", what="second NormalCycle message in turn")
    await eventually(lambda: screen.texts["t4"] == "Free coffee inside", what="first NormalCycle message again")
    assert (await octt.send("ClearDisplayMessage", {"id": 7}))["status"] == "Accepted"
    assert (await octt.send("SetDisplayMessage", info(2, "Closing at 22:00", "InFront")))["status"] == "Accepted"
    await eventually(lambda: screen.texts["t4"] == "Closing at 22:00", what="InFront before NormalCycle")
    assert (await octt.send("SetDisplayMessage", info(3, "Enjoy!", "AlwaysFront", state="Charging")))[
        "status"] == "Accepted"
    assert screen.texts["t4"] == "Closing at 22:00"  # not charging: the Charging message waits
    # refused: HTML on a text display, a transaction that is not running
    html = info(4, "<b>x</b>")
    html["message"]["message"]["format"] = "HTML"
    assert (await octt.send("SetDisplayMessage", html))["status"] == "NotSupportedMessageFormat"
    assert (await octt.send("SetDisplayMessage", info(5, "x", transactionId="nope")))["status"] \
        == "UnknownTransaction"

    assert (await octt.send("GetDisplayMessages", {"requestId": 7, "priority": "InFront"}))["status"] == "Accepted"
    notify = (await octt.wait("NotifyDisplayMessages")).payload
    assert notify["requestId"] == 7 and [m["id"] for m in notify["messageInfo"]] == [2]
    assert notify["messageInfo"][0]["message"]["content"] == "Closing at 22:00"
    assert (await octt.send("GetDisplayMessages", {"requestId": 8, "id": [99]}))["status"] == "Unknown"
    got = await octt.send("GetVariables", {"getVariableData": [
        {"component": {"name": "DisplayMessageCtrlr"}, "variable": {"name": "DisplayMessages"}}]})
    assert got["getVariableResult"][0]["attributeValue"] == "3"

    await octt.charging(TAG)
    await eventually(lambda: screen.page_name == "charging" and screen.texts["t4"] == "Enjoy!",
                     what="AlwaysFront Charging message while charging")
    assert screen.texts["t1"].startswith("Power:")  # the charging figures stay

    assert (await octt.send("ClearDisplayMessage", {"id": 3}))["status"] == "Accepted"
    assert (await octt.send("ClearDisplayMessage", {"id": 3}))["status"] == "Unknown"
    await eventually(lambda: screen.texts["t4"] == "Closing at 22:00", what="next message after Clear")

    assert (await octt.send("SetDisplayMessage", info(6, "Welcome!", "AlwaysFront")))["status"] == "Accepted"
    octt.ctl("fault", name="undervoltage")
    await eventually(lambda: screen.page_name == "fault", within=10, what="fault screen")
    await eventually(lambda: screen.texts["t5"] == "Welcome!", what="message under the fault")
    assert screen.texts["t0"] == "Out of order" and "Welcome!" not in (screen.texts["t1"], screen.texts["t2"])


async def test_o01_o02_validity_window_and_transaction_message(hmi_octt: Octt201) -> None:
    """A message with startDateTime/endDateTime appears and goes by itself; one bound to the running
    transaction (O02) is shown with it and removed when it ends."""
    octt = hmi_octt
    await octt.start_agent()
    await octt.booted()
    screen = hmi(octt)
    window = info(10, "Happy hour", startDateTime=_iso(0.6), endDateTime=_iso(1.6))
    assert (await octt.send("SetDisplayMessage", window))["status"] == "Accepted"
    assert screen.texts["t4"] != "Happy hour"
    await eventually(lambda: screen.texts["t4"] == "Happy hour", what="message from startDateTime")
    await eventually(lambda: screen.texts["t4"] == "", what="message gone after endDateTime")
    assert (await octt.send("GetDisplayMessages", {"requestId": 1}))["status"] == "Unknown"

    started = await octt.charging(TAG)
    tx = started["transactionInfo"]["transactionId"]
    assert (await octt.send("SetDisplayMessage", info(11, "Your session", "InFront", transactionId=tx)))[
        "status"] == "Accepted"
    await eventually(lambda: screen.texts["t4"] == "Your session", what="transaction message")
    octt.ctl("unplug", connector=1)
    await octt.wait_tx_event("Ended")
    await eventually(lambda: screen.texts["t4"] == "", what="transaction message removed at the end")
    assert octt.agent is not None
    assert octt.agent.service.features["DisplayMessages"].messages == {}


def test_stored_message_parsing() -> None:
    stored = StoredMessage.from_info({"id": 3, "priority": "InFront", "state": "Idle",
                                      "startDateTime": "2026-01-01T00:00:00Z", "display": {"name": "Display",
                                                                                           "evse": {"id": 1}},
                                      "message": {"format": "ASCII", "content": "hi"}})
    assert stored.start == 1767225600.0 and stored.evse == 1 and stored.operator_message().text == "hi"
    with pytest.raises(ValueError):
        StoredMessage.from_info({"id": 1, "priority": "InFront", "startDateTime": "2026-01-01T00:00:00",
                                 "message": {"format": "ASCII", "content": "hi"}})
