"""California pricing over DataTransfer (vendorId org.openchargealliance.costmsg): SetUserPrice, RunningCost
(display, cpctl status, triggerMeterValue), FinalCost, DefaultPrice; money as integer minor units."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from agent.diag import DiagServer
from agent.ocpp.v16.pricing import VENDOR_ID, BadMessage, format_money, parse_data, price_text, to_minor_units
from tests.agent.ocpp.conftest import CP, TAG, TAG2, Octt, eventually


def test_money_is_integer_minor_units() -> None:
    parsed = parse_data('{"cost": 0.1, "x": 0.2}')
    assert isinstance(parsed["cost"], Decimal)  # JSON numbers never become floats
    assert to_minor_units(parsed["cost"], 2) + to_minor_units(parsed["x"], 2) == 30
    assert to_minor_units("1.005", 2) == 101  # half up, exact
    assert to_minor_units(3, 2) == 300
    assert to_minor_units(Decimal("2.4999"), 3) == 2500
    assert format_money(12345, 2) == "123.45" and format_money(5, 3) == "0.005" and format_money(7, 0) == "7"
    for bad in (-1, "abc", True, None, 1.5, "NaN", "Infinity"):
        with pytest.raises(BadMessage):
            to_minor_units(bad, 2)
    charging_price = {"kWhPrice": Decimal("0.25"), "hourPrice": 2, "flatFee": "1"}
    assert price_text(charging_price, 2) == "0.25/kWh + 2.00/h + 1.00 flat"
    with pytest.raises(BadMessage):
        parse_data("[1, 2]")
    with pytest.raises(BadMessage):
        parse_data("{not json")


async def cost_msg(octt: Octt, message_id: str, data: object) -> str:
    payload = {"vendorId": VENDOR_ID, "messageId": message_id,
               "data": data if isinstance(data, str) else json.dumps(data)}
    return str((await octt.csms.send(CP, "DataTransfer", payload))["status"])


def screen_extra(octt: Octt) -> dict[str, str]:
    assert octt.agent is not None
    display = octt.agent.connector.display
    screen = display.screens.get(1) if display is not None else None
    return dict(screen.extra) if screen is not None else {}


async def test_data_transfer_dispatch_by_vendor(octt: Octt) -> None:
    await octt.start_agent()
    await octt.booted()
    other = await octt.csms.send(CP, "DataTransfer", {"vendorId": "com.example", "messageId": "X"})
    assert other == {"status": "UnknownVendorId"}
    assert await cost_msg(octt, "NoSuchMessage", {}) == "UnknownMessageId"
    assert await cost_msg(octt, "SetUserPrice", "{broken") == "Rejected"
    assert await cost_msg(octt, "SetUserPrice", {"idToken": TAG}) == "Rejected"  # no priceText
    assert await cost_msg(octt, "RunningCost", {"transactionId": 77, "cost": 1}) == "Rejected"  # unknown tx
    keys = await octt.csms.send(CP, "GetConfiguration", {"key": ["CustomDisplayCostAndPrice", "DefaultPrice",
                                                                 "SupportedFeatureProfiles"]})
    values = {k["key"]: k["value"] for k in keys["configurationKey"]}
    assert values["CustomDisplayCostAndPrice"] == "true"
    assert "CaliforniaPricing" not in values["SupportedFeatureProfiles"]
    default = json.dumps({"priceText": "0.30/kWh", "priceTextOffline": "0.35/kWh offline"})
    assert await octt.csms.send(CP, "ChangeConfiguration", {"key": "DefaultPrice", "value": default}) \
        == {"status": "Accepted"}


async def test_user_price_running_cost_and_final_cost(octt: Octt, tmp_path: Path) -> None:
    agent = await octt.start_agent(NumberOfDecimalsForCostValues="2")
    await octt.booted()
    assert await cost_msg(octt, "SetUserPrice", {"idToken": TAG, "priceText": "0.27/kWh for you"}) == "Accepted"
    await octt.charging(TAG)
    await eventually(lambda: screen_extra(octt).get("price") == "0.27/kWh for you", what="user price shown")
    running = {
        "transactionId": 1, "timestamp": "2026-01-01T10:00:00Z", "meterValue": 1234, "cost": 1.2345,
        "state": "Charging", "chargingPrice": {"kWhPrice": 0.27, "hourPrice": 0.5, "flatFee": 0},
        "triggerMeterValue": {"atCPStatus": ["SuspendedEV"]},
    }
    assert await cost_msg(octt, "RunningCost", running) == "Accepted"
    await eventually(lambda: screen_extra(octt).get("cost") == "1.23", what="running cost shown")
    assert screen_extra(octt)["price"] == "0.27/kWh + 0.50/h + 0.00 flat"
    assert octt.agent is not None and octt.agent.station is not None
    station = octt.agent.station
    status = DiagServer(station, tmp_path / "ctl.sock")._connector_status(station.connector_view(agent.connector.id))
    assert status["display_extra"] == {"price": "0.27/kWh + 0.50/h + 0.00 flat", "cost": "1.23"}
    # triggerMeterValue atCPStatus: the EV pauses -> one MeterValues with context Trigger.
    octt.ctl("ev", connector=1, action="pause")
    await octt.wait_status("SuspendedEV")
    triggered = await octt.wait("MeterValues")
    assert triggered.payload["meterValue"][0]["sampledValue"][0]["context"] == "Trigger"
    assert triggered.payload["transactionId"] == 1
    assert (await agent.tap(TAG)).accepted
    await octt.wait("StopTransaction")
    final = {"transactionId": 1, "cost": "3.456", "priceText": "Total 3.46", "qrCodeText": "https://pay.example/1"}
    assert await cost_msg(octt, "FinalCost", final) == "Accepted"
    await eventually(lambda: screen_extra(octt).get("cost") == "3.46", what="final cost shown")
    assert screen_extra(octt) == {"price": "Total 3.46", "cost": "3.46", "qr": "https://pay.example/1"}


async def test_default_price_shown_when_a_driver_identifies(octt: Octt) -> None:
    default = json.dumps({"priceText": "0.30/kWh", "priceTextOffline": "0.35/kWh offline"})
    agent = await octt.start_agent(DefaultPrice=default)
    await octt.booted()
    assert (await agent.tap(TAG2)).accepted  # no user price for this driver: the default is shown
    await eventually(lambda: screen_extra(octt).get("price") == "0.30/kWh", what="default price shown")
