"""OCPP 2.0.1 display messages survive a restart (table ocpp201_display_messages): an Accepted
SetDisplayMessage is shown again after the agent restarts, on the Nextion emulator's screen over the real
serial driver, and reported by GetDisplayMessages; the validity window and the transaction rule apply again
at the restart (unit test of DisplayMessages on a real SQLite database)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.db import connect
from agent.ocpp.v201.display import DisplayMessages
from agent.station_api import OperatorMessage
from simulator.csms import Csms
from simulator.nextion import NextionEmulator
from tests.agent.ocpp.v201.conftest import Octt201, eventually, octt_on


def info(message_id: int, text: str, priority: str = "InFront", **more: Any) -> dict[str, Any]:
    return {"id": message_id, "priority": priority, "message": {"format": "UTF8", "content": text}, **more}


class FakeService:
    """What DisplayMessages uses of OcppService (a unit test of the one class): a real database, one
    connector whose given messages are recorded, a settable wall clock, the running transactions."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.now = 1_800_000_000.0
        self.station = self
        self.clock = self
        self.variables = self
        self.given: dict[int, tuple[OperatorMessage, ...]] = {}
        self.running: dict[int, str | None] = {1: None}
        self.features = {"Transactions": SimpleNamespace(machines={})}

    def set_running(self, transaction_id: str | None) -> None:
        self.features["Transactions"].machines = {1: SimpleNamespace(transaction_id=transaction_id)}

    # station
    def connector_ids(self) -> list[int]:
        return [1]

    def subscribe(self, listener: Any) -> None:
        pass

    def set_operator_messages(self, connector_id: int, messages: tuple[OperatorMessage, ...]) -> None:
        self.given[connector_id] = messages

    # device model
    def bind(self, name: str, getter: Any) -> None:
        pass

    def boolean(self, component: str, variable: str) -> bool:
        return True

    # clocks
    def wall(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Any) -> Any:
        return SimpleNamespace(cancel=lambda: None)


def texts(service: FakeService) -> list[str]:
    return [m.text for m in service.given.get(1, ())]


async def test_messages_restored_in_order_window_and_transaction_applied_again(tmp_path: Path) -> None:
    db = connect(tmp_path / "state.db", durable=False)
    service = FakeService(db)
    service.set_running("TX-1")
    display = DisplayMessages(service)  # type: ignore[arg-type]
    await display.run()
    end = "2027-01-15T08:00:00Z"  # 1_800_000_000 is 2027-01-15T08:00:00Z: a window ending 60 s later
    for payload in (info(1, "first"), info(2, "second"), info(3, "until soon", endDateTime="2027-01-15T08:01:00Z"),
                    info(4, "your session", transactionId="TX-1"), info(1, "first, replaced")):
        assert (await display.on_set_display_message(payload))["status"] == "Accepted"
    assert (await display.on_set_display_message(info(5, "x", endDateTime=end)))["status"] == "Rejected"
    assert (await display.on_clear_display_message(2))["status"] == "Accepted"
    assert texts(service) == ["your session", "until soon", "first, replaced"]  # newest first within InFront

    # Restart with the transaction still running: everything back, in the same order.
    again = FakeService(db)
    again.set_running("TX-1")
    restored = DisplayMessages(again)  # type: ignore[arg-type]
    assert list(restored.messages) == [1, 3, 4] and restored.messages[1].info["message"]["content"] == \
        "first, replaced"
    assert again.given == {}  # given once every feature exists (run)
    await restored.run()
    assert texts(again) == texts(service)

    # Restart 2 minutes later, the transaction gone: the expired and the transaction's message go, for good.
    later = FakeService(db)
    later.now += 120
    later.set_running(None)
    third = DisplayMessages(later)  # type: ignore[arg-type]
    await third.run()
    assert texts(later) == ["first, replaced"]
    assert [r[0] for r in db.execute("SELECT id FROM ocpp201_display_messages")] == [1]
    got = await third.on_get_display_messages(request_id=1)
    assert got == {"status": "Accepted"}
    db.execute("UPDATE ocpp201_display_messages SET info = '{\"id\": 1}'")  # unreadable: dropped, logged
    assert DisplayMessages(FakeService(db)).messages == {}  # type: ignore[arg-type]
    assert db.execute("SELECT COUNT(*) FROM ocpp201_display_messages").fetchone()[0] == 0


@pytest.fixture
async def hmi_octt(tmp_path: Path, csms: Csms) -> AsyncIterator[Octt201]:
    async with octt_on(tmp_path, csms, display="nextion") as harness:
        yield harness


async def test_display_message_shown_again_after_a_restart(hmi_octt: Octt201) -> None:
    octt = hmi_octt
    await octt.start_agent()
    await octt.booted()
    screen = octt.rig.display
    assert isinstance(screen, NextionEmulator)
    answer = await octt.send("SetDisplayMessage", {"message": info(21, "Closed Sunday", "NormalCycle")})
    assert answer["status"] == "Accepted"
    await eventually(lambda: screen.texts["t4"] == "Closed Sunday", what="message on the HMI")
    await octt.restart_agent()
    screen.texts["t4"] = ""  # what the restarted station shows, not what the emulator still had
    await eventually(lambda: screen.texts["t4"] == "Closed Sunday", within=10, what="message again after restart")
    await eventually(lambda: octt.agent is not None and octt.agent.service.online, what="online again")
    assert (await octt.send("GetDisplayMessages", {"requestId": 5}))["status"] == "Accepted"
    notify = (await octt.wait("NotifyDisplayMessages")).payload
    assert [m["id"] for m in notify["messageInfo"]] == [21]


async def test_console_display_logs_the_message_beside_the_guidance(
        octt: Octt201, caplog: pytest.LogCaptureFixture) -> None:
    """The console display driver (the rig's default) logs a SetDisplayMessage text on its screen line, our own
    guidance text kept (an InFront message is not AlwaysFront)."""
    caplog.set_level(logging.INFO, logger="cpagent.display")
    agent = await octt.start_agent()
    await octt.booted()
    answer = await octt.send("SetDisplayMessage", {"message": info(31, "Pay at the kiosk")})
    assert answer["status"] == "Accepted"

    def line() -> str:
        lines = [r.getMessage() for r in caplog.records if r.name == "cpagent.display"]
        return lines[-1] if lines else ""

    await eventually(lambda: "message=Pay at the kiosk" in line(), what="message on the console display's line")
    assert line().startswith("connector 1: idle | 'Tap card or plug in")
    assert agent.connector.display is not None
    assert ("message", "Pay at the kiosk") in agent.connector.display.screens[1].extra


def test_personal_message_size_0_means_none_kept() -> None:
    """Appendices: PersonalMessageSize "0 specifies no personal data may be stored": 0 can be preset, and the
    tariff text of an idTokenInfo is then not kept (pricing shows the fallback instead)."""
    from agent.ocpp.v201.device_model import DeviceModel
    from agent.ocpp.v201.pricing import Pricing

    dm = DeviceModel(connect(":memory:", durable=False), {"DisplayMessageCtrlr/PersonalMessageSize": "0"},
                     evse_ids=(1,))
    assert dm.integer("DisplayMessageCtrlr", "PersonalMessageSize") == 0
    pricing = Pricing.__new__(Pricing)
    pricing._svc = SimpleNamespace(variables=dm)  # type: ignore[assignment]
    assert pricing._personal_text({"format": "UTF8", "content": "0.25 EUR/kWh"}) is None
    dm2 = DeviceModel(connect(":memory:", durable=False), {"DisplayMessageCtrlr/PersonalMessageSize": "4"},
                      evse_ids=(1,))
    pricing._svc = SimpleNamespace(variables=dm2)  # type: ignore[assignment]
    assert pricing._personal_text({"format": "UTF8", "content": "0.25 EUR/kWh"}) == "0.25"
