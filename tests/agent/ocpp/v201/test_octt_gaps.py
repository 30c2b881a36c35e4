"""OCTT 2.0.1 charging-station cases that docs/octt-201-coverage.md found without a test, over real websockets
against the bundled CSMS with the simulator's hardware underneath. Several cases share one agent start where
their OCTT scenarios follow each other without a reboot (the test budget is seconds, not minutes); each step
says which case (TC_x_nn_CS) and which Part 6 tool validation it checks."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from simulator.csms import Csms
from simulator.rig import Rig, RigOptions
from tests.agent.ocpp.v201.conftest import CP, TAG, TAG2, Octt201, eventually


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


FLEET = {"idToken": "FLEET", "type": "Central"}


async def test_tc_e_04_c_04_c_42_f_14_g_17_j_03_cs_card_first_then_other_cards_trigger_and_inoperative(
        octt: Octt201) -> None:
    octt.csms.id_token_infos.update({TAG: {"status": "Accepted", "groupIdToken": FLEET},
                                     "STOLEN": {"status": "Invalid", "groupIdToken": FLEET}})
    octt.rig.connectors[1].plant.ev.pwm_reaction_s = 0.2  # a quick EV: S2 closed 0.2 s after the PWM
    agent = await octt.start_agent({"AlignedDataCtrlr/TxEndedInterval": 1})
    await octt.booted()
    # TC_E_04_CS: authorization first (Authorized local), then the cable (EnergyTransferStarted)
    assert (await agent.tap(TAG)).accepted
    await octt.plugged()
    started = await octt.wait_tx_event("Started")
    tx = started["transactionInfo"]["transactionId"]
    assert started["idToken"]["idToken"] == TAG and started["evse"]["id"] == 1
    await octt.wait_charging_state("Charging")
    events = len(octt.tx_events())
    # TC_C_04_CS: a different idToken (Accepted, no group) -> Authorize, but no stop and no TransactionEvent
    await agent.tap(TAG2)
    await eventually(lambda: [m.payload["idToken"]["idToken"] for m in octt.msgs("Authorize")][-1:] == [TAG2],
                     what="Authorize of the other card")
    # TC_C_42_CS: a card of the same group that the CSMS says is Invalid -> not stopped by the GroupId
    await agent.tap("STOLEN")
    await eventually(lambda: [m.payload["idToken"]["idToken"] for m in octt.msgs("Authorize")][-1:] == ["STOLEN"],
                     what="Authorize of the invalid group member")
    # TC_G_17_CS: the connector Inoperative while charging -> Scheduled, Unavailable once the EV has left
    answer = await octt.send("ChangeAvailability", {"operationalStatus": "Inoperative",
                                                    "evse": {"id": 1, "connectorId": 1}})
    assert answer["status"] == "Scheduled"
    await asyncio.sleep(1.2)  # J_03: at least one AlignedDataCtrlr.TxEndedInterval boundary in the transaction
    assert len(octt.tx_events()) == events and agent.connector.session is not None  # C_04, C_42: no stop
    assert not [m for m in octt.msgs("StatusNotification") if m.payload["connectorStatus"] == "Unavailable"]
    # TC_F_14_CS: TriggerMessage TransactionEvent without an EVSE -> an Updated per EVSE with a transaction,
    # chargingState reported although unchanged (the Part 6 validation; agent fixed for it)
    assert (await octt.send("TriggerMessage", {"requestedMessage": "TransactionEvent"}))["status"] == "Accepted"
    trig = await octt.wait_tx_event("Updated", where=lambda p: p["triggerReason"] == "Trigger")
    assert trig["evse"]["id"] == 1 and trig["transactionInfo"]["chargingState"] == "Charging"
    assert trig["meterValue"][0]["sampledValue"][0]["context"] == "Trigger"
    assert (await agent.tap(TAG)).accepted  # StopAuthorized
    ended = await octt.wait_tx_event("Ended")
    assert ended["transactionInfo"]["transactionId"] == tx and ended["triggerReason"] == "StopAuthorized"
    # TC_J_03_CS: the Ended carries the clock-aligned values of AlignedDataTxEndedInterval (Sample.Clock)
    clock = [v for v in ended["meterValue"] if v["sampledValue"][0]["context"] == "Sample.Clock"]
    assert clock and all(v["timestamp"].endswith(".000Z") for v in clock)
    octt.ctl("unplug", connector=1)
    await octt.wait_status("Unavailable")


async def test_tc_e_13_f_04_f_02_f_03_cs_remote_start_first(octt: Octt201) -> None:
    central = {"idToken": TAG2, "type": "Central"}
    octt.rig.connectors[1].plant.ev.pwm_reaction_s = 0.2  # a quick EV: S2 closed 0.2 s after the PWM
    agent = await octt.start_agent({"TxCtrlr/TxStartPoint": "Authorized", "TxCtrlr/EVConnectionTimeOut": 1})
    await octt.booted()
    # TC_E_13_CS: TxStartPoint Authorized, remote start: Authorize (AuthorizeRemoteStart true), then Started
    # RemoteStart with the idToken and remoteStartId
    answer = await octt.send("RequestStartTransaction", {"idToken": central, "remoteStartId": 13, "evseId": 1})
    assert answer["status"] == "Accepted"
    assert (await octt.wait("Authorize")).payload["idToken"] == central
    started = await octt.wait_tx_event("Started")
    assert started["triggerReason"] == "RemoteStart" and started["idToken"] == central
    assert started["transactionInfo"]["remoteStartId"] == 13
    # TC_F_04_CS: no cable within EVConnectionTimeOut -> Ended EVConnectTimeout (TxStopPoint has Authorized)
    ended = await octt.wait_tx_event("Ended", within=5)
    assert ended["triggerReason"] == "EVConnectTimeout" and ended["transactionInfo"]["stoppedReason"] == "Timeout"
    # TC_F_02_CS: remote start first, then the cable -> charging
    answer = await octt.send("RequestStartTransaction", {"idToken": central, "remoteStartId": 38, "evseId": 1})
    assert answer["status"] == "Accepted"
    await octt.wait("Authorize", count=2)
    second = await octt.wait_tx_event("Started", count=2)
    assert second["triggerReason"] == "RemoteStart" and second["transactionInfo"]["remoteStartId"] == 38
    await octt.plugged()
    await octt.wait_charging_state("Charging")
    assert agent.station is not None
    tx = second["transactionInfo"]["transactionId"]
    assert (await octt.send("RequestStopTransaction", {"transactionId": tx}))["status"] == "Accepted"
    await octt.wait_tx_event("Ended", count=2)
    # TC_F_03_CS: AuthorizeRemoteStart false -> no Authorize, the transaction starts at once
    answer = await octt.send("SetVariables", {"setVariableData": [
        cv("AuthCtrlr", "AuthorizeRemoteStart", attributeValue="false")]})
    assert answer["setVariableResult"][0]["attributeStatus"] == "Accepted"
    assert (await octt.send("RequestStartTransaction", {"idToken": central, "remoteStartId": 3,
                                                        "evseId": 1}))["status"] == "Accepted"
    third = await octt.wait_tx_event("Started", count=3)
    assert third["triggerReason"] == "RemoteStart" and len(octt.msgs("Authorize")) == 2


async def test_tc_e_51_e_29_e_33_e_50_e_31_cs_transaction_event_retries_and_status_with_queue(
        octt: Octt201) -> None:
    refuse: dict[str, int] = {}  # "Started"/"Ended"/"Trigger": how many more sends to answer with a CALLERROR

    def hostile(_cp: str, action: str, unique_id: str, payload: dict[str, Any]) -> str | None:
        key = payload["triggerReason"] if payload.get("triggerReason") == "Trigger" else payload.get("eventType")
        if action != "TransactionEvent" or not refuse.get(str(key)):
            return None
        refuse[str(key)] -= 1
        return json.dumps([4, unique_id, "InternalError", "refused by the test", {}])

    octt.csms.hostile_reply = hostile
    octt.rig.connectors[1].plant.ev.pwm_reaction_s = 0.2  # a quick EV: S2 closed 0.2 s after the PWM
    agent = await octt.start_agent({"OCPPCommCtrlr/MessageAttempts.TransactionEvent": 3,
                                    "OCPPCommCtrlr/MessageAttemptInterval.TransactionEvent": 1})
    await octt.booted()
    await octt.plugged()
    # TC_E_51_CS: the first send of the Started gets a CALLERROR, the second (one interval later) is answered
    refuse["Started"] = 1
    assert (await agent.tap(TAG)).accepted
    first = await octt.wait("TransactionEvent")
    tx = first.payload["transactionInfo"]["transactionId"]
    # TC_E_29_CS: ongoing, its event waiting in the queue; TC_E_33_CS: without a transactionId, the queue
    assert await octt.send("GetTransactionStatus", {"transactionId": tx}) == {
        "ongoingIndicator": True, "messagesInQueue": True}
    assert await octt.send("GetTransactionStatus", {}) == {"messagesInQueue": True}
    second = await octt.wait("TransactionEvent", count=2)
    assert second.payload == first.payload and second.at - first.at >= 0.8
    await eventually(lambda: agent.service.outbox.queued_for(tx) == 0, what="the Started acknowledged")
    await octt.wait_charging_state("Charging")
    # TC_E_50_CS: every send answered with a CALLERROR -> MessageAttempts sends (interval x previous sends
    # apart), then given up: no further send
    refuse["Trigger"] = 99
    answer = await octt.send("SetVariables", {"setVariableData": [
        {**cv("OCPPCommCtrlr", "MessageAttempts", attributeValue="2"), "variable": {
            "name": "MessageAttempts", "instance": "TransactionEvent"}}]})
    assert answer["setVariableResult"][0]["attributeStatus"] == "Accepted"
    assert (await octt.send("TriggerMessage", {"requestedMessage": "TransactionEvent",
                                               "evse": {"id": 1}}))["status"] == "Accepted"

    def triggered() -> list[Any]:
        return [m for m in octt.msgs("TransactionEvent") if m.payload["triggerReason"] == "Trigger"]

    await eventually(lambda: len(triggered()) == 2, within=5, what="two sends of the triggered event")
    await eventually(lambda: any(action == "TransactionEvent" for action, _, _ in agent.service.outbox.dropped()),
                     what="the triggered event given up")
    sends = triggered()
    assert sends[1].at - sends[0].at >= 0.8
    await asyncio.sleep(0.5)  # dropped already: no third send (it would be due 2 s after the second anyway)
    assert len(triggered()) == 2
    # TC_E_31_CS: ended, the Ended still waiting in the queue -> not ongoing, messagesInQueue true
    refuse["Ended"] = 1
    await agent.tap(TAG)
    await octt.wait_tx_event("Ended")
    assert await octt.send("GetTransactionStatus", {"transactionId": tx}) == {
        "ongoingIndicator": False, "messagesInQueue": True}
    await octt.wait_tx_event("Ended", count=2)
    await eventually(lambda: agent.service.outbox.queued_for(tx) == 0, what="the Ended acknowledged")
    assert await octt.send("GetTransactionStatus", {"transactionId": tx}) == {
        "ongoingIndicator": False, "messagesInQueue": False}


async def test_tc_c_13_06_07_56_09_10_11_12_cs_local_start_with_the_cache(octt: Octt201) -> None:
    from agent.authcache import IdTagInfo

    octt.csms.auth_list.update({"BLOCKED": "Blocked", "EXPIRED": "Expired", "UNKNOWN": "Unknown",
                                "C09": "Invalid", "C10": "Blocked", "C11": "Expired", "C12": "Accepted"})
    agent = await octt.start_agent({"AuthCtrlr/LocalPreAuthorize": True})
    cache = agent.service.features["Transactions"].cache
    # Memory state of the cases: IdTokenCached (the cache as an earlier answer would have left it)
    cache.update(TAG, IdTagInfo("Accepted"))
    for token, status in (("C09", "Invalid"), ("C10", "Blocked"), ("C11", "Expired"), ("C12", "Invalid")):
        cache.update(token, IdTagInfo(status))
    await octt.booted()

    def authorized() -> list[str]:
        return [m.payload["idToken"]["idToken"] for m in octt.msgs("Authorize")]

    # TC_C_13_CS: a cached Accepted card before the cable: no Authorize (LocalPreAuthorize), the transaction
    # starts with the cable (TxStartPoint PowerPathClosed), triggerReason Authorized, energy flows
    assert (await agent.tap(TAG)).accepted
    await octt.plugged()
    started = await octt.wait_tx_event("Started")
    assert started["idToken"]["idToken"] == TAG and authorized() == []
    await octt.wait_charging_state("Charging")
    await agent.tap(TAG)
    await octt.wait_tx_event("Ended")
    octt.ctl("unplug", connector=1)
    await octt.wait_status("Available", count=2)
    await octt.plugged()
    # TC_C_06_CS / TC_C_07_CS / TC_C_56_CS: unknown to the cache, Blocked / Expired / Unknown by the CSMS;
    # TC_C_09_CS / TC_C_10_CS / TC_C_11_CS: cached Invalid / Blocked / Expired, the same answer again:
    # an Authorize each time (a cached status other than Accepted is asked again), no transaction
    for token in ("BLOCKED", "EXPIRED", "UNKNOWN", "C09", "C10", "C11"):
        assert not (await agent.tap(token)).accepted, token
        assert authorized()[-1] == token
    assert len(octt.tx_events()) == len(octt.tx_events(started["transactionInfo"]["transactionId"]))
    # TC_C_12_CS: cached Invalid, the CSMS now says Accepted -> Authorize, then the transaction and energy
    assert (await agent.tap("C12")).accepted
    assert authorized()[-1] == "C12"
    second = await octt.wait_tx_event("Started", count=2)
    assert second["idToken"]["idToken"] == "C12" and second["triggerReason"] == "Authorized"
    await octt.wait_charging_state("Charging")
    learnt = cache.lookup("C12")
    assert learnt is not None and learnt.status == "Accepted"  # the cache learnt the new answer


async def test_tc_e_24_e_25_e_17_e_26_cs_ev_side_disconnect(octt: Octt201) -> None:
    agent = await octt.start_agent()  # TxStopPoint EVConnected,Authorized (default), detachable cable, a lock
    plant = octt.rig.connectors[1].plant
    plant.ev.pwm_reaction_s = 0.2  # a quick EV (S2 closed 0.2 s after the PWM): three sessions in the budget
    await octt.booted()

    async def set_variable(component: str, variable: str, value: str) -> None:
        answer = await octt.send("SetVariables", {"setVariableData": [cv(component, variable, attributeValue=value)]})
        assert answer["setVariableResult"][0]["attributeStatus"] == "Accepted"

    # TC_E_24_CS: StopTxOnEVSideDisconnect true, UnlockOnEVSideDisconnect true: the EV leaves -> the
    # transaction ends (EVCommunicationLost, chargingState Idle), the cable is released, Available
    first = await octt.charging(TAG)
    assert plant.locked
    octt.ctl("unplug", connector=1)
    ended = await octt.wait_tx_event("Ended")
    assert ended["triggerReason"] == "EVCommunicationLost" and ended["transactionInfo"]["chargingState"] == "Idle"
    assert ended["transactionInfo"]["transactionId"] == first["transactionInfo"]["transactionId"]
    await octt.wait_status("Available", count=2)
    await eventually(lambda: not plant.locked, what="the lock open")
    # TC_E_25_CS / TC_E_17_CS: UnlockOnEVSideDisconnect false: the same Ended (Deauthorized by the EV side
    # disconnect), but the cable stays locked in the socket until the idToken of the transaction is shown
    await set_variable("OCPPCommCtrlr", "UnlockOnEVSideDisconnect", "false")
    await octt.plugged()
    assert (await agent.tap(TAG)).accepted
    await octt.wait_charging_state("Charging")  # the first Charging was of the first transaction
    await eventually(lambda: len([p for p in octt.tx_events() if p["eventType"] == "Started"]) == 2, what="Started")
    octt.ctl("unplug", connector=1)
    ended = await octt.wait_tx_event("Ended", count=2)
    assert ended["triggerReason"] == "EVCommunicationLost" and ended["transactionInfo"]["chargingState"] == "Idle"
    assert ended["transactionInfo"]["stoppedReason"] == "EVDisconnected"
    await asyncio.sleep(0.3)
    assert plant.locked
    await agent.tap(TAG)
    await eventually(lambda: not plant.locked, what="the lock opened by the card of the transaction")
    # TC_E_26_CS: StopTxOnEVSideDisconnect false, TxStopPoint Authorized (EVConnected would end it whatever
    # this says): the EV leaves -> the transaction is kept (Updated EVCommunicationLost); plugged back ->
    # energy again; the card ends it
    await set_variable("OCPPCommCtrlr", "UnlockOnEVSideDisconnect", "true")
    await set_variable("TxCtrlr", "StopTxOnEVSideDisconnect", "false")
    await set_variable("TxCtrlr", "TxStopPoint", "Authorized")
    await octt.plugged()
    assert (await agent.tap(TAG)).accepted
    third = await octt.wait_tx_event("Started", count=3)
    tx = third["transactionInfo"]["transactionId"]
    octt.ctl("unplug", connector=1)  # (energy not flowing yet: the contactor's minimum off time runs)
    lost = await octt.wait_tx_event("Updated", where=lambda p: p["triggerReason"] == "EVCommunicationLost")
    assert lost["transactionInfo"]["transactionId"] == tx
    await octt.plugged()
    back = await octt.wait_tx_event("Updated", where=lambda p: p["triggerReason"] == "CablePluggedIn", within=10)
    assert back["transactionInfo"]["transactionId"] == tx
    assert [p["eventType"] for p in octt.tx_events(tx)].count("Ended") == 0
    await agent.tap(TAG)
    ended = await octt.wait_tx_event("Ended", count=3)
    assert ended["transactionInfo"]["transactionId"] == tx and ended["triggerReason"] == "StopAuthorized"


async def test_tc_c_38_c_36_c_57_e_52_cs_cache_and_remote_authorization_settings(octt: Octt201) -> None:
    from agent.authcache import IdTagInfo

    octt.csms.auth_list.update({"C36": "Invalid", "E52": "Accepted"})
    agent = await octt.start_agent({"AuthCacheCtrlr/Enabled": False})
    cache = agent.service.features["Transactions"].cache
    await octt.booted()

    async def set_variable(component: str, variable: str, value: str) -> None:
        answer = await octt.send("SetVariables", {"setVariableData": [cv(component, variable, attributeValue=value)]})
        assert answer["setVariableResult"][0]["attributeStatus"] == "Accepted"

    def authorized() -> list[str]:
        return [m.payload["idToken"]["idToken"] for m in octt.msgs("Authorize")]

    # TC_C_38_CS: the cache disabled -> ClearCache Rejected
    assert (await octt.send("ClearCache", {}))["status"] == "Rejected"
    await set_variable("AuthCacheCtrlr", "Enabled", "true")
    cache.update("C36", IdTagInfo("Accepted"))  # memory state: IdTokenCached
    cache.update("C57", IdTagInfo("Invalid"))
    # TC_C_36_CS: LocalPreAuthorize false: a card Accepted in the cache is still authorized online (Invalid now)
    assert not (await agent.tap("C36")).accepted
    assert authorized() == ["C36"]
    # TC_C_57_CS: LocalPreAuthorize and DisablePostAuthorize true: a card cached Invalid is refused, no Authorize
    await set_variable("AuthCtrlr", "LocalPreAuthorize", "true")
    await set_variable("AuthCacheCtrlr", "DisablePostAuthorize", "true")
    assert not (await agent.tap("C57")).accepted
    # TC_E_52_CS: DisableRemoteAuthorization true: a card unknown locally is refused without an Authorize
    await set_variable("AuthCtrlr", "DisableRemoteAuthorization", "true")
    assert not (await agent.tap("E52")).accepted
    await asyncio.sleep(0.2)
    assert authorized() == ["C36"] and octt.tx_events() == []


async def test_tc_b_27_c_32_cs_evse_reset_immediate_then_cache_after_reboot(
        octt: Octt201, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.ocpp.v201 import handlers

    monkeypatch.setattr(handlers, "EVSE_RESET_OFF_S", 0.1)  # the EVSE's out-of-service moment, shortened
    # TxStartPoint Authorized: Part 6 runs TC_C_32 step 2 (the card's own TransactionEvent) only "when
    # TxStartPoint contains Authorized OR the transaction already started"
    agent = await octt.start_agent({"AuthCtrlr/LocalPreAuthorize": True, "TxCtrlr/TxStartPoint": "Authorized"})
    await octt.booted()
    await octt.plugged()
    assert (await agent.tap(TAG)).accepted  # online: Authorize Accepted -> cached
    assert [m.payload["idToken"]["idToken"] for m in octt.msgs("Authorize")] == [TAG]
    started = await octt.wait_tx_event("Started")
    # TC_B_27_CS: Reset Immediate of the EVSE with a transaction -> Accepted; Ended ResetCommand /
    # ImmediateReset, chargingState EVConnected (the EV is still plugged in); the station does not restart
    assert (await octt.send("Reset", {"type": "Immediate", "evseId": 1}))["status"] == "Accepted"
    ended = await octt.wait_tx_event("Ended")
    assert ended["transactionInfo"]["transactionId"] == started["transactionInfo"]["transactionId"]
    assert (ended["triggerReason"], ended["transactionInfo"]["stoppedReason"]) == ("ResetCommand", "ImmediateReset")
    assert ended["transactionInfo"]["chargingState"] == "EVConnected"
    assert not agent.service.restart_requested.is_set()
    # TC_C_32_CS: the cache survives a reboot. In Part 6's order (a card shown while the restarted station had
    # not yet seen a cable still in made the cable, not the card, start the transaction): the EV of TC_B_27
    # leaves; reboot to Booted (waited for: the connector reported Available after the boot); the cached card
    # starts a transaction at once (LocalPreAuthorize, no AuthorizeRequest), triggerReason Authorized. Steps 4-5
    # (EVConnectedPreSession, EnergyTransferStarted) have no tool validation and are not played here.
    octt.ctl("unplug", connector=1)
    agent = await octt.restart_agent()
    boot = await octt.wait("BootNotification", count=2, within=10)
    await eventually(lambda: any(m.at >= boot.at and m.payload.get("connectorStatus") == "Available"
                                 for m in octt.msgs("StatusNotification")), what="Booted: the connector Available")
    assert (await agent.tap(TAG)).accepted
    second = await octt.wait_tx_event("Started", count=2)
    assert second["triggerReason"] == "Authorized" and second["idToken"]["idToken"] == TAG
    assert len(octt.msgs("Authorize")) == 1


async def test_tc_e_45_c_16_cs_offline_group_stop_then_offline_start_refused_on_reconnect(octt: Octt201) -> None:
    from agent.authcache import IdTagInfo

    octt.csms.id_token_infos.update({TAG: {"status": "Accepted", "groupIdToken": FLEET},
                                     "C16": {"status": "Invalid"}})
    octt.rig.connectors[1].plant.ev.pwm_reaction_s = 0.2  # a quick EV: S2 closed 0.2 s after the PWM
    agent = await octt.start_agent({"AuthCtrlr/LocalPreAuthorize": True, "TxCtrlr/StopTxOnInvalidId": True})
    cache = agent.service.features["Transactions"].cache
    # Memory state: TAG2 cached with the group of TAG (E_45), C16 cached Accepted (C_16)
    cache.update(TAG2, IdTagInfo("Accepted", None, "FLEET"))
    cache.update("C16", IdTagInfo("Accepted"))
    await octt.booted()
    first = await octt.charging(TAG)
    tx1 = first["transactionInfo"]["transactionId"]
    await eventually(lambda: agent.service.outbox.queued_for(tx1) == 0, what="online events acknowledged")
    online = len(octt.tx_events())
    await octt.csms.outage(2.0)
    await eventually(lambda: not agent.service.online, what="offline")
    # TC_E_45_CS: offline, another card of the same group (known from the cache) stops it; the EV leaves
    assert (await agent.tap(TAG2)).accepted
    octt.ctl("unplug", connector=1)
    # TC_C_16_CS: offline, a cached Accepted card starts a transaction ...
    await octt.plugged()
    assert (await agent.tap("C16")).accepted
    ended = await octt.wait_tx_event("Ended", within=15)  # delivered after the reconnect, offline true
    assert ended["transactionInfo"]["transactionId"] == tx1 and ended["triggerReason"] == "StopAuthorized"
    assert ended["idToken"]["idToken"] == TAG2 and ended["offline"] is True
    assert all(p.get("offline") is True for p in octt.tx_events()[online:] if p["timestamp"] <= ended["timestamp"])
    # ... the CSMS answers its Started with Invalid -> Deauthorized (StopTxOnInvalidId true)
    started = await octt.wait_tx_event("Started", count=2, within=10)
    assert started["idToken"]["idToken"] == "C16" and started["offline"] is True
    deauthorized = await octt.wait_tx_event("Ended", count=2, within=10)
    assert deauthorized["transactionInfo"]["transactionId"] == started["transactionInfo"]["transactionId"]
    assert deauthorized["triggerReason"] == "Deauthorized"
    assert deauthorized["transactionInfo"]["stoppedReason"] == "DeAuthorized"


async def test_tc_e_22_j_08_cs_energy_transfer_stopped_by_the_ev_and_begin_values_once_the_evse_is_known(
        octt: Octt201) -> None:
    octt.rig.connectors[1].plant.ev.pwm_reaction_s = 0.2  # a quick EV: S2 closed 0.2 s after the PWM
    agent = await octt.start_agent({"TxCtrlr/TxStartPoint": "Authorized", "TxCtrlr/TxStopPoint": "EnergyTransfer"})
    await octt.booted()
    # TC_J_08_CS: TxStartPoint Authorized, the card shown before the cable (no EVSE chosen) -> Started. On this
    # one-EVSE station the EVSE is known at once, so the Started itself names it and carries the
    # Transaction.Begin values (Part 6 expects them in the Updated that first names the EVSE)
    assert (await agent.tap(TAG, None)).accepted
    started = await octt.wait_tx_event("Started")
    tx = started["transactionInfo"]["transactionId"]
    assert started["evse"]["id"] == 1
    assert started["meterValue"][0]["sampledValue"][0]["context"] == "Transaction.Begin"
    await octt.plugged()
    await octt.wait_charging_state("Charging")
    # TC_E_22_CS: TxStopPoint EnergyTransfer, the EV suspends -> the transaction ends, StoppedByEV. Part 6
    # pairs an Ended with chargingState EVConnected; the spec's SuspendedEV ("the EVSE is offering energy but
    # the EV is not taking any") is what holds here (the PWM stays on), so it is accepted too: spec followed.
    octt.ctl("ev", connector=1, action="pause")
    ended = await octt.wait_tx_event("Ended")
    assert ended["transactionInfo"]["transactionId"] == tx
    assert ended["triggerReason"] == "ChargingStateChanged"
    assert ended["transactionInfo"]["chargingState"] in ("EVConnected", "SuspendedEV")
    assert ended["transactionInfo"]["stoppedReason"] == "StoppedByEV"
    if ended["transactionInfo"]["chargingState"] == "SuspendedEV":
        assert agent.station is not None and (agent.station.connector_view(1).duty_percent or 0) > 0


async def test_tc_p_03_n_31_n_32_a_15_cs_custom_data_customer_information_and_sign_certificate_rejected(
        octt: Octt201) -> None:
    from agent.ocpp.v201.customer_information import NO_DATA

    octt.csms.sign_certificate_status = "Rejected"
    await octt.start_agent()
    await octt.booted()
    # TC_P_03_CS: requests with customData (vendor extension fields) are handled as without it
    custom = {"vendorId": "org.openchargealliance.octt", "note": "ignore me"}
    answer = await octt.send("SetVariables", {"customData": custom, "setVariableData": [
        {**cv("OCPPCommCtrlr", "OfflineThreshold", attributeValue="200", attributeType="Actual"),
         "customData": custom}]})
    assert answer["setVariableResult"][0]["attributeStatus"] == "Accepted"
    answer = await octt.send("GetVariables", {"customData": custom, "getVariableData": [
        cv("OCPPCommCtrlr", "OfflineThreshold", attributeType="Actual")]})
    result = answer["getVariableResult"][0]
    assert (result["attributeStatus"], result.get("attributeType", "Actual"), result["attributeValue"]) == (
        "Accepted", "Actual", "200")

    def notes(request_id: int) -> list[dict[str, Any]]:
        return [m.payload for m in octt.msgs("NotifyCustomerInformation") if m.payload["requestId"] == request_id]

    stranger = {"idToken": "NEVERSEEN", "type": "ISO14443"}
    # TC_N_31_CS: clear and report for an idToken we hold nothing of -> Accepted, "no data"
    answer = await octt.send("CustomerInformation", {"requestId": 31, "report": True, "clear": True,
                                                     "idToken": stranger})
    assert answer["status"] == "Accepted"
    await eventually(lambda: notes(31), what="NotifyCustomerInformation 31")
    assert notes(31)[0]["data"] == NO_DATA and notes(31)[0]["tbc"] is False
    # TC_N_32_CS: clear without report -> Accepted, a message that the data is cleared
    answer = await octt.send("CustomerInformation", {"requestId": 32, "report": False, "clear": True,
                                                     "idToken": {"idToken": TAG, "type": "ISO14443"}})
    assert answer["status"] == "Accepted"
    await eventually(lambda: notes(32), what="NotifyCustomerInformation 32")
    assert notes(32)[0]["data"] == "Cleared"
    # TC_A_15_CS: TriggerMessage SignChargingStationCertificate -> Accepted, SignCertificate; the CSMS
    # rejects it: nothing breaks, the station goes on answering
    answer = await octt.send("TriggerMessage", {"requestedMessage": "SignChargingStationCertificate"})
    assert answer["status"] == "Accepted"
    await octt.wait("SignCertificate")
    assert (await octt.send("GetTransactionStatus", {}))["messagesInQueue"] is False


async def test_tc_c_44_c_41_cs_group_members_from_the_cache(octt: Octt201) -> None:
    from agent.authcache import IdTagInfo

    octt.csms.id_token_infos.update({TAG: {"status": "Accepted", "groupIdToken": FLEET},
                                     "STOLEN": {"status": "Invalid", "groupIdToken": FLEET}})
    octt.rig.connectors[1].plant.ev.pwm_reaction_s = 0.2  # a quick EV: S2 closed 0.2 s after the PWM
    agent = await octt.start_agent({"AuthCtrlr/LocalPreAuthorize": True})
    cache = agent.service.features["Transactions"].cache
    for token, status in ((TAG, "Accepted"), (TAG2, "Accepted"), ("STOLEN", "Invalid")):  # IdTokenCached
        cache.update(token, IdTagInfo(status, None, "FLEET"))
    await octt.booted()
    started = await octt.charging(TAG)  # from the cache: no Authorize
    assert started["triggerReason"] == "Authorized" and not octt.msgs("Authorize")
    events = len(octt.tx_events())
    # TC_C_44_CS: a card of the group cached Invalid -> asked again (Authorize), Invalid: no stop, no event
    assert not (await agent.tap("STOLEN")).accepted
    assert [m.payload["idToken"]["idToken"] for m in octt.msgs("Authorize")] == ["STOLEN"]
    await asyncio.sleep(0.3)
    assert len(octt.tx_events()) == events and agent.connector.session is not None
    # TC_C_41_CS: another card of the group, Accepted in the cache -> stops it (StopAuthorized), no Authorize
    assert (await agent.tap(TAG2)).accepted
    ended = await octt.wait_tx_event("Ended")
    assert ended["triggerReason"] == "StopAuthorized" and ended["transactionInfo"]["stoppedReason"] == "Local"
    assert len(octt.msgs("Authorize")) == 1


async def test_tc_b_41_cs_reset_on_idle_with_two_transactions(tmp_path: Path, csms: Csms) -> None:
    rig = Rig(RigOptions(directory=tmp_path / "two", csms_url=csms.url, charge_point_id=CP, ocpp_version="2.0.1",
                         connectors=2))  # HFS-8 = 2: two EVSEs of one connector each
    await rig.start()
    octt = Octt201(csms, rig)
    try:
        agent = await octt.start_agent({"TxCtrlr/TxStartPoint": "EVConnected"})
        await octt.booted()
        await octt.wait_status("Available", evse_id=2)
        octt.ctl("plug", connector=1)
        octt.ctl("plug", connector=2)
        await eventually(lambda: len(octt.transaction_ids()) == 2, what="a transaction on each EVSE")
        assert {p["evse"]["id"] for p in octt.tx_events() if p["eventType"] == "Started"} == {1, 2}
        # Reset OnIdle with two transactions -> Scheduled; the station resets only after the last one ended
        assert (await octt.send("Reset", {"type": "OnIdle"}))["status"] == "Scheduled"
        octt.ctl("unplug", connector=1)
        await octt.wait_tx_event("Ended")
        await asyncio.sleep(0.3)
        assert not agent.service.restart_requested.is_set()
        octt.ctl("unplug", connector=2)
        await octt.wait_tx_event("Ended", count=2)
        await asyncio.wait_for(agent.service.restart_requested.wait(), 5)
        await octt.restart_agent()
        boot = await octt.wait("BootNotification", count=2, within=10)
        assert boot.payload["reason"] == "RemoteReset"
        await octt.wait_status("Available", evse_id=2, count=2)
    finally:
        if octt.agent is not None:
            await octt.agent.stop()
        await rig.stop()


async def test_tc_c_34_cs_cache_updated_by_the_transaction_event_response(octt: Octt201) -> None:
    from agent.authcache import IdTagInfo

    octt.rig.connectors[1].plant.ev.pwm_reaction_s = 0.2  # a quick EV: S2 closed 0.2 s after the PWM
    agent = await octt.start_agent({"AuthCtrlr/LocalPreAuthorize": True})
    agent.service.features["Transactions"].cache.update("C34", IdTagInfo("Accepted"))  # IdTokenCached
    octt.csms.auth_list["C34"] = "Invalid"  # what the CSMS answers now, in the TransactionEventResponse too
    await octt.booted()
    await octt.plugged()
    assert (await agent.tap("C34")).accepted  # from the cache
    started = await octt.wait_tx_event("Started")
    assert started["triggerReason"] == "Authorized" and started["idToken"]["idToken"] == "C34"
    await octt.wait_tx_event("Ended")  # the response said Invalid (StopTxOnInvalidId)
    octt.ctl("unplug", connector=1)
    await octt.wait_status("Available", count=2)
    await octt.plugged()
    # the cache learnt Invalid from the TransactionEventResponse: the same card is asked again -> Invalid
    assert not (await agent.tap("C34")).accepted
    assert [m.payload["idToken"]["idToken"] for m in octt.msgs("Authorize")] == ["C34"]


async def test_tc_j_06_e_07_cs_aligned_values_idle_and_in_the_transaction_power_path_stop_point(
        octt: Octt201) -> None:
    octt.rig.connectors[1].plant.ev.pwm_reaction_s = 0.2  # a quick EV: S2 closed 0.2 s after the PWM
    agent = await octt.start_agent({"AlignedDataCtrlr/Interval": 1, "AlignedDataCtrlr/SendDuringIdle": True,
                                    "TxCtrlr/TxStopPoint": "PowerPathClosed"})
    await octt.booted()
    # TC_J_06_CS: SendDuringIdle: clock-aligned MeterValues while idle; during the transaction the aligned
    # values go in TransactionEvents (MeterValueClock), no MeterValues message
    idle = (await octt.wait("MeterValues", within=3)).payload
    assert idle["evseId"] == 1 and idle["meterValue"][0]["sampledValue"][0]["context"] == "Sample.Clock"
    started = await octt.charging(TAG)
    before = len(octt.msgs("MeterValues"))
    clock = await octt.wait_tx_event("Updated", where=lambda p: p["triggerReason"] == "MeterValueClock"
                                     and p["seqNo"] > started["seqNo"] + 1, within=3)
    assert clock["meterValue"][0]["sampledValue"][0]["context"] == "Sample.Clock"
    assert len(octt.msgs("MeterValues")) == before
    # TC_E_07_CS: TxStopPoint PowerPathClosed, the card stops it -> Ended StopAuthorized, Local
    assert (await agent.tap(TAG)).accepted
    ended = await octt.wait_tx_event("Ended")
    assert ended["transactionInfo"]["transactionId"] == started["transactionInfo"]["transactionId"]
    assert (ended["triggerReason"], ended["transactionInfo"]["stoppedReason"]) == ("StopAuthorized", "Local")


async def test_tc_e_08_c_46_cs_energy_transfer_stop_point_card_stop_and_cache_lifetime(octt: Octt201) -> None:
    octt.rig.connectors[1].plant.ev.pwm_reaction_s = 0.2  # a quick EV: S2 closed 0.2 s after the PWM
    agent = await octt.start_agent({"TxCtrlr/TxStopPoint": "EnergyTransfer", "AuthCtrlr/LocalPreAuthorize": True,
                                    "AuthCacheCtrlr/LifeTime": 1})
    await octt.booted()
    started = await octt.charging(TAG)  # Authorize online: cached for AuthCacheCtrlr.LifeTime = 1 s
    assert len(octt.msgs("Authorize")) == 1
    await asyncio.sleep(1.1)
    # TC_E_08_CS: TxStopPoint EnergyTransfer, the card stops it -> Ended StopAuthorized, Local
    await agent.tap(TAG)
    ended = await octt.wait_tx_event("Ended")
    assert ended["transactionInfo"]["transactionId"] == started["transactionInfo"]["transactionId"]
    assert (ended["triggerReason"], ended["transactionInfo"]["stoppedReason"]) == ("StopAuthorized", "Local")
    # TC_C_46_CS: the cached entry outlived AuthCacheLifeTime -> the card is authorized online again
    assert (await agent.tap(TAG)).accepted
    assert len(octt.msgs("Authorize")) == 2


async def test_tc_e_44_cs_stop_by_the_same_card_while_offline(octt: Octt201) -> None:
    octt.rig.connectors[1].plant.ev.pwm_reaction_s = 0.2  # a quick EV: S2 closed 0.2 s after the PWM
    agent = await octt.start_agent()
    await octt.booted()
    started = await octt.charging(TAG)
    tx = started["transactionInfo"]["transactionId"]
    await eventually(lambda: agent.service.outbox.queued_for(tx) == 0, what="online events acknowledged")
    online = len(octt.tx_events())
    await octt.csms.outage(1.5)
    await eventually(lambda: not agent.service.online, what="offline")
    await agent.tap(TAG)  # the card that started it, while the CSMS is away
    octt.ctl("unplug", connector=1)
    ended = await octt.wait_tx_event("Ended", within=15)  # after the reconnect: every queued event offline
    assert ended["transactionInfo"]["transactionId"] == tx and ended["triggerReason"] == "StopAuthorized"
    later = octt.tx_events()[online:]
    assert later and all(p.get("offline") is True for p in later)
