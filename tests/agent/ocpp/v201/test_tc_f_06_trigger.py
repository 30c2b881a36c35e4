"""OCTT 2.0.1 TriggerMessage (use case F06: TC_F_15_CS .. TC_F_27_CS for each message the core service owns), over
real websockets against the bundled CSMS; and the hook other blocks use to add their messages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tests.agent.ocpp.v201.conftest import Octt201


async def test_tc_f_15_f_17_f_18_f_20_f_23_cs_trigger_core_messages(octt: Octt201) -> None:
    """Heartbeat (F_20), StatusNotification (one EVSE/connector F_23, all EVSEs), FirmwareStatusNotification
    (F_18; with an EVSE that does not matter for it F_17) and LogStatusNotification (F_15; Idle: nothing in
    progress): Accepted, then sent even though nothing changed."""
    await octt.start_agent()
    await octt.booted()
    assert (await octt.send("TriggerMessage", {"requestedMessage": "Heartbeat"}))["status"] == "Accepted"
    await octt.wait("Heartbeat")
    trigger = {"requestedMessage": "StatusNotification", "evse": {"id": 1, "connectorId": 1}}
    assert (await octt.send("TriggerMessage", trigger))["status"] == "Accepted"
    await octt.wait_status("Available", evse_id=1, count=2)
    assert (await octt.send("TriggerMessage", {"requestedMessage": "StatusNotification"}))["status"] == "Accepted"
    await octt.wait_status("Available", evse_id=1, count=3)
    for message in ("FirmwareStatusNotification", "LogStatusNotification"):
        assert (await octt.send("TriggerMessage", {"requestedMessage": message}))["status"] == "Accepted"
        assert (await octt.wait(message)).payload == {"status": "Idle"}
    with_evse = {"requestedMessage": "FirmwareStatusNotification", "evse": {"id": 1}}
    assert (await octt.send("TriggerMessage", with_evse))["status"] == "Accepted"
    assert (await octt.wait("FirmwareStatusNotification", count=2)).payload == {"status": "Idle"}


async def test_tc_f_26_f_27_cs_trigger_rejected_and_not_implemented(octt: Octt201) -> None:
    """BootNotification once Accepted -> Rejected; an unknown EVSE or connector -> Rejected; a message
    nobody registered -> NotImplemented. Nothing is sent for them."""
    await octt.start_agent()
    await octt.booted()
    assert (await octt.send("TriggerMessage", {"requestedMessage": "BootNotification"}))["status"] == "Rejected"
    unknown_evse = {"requestedMessage": "Heartbeat", "evse": {"id": 4}}
    assert (await octt.send("TriggerMessage", unknown_evse))["status"] == "Rejected"
    bad_connector = {"requestedMessage": "StatusNotification", "evse": {"id": 1, "connectorId": 2}}
    assert (await octt.send("TriggerMessage", bad_connector))["status"] == "Rejected"
    answer = await octt.send("TriggerMessage", {"requestedMessage": "SignV2GCertificate"})
    assert answer["status"] == "NotImplemented"
    assert len(octt.msgs("BootNotification")) == 1 and not octt.msgs("Heartbeat")


async def test_trigger_hook_for_other_blocks(octt: Octt201) -> None:
    """A feature registers its message (as transactions.py does for TransactionEvent / MeterValues): the
    answer comes from its accept(), its send() runs once the answer is on the wire."""
    agent = await octt.start_agent()
    await octt.booted()
    seen: list[Mapping[str, Any] | None] = []

    async def send(evse: Mapping[str, Any] | None) -> None:
        seen.append(evse)
        from ocpp.v201 import call

        await agent.service.triggered(call.MeterValues(evse_id=1, meter_value=[{
            "timestamp": "2026-01-01T00:00:00Z", "sampledValue": [{"value": 1.0}]}]))

    agent.service.register_trigger("MeterValues", lambda evse: "Accepted", send)
    answer = await octt.send("TriggerMessage", {"requestedMessage": "MeterValues", "evse": {"id": 1}})
    assert answer["status"] == "Accepted"
    await octt.wait("MeterValues")
    assert seen == [{"id": 1}]
