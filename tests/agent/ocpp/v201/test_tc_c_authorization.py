"""OCTT 2.0.1 authorization (C) and the remaining transaction / metering cases over real websockets:
cache offline (TC_C_08/TC_C_32), unknown id (TC_C_02, TC_C_26), GroupId stop (TC_C_39), master pass
(TC_C_45/TC_C_49), ClearCache (TC_C_37), EVConnectionTimeOut (TC_E_39), clock-aligned values (TC_J_01)."""

from __future__ import annotations

from agent.authcache import IdTagInfo
from agent.station_api import EnergyHold
from tests.agent.ocpp.v201.conftest import TAG, TAG2, Octt201, eventually

FLEET = {"status": "Accepted", "groupIdToken": {"idToken": "FLEET", "type": "Central"}}


async def test_tc_c_02_08_32_unknown_refused_then_cached_card_works_offline(octt: Octt201) -> None:
    agent = await octt.start_agent()
    await octt.booted()
    await octt.plugged()
    assert not (await agent.tap("STRANGER")).accepted  # TC_C_02: Invalid by the CSMS, no transaction
    assert [m.payload["idToken"]["idToken"] for m in octt.msgs("Authorize")] == ["STRANGER"]
    assert (await agent.tap(TAG)).accepted  # Authorize Accepted: cached (TC_C_32)
    started = await octt.wait_tx_event("Started")
    await agent.tap(TAG)
    await octt.wait_tx_event("Ended")
    await octt.csms.outage(1.5)
    await eventually(lambda: not agent.service.online, what="offline")
    assert not (await agent.tap("STRANGER2")).accepted  # TC_C_26: unknown offline, not allowed
    assert (await agent.tap(TAG)).accepted  # TC_C_08: from the cache, offline
    offline = await octt.wait_tx_event("Started", count=2, within=15)
    assert offline["offline"] is True and offline["triggerReason"] == "Authorized"
    assert offline["transactionInfo"]["transactionId"] != started["transactionInfo"]["transactionId"]
    await eventually(lambda: agent.service.outbox.depth() == 0, what="queue drained")  # its answers learnt
    assert (await octt.send("ClearCache", {}))["status"] == "Accepted"  # TC_C_37
    assert len(agent.service.features["Transactions"].cache) == 0


async def test_tc_c_39_group_stop_and_c_49_master_pass(octt: Octt201) -> None:
    octt.csms.id_token_infos.update({TAG: FLEET, TAG2: FLEET, "BOSS": {
        "status": "Accepted", "groupIdToken": {"idToken": "MASTERS", "type": "Central"}}})
    agent = await octt.start_agent({"AuthCtrlr/MasterPassGroupId": "MASTERS"})
    await octt.booted()
    await octt.charging(TAG)
    assert (await agent.tap(TAG2)).accepted  # another card of the same group stops it
    ended = await octt.wait_tx_event("Ended")
    assert ended["triggerReason"] == "StopAuthorized" and ended["transactionInfo"]["stoppedReason"] == "Local"
    assert ended["idToken"]["idToken"] == TAG2
    octt.ctl("unplug", connector=1)
    await octt.wait_status("Available", count=2)
    await octt.plugged()
    assert not (await agent.tap("BOSS")).accepted  # TC_C_45: a master pass starts nothing
    assert (await agent.tap(TAG)).accepted
    await octt.wait_tx_event("Started", count=2)
    assert (await agent.tap("BOSS")).accepted  # TC_C_49: ... but stops the transaction
    master = await octt.wait_tx_event("Ended", count=2)
    assert master["transactionInfo"]["stoppedReason"] == "MasterPass"


async def test_tc_e_39_ev_connection_timeout_and_j_01_clock_aligned(octt: Octt201) -> None:
    agent = await octt.start_agent({"TxCtrlr/TxStartPoint": "Authorized", "TxCtrlr/TxStopPoint": "Authorized",
                                    "TxCtrlr/EVConnectionTimeOut": 1, "AlignedDataCtrlr/Interval": 1,
                                    "AlignedDataCtrlr/SendDuringIdle": True})
    await octt.booted()
    assert (await agent.tap(TAG)).accepted  # no EV yet
    started = await octt.wait_tx_event("Started")
    assert started["triggerReason"] == "Authorized" and started["transactionInfo"]["chargingState"] == "Idle"
    clock = await octt.wait_tx_event("Updated", where=lambda p: p["triggerReason"] == "MeterValueClock")
    assert clock["meterValue"][0]["sampledValue"][0]["context"] == "Sample.Clock"
    assert clock["meterValue"][0]["timestamp"].endswith(".000Z")  # on the boundary
    ended = await octt.wait_tx_event("Ended", within=5)
    assert ended["triggerReason"] == "EVConnectTimeout" and ended["transactionInfo"]["stoppedReason"] == "Timeout"
    assert [e["eventType"] for e in octt.tx_events()].count("Started") == 1
    idle = await octt.wait("MeterValues", within=5)  # SendDuringIdle: aligned values without a transaction
    assert idle.payload["evseId"] == 1
    assert idle.payload["meterValue"][0]["sampledValue"][0]["context"] == "Sample.Clock"


async def test_tc_c_17_invalid_id_without_stop_suspends_the_energy(octt: Octt201) -> None:
    octt.csms.auth_list["BADCARD"] = "Invalid"
    agent = await octt.start_agent({"TxCtrlr/StopTxOnInvalidId": False, "TxCtrlr/MaxEnergyOnInvalidId": 0,
                                    "AuthCtrlr/LocalPreAuthorize": True})
    agent.service.features["Transactions"].cache.update("BADCARD", IdTagInfo("Accepted"))  # IdTokenCached
    await octt.booted()
    await octt.plugged()
    assert (await agent.tap("BADCARD")).accepted  # from the cache, no Authorize
    started = await octt.wait_tx_event("Started")
    assert started["idToken"]["idToken"] == "BADCARD" and not octt.msgs("Authorize")
    # The answer said Invalid: energy stopped, the transaction kept (SuspendedEVSE, no Ended).
    await eventually(lambda: EnergyHold.INVALID_ID in agent.connector.energy_holds, what="energy held")
    await octt.wait_charging_state("SuspendedEVSE")
    assert [e["eventType"] for e in octt.tx_events()].count("Ended") == 0
