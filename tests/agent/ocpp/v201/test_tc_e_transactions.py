"""OCTT 2.0.1 transaction cases (E, F01-F04, C, J) over real websockets against the bundled CSMS, with the
simulator's hardware underneath: TransactionEvent Started / Updated / Ended exactly once per transaction,
seqNo 0.. without gaps, triggerReason / stoppedReason from the real cause."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simulator.csms import Csms
from simulator.rig import Rig, RigOptions
from tests.agent.ocpp.v201.conftest import CP, TAG, TAG2, Octt201, eventually


def check_sequence(events: list[dict[str, Any]]) -> None:
    """One transaction's events: one Started first, one Ended last, seqNo 0..n-1 without gaps or repeats.

    A message the CSMS received but whose answer the station never got (the connection broke in between, as in
    TC_E_40) is sent again after the reconnect: at-least-once delivery, which seqNo exists to let the CSMS see
    through. Such a resend must be the identical message; it is counted once."""
    first: dict[int, dict[str, Any]] = {}
    for event in events:
        seen = first.setdefault(event["seqNo"], event)
        assert seen == event, f"seqNo {event['seqNo']} used for two different messages: {seen} / {event}"
    events = list(first.values())
    kinds = [e["eventType"] for e in events]
    assert kinds[0] == "Started" and kinds.count("Started") == 1, kinds
    assert kinds[-1] == "Ended" and kinds.count("Ended") == 1, kinds
    assert sorted(e["seqNo"] for e in events) == list(range(len(events)))


async def test_tc_e_03_cs_cable_first_then_stop_by_the_same_card(octt: Octt201) -> None:
    agent = await octt.start_agent()
    await octt.booted()
    await octt.plugged()
    await octt.wait_status("Occupied")
    assert octt.tx_events() == []  # TxStartPoint PowerPathClosed: the cable alone starts nothing
    assert (await agent.tap(TAG)).accepted
    started = await octt.wait_tx_event("Started")
    assert started["triggerReason"] == "Authorized" and started["idToken"] == {"idToken": TAG, "type": "ISO14443"}
    assert started["evse"] == {"id": 1, "connectorId": 1} and "offline" not in started
    assert len(started["transactionInfo"]["transactionId"]) <= 36
    assert started["meterValue"][0]["sampledValue"][0]["context"] == "Transaction.Begin"
    charging = await octt.wait_charging_state("Charging")
    assert charging["triggerReason"] == "ChargingStateChanged" and charging["eventType"] == "Updated"
    await agent.tap(TAG)  # the same card again: StopAuthorized
    ended = await octt.wait_tx_event("Ended")
    assert ended["triggerReason"] == "StopAuthorized" and ended["transactionInfo"]["stoppedReason"] == "Local"
    assert any(s["context"] == "Transaction.End" for v in ended["meterValue"] for s in v["sampledValue"])
    check_sequence(octt.tx_events(started["transactionInfo"]["transactionId"]))


async def test_tc_e_09_cs_ev_connected_start_and_ev_side_disconnect(octt: Octt201) -> None:
    agent = await octt.start_agent({"TxCtrlr/TxStartPoint": "EVConnected", "TxCtrlr/TxStopPoint": "EVConnected"})
    await octt.booted()
    await octt.plugged()
    started = await octt.wait_tx_event("Started")
    assert started["triggerReason"] == "CablePluggedIn" and "idToken" not in started
    assert (await agent.tap(TAG)).accepted
    auth = await octt.wait_tx_event("Updated", where=lambda p: p["triggerReason"] == "Authorized")
    assert auth["idToken"]["idToken"] == TAG
    await octt.wait_charging_state("Charging")
    octt.ctl("unplug", connector=1)
    ended = await octt.wait_tx_event("Ended")
    assert ended["triggerReason"] == "EVCommunicationLost"
    assert ended["transactionInfo"]["stoppedReason"] == "EVDisconnected"
    assert ended["transactionInfo"]["chargingState"] == "Idle"
    check_sequence(octt.tx_events(started["transactionInfo"]["transactionId"]))


async def test_tc_f_01_f_03_cs_remote_start_and_stop(octt: Octt201) -> None:
    agent = await octt.start_agent()
    await octt.booted()
    await octt.plugged()
    answer = await octt.send("RequestStartTransaction", {"idToken": {"idToken": TAG2, "type": "Central"},
                                                         "remoteStartId": 7, "evseId": 1})
    assert answer["status"] == "Accepted"
    await octt.wait("Authorize")  # AuthorizeRemoteStart true
    started = await octt.wait_tx_event("Started")
    assert started["triggerReason"] == "RemoteStart" and started["transactionInfo"]["remoteStartId"] == 7
    assert started["idToken"] == {"idToken": TAG2, "type": "Central"}
    tx = started["transactionInfo"]["transactionId"]
    await octt.wait_charging_state("Charging")
    status = await octt.send("GetTransactionStatus", {"transactionId": tx})
    assert status["ongoingIndicator"] is True
    assert (await octt.send("RequestStopTransaction", {"transactionId": "no-such"}))["status"] == "Rejected"
    assert (await octt.send("RequestStopTransaction", {"transactionId": tx}))["status"] == "Accepted"
    ended = await octt.wait_tx_event("Ended")
    assert ended["triggerReason"] == "RemoteStop" and ended["transactionInfo"]["stoppedReason"] == "Remote"
    check_sequence(octt.tx_events(tx))
    await eventually(lambda: agent.service.outbox.queued_for(tx) == 0, what="Ended acknowledged")
    status = await octt.send("GetTransactionStatus", {"transactionId": tx})
    assert status == {"ongoingIndicator": False, "messagesInQueue": False}


async def test_tc_e_04_e_16_cs_started_offline_then_deauthorized_by_the_answer(octt: Octt201) -> None:
    octt.csms.auth_list["BADCARD"] = "Invalid"
    agent = await octt.start_agent({"AuthCtrlr/OfflineTxForUnknownIdEnabled": True})
    await octt.booted()
    await octt.csms.outage(1.5)
    await eventually(lambda: not agent.service.online, what="offline")
    await octt.plugged()
    assert (await agent.tap("BADCARD")).accepted  # unknown offline, allowed by OfflineTxForUnknownIdEnabled
    started = await octt.wait_tx_event("Started", within=15)  # E04: queued offline, delivered in order
    assert started["offline"] is True and started["seqNo"] == 0
    ended = await octt.wait_tx_event("Ended", within=15)
    assert ended["triggerReason"] == "Deauthorized" and ended["transactionInfo"]["stoppedReason"] == "DeAuthorized"
    check_sequence(octt.tx_events(ended["transactionInfo"]["transactionId"]))
    await eventually(lambda: agent.connector.session is None, what="session stopped")


async def test_tc_j_02_cs_periodic_values_and_trigger(octt: Octt201) -> None:
    agent = await octt.start_agent({"SampledDataCtrlr/TxEndedInterval": 1,
                                    "SampledDataCtrlr/TxUpdatedMeasurands": "Energy.Active.Import.Register,Voltage"})
    await octt.booted()
    started = await octt.charging()
    answer = await octt.send("SetVariables", {"setVariableData": [  # TxUpdatedInterval 0 -> 1 s, at once
        {"attributeValue": "1", "component": {"name": "SampledDataCtrlr"}, "variable": {"name": "TxUpdatedInterval"}}]})
    assert answer["setVariableResult"][0]["attributeStatus"] == "Accepted"
    periodic = await octt.wait_tx_event("Updated", where=lambda p: p["triggerReason"] == "MeterValuePeriodic")
    values = periodic["meterValue"][0]["sampledValue"]
    assert {v["measurand"] for v in values} <= {"Energy.Active.Import.Register", "Voltage"}
    assert all(v["context"] == "Sample.Periodic" and "unitOfMeasure" in v for v in values)
    answer = await octt.send("TriggerMessage", {"requestedMessage": "TransactionEvent", "evse": {"id": 1}})
    assert answer["status"] == "Accepted"
    triggered_tx = await octt.wait_tx_event("Updated", where=lambda p: p["triggerReason"] == "Trigger")
    assert triggered_tx["transactionInfo"]["chargingState"] == "Charging"  # TC_F_13_CS step 3
    assert triggered_tx["meterValue"][0]["sampledValue"][0]["context"] == "Trigger"
    answer = await octt.send("TriggerMessage", {"requestedMessage": "MeterValues", "evse": {"id": 1}})
    assert answer["status"] == "Accepted"
    triggered = (await octt.wait("MeterValues")).payload
    assert triggered["evseId"] == 1 and triggered["meterValue"][0]["sampledValue"][0]["context"] == "Trigger"
    await agent.tap(TAG)
    ended = await octt.wait_tx_event("Ended")
    contexts = [v["sampledValue"][0]["context"] for v in ended["meterValue"]]
    assert contexts[-1] == "Transaction.End" and "Sample.Periodic" in contexts  # TxEndedInterval samples (J02)
    check_sequence(octt.tx_events(started["transactionInfo"]["transactionId"]))


async def test_power_loss_ends_a_transaction_nobody_authorized(octt: Octt201) -> None:
    variables = {"TxCtrlr/TxStartPoint": "EVConnected", "TxCtrlr/TxStopPoint": "EVConnected"}
    await octt.start_agent(variables)
    await octt.booted()
    await octt.plugged()
    started = await octt.wait_tx_event("Started")
    await eventually(lambda: not octt.agent.service.outbox.queued_for(started["transactionInfo"]["transactionId"]),
                     what="Started acknowledged")
    await octt.power_loss()
    await octt.start_agent(variables)
    ended = await octt.wait_tx_event("Ended")
    assert ended["transactionInfo"]["transactionId"] == started["transactionInfo"]["transactionId"]
    assert (ended["triggerReason"], ended["transactionInfo"]["stoppedReason"]) == ("AbnormalCondition", "PowerLoss")
    check_sequence(octt.tx_events(started["transactionInfo"]["transactionId"]))


async def test_tc_e_11_cs_data_signed_start_and_signed_end_in_the_ended(tmp_path: Path, csms: Csms) -> None:
    rig = Rig(RigOptions(directory=tmp_path / "ocmf", csms_url=csms.url, charge_point_id=CP, ocpp_version="2.0.1",
                         meter_model="ocmf"))  # the rig's meter signs start and end readings (OCMF)
    await rig.start()
    octt = Octt201(csms, rig)
    try:
        agent = await octt.start_agent({"TxCtrlr/TxStartPoint": "DataSigned"})
        await octt.booted()
        await octt.plugged()
        assert (await agent.tap(TAG)).accepted
        started = await octt.wait_tx_event("Started", within=10)
        assert started["triggerReason"] == "SignedDataReceived"
        begin = [s for v in started["meterValue"] for s in v["sampledValue"] if "signedMeterValue" in s]
        assert begin and begin[0]["context"] == "Transaction.Begin"
        assert begin[0]["signedMeterValue"]["encodingMethod"] == "OCMF"
        assert begin[0]["signedMeterValue"]["signedMeterData"].startswith("OCMF|")
        await octt.wait_charging_state("Charging")
        await agent.tap(TAG)
        ended = await octt.wait_tx_event("Ended", within=20)
        end = [s for v in ended["meterValue"] for s in v["sampledValue"] if "signedMeterValue" in s]
        assert ended["triggerReason"] == "StopAuthorized" and end and end[0]["context"] == "Transaction.End"
        check_sequence(octt.tx_events(started["transactionInfo"]["transactionId"]))
    finally:
        if octt.agent is not None:
            await octt.agent.stop()
        await rig.stop()
