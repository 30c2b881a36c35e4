"""OCPP 2.0.1 Smart Charging (K01-K10, agent/ocpp/v201/smart_charging.py).

Pure: the 2.0.1 profile validation (what is Rejected with which reasonCode), duplicates, the
GetChargingProfiles criteria, report chunks, the composite schedule payload in A and W.

End to end over a real websocket against the bundled 2.0.1 CSMS with the simulated hardware underneath: the
EV really draws less (the plant's power read through the rig), GetCompositeSchedule in both units,
GetChargingProfiles -> ReportChargingProfiles, ClearChargingProfile, persistence across a restart,
RequestStartTransaction with a TxProfile."""

from __future__ import annotations

import time
from typing import Any

from agent import smart_charging as sc
from agent.ocpp.v201.device_model import VARIABLES
from agent.ocpp.v201.smart_charging import (
    MAX_PROFILES,
    ProfileError,
    Settings,
    chunks,
    composite_payload,
    conflict,
    matches,
    parse_profile,
    problems,
)
from tests.agent.ocpp.v201.conftest import TAG, Octt201, eventually


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def profile(pid: int, purpose: str, periods: list[tuple[int, float]], *, stack: int = 0, unit: str = "A",
            kind: str = "Absolute", start: float | None = None, **extra: Any) -> dict[str, Any]:
    schedule: dict[str, Any] = {
        "id": pid, "chargingRateUnit": unit,
        "chargingSchedulePeriod": [{"startPeriod": s, "limit": limit} for s, limit in periods],
    }
    if kind != "Relative":
        schedule["startSchedule"] = iso(time.time() - 1 if start is None else start)
    return {"id": pid, "stackLevel": stack, "chargingProfilePurpose": purpose, "chargingProfileKind": kind,
            "chargingSchedule": [schedule], **extra}


def reason(evse: int, body: dict[str, Any], settings: Settings | None = None) -> str | None:
    settings = settings or Settings()
    try:
        found = problems(parse_profile(evse, body, 0.0, settings), settings, (1, 2))
    except ProfileError as exc:
        return exc.reason
    return "; ".join(found) or None


# -- pure ------------------------------------------------------------------------------------------


def test_profile_validation() -> None:
    assert reason(0, profile(1, "ChargingStationMaxProfile", [(0, 16.0)])) is None
    assert reason(1, profile(1, "TxDefaultProfile", [(0, 16.0), (60, 8.0)])) is None
    assert reason(1, profile(1, "TxProfile", [(0, 16.0)], transactionId="t1")) is None
    assert reason(1, profile(1, "TxProfile", [(0, 16.0)])) == "a TxProfile needs a transactionId"
    assert "EVSE 0 only" in str(reason(1, profile(1, "ChargingStationMaxProfile", [(0, 16.0)])))
    assert "needs an EVSE" in str(reason(0, profile(1, "TxProfile", [(0, 16.0)], transactionId="t")))
    assert "no EVSE 3" in str(reason(3, profile(1, "TxDefaultProfile", [(0, 16.0)])))
    assert reason(0, profile(1, "ChargingStationExternalConstraints", [(0, 16.0)])) == "InvalidProfile"
    assert reason(0, profile(1, "TxDefaultProfile", [(0, 1000.0)], unit="W"),
                  Settings(units=frozenset({sc.RateUnit.AMPS}))) == "UnsupportedRateUnit"
    assert reason(0, profile(1, "TxDefaultProfile", [(i, 10.0) for i in range(25)])) == "InvalidSchedule"
    two = profile(1, "TxDefaultProfile", [(0, 16.0)])
    two["chargingSchedule"] *= 2  # two schedules: ISO 15118 only
    assert reason(0, two) == "InvalidSchedule"
    relative = profile(1, "TxDefaultProfile", [(0, 16.0)], kind="Relative")
    assert reason(0, relative) is None
    relative["chargingSchedule"][0]["startSchedule"] = iso(0)
    assert reason(0, relative) == "InvalidSchedule"
    recurring = profile(1, "TxDefaultProfile", [(0, 16.0)], kind="Recurring")
    assert reason(0, recurring) == "InvalidProfile"  # no recurrencyKind
    assert reason(0, {**recurring, "recurrencyKind": "Daily"}) is None
    assert reason(0, profile(1, "TxDefaultProfile", [(0, 16.0)], stack=11)) == "stackLevel outside 0..10"
    assert reason(0, profile(1, "TxDefaultProfile", [(0, float("inf"))])) == "limits must be 0..1e+07"
    assert reason(0, profile(1, "TxDefaultProfile", [(10, 16.0)])) == "the first period must start at 0"
    assert reason(0, {"id": 1}) == "InvalidValue"
    assert reason(0, profile(1, "TxDefaultProfile", [(0, 16.0)], validFrom=iso(200), validTo=iso(100))) == \
        "validTo must be after validFrom"


def test_duplicates_criteria_chunks_and_composite_payload() -> None:
    def p(pid: int, stack: int, **kw: Any) -> sc.Profile:
        return parse_profile(1, profile(pid, "TxDefaultProfile", [(0, 16.0)], stack=stack, **kw), 0.0, Settings())

    a = p(1, 0, validFrom=iso(0), validTo=iso(1000))
    assert conflict([a], p(2, 0)) is a  # same purpose, stack level, EVSE, overlapping validity
    assert conflict([a], p(1, 0)) is None  # same id: replaces
    assert conflict([a], p(2, 1)) is None
    assert conflict([a], p(2, 0, validFrom=iso(1000))) is None  # validity periods do not overlap
    assert matches(a, None, {}) and matches(a, 1, {"chargingProfilePurpose": "TxDefaultProfile"})
    assert not matches(a, 0, {}) and not matches(a, None, {"stackLevel": 1})
    assert matches(a, None, {"chargingProfileId": [5, 1]}) and not matches(a, None, {"chargingProfileId": [5]})
    assert not matches(a, None, {"chargingLimitSource": ["EMS"]})
    assert [len(c) for c in chunks(list(range(17)), 8)] == [8, 8, 1]
    schedule = sc.Composite(100.0, 60, (sc.CompositePeriod(100.0, 16.0, 3), sc.CompositePeriod(130.0, 8.0, 1)))
    watts = composite_payload(schedule, 1, sc.RateUnit.WATTS, sc.Electrical(32.0, 3, 230.0), "T")
    assert watts["chargingSchedulePeriod"] == [{"startPeriod": 0, "limit": 11040.0, "numberPhases": 3},
                                               {"startPeriod": 30, "limit": 1840.0, "numberPhases": 1}]
    entries = next(v for v in VARIABLES if v.key == "SmartChargingCtrlr/Entries.ChargingProfiles")
    assert entries.max == MAX_PROFILES


# -- end to end ----------------------------------------------------------------------------------


def rig_power(octt: Octt201, evse: int = 1) -> float:
    return float(octt.ctl("state")["state"]["connectors"][str(evse)]["power_w"])


async def set_profile(octt: Octt201, evse: int, body: dict[str, Any]) -> dict[str, Any]:
    return await octt.send("SetChargingProfile", {"evseId": evse, "chargingProfile": body})


async def composite(octt: Octt201, evse: int = 1, unit: str = "A", duration: int = 600) -> list[tuple[int, float]]:
    answer = await octt.send("GetCompositeSchedule", {"evseId": evse, "duration": duration, "chargingRateUnit": unit})
    assert answer["status"] == "Accepted", answer
    schedule = answer["schedule"]
    assert schedule["chargingRateUnit"] == unit and schedule["evseId"] == evse and schedule["duration"] == duration
    return [(p["startPeriod"], p["limit"]) for p in schedule["chargingSchedulePeriod"]]


async def test_tc_k_01_k_02_max_and_tx_profile_limit_what_the_ev_draws(octt: Octt201) -> None:
    """TC_K_01 (ChargingStationMaxProfile) + K01 TxProfile (TC_K_05-style rejections) + K08 composite in A and
    W + K09 report: the station maximum set before the transaction caps its first PWM; a TxProfile for the
    running transaction lowers it further; the EV follows both (the plant's power)."""
    agent = await octt.start_agent()
    await octt.booted()
    assert (await set_profile(octt, 0, profile(1, "ChargingStationMaxProfile", [(0, 10.0)])))["status"] == \
        "Accepted"
    no_tx = await set_profile(octt, 1, profile(2, "TxProfile", [(0, 7.0)], transactionId="nope"))
    assert no_tx["status"] == "Rejected" and no_tx["statusInfo"]["reasonCode"] == "TxNotFound"
    started = await octt.charging()
    tx = started["transactionInfo"]["transactionId"]
    await eventually(lambda: 6000 < rig_power(octt) < 7500, 10, "the EV at 10 A (6.9 kW)")
    assert (await set_profile(octt, 1, profile(2, "TxProfile", [(0, 16.0)], transactionId="other")))["status"] \
        == "Rejected"
    assert (await set_profile(octt, 1, profile(2, "TxProfile", [(0, 7.0)], transactionId=tx)))["status"] == \
        "Accepted"
    duplicate = await set_profile(octt, 1, profile(3, "TxProfile", [(0, 8.0)], transactionId=tx))
    assert duplicate["statusInfo"]["reasonCode"] == "DuplicateProfile"
    assert await composite(octt) == [(0, 7.0)]
    watts = await composite(octt, unit="W")
    assert len(watts) == 1 and 7.0 * 3 * 215 < watts[0][1] < 7.0 * 3 * 245  # the measured voltage
    assert await composite(octt, evse=0) == [(0, 10.0)]
    await eventually(lambda: 4200 < rig_power(octt) < 5300, 10, "the EV at 7 A (4.8 kW)")
    assert agent.station is not None and agent.station.connectors[1].session is not None  # limited, not stopped
    # the CSMS's TxProfile moved the rate 10 -> 7 A (> LimitChangeSignificance 10 %): Updated ChargingRateChanged
    rate = await octt.wait_tx_event("Updated", where=lambda e: e["triggerReason"] == "ChargingRateChanged")
    assert rate["transactionInfo"]["transactionId"] == tx

    answer = await octt.send("GetChargingProfiles", {"requestId": 5, "chargingProfile": {}})
    assert answer["status"] == "Accepted"
    await octt.wait("ReportChargingProfiles", count=2)
    reports = sorted((m.payload for m in octt.msgs("ReportChargingProfiles")), key=lambda r: r["evseId"])
    assert [(r["evseId"], [p["id"] for p in r["chargingProfile"]], r.get("tbc", False)) for r in reports] == \
        [(0, [1], True), (1, [2], False)]
    assert reports[1]["chargingProfile"][0]["transactionId"] == tx
    none = await octt.send("GetChargingProfiles", {"requestId": 6, "chargingProfile": {"stackLevel": 9}})
    assert none["status"] == "NoProfiles"
    entries = await octt.send("GetVariables", {"getVariableData": [{
        "component": {"name": "SmartChargingCtrlr"}, "variable": {"name": "Entries", "instance": "ChargingProfiles"}}]})
    assert entries["getVariableResult"][0]["attributeValue"] == "2"

    assert await octt.send("ClearChargingProfile", {"chargingProfileCriteria": {
        "chargingProfilePurpose": "ChargingStationMaxProfile"}}) == {"status": "Accepted"}
    assert await octt.send("ClearChargingProfile", {"chargingProfileId": 1}) == {"status": "Unknown"}
    assert await composite(octt, evse=0) == [(0, 32.0)]  # the one 32 A EVSE
    assert agent.connector.controller.offered_current_a == 7.0  # the TxProfile still binds


async def test_tc_k_tx_default_persistence_clear_and_disabled(octt: Octt201) -> None:
    """K01 TxDefaultProfile on EVSE 0 and on one EVSE (the EVSE's wins at the same stack level), recurring,
    persisted across a restart; K10 clear by criteria; SmartChargingCtrlr.Enabled false rejects and limits
    nothing."""
    await octt.start_agent()
    await octt.booted()
    assert (await set_profile(octt, 0, profile(10, "TxDefaultProfile", [(0, 20.0)])))["status"] == "Accepted"
    daily = profile(11, "TxDefaultProfile", [(0, 12.0)], kind="Recurring", recurrencyKind="Daily",
                    start=time.time() - 30)
    assert (await set_profile(octt, 1, daily))["status"] == "Accepted"
    assert await composite(octt, 1, duration=60) == [(0, 12.0)]  # the EVSE's own beats EVSE 0's
    assert await composite(octt, 0, duration=60) == [(0, 32.0)]  # no ChargingStationMaxProfile
    agent = await octt.restart_agent()
    await octt.wait("BootNotification", count=2)
    await eventually(lambda: agent.service.accepted and agent.service.online, 8, "the new connection accepted")
    assert (await octt.send("GetChargingProfiles", {"requestId": 1, "chargingProfile": {}}))["status"] == "Accepted"
    await octt.wait("ReportChargingProfiles", count=2)
    ids = sorted(p["id"] for m in octt.msgs("ReportChargingProfiles") for p in m.payload["chargingProfile"])
    assert ids == [10, 11]
    assert await octt.send("ClearChargingProfile", {"chargingProfileCriteria": {"evseId": 1}}) == \
        {"status": "Accepted"}
    assert await octt.send("ClearChargingProfile", {"chargingProfileCriteria": {"evseId": 1}}) == \
        {"status": "Unknown"}
    smart = agent.service.features["SmartCharging"]
    await eventually(lambda: smart.applied.get(1) == 20.0, 5, "EVSE 0's 20 A TxDefaultProfile given to EVSE 1")
    result = await octt.send("SetVariables", {"setVariableData": [
        {"component": {"name": "SmartChargingCtrlr"}, "variable": {"name": "Enabled"}, "attributeValue": "false"}]})
    assert result["setVariableResult"][0]["attributeStatus"] == "Accepted"
    off = await set_profile(octt, 0, profile(12, "TxDefaultProfile", [(0, 8.0)], stack=1))
    assert off["status"] == "Rejected" and off["statusInfo"]["reasonCode"] == "NotEnabled"
    assert await composite(octt, 1, duration=60) == [(0, 32.0)]  # profile 10 (20 A) installed, limits nothing
    await eventually(lambda: smart.applied.get(1, 0) is None, 5, "no limit given to the control side")


async def test_tc_k_37_remote_start_with_charging_profile(octt: Octt201) -> None:
    """TC_K_37 Remote start transaction with charging profile: the TxProfile (Relative, no transactionId)
    governs the transaction it starts from its first PWM; a TxDefaultProfile is Rejected in the request."""
    agent = await octt.start_agent()
    await octt.booted()
    await octt.plugged()
    bad = await octt.send("RequestStartTransaction", {
        "idToken": {"idToken": TAG, "type": "ISO14443"}, "remoteStartId": 1, "evseId": 1,
        "chargingProfile": profile(20, "TxDefaultProfile", [(0, 6.0)], kind="Relative")})
    assert bad["status"] == "Rejected"
    answer = await octt.send("RequestStartTransaction", {
        "idToken": {"idToken": TAG, "type": "ISO14443"}, "remoteStartId": 2, "evseId": 1,
        "chargingProfile": profile(21, "TxProfile", [(0, 8.0)], kind="Relative")})
    assert answer["status"] == "Accepted"
    await octt.wait_charging_state("Charging")
    assert agent.connector.controller.offered_current_a == 8.0  # from the first PWM on
    started = await octt.wait_tx_event("Started")
    assert await composite(octt, duration=60) == [(0, 8.0)]
    assert (await octt.send("GetChargingProfiles", {"requestId": 3, "chargingProfile": {
        "chargingProfilePurpose": "TxProfile"}}))["status"] == "Accepted"
    report = (await octt.wait("ReportChargingProfiles")).payload["chargingProfile"][0]
    assert (report["id"], report["transactionId"]) == (21, started["transactionInfo"]["transactionId"])
    await eventually(lambda: 4800 < rig_power(octt) < 6000, 10, "the EV at 8 A (5.5 kW)")


async def test_tc_k_offline_relative_tx_default_follows_its_periods(octt: Octt201) -> None:
    """K01 offline behaviour: a Relative TxDefaultProfile installed while online governs a transaction started
    during an outage from its first PWM (8 A) and moves to its next period (13 A, 4 s after the start) with
    no CSMS: the plant's power follows both."""
    agent = await octt.start_agent({"AuthCtrlr/OfflineTxForUnknownIdEnabled": True})
    await octt.booted()
    body = profile(30, "TxDefaultProfile", [(0, 8.0), (4, 13.0)], kind="Relative")
    assert (await set_profile(octt, 0, body))["status"] == "Accepted"
    assert agent.service is not None
    await octt.csms.outage(30)
    await eventually(lambda: not agent.service.online, what="offline")
    await octt.plugged()
    assert (await agent.tap(TAG)).accepted
    await eventually(lambda: agent.connector.session is not None, 5, "the session")
    assert agent.connector.controller.offered_current_a == 8.0
    await eventually(lambda: 4800 < rig_power(octt) < 6000, 8, "the EV at 8 A (5.5 kW)")
    await eventually(lambda: agent.connector.controller.offered_current_a == 13.0, 10, "13 A from the 2nd period")
    await eventually(lambda: 8300 < rig_power(octt) < 9700, 8, "the EV at 13 A (9 kW)")
    assert not agent.service.online
