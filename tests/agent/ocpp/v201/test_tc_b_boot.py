"""OCTT 2.0.1 Provisioning: cold boot (TC_B_01_CS .. TC_B_03_CS) and Reset (TC_B_20_CS .. TC_B_23_CS,
TC_B_25_CS), security events at start-up and reset (A04), over real websockets against the bundled CSMS,
with the simulator's hardware underneath."""

from __future__ import annotations

import asyncio

import pytest

from agent.ocpp.v201 import handlers
from agent.ocpp.v201.service import OcppService
from simulator.csms import CsmsCallError
from tests.agent.ocpp.v201.conftest import Octt201, eventually


async def test_tc_b_01_cs_cold_boot_accepted(octt: Octt201) -> None:
    """B01: BootNotification (PowerUp, the station's identity), Accepted -> HeartbeatInterval from interval,
    then the status of every connector."""
    octt.csms.heartbeat_interval = 123
    await octt.start_agent()
    boot = await octt.wait("BootNotification", within=10)
    assert boot.payload["reason"] == "PowerUp"
    assert boot.payload["chargingStation"]["vendorName"] == "cpsim"
    assert boot.payload["chargingStation"]["model"]
    status = await octt.wait_status("Available", evse_id=1, connector_id=1)
    assert status.payload["timestamp"].endswith("Z")
    assert octt.msgs()[0].action == "BootNotification"
    service = octt.agent.service  # type: ignore[union-attr]
    assert service.variables.integer("OCPPCommCtrlr", "HeartbeatInterval") == 123


async def test_tc_b_02_cs_cold_boot_pending(octt: Octt201) -> None:
    """B02: while Pending nothing but BootNotification is sent, again after ``interval``; the CSMS may set and
    get variables meanwhile; a triggered BootNotification (F06, reason Triggered) brings the Accepted before
    the interval has passed, then the status of every connector."""
    octt.csms.boot_status = "Pending"
    octt.csms.heartbeat_interval = 1
    agent = await octt.start_agent()
    await octt.wait("BootNotification", count=2, within=5)  # the retry after interval (1 s)
    offline = {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "OfflineThreshold"}}
    result = await octt.send("SetVariables", {"setVariableData": [{**offline, "attributeValue": "300"}]})
    assert result["setVariableResult"][0]["attributeStatus"] == "Accepted"
    result = await octt.send("GetVariables", {"getVariableData": [offline]})
    assert result["getVariableResult"][0]["attributeValue"] == "300"
    start = {"idToken": {"idToken": "DEADBEEF01", "type": "ISO14443"}, "remoteStartId": 1, "evseId": 1}
    assert (await octt.send("RequestStartTransaction", start))["status"] == "Rejected"
    assert {m.action for m in octt.msgs()} == {"BootNotification"}
    octt.csms.boot_status = "Accepted"
    octt.csms.heartbeat_interval = 300
    before = len(octt.msgs("BootNotification"))
    answer = await octt.send("TriggerMessage", {"requestedMessage": "BootNotification"})
    assert answer["status"] == "Accepted"
    await octt.wait_status("Available", evse_id=1)
    triggered = [m for m in octt.msgs("BootNotification")[before:] if m.payload["reason"] == "Triggered"]
    assert triggered and agent.service.accepted
    # Once Accepted, a triggered BootNotification is Rejected (F06.FR.17).
    assert (await octt.send("TriggerMessage", {"requestedMessage": "BootNotification"}))["status"] == "Rejected"


async def test_tc_b_03_cs_cold_boot_rejected(octt: Octt201) -> None:
    """B03: Rejected -> every CSMS request is answered with SecurityError, nothing is sent until the
    interval has passed, then BootNotification again."""
    octt.csms.boot_status = "Rejected"
    octt.csms.heartbeat_interval = 1
    agent = await octt.start_agent()
    await eventually(lambda: agent.service.boot_status == "Rejected", what="boot Rejected")
    with pytest.raises(CsmsCallError) as refused:
        await octt.send("TriggerMessage", {"requestedMessage": "Heartbeat"})
    assert refused.value.code == "SecurityError"
    assert {m.action for m in octt.msgs()} == {"BootNotification"}
    octt.csms.boot_status = "Accepted"
    second = await octt.wait("BootNotification", count=2, within=5)
    first = octt.msgs("BootNotification")[0]
    assert second.at - first.at >= 0.8  # waited for the interval
    await octt.wait_status("Available", evse_id=1)
    assert (await octt.send("TriggerMessage", {"requestedMessage": "Heartbeat"}))["status"] == "Accepted"


async def test_network_side_restart_is_no_new_boot(octt: Octt201) -> None:
    """A new 2.0.1 network side for the same run of the station (agent/ocpp/v16/boot_record.py) reconnects
    without a BootNotification; it still reports the connectors' status."""
    agent = await octt.start_agent()
    await octt.booted()
    first = agent.service
    await first.stop()
    first_task = agent._tasks[1]
    first_task.cancel()
    await asyncio.wait({first_task})
    assert agent.station is not None
    second = OcppService(agent.station, agent.config())
    agent.service = second
    agent._tasks[1] = asyncio.create_task(second.run())
    assert second.boot_resumed
    await octt.wait_status("Available", evse_id=1, count=2)
    assert len(octt.msgs("BootNotification")) == 1


async def test_tc_b_20_cs_reset_without_ongoing_transaction_on_idle(octt: Octt201) -> None:
    """B11: Reset OnIdle of the station with no transaction: Accepted, the agent restarts and boots with
    reason RemoteReset; StartupOfTheDevice at the first start and ResetOrReboot go out as security events."""
    agent = await octt.start_agent()
    await octt.booted()
    assert (await octt.send("Reset", {"type": "OnIdle"}))["status"] == "Accepted"
    await asyncio.wait_for(agent.service.restart_requested.wait(), 5)
    assert agent.service.restart_kind == "OnIdle"
    await octt.restart_agent()
    boot = await octt.wait("BootNotification", count=2, within=10)
    assert boot.payload["reason"] == "RemoteReset"
    # At least once: the ResetOrReboot sent just before the restart may come again from the outbox.
    kinds = await eventually(lambda: [m.payload["type"] for m in octt.msgs("SecurityEventNotification")]
                             if len(octt.msgs("SecurityEventNotification")) >= 3 else None, what="events")
    assert kinds[0] == "StartupOfTheDevice" and "ResetOrReboot" in kinds
    await eventually(lambda: [m.payload["type"] for m in octt.msgs("SecurityEventNotification")].count(
        "StartupOfTheDevice") == 2, what="second StartupOfTheDevice")


async def test_tc_b_25_cs_reset_evse_without_ongoing_transaction(octt: Octt201,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """B11.FR.08: Reset of one EVSE: Accepted, the EVSE goes out of service for a moment and comes back; an
    unknown EVSE is Rejected. The station itself does not restart."""
    monkeypatch.setattr(handlers, "EVSE_RESET_OFF_S", 0.1)
    agent = await octt.start_agent()
    await octt.booted()
    assert (await octt.send("Reset", {"type": "OnIdle", "evseId": 9}))["status"] == "Rejected"
    assert (await octt.send("Reset", {"type": "OnIdle", "evseId": 1}))["status"] == "Accepted"
    await octt.wait_status("Unavailable", evse_id=1)
    await octt.wait_status("Available", evse_id=1, count=2)
    assert not agent.service.restart_requested.is_set()


async def test_security_event_goes_through_the_outbox(octt: Octt201) -> None:
    """A04: SecurityEventNotification is queued durably (outbox) and delivered once Accepted."""
    agent = await octt.start_agent()
    agent.service.security_event("ReconfigurationOfSecurityParameters", "test")
    event = await octt.wait("SecurityEventNotification", within=10)
    assert event.payload["type"] == "ReconfigurationOfSecurityParameters"
    assert event.payload["techInfo"] == "test"
    await eventually(lambda: agent.service.outbox.depth() == 0, what="outbox drained")


async def test_tc_b_21_cs_reset_on_idle_with_ongoing_transaction(octt: Octt201) -> None:
    """B11.FR.01/03: Reset OnIdle while charging -> Scheduled; the station restarts once the transaction
    has ended (here: the EV is unplugged), not before."""
    agent = await octt.start_agent()
    await octt.booted()
    await octt.charging()
    assert (await octt.send("Reset", {"type": "OnIdle"}))["status"] == "Scheduled"
    await asyncio.sleep(0.3)
    assert not agent.service.restart_requested.is_set() and agent.connector.session is not None
    octt.ctl("unplug", connector=1)
    await octt.wait_tx_event("Ended")
    await asyncio.wait_for(agent.service.restart_requested.wait(), 8)


async def test_tc_b_22_cs_reset_immediate_with_ongoing_transaction(octt: Octt201) -> None:
    """B11.FR.04: Reset Immediate while charging -> Accepted, the transaction ends (stoppedReason
    ImmediateReset), then the station restarts."""
    agent = await octt.start_agent()
    await octt.booted()
    await octt.charging()
    assert (await octt.send("Reset", {"type": "Immediate"}))["status"] == "Accepted"
    ended = await octt.wait_tx_event("Ended")
    assert ended["transactionInfo"].get("stoppedReason") == "ImmediateReset"
    await asyncio.wait_for(agent.service.restart_requested.wait(), 8)


async def test_tc_b_26_cs_reset_evse_with_ongoing_transaction_on_idle(octt: Octt201,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """B12: Reset OnIdle of the EVSE that charges -> Scheduled; once the transaction has ended the EVSE
    resets (out of service for a moment) and the station itself does not restart."""
    monkeypatch.setattr(handlers, "EVSE_RESET_OFF_S", 0.1)
    agent = await octt.start_agent()
    await octt.booted()
    await octt.charging()
    assert (await octt.send("Reset", {"type": "OnIdle", "evseId": 1}))["status"] == "Scheduled"
    octt.ctl("unplug", connector=1)
    await octt.wait_tx_event("Ended")
    unavailable = await octt.wait_status("Unavailable", evse_id=1)

    def back() -> bool:
        statuses = octt.msgs("StatusNotification")
        return any(m.payload["connectorStatus"] == "Available" for m in statuses[statuses.index(unavailable):])

    await eventually(back, what="Available after the EVSE reset")
    assert not agent.service.restart_requested.is_set()


async def test_outbox_entry_without_a_2_0_1_form_is_dropped_loudly(octt: Octt201,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """An entry the 2.0.1 side cannot send (an action 2.0.1 lacks, e.g. queued under 1.6 with no converter)
    is dropped with a logged reason, kept in the outbox's dropped list, and does not block what follows."""
    agent = await octt.start_agent()
    await octt.booted()
    agent.service.outbox.append("Frobnicate", {"connectorId": 1})
    agent.service.security_event("SecurityLogWasCleared")
    await eventually(lambda: "SecurityLogWasCleared" in [m.payload["type"]
                                                        for m in octt.msgs("SecurityEventNotification")],
                     what="the event queued after the undeliverable entry")
    assert any(action == "Frobnicate" and "2.0.1" in reason for action, _, reason in agent.service.outbox.dropped())
    assert any("Frobnicate" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
