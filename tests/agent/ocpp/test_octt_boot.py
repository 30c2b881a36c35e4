"""OCTT 1.6 boot cases: 001 cold boot, 002 pending, rejected, plain reconnect."""

from __future__ import annotations

import re

from tests.agent.ocpp.conftest import CP, Octt, eventually

Z_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


async def test_001_cold_boot(octt: Octt) -> None:
    await octt.start_agent()
    boot = await octt.wait("BootNotification")
    assert boot.payload == {
        "chargePointVendor": "cpsim",
        "chargePointModel": "SimStation",
        "chargePointSerialNumber": "SIM-CP1",
        "firmwareVersion": boot.payload["firmwareVersion"],
    }
    await octt.wait_status("Available", 0)
    await octt.wait_status("Available", 1)
    actions = [m.action for m in octt.msgs()]
    assert actions[0] == "BootNotification"
    statuses = octt.msgs("StatusNotification")
    assert {m.payload["connectorId"] for m in statuses} == {0, 1}
    for m in statuses:
        assert m.payload["errorCode"] == "NoError"
        assert Z_TIME.match(m.payload["timestamp"])
    handshake = octt.csms.handshakes[0]
    assert handshake.path == f"/{CP}"
    assert "ocpp1.6" in handshake.subprotocols
    assert octt.agent is not None and octt.agent.service is not None
    # The CSMS's interval became our HeartbeatInterval.
    assert octt.agent.service.store.get_int("HeartbeatInterval") == 300


async def test_002_pending_then_accepted(octt: Octt) -> None:
    octt.csms.boot_status = "Pending"
    octt.csms.heartbeat_interval = 1
    await octt.start_agent()
    await octt.wait("BootNotification")
    # Pending: the CSMS's requests are answered, remote start is refused, nothing else is sent.
    conf = await octt.csms.send(CP, "GetConfiguration", {"key": ["HeartbeatInterval"]})
    assert conf["configurationKey"][0]["key"] == "HeartbeatInterval"
    remote = await octt.csms.send(CP, "RemoteStartTransaction", {"idTag": "DEADBEEF01", "connectorId": 1})
    assert remote == {"status": "Rejected"}
    await octt.wait("BootNotification", count=2, within=4)
    assert {m.action for m in octt.msgs()} == {"BootNotification"}
    octt.csms.boot_status = "Accepted"
    await octt.wait_status("Available", 1, within=5)
    actions = [m.action for m in octt.msgs()]
    first_other = next(i for i, a in enumerate(actions) if a != "BootNotification")
    assert all(a != "BootNotification" for a in actions[first_other:])


async def test_boot_rejected_is_silent_until_interval(octt: Octt) -> None:
    import asyncio

    import pytest

    octt.csms.boot_status = "Rejected"
    octt.csms.heartbeat_interval = 2
    await octt.start_agent()
    first = await octt.wait("BootNotification")
    await asyncio.sleep(0.2)  # let the Rejected answer arrive
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(octt.csms.send(CP, "GetConfiguration", {}), 0.8)
    octt.csms.boot_status = "Accepted"
    second = await octt.wait("BootNotification", count=2, within=5)
    assert second.at - first.at >= 1.9
    await octt.wait_status("Available", 1)
    assert [m.action for m in octt.msgs()][:2] == ["BootNotification", "BootNotification"]


async def test_plain_reconnect_skips_boot_but_sends_changed_status(octt: Octt) -> None:
    agent = await octt.start_agent()
    await octt.booted()
    await octt.csms.outage(0.5)
    octt.ctl("plug")  # the status changes while offline
    await eventually(lambda: agent.connector.status().value == "Preparing", what="Preparing")
    await octt.wait_status("Preparing", 1, within=8)
    assert len(octt.msgs("BootNotification")) == 1
    assert len(octt.csms.handshakes) >= 2
    # Connector 0 did not change: reported once only.
    assert len([m for m in octt.msgs("StatusNotification") if m.payload["connectorId"] == 0]) == 1


async def test_heartbeat_follows_interval_and_syncs_clock(octt: Octt) -> None:
    await octt.start_agent(HeartbeatInterval="1")
    octt.csms.heartbeat_interval = 0  # keep our own HeartbeatInterval
    await octt.booted()
    await octt.wait("Heartbeat", count=2, within=4)
    assert octt.agent is not None and octt.agent.service is not None
    assert abs(octt.agent.service.clock_offset_s) < 2.0
