"""OCTT 1.6 RemoteTrigger: 054 TriggerMessage (every message; also while the boot is Pending), 055 rejected /
NotImplemented."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from agent.ocpp.v16.trigger import RemoteTrigger
from tests.agent.ocpp.conftest import CP, Octt, eventually


async def trigger(octt: Octt, message: str, connector_id: int | None = None) -> str:
    payload: dict[str, object] = {"requestedMessage": message}
    if connector_id is not None:
        payload["connectorId"] = connector_id
    answer = await octt.csms.send(CP, "TriggerMessage", payload)
    return str(answer["status"])


async def test_054_trigger_message_each_type(octt: Octt) -> None:
    agent = await octt.start_agent()
    await octt.booted()
    octt.ctl("plug")
    await octt.wait_status("Preparing")
    await asyncio.sleep(0.2)
    before = len(octt.msgs("StatusNotification"))

    assert await trigger(octt, "StatusNotification", 1) == "Accepted"
    await octt.wait("StatusNotification", count=before + 1)
    assert octt.msgs("StatusNotification")[-1].payload["connectorId"] == 1
    assert octt.msgs("StatusNotification")[-1].payload["status"] == "Preparing"  # sent even though unchanged
    assert await trigger(octt, "StatusNotification", 0) == "Accepted"
    await octt.wait("StatusNotification", count=before + 2)
    assert octt.msgs("StatusNotification")[-1].payload["connectorId"] == 0

    assert await trigger(octt, "Heartbeat") == "Accepted"
    await octt.wait("Heartbeat")
    assert await trigger(octt, "BootNotification") == "Accepted"
    await octt.wait("BootNotification", count=2)

    await eventually(lambda: agent.connector.last_sample is not None, 5, "a meter reading")
    assert await trigger(octt, "MeterValues", 1) == "Accepted"
    values = await octt.wait("MeterValues")
    assert values.payload["connectorId"] == 1 and "transactionId" not in values.payload
    assert {v["context"] for v in values.payload["meterValue"][0]["sampledValue"]} == {"Trigger"}
    assert agent.service is not None and agent.service.outbox.depth() == 0  # not a transaction message

    assert await trigger(octt, "FirmwareStatusNotification") == "Accepted"
    assert (await octt.wait("FirmwareStatusNotification")).payload == {"status": "Idle"}
    assert await trigger(octt, "DiagnosticsStatusNotification") == "Accepted"
    assert (await octt.wait("DiagnosticsStatusNotification")).payload == {"status": "Idle"}


async def test_054_meter_values_in_a_transaction_carry_its_id(octt: Octt) -> None:
    await octt.start_agent()
    await octt.booted()
    await octt.charging()
    assert await trigger(octt, "MeterValues") == "Accepted"  # no connectorId: every connector
    values = await octt.wait("MeterValues")
    assert values.payload["transactionId"] == octt.transaction_id()


async def test_054_trigger_while_boot_pending(octt: Octt) -> None:
    octt.csms.boot_status = "Pending"
    await octt.start_agent()
    await octt.wait("BootNotification")
    await octt.csms.wait_connected(CP)
    await asyncio.sleep(0.3)
    assert octt.msgs("StatusNotification") == []  # Pending: nothing unasked
    assert await trigger(octt, "StatusNotification", 1) == "Accepted"
    status = await octt.wait("StatusNotification")
    assert status.payload["connectorId"] == 1
    assert await trigger(octt, "Heartbeat") == "Accepted"
    await octt.wait("Heartbeat")
    octt.csms.boot_status = "Accepted"
    assert await trigger(octt, "BootNotification") == "Accepted"
    await octt.wait("BootNotification", count=2)


async def test_055_trigger_message_rejected(octt: Octt) -> None:
    await octt.start_agent()
    await octt.booted()
    await asyncio.sleep(0.2)
    count = len(octt.msgs())
    assert await trigger(octt, "StatusNotification", 7) == "Rejected"
    assert await trigger(octt, "MeterValues", 7) == "Rejected"
    assert await trigger(octt, "MeterValues", 0) == "Rejected"  # no main meter
    await asyncio.sleep(0.3)
    assert len(octt.msgs()) == count


async def test_055_not_implemented_without_firmware_management() -> None:
    service = SimpleNamespace(features={}, station=SimpleNamespace(connectors={1: object()}))
    feature = RemoteTrigger(service)  # type: ignore[arg-type]
    answer = await feature.on_trigger_message("FirmwareStatusNotification")
    assert answer == {"status": "NotImplemented"}
    assert await feature.on_trigger_message("DiagnosticsStatusNotification") == {"status": "NotImplemented"}
    assert await feature.on_trigger_message("Heartbeat") == {"status": "Accepted"}
