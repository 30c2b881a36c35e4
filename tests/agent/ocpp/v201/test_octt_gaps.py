"""OCTT 2.0.1 charging-station cases that docs/octt-201-coverage.md found without a test, over real websockets
against the bundled CSMS with the simulator's hardware underneath. Several cases share one agent start where
their OCTT scenarios follow each other without a reboot (the test budget is seconds, not minutes); each step
says which case (TC_x_nn_CS) and which Part 6 tool validation it checks."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.agent.ocpp.v201.conftest import TAG, TAG2, Octt201, eventually


def cv(component: str, variable: str, **extra: Any) -> dict[str, Any]:
    return {"component": {"name": component}, "variable": {"name": variable}, **extra}


async def test_tc_b_32_34_36_e_28_34_f_07_12_24_cs_requests_without_a_transaction(octt: Octt201) -> None:
    await octt.start_agent()
    await octt.booted()
    # TC_B_32_CS: GetVariables of an unknown component -> UnknownComponent, names echoed
    # TC_B_34_CS: attributeType Target of a variable that has only Actual -> NotSupportedAttributeType
    answer = await octt.send("GetVariables", {"getVariableData": [
        cv("UnknownComponent", "OfflineThreshold"),
        {**cv("OCPPCommCtrlr", "OfflineThreshold"), "attributeType": "Target"},
    ]})
    unknown, target = answer["getVariableResult"]
    assert unknown["attributeStatus"] == "UnknownComponent"
    assert (unknown["component"]["name"], unknown["variable"]["name"]) == ("UnknownComponent", "OfflineThreshold")
    assert target["attributeStatus"] == "NotSupportedAttributeType" and target["attributeType"] == "Target"
    assert (target["component"]["name"], target["variable"]["name"]) == ("OCPPCommCtrlr", "OfflineThreshold")
    # TC_B_36_CS: SetVariables of an unknown variable of a known component -> UnknownVariable
    answer = await octt.send("SetVariables", {"setVariableData": [
        cv("OCPPCommCtrlr", "UnknownVariable", attributeValue="1")]})
    result = answer["setVariableResult"][0]
    assert result["attributeStatus"] == "UnknownVariable"
    assert (result["component"]["name"], result["variable"]["name"]) == ("OCPPCommCtrlr", "UnknownVariable")
    # TC_E_28_CS: an unknown transactionId -> not ongoing, nothing queued
    answer = await octt.send("GetTransactionStatus", {"transactionId": "e28-unknown-transaction"})
    assert answer == {"ongoingIndicator": False, "messagesInQueue": False}
    # TC_E_34_CS: without a transactionId -> ongoingIndicator omitted, nothing queued
    assert await octt.send("GetTransactionStatus", {}) == {"messagesInQueue": False}
    # TC_F_12_CS: TriggerMessage MeterValues without an EVSE -> one MeterValues per EVSE, context Trigger
    answer = await octt.send("TriggerMessage", {"requestedMessage": "MeterValues"})
    assert answer["status"] == "Accepted"
    values = (await octt.wait("MeterValues")).payload
    assert values["evseId"] == 1 and values["meterValue"][0]["sampledValue"][0]["context"] == "Trigger"
    # TC_F_07_CS: UnlockConnector with no cable in the socket -> Unlocked
    answer = await octt.send("UnlockConnector", {"evseId": 1, "connectorId": 1})
    assert answer["status"] == "Unlocked"
    # TC_F_24_CS: the EV plugged in, StatusNotification triggered for that connector -> Occupied. (Part 6 also
    # lists a NotifyEvent AvailabilityState; that is monitoring of the Advanced Device Management profile,
    # which this station does not claim: G01.FR.01 asks for the StatusNotification.)
    await octt.plugged()
    await octt.wait_status("Occupied")
    answer = await octt.send("TriggerMessage", {"requestedMessage": "StatusNotification",
                                                "evse": {"id": 1, "connectorId": 1}})
    assert answer["status"] == "Accepted"
    await octt.wait_status("Occupied", count=2)
    assert octt.tx_events() == []


async def test_tc_b_23_g_21_cs_unavailable_persists_across_reset_and_reboot(octt: Octt201) -> None:
    agent = await octt.start_agent()
    await octt.booted()
    # TC_B_23_CS: the connector Unavailable, then Reset OnIdle -> after the boot it is reported Unavailable
    answer = await octt.send("ChangeAvailability", {"operationalStatus": "Inoperative",
                                                    "evse": {"id": 1, "connectorId": 1}})
    assert answer["status"] == "Accepted"
    await octt.wait_status("Unavailable")
    assert (await octt.send("Reset", {"type": "OnIdle"}))["status"] == "Accepted"
    await asyncio.wait_for(agent.service.restart_requested.wait(), 5)
    await octt.restart_agent()
    boot = await octt.wait("BootNotification", count=2, within=10)
    assert boot.payload["reason"] == "RemoteReset"
    await octt.wait_status("Unavailable", count=2)
    assert (await octt.send("ChangeAvailability", {"operationalStatus": "Operative",
                                                   "evse": {"id": 1, "connectorId": 1}}))["status"] == "Accepted"
    await octt.wait_status("Available", count=2)
    # TC_G_21_CS: the whole station Inoperative, then a power cycle (Booting) -> every connector Unavailable
    # (evseId, connectorId not 0), and StartupOfTheDevice / ResetOrReboot as a security event
    assert (await octt.send("ChangeAvailability", {"operationalStatus": "Inoperative"}))["status"] == "Accepted"
    await octt.wait_status("Unavailable", count=3)
    await octt.power_loss()
    await octt.start_agent()
    boot = await octt.wait("BootNotification", count=3, within=10)
    assert boot.payload["reason"] == "PowerUp"
    after = await octt.wait_status("Unavailable", count=4)
    assert after.payload["evseId"] != 0 and after.payload["connectorId"] != 0
    await eventually(lambda: [m.payload["type"] for m in octt.msgs("SecurityEventNotification")].count(
        "StartupOfTheDevice") >= 3, what="StartupOfTheDevice after the power cycle")
