"""OCTT 1.6 transaction cases: 003 plug first, 004 id first, 005 EV-side disconnect, 068/069 stop by
same / parent tag, 070/071 meter values, StopTxn data."""

from __future__ import annotations

import asyncio
import re

from agent.authcache import IdTagInfo
from tests.agent.ocpp.conftest import TAG, TAG2, Octt, eventually

Z_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


async def test_003_plug_first_then_card_then_card_again(octt: Octt) -> None:
    agent = await octt.start_agent()
    await octt.booted()
    start = await octt.charging()
    assert [m.payload["idTag"] for m in octt.msgs("Authorize")] == [TAG]
    assert start.payload["connectorId"] == 1 and start.payload["idTag"] == TAG
    assert isinstance(start.payload["meterStart"], int)
    assert Z_TIME.match(start.payload["timestamp"])
    await octt.wait_status("Preparing")
    await asyncio.sleep(1.2)  # let some energy flow
    assert (await agent.tap(TAG)).accepted
    stop = await octt.wait("StopTransaction")
    assert stop.payload["transactionId"] == 1
    assert stop.payload["reason"] == "Local"
    assert stop.payload["idTag"] == TAG
    assert stop.payload["meterStop"] >= start.payload["meterStart"]
    await octt.wait_status("Finishing")
    octt.ctl("unplug")
    await octt.wait_status("Available", within=8)
    statuses = [m.payload["status"] for m in octt.msgs("StatusNotification") if m.payload["connectorId"] == 1]
    assert statuses.index("Preparing") < statuses.index("Charging") < statuses.index("Finishing")
    actions = [m.action for m in octt.msgs()]
    assert actions.count("StopTransaction") == 1


async def test_004_1_card_first_then_plug(octt: Octt) -> None:
    agent = await octt.start_agent()
    await octt.booted()
    assert (await agent.tap(TAG)).accepted
    await octt.wait_status("Preparing")
    assert octt.msgs("StartTransaction") == []
    octt.ctl("plug")
    start = await octt.wait("StartTransaction")
    assert start.payload["idTag"] == TAG
    await octt.wait_status("Charging")


async def test_004_2_card_first_connection_timeout(octt: Octt) -> None:
    agent = await octt.start_agent(ConnectionTimeOut="1")
    await octt.booted()
    assert agent.connector.connection_timeout_s == 1.0
    assert (await agent.tap(TAG)).accepted
    await octt.wait_status("Preparing")
    preparing_at = len(octt.msgs("StatusNotification"))
    await eventually(lambda: len(octt.msgs("StatusNotification")) > preparing_at, 4, "status after timeout")
    assert octt.msgs("StatusNotification")[-1].payload["status"] == "Available"
    octt.ctl("plug")
    await octt.wait_status("Preparing")
    await asyncio.sleep(0.5)
    assert octt.msgs("StartTransaction") == []


async def test_005_1_ev_side_disconnect_stops(octt: Octt) -> None:
    await octt.start_agent()
    await octt.booted()
    await octt.charging()
    octt.ctl("unplug")
    stop = await octt.wait("StopTransaction")
    assert stop.payload["reason"] == "EVDisconnected"
    assert "idTag" not in stop.payload
    await octt.wait_status("Available")


async def test_005_1_cable_unlocks_after_ev_side_disconnect_by_default(octt: Octt) -> None:
    agent = await octt.start_agent()
    await octt.booted()
    await octt.charging()
    plant = octt.rig.connectors[1].plant
    assert plant.locked
    octt.ctl("unplug")
    await octt.wait("StopTransaction")
    await eventually(lambda: not plant.locked and agent.connector.lock.locked is False, 3, "cable unlocked")


async def test_005_3_cable_stays_locked_until_its_owner_comes_back(octt: Octt) -> None:
    """UnlockConnectorOnEVSideDisconnect = false: a cable pulled from the EV stays locked in the socket
    (no one walks off with it) until the session's idTag is presented; that tap starts no session."""
    agent = await octt.start_agent(UnlockConnectorOnEVSideDisconnect="false")
    await octt.booted()
    await octt.charging()
    plant = octt.rig.connectors[1].plant
    octt.ctl("unplug")
    stop = await octt.wait("StopTransaction")
    assert stop.payload["reason"] == "EVDisconnected"
    await octt.wait_status("Available")
    await asyncio.sleep(1.0)
    assert plant.locked and agent.connector.lock_held_for == TAG
    assert (await agent.tap(TAG)).accepted
    await eventually(lambda: not plant.locked, 3, "cable unlocked for its owner")
    await asyncio.sleep(0.3)
    assert [m.action for m in octt.msgs()].count("StartTransaction") == 1


async def test_005_4_held_cable_is_released_by_unlock_connector(octt: Octt) -> None:
    agent = await octt.start_agent(UnlockConnectorOnEVSideDisconnect="false")
    await octt.booted()
    await octt.charging()
    plant = octt.rig.connectors[1].plant
    octt.ctl("unplug")
    await octt.wait("StopTransaction")
    await octt.wait_status("Available")
    assert plant.locked and agent.connector.lock_held_for == TAG
    answer = await octt.csms.send("CP1", "UnlockConnector", {"connectorId": 1})
    assert answer == {"status": "Unlocked"} and not plant.locked and agent.connector.lock_held_for is None


async def test_connector_keys_changed_at_runtime_reach_the_connector(octt: Octt) -> None:
    agent = await octt.start_agent()
    await octt.booted()
    for key, value in (("ConnectionTimeOut", "7"), ("StopTransactionOnEVSideDisconnect", "false"),
                       ("UnlockConnectorOnEVSideDisconnect", "false")):
        answer = await octt.csms.send("CP1", "ChangeConfiguration", {"key": key, "value": value})
        assert answer == {"status": "Accepted"}
    connector = agent.connector
    assert (connector.connection_timeout_s, connector.stop_on_ev_disconnect, connector.unlock_on_ev_disconnect) \
        == (7.0, False, False)


async def test_005_2_ev_side_disconnect_keeps_transaction_when_configured(octt: Octt) -> None:
    """StopTransactionOnEVSideDisconnect = false: unplugging suspends; re-plugging charges in the same
    transaction; the card then stops it."""
    agent = await octt.start_agent(StopTransactionOnEVSideDisconnect="false")
    await octt.booted()
    await octt.charging()
    octt.ctl("unplug")
    await octt.wait_status("SuspendedEV")
    await asyncio.sleep(0.5)
    assert octt.msgs("StopTransaction") == []
    octt.ctl("plug")
    await octt.wait_status("Charging", within=10)
    assert len(octt.msgs("StartTransaction")) == 1
    await agent.tap(TAG)
    stop = await octt.wait("StopTransaction")
    assert stop.payload["reason"] == "Local"


async def test_023_invalid_card_is_refused(octt: Octt) -> None:
    octt.csms.auth_list["BLOCKED1"] = "Blocked"
    agent = await octt.start_agent()
    await octt.booted()
    octt.ctl("plug")
    decision = await agent.tap("BLOCKED1")
    assert not decision.accepted and decision.status == "Blocked"
    decision = await agent.tap("UNKNOWN9")
    assert not decision.accepted and decision.status == "Invalid"
    await asyncio.sleep(0.3)
    assert octt.msgs("StartTransaction") == []


async def test_068_stop_with_same_tag_and_other_tag_refused(octt: Octt) -> None:
    agent = await octt.start_agent()
    await octt.booted()
    await octt.charging()
    refused = await agent.tap(TAG2)  # a valid card, but not the one that started and no shared parent
    assert not refused.accepted
    await asyncio.sleep(0.3)
    assert octt.msgs("StopTransaction") == []
    assert (await agent.tap(TAG)).accepted
    stop = await octt.wait("StopTransaction")
    assert stop.payload["reason"] == "Local"


async def test_069_stop_with_tag_of_same_parent(octt: Octt) -> None:
    octt.csms.auth_list.update({"CARDA1": "Accepted", "CARDB2": "Accepted"})
    agent = await octt.start_agent(LocalPreAuthorize="true")
    await octt.booted()
    assert agent.service is not None
    group = IdTagInfo("Accepted", parent_id_tag="FLEET1")
    agent.service.local_list.replace_all(1, {"CARDA1": group, "CARDB2": group})
    start = await octt.charging("CARDA1")
    assert octt.msgs("Authorize") == []  # LocalPreAuthorize: the local list answered
    assert start.payload["idTag"] == "CARDA1"
    assert (await agent.tap("CARDB2")).accepted
    stop = await octt.wait("StopTransaction")
    assert stop.payload["reason"] == "Local"


async def test_070_sampled_meter_values(octt: Octt) -> None:
    await octt.start_agent(
        MeterValueSampleInterval="1",
        MeterValuesSampledData="Energy.Active.Import.Register,Power.Active.Import,Current.Import,Voltage",
        StopTxnSampledData="Energy.Active.Import.Register",
    )
    await octt.booted()
    await octt.charging()
    mv = await octt.wait("MeterValues", count=2, within=5)
    assert mv.payload["transactionId"] == 1 and mv.payload["connectorId"] == 1
    values = mv.payload["meterValue"][0]["sampledValue"]
    assert Z_TIME.match(mv.payload["meterValue"][0]["timestamp"])
    for sv in values:
        assert isinstance(sv["value"], str)
        assert sv["context"] == "Sample.Periodic"
        assert {"measurand", "unit"} <= sv.keys()
    by = {(sv["measurand"], sv.get("phase")): sv for sv in values}
    assert by[("Energy.Active.Import.Register", None)]["unit"] == "Wh"
    assert by[("Power.Active.Import", None)]["unit"] == "W"
    assert {p for (m, p) in by if m == "Current.Import"} == {"L1", "L2", "L3"}
    assert {p for (m, p) in by if m == "Voltage"} == {"L1-N", "L2-N", "L3-N"}
    energies = [
        float(sv["value"]) for m in octt.msgs("MeterValues") for v in m.payload["meterValue"]
        for sv in v["sampledValue"] if sv["measurand"] == "Energy.Active.Import.Register"
    ]
    assert energies == sorted(energies)  # the register only goes up
    octt.ctl("unplug")
    stop = await octt.wait("StopTransaction")
    contexts = [v["sampledValue"][0]["context"] for v in stop.payload["transactionData"]]
    assert contexts[0] == "Transaction.Begin" and contexts[-1] == "Transaction.End"
    assert "Sample.Periodic" in contexts


async def test_071_clock_aligned_meter_values(octt: Octt) -> None:
    await octt.start_agent(ClockAlignedDataInterval="1", MeterValuesAlignedData="Energy.Active.Import.Register")
    await octt.booted()
    await octt.charging()
    mv = await octt.wait("MeterValues", within=5)
    sv = mv.payload["meterValue"][0]["sampledValue"][0]
    assert sv["context"] == "Sample.Clock"
    assert sv["measurand"] == "Energy.Active.Import.Register" and sv["unit"] == "Wh"
    assert mv.payload["transactionId"] == 1


async def test_fault_status_carries_error_code(octt: Octt) -> None:
    await octt.start_agent()
    await octt.booted()
    octt.ctl("fault", name="rcd")
    faulted = await octt.wait_status("Faulted")
    assert faulted.payload["errorCode"] == "GroundFailure"
    assert faulted.payload["vendorErrorCode"] == "RCD"
    assert all(m.payload["status"] in ("Available", "Unavailable", "Faulted")
               for m in octt.msgs("StatusNotification") if m.payload["connectorId"] == 0)
