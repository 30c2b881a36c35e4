"""OCTT 2.0.1 transaction start/stop options that docs/octt-201-coverage.md had covered by a unit test of the
TxMachine only: TC_E_02_CS (TxStartPoint EnergyTransfer), TC_E_35_CS (TxStopPoint PowerPathClosed, remote
stop) and TC_E_37_CS (TxStopPoint PowerPathClosed, EV-side disconnect with StopTxOnEVSideDisconnect false);
and TC_E_40_CS (connection lost during the transaction), which was covered by a loss before the start only.
Over real websockets against the bundled CSMS, with the simulator's hardware underneath; TxStartPoint and
TxStopPoint are set with SetVariables at run time, as the OCTT's "Before (Preparations)" does. Each step names
the Part 6 (FINAL 2023-06-30) tool validation it checks."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.agent.ocpp.v201.conftest import ISO14443, TAG, TAG2, Octt201, eventually
from tests.agent.ocpp.v201.test_tc_e_transactions import check_sequence


def cv(component: str, variable: str, value: str) -> dict[str, Any]:
    return {"component": {"name": component}, "variable": {"name": variable}, "attributeValue": value}


async def set_variables(octt: Octt201, *settings: tuple[str, str, str]) -> None:
    answer = await octt.send("SetVariables", {"setVariableData": [cv(*s) for s in settings]})
    assert [r["attributeStatus"] for r in answer["setVariableResult"]] == ["Accepted"] * len(settings), answer


async def test_tc_e_02_e_35_cs_energy_transfer_start_point_then_remote_stop_power_path_stop_point(
        octt: Octt201) -> None:
    plant = octt.rig.connectors[1].plant
    plant.ev.pwm_reaction_s = 0.2  # a quick EV: S2 closed 0.2 s after the PWM
    agent = await octt.start_agent()  # defaults: TxStartPoint PowerPathClosed, TxStopPoint EVConnected,Authorized
    await octt.booted()
    # Before: TxStartPoint contains EnergyTransfer (E_02), TxStopPoint contains PowerPathClosed (E_35)
    await set_variables(octt, ("TxCtrlr", "TxStartPoint", "EnergyTransfer"),
                        ("TxCtrlr", "TxStopPoint", "PowerPathClosed"))
    # Reusable State Authorized (Main A): the card first; no transaction yet (neither EVConnected nor
    # Authorized is a start point now)
    assert (await agent.tap(TAG)).accepted
    await octt.wait("Authorize")
    # TC_E_02_CS main: connect the EV. Step 1: StatusNotification Occupied
    await octt.plugged()
    await octt.wait_status("Occupied")
    # Step 3: the first TransactionEvent is the Started, once the energy flows: chargingState Charging,
    # triggerReason ChargingStateChanged (or Authorized), the idToken, evse with connectorId
    started = await octt.wait_tx_event("Started", within=10)
    assert octt.tx_events()[0] == started  # nothing before the energy transfer (plug-in, authorization)
    assert started["triggerReason"] in ("ChargingStateChanged", "Authorized")
    assert started["transactionInfo"]["chargingState"] == "Charging"
    assert started["idToken"] == {"idToken": TAG, "type": ISO14443}
    assert started["evse"]["id"] == 1 and started["evse"]["connectorId"] == 1
    assert plant.relay_closed  # the contactor is closed: the energy transfer is real
    await eventually(lambda: plant.current_a > 0, what="current flowing to the EV")
    tx = started["transactionInfo"]["transactionId"]
    # TC_E_35_CS (State EnergyTransferStarted, TxStopPoint PowerPathClosed): RequestStopTransaction ->
    # Accepted; Ended, triggerReason RemoteStop, stoppedReason Remote
    answer = await octt.send("RequestStopTransaction", {"transactionId": tx})
    assert answer["status"] == "Accepted"
    ended = await octt.wait_tx_event("Ended")
    assert ended["transactionInfo"]["transactionId"] == tx
    assert (ended["triggerReason"], ended["transactionInfo"]["stoppedReason"]) == ("RemoteStop", "Remote")
    check_sequence(octt.tx_events(tx))
    await eventually(lambda: agent.connector.session is None and not plant.relay_closed,
                     what="the session stopped and the contactor open")
    assert plant.plugged  # the EV is still connected: only the remote stop ended it


async def test_tc_e_37_cs_power_path_stop_point_ev_side_disconnect_while_suspended_by_the_ev(
        octt: Octt201) -> None:
    plant = octt.rig.connectors[1].plant
    plant.ev.pwm_reaction_s = 0.2  # a quick EV: S2 closed 0.2 s after the PWM
    agent = await octt.start_agent()
    await octt.booted()
    # Before: TxStopPoint contains PowerPathClosed, StopTxOnEVSideDisconnect false (it is ReadWrite here)
    await set_variables(octt, ("TxCtrlr", "TxStopPoint", "PowerPathClosed"),
                        ("TxCtrlr", "StopTxOnEVSideDisconnect", "false"))
    # Reusable State EnergyTransferStarted (TxStartPoint PowerPathClosed, the default), by another card
    started = await octt.charging(TAG2)
    tx = started["transactionInfo"]["transactionId"]
    # Reusable State EnergyTransferSuspended: the EV suspends -> Updated ChargingStateChanged, SuspendedEV
    # (TxStopPoint has no EnergyTransfer: the transaction goes on)
    octt.ctl("ev", connector=1, action="pause")
    suspended = await octt.wait_charging_state("SuspendedEV")
    assert (suspended["eventType"], suspended["triggerReason"]) == ("Updated", "ChargingStateChanged")
    # TC_E_37_CS main: the EV side disconnects (pilot A). StopTxOnEVSideDisconnect false would keep a
    # transaction open, but PowerPathClosed no longer holds, so the TxStopPoint ends it: Ended,
    # EVCommunicationLost, chargingState Idle, stoppedReason EVDisconnected
    octt.ctl("unplug", connector=1)
    ended = await octt.wait_tx_event("Ended")
    assert ended["transactionInfo"]["transactionId"] == tx
    assert ended["triggerReason"] == "EVCommunicationLost"
    assert ended["transactionInfo"]["chargingState"] == "Idle"
    assert ended["transactionInfo"]["stoppedReason"] == "EVDisconnected"
    check_sequence(octt.tx_events(tx))
    # The authorization ended with the transaction: the station's session too (agent fixed: it stayed for
    # the EV to come back, and the next EV plugged in started a transaction on this card, CablePluggedIn)
    await eventually(lambda: not plant.relay_closed and agent.connector.session is None,
                     what="the contactor open and the station's session over")
    await octt.wait_status("Available", count=2)
    octt.ctl("ev", connector=1, action="charge")
    await octt.plugged()
    await octt.wait_status("Occupied", count=2)
    await asyncio.sleep(0.5)  # time for a wrong Started (it would follow the plug-in at once)
    assert [p["eventType"] for p in octt.tx_events()].count("Started") == 1  # no transaction without a card
    assert not plant.relay_closed and (plant.pwm_duty or 0) == 0


async def test_tc_e_40_cs_connection_loss_during_transaction_updated_values_queued_offline(octt: Octt201) -> None:
    # Before: TxUpdatedMeasurands / TxUpdatedInterval set, SampledDataCtrlr.Enabled true, OfflineThreshold
    # RetryBackOffWaitMinimum + 60, RetryBackOffWaitMinimum (2 s) greater than the meter values interval (1 s),
    # RetryBackOffRandomRange 0 (FAST_VARIABLES)
    octt.rig.connectors[1].plant.ev.pwm_reaction_s = 0.2  # a quick EV: S2 closed 0.2 s after the PWM
    agent = await octt.start_agent({
        "SampledDataCtrlr/TxUpdatedMeasurands": "Energy.Active.Import.Register", "SampledDataCtrlr/Enabled": True,
        "SampledDataCtrlr/TxUpdatedInterval": 1, "OCPPCommCtrlr/OfflineThreshold": 62,
        "OCPPCommCtrlr/RetryBackOffWaitMinimum": 2})
    await octt.booted()
    started = await octt.charging()  # State EnergyTransferStarted
    tx = started["transactionInfo"]["transactionId"]
    await octt.wait_tx_event("Updated", where=lambda p: p["triggerReason"] == "MeterValuePeriodic")
    # 1. the connection is lost and no reconnection accepted for a while (2.5 s: RetryBackOffWaitMinimum + 0.5)
    await octt.csms.outage(2.5)
    await eventually(lambda: not agent.service.online, what="offline")
    # 3. back online, the queue is emptied: the TransactionEvents of the offline period are all Updated, with
    # meter values, offline true
    queued = await eventually(lambda: [p for p in octt.tx_events(tx) if p.get("offline")], within=15,
                              what="TransactionEvents queued while offline")
    await eventually(lambda: agent.service.online and agent.service.outbox.queued_for(tx) == 0, within=10,
                     what="the queue emptied")
    queued = [p for p in octt.tx_events(tx) if p.get("offline")]
    assert queued, "no TransactionEvent was queued during the outage"
    for event in queued:
        assert event["eventType"] == "Updated" and event["offline"] is True
        assert event["triggerReason"] == "MeterValuePeriodic"
        assert event["meterValue"][0]["sampledValue"][0]["measurand"] == "Energy.Active.Import.Register"
        assert event["meterValue"][0]["sampledValue"][0]["context"] == "Sample.Periodic"
    stamps = [e["timestamp"] for e in queued]
    assert stamps == sorted(stamps)  # delivered in the order they happened
    await agent.tap(TAG)  # nothing lost or repeated around the outage
    await octt.wait_tx_event("Ended")
    check_sequence(octt.tx_events(tx))
