"""OCTT 1.6 remote control and configuration: 010-012 and 026-028 remote start/stop, 013-016 reset,
017 unlock, 019/021/040 configuration, ChangeAvailability, ClearCache (061), DataTransfer."""

from __future__ import annotations

import asyncio

import pytest

from tests.agent.ocpp.conftest import CP, TAG, Octt, eventually


async def test_010_remote_start_cable_plugged(octt: Octt) -> None:
    await octt.start_agent()
    await octt.booted()
    octt.ctl("plug")
    await octt.wait_status("Preparing")
    answer = await octt.csms.send(CP, "RemoteStartTransaction", {"idTag": TAG, "connectorId": 1})
    assert answer == {"status": "Accepted"}
    start = await octt.wait("StartTransaction")
    assert start.payload["idTag"] == TAG
    assert [m.payload["idTag"] for m in octt.msgs("Authorize")] == [TAG]  # AuthorizeRemoteTxRequests


async def test_011_remote_start_then_plug_and_timeout(octt: Octt) -> None:
    agent = await octt.start_agent(ConnectionTimeOut="1", AuthorizeRemoteTxRequests="false")
    await octt.booted()
    answer = await octt.csms.send(CP, "RemoteStartTransaction", {"idTag": TAG})
    assert answer == {"status": "Accepted"}
    await octt.wait_status("Preparing")
    await eventually(lambda: agent.connector.pending_id_tag is None, 4, "authorization to expire")
    octt.ctl("plug")
    await asyncio.sleep(0.5)
    assert octt.msgs("StartTransaction") == []
    assert octt.msgs("Authorize") == []  # 028: AuthorizeRemoteTxRequests false


async def test_012_remote_stop(octt: Octt) -> None:
    await octt.start_agent()
    await octt.booted()
    await octt.charging()
    assert await octt.csms.send(CP, "RemoteStopTransaction", {"transactionId": 99}) == {"status": "Rejected"}
    assert await octt.csms.send(CP, "RemoteStopTransaction", {"transactionId": 1}) == {"status": "Accepted"}
    stop = await octt.wait("StopTransaction")
    assert stop.payload["reason"] == "Remote" and stop.payload["transactionId"] == 1


async def test_026_remote_start_rejected_when_busy_or_unavailable(octt: Octt) -> None:
    await octt.start_agent()
    await octt.booted()
    await octt.charging()
    busy = await octt.csms.send(CP, "RemoteStartTransaction", {"idTag": TAG, "connectorId": 1})
    assert busy == {"status": "Rejected"}
    missing = await octt.csms.send(CP, "RemoteStartTransaction", {"idTag": TAG, "connectorId": 7})
    assert missing == {"status": "Rejected"}
    # A transaction needs a real connector: connectorId 0 is refused.
    whole = await octt.csms.send(CP, "RemoteStartTransaction", {"idTag": TAG, "connectorId": 0})
    assert whole == {"status": "Rejected"}


async def test_027_change_availability_scheduled_and_persisted(octt: Octt) -> None:
    agent = await octt.start_agent()
    await octt.booted()
    await octt.charging()
    answer = await octt.csms.send(CP, "ChangeAvailability", {"connectorId": 1, "type": "Inoperative"})
    assert answer == {"status": "Scheduled"}
    assert (await agent.tap(TAG)).accepted
    await octt.wait("StopTransaction")
    octt.ctl("unplug")
    await octt.wait_status("Unavailable")
    rejected = await octt.csms.send(CP, "RemoteStartTransaction", {"idTag": TAG, "connectorId": 1})
    assert rejected == {"status": "Rejected"}
    agent = await octt.restart_agent()  # Unavailable survives a reboot
    await octt.wait("BootNotification", count=2)
    await eventually(lambda: not agent.connector.available, 5, "unavailable after reboot")
    answer = await octt.csms.send(CP, "ChangeAvailability", {"connectorId": 0, "type": "Operative"})
    assert answer == {"status": "Accepted"}
    await eventually(lambda: agent.connector.available, 5, "available again")


async def test_015_soft_reset_without_transaction(octt: Octt) -> None:
    agent = await octt.start_agent()
    await octt.booted()
    assert await octt.csms.send(CP, "Reset", {"type": "Soft"}) == {"status": "Accepted"}
    assert agent.service is not None
    await asyncio.wait_for(agent.service.restart_requested.wait(), 5)
    assert agent.service.restart_kind == "Soft"
    assert octt.msgs("StopTransaction") == []


@pytest.mark.parametrize(("kind", "reason"), [pytest.param("Hard", "HardReset", id="013_hard"),
                                              pytest.param("Soft", "SoftReset", id="016_soft")])
async def test_013_016_reset_with_transaction(octt: Octt, kind: str, reason: str) -> None:
    agent = await octt.start_agent()
    await octt.booted()
    await octt.charging()
    assert await octt.csms.send(CP, "Reset", {"type": kind}) == {"status": "Accepted"}
    stop = await octt.wait("StopTransaction")
    assert stop.payload["reason"] == reason and stop.payload["transactionId"] == 1
    assert agent.service is not None
    await asyncio.wait_for(agent.service.restart_requested.wait(), 5)
    assert agent.service.restart_kind == kind
    # What the CLI does on restart_requested. The Stop left before the restart; the new boot does not resend it.
    agent = await octt.restart_agent()
    await octt.wait("BootNotification", count=2)
    await eventually(lambda: agent.service is not None and agent.service.online
                     and agent.service.outbox.depth() == 0, 5, "online with an empty outbox")
    assert len(octt.msgs("StopTransaction")) == 1


async def test_017_unlock_connector_stops_transaction(octt: Octt) -> None:
    agent = await octt.start_agent()
    await octt.booted()
    await octt.charging()
    answer = await octt.csms.send(CP, "UnlockConnector", {"connectorId": 1})
    stop = await octt.wait("StopTransaction")
    assert stop.payload["reason"] == "UnlockCommand"
    assert answer["status"] in ("Unlocked", "UnlockFailed")
    assert answer["status"] == ("Unlocked" if agent.connector.lock.locked is False else "UnlockFailed")
    assert await octt.csms.send(CP, "UnlockConnector", {"connectorId": 5}) == {"status": "NotSupported"}


async def test_019_021_040_configuration(octt: Octt) -> None:
    await octt.start_agent()
    await octt.booted()
    everything = await octt.csms.send(CP, "GetConfiguration", {})
    keys = {k["key"]: k for k in everything["configurationKey"]}
    assert keys["NumberOfConnectors"] == {"key": "NumberOfConnectors", "readonly": True, "value": "1"}
    assert "AuthorizationKey" not in keys
    some = await octt.csms.send(CP, "GetConfiguration", {"key": ["HeartbeatInterval", "NoSuchKey"]})
    assert some["unknownKey"] == ["NoSuchKey"]
    send = octt.csms.send
    assert await send(CP, "ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "7"}) == {
        "status": "Accepted"}
    assert (await send(CP, "ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "x"}))[
        "status"] == "Rejected"
    assert (await send(CP, "ChangeConfiguration", {"key": "NumberOfConnectors", "value": "3"}))[
        "status"] == "Rejected"
    assert (await send(CP, "ChangeConfiguration", {"key": "NoSuchKey", "value": "1"}))["status"] == "NotSupported"
    assert (await send(CP, "ChangeConfiguration", {"key": "WebSocketPingInterval", "value": "-1"}))[
        "status"] == "Rejected"
    await octt.restart_agent()
    await octt.wait("BootNotification", count=2)
    await octt.csms.wait_connected(CP)
    again = await send(CP, "GetConfiguration", {"key": ["MeterValueSampleInterval"]})
    assert again["configurationKey"][0]["value"] == "7"


async def test_061_clear_cache_and_data_transfer(octt: Octt) -> None:
    from agent.authcache import IdTagInfo

    agent = await octt.start_agent()
    await octt.booted()
    assert agent.service is not None
    agent.service.cache.update(TAG, IdTagInfo("Accepted"))
    assert await octt.csms.send(CP, "ClearCache", {}) == {"status": "Accepted"}
    assert agent.service.cache.lookup(TAG) is None
    answer = await octt.csms.send(CP, "DataTransfer", {"vendorId": "com.example"})
    assert answer == {"status": "UnknownVendorId"}
    # And the other way: the charge point's DataTransfer reaches the CSMS and returns its answer.
    assert await agent.service.data_transfer("com.example", "ping", "x") == ("Accepted", None)
    assert octt.msgs("DataTransfer")[-1].payload == {"vendorId": "com.example", "messageId": "ping", "data": "x"}
    octt.csms.data_transfer_status = "UnknownVendorId"
    assert await agent.service.data_transfer("org.other") == ("UnknownVendorId", None)


async def test_014_cpagent_run_exits_for_restart_after_reset(octt: Octt) -> None:
    """`cpagent run` with ocpp.endpoint set: boots over OCPP, and a Reset ends it with the restart status."""
    from agent.cli import run_agent
    from agent.config import load
    from agent.ocpp.v16.service import RESTART_EXIT_STATUS

    running = asyncio.create_task(run_agent(load(octt.rig.dir / "agent.toml")))
    try:
        await octt.booted()
        assert await octt.csms.send(CP, "Reset", {"type": "Soft"}) == {"status": "Accepted"}
        assert await asyncio.wait_for(running, 15) == RESTART_EXIT_STATUS
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
