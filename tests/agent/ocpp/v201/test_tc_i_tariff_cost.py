"""OCPP 2.0.1 Tariff and Cost (I01-I06) over real websockets, checked on what the display shows (the console
display driver's last screen): the personal tariff from Authorize, the running cost from CostUpdated, the
final totalCost of the Ended answer kept with the transaction, and the local cost while the CSMS is away.
Named after the use cases: the OCTT Part 6 edition at hand (Core & Advanced Security) has no I test cases."""

from __future__ import annotations

from decimal import Decimal

import pytest

from agent.ocpp.money import BadAmount, local_cost_minor, to_decimal, to_minor_units
from agent.ocpp.v201.pricing import charging_price, currency_decimals
from tests.agent.ocpp.v201.conftest import TAG, Octt201, eventually

COSTMSG = "org.openchargealliance.costmsg"


def shown(octt: Octt201) -> dict[str, str]:
    assert octt.agent is not None
    display = octt.agent.connector.display
    screen = display.screens.get(1) if display is not None else None
    return dict(screen.extra) if screen is not None else {}


def test_money_units() -> None:
    assert to_decimal(0.1) == Decimal("0.1") and to_decimal(4.7) + to_decimal(0.2) == Decimal("4.9")
    with pytest.raises(BadAmount):
        to_minor_units(0.1, 2)  # the 1.6 costmsg path never takes a float
    for bad in (-1, "x", True, None, float("nan"), "1e30"):
        with pytest.raises(BadAmount):
            to_decimal(bad)
    price = charging_price({"vendorId": COSTMSG, "chargingPrice": {"kWhPrice": 0.3, "hourPrice": "2"}})
    assert price == {"kWhPrice": Decimal("0.3"), "hourPrice": Decimal(2)}
    assert charging_price({"vendorId": "other", "chargingPrice": {"kWhPrice": 1}}) is None
    # 10 kWh at 0.30 + 30 min at 2.00/h = 4.00; JPY has no minor unit
    assert local_cost_minor(price, energy_wh=10_000, duration_s=1800, decimals=2) == 400
    assert currency_decimals("jpy") == 0 and currency_decimals("EUR") == 2


async def test_i01_i02_i03_i06_tariff_running_and_final_cost(octt: Octt201) -> None:
    octt.csms.id_token_infos[TAG] = {"status": "Accepted",
                                     "personalMessage": {"format": "UTF8", "content": "0.25 EUR/kWh for you"}}
    octt.csms.transaction_event_answers["Ended"] = {"totalCost": 4.7}
    octt.csms.transaction_event_answers["Updated"] = {
        "updatedPersonalMessage": {"format": "UTF8", "content": "Now 0.20 EUR/kWh"}}
    agent = await octt.start_agent({"TariffCostCtrlr/Currency": "EUR"})
    await octt.booted()
    started = await octt.charging(TAG)
    tx = started["transactionInfo"]["transactionId"]
    await eventually(lambda: shown(octt).get("price") in ("0.25 EUR/kWh for you", "Now 0.20 EUR/kWh"),
                     what="personal tariff on the display")
    assert (await octt.send("CostUpdated", {"totalCost": 1.234, "transactionId": tx})) == {}
    await eventually(lambda: shown(octt).get("cost") == "1.23 EUR", what="running cost on the display")
    await eventually(lambda: shown(octt).get("price") == "Now 0.20 EUR/kWh", what="updated personal message (I06)")
    assert (await octt.send("CostUpdated", {"totalCost": 9, "transactionId": "not-running"})) == {}
    assert shown(octt).get("cost") == "1.23 EUR"
    octt.ctl("unplug", connector=1)
    await octt.wait_tx_event("Ended")
    await eventually(lambda: shown(octt).get("cost") == "4.70 EUR", what="final cost on the finished screen")
    pricing = agent.service.features["Pricing"]
    assert pricing.kept(tx) == {"total": Decimal("4.70"), "currency": "EUR", "source": "csms", "final": True}


async def test_i04_i05_offline_fallback_and_local_cost(octt: Octt201) -> None:
    """With a known tariff (customData chargingPrice) the running and final cost are computed locally while
    the CSMS is unreachable; a later total of the CSMS wins over the local one."""
    octt.csms.id_token_infos[TAG] = {
        "status": "Accepted", "customData": {"vendorId": COSTMSG, "chargingPrice": {"kWhPrice": 0.5, "flatFee": 1}}}
    agent = await octt.start_agent({"TariffCostCtrlr/TariffFallbackMessage": "See the price sign"})
    await octt.booted()
    started = await octt.charging(TAG)
    tx = started["transactionInfo"]["transactionId"]
    await eventually(lambda: shown(octt).get("price") == "See the price sign", what="fallback tariff text (I04)")
    await octt.csms.outage(2.5)
    await eventually(lambda: not agent.service.online, what="offline")
    await eventually(lambda: shown(octt).get("cost", "").startswith("~"), what="local running cost")
    session = agent.connector.session
    assert session is not None
    await agent.tap(TAG)  # the driver stops while the CSMS is away
    await eventually(lambda: agent.connector.session is None, what="session stopped")
    pricing = agent.service.features["Pricing"]
    kept = pricing.kept(tx)
    assert kept is not None and kept["source"] == "local" and kept["total"] >= Decimal("1.00")
    assert shown(octt)["cost"] == f"~{kept['total']} EUR"
    assert pricing.cost_text(tx) == f"~{kept['total']} EUR (local)"  # as `cpctl sessions` shows it
    octt.csms.transaction_event_answers["Ended"] = {"totalCost": 2}
    await octt.wait_tx_event("Ended", within=15)
    await eventually(lambda: (pricing.kept(tx) or {}).get("source") == "csms", within=10, what="CSMS total")
    assert pricing.kept(tx)["total"] == Decimal("2.00") and shown(octt)["cost"] == "2.00 EUR"
    assert pricing.cost_text(tx) == "2.00 EUR" and pricing.cost_text("unknown") is None
