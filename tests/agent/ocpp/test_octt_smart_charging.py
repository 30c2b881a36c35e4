"""OCTT 1.6 SmartCharging (056-060, 066, 067, 072, 082 as far as they map), end to end: the bundled CSMS
sends the profiles over real websockets, the agent sets the controller's limit, the simulated EV follows
the PWM, and the lower power shows up in the meter and in MeterValues at the CSMS."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from simulator.csms import FrameLog, Received
from tests.agent.ocpp.conftest import CP, TAG, Octt, eventually

METERING = {
    "MeterValueSampleInterval": "1",
    "MeterValuesSampledData": "Energy.Active.Import.Register,Power.Active.Import",
}


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def profile(
    pid: int,
    purpose: str,
    periods: list[tuple[int, float]],
    *,
    stack: int = 0,
    unit: str = "A",
    kind: str = "Absolute",
    start: float | None = None,
    duration: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    schedule: dict[str, Any] = {
        "chargingRateUnit": unit,
        "chargingSchedulePeriod": [{"startPeriod": s, "limit": limit} for s, limit in periods],
    }
    if kind != "Relative":
        schedule["startSchedule"] = iso(time.time() - 1 if start is None else start)
    if duration is not None:
        schedule["duration"] = duration
    return {"chargingProfileId": pid, "stackLevel": stack, "chargingProfilePurpose": purpose,
            "chargingProfileKind": kind, "chargingSchedule": schedule, **extra}


async def set_profile(octt: Octt, connector_id: int, body: dict[str, Any]) -> str:
    answer = await octt.csms.send(CP, "SetChargingProfile", {"connectorId": connector_id, "csChargingProfiles": body})
    return str(answer["status"])


async def composite(octt: Octt, connector_id: int = 1, duration: int = 600, unit: str = "A") -> list[tuple[int, float]]:
    answer = await octt.csms.send(
        CP, "GetCompositeSchedule", {"connectorId": connector_id, "duration": duration, "chargingRateUnit": unit}
    )
    assert answer["status"] == "Accepted"
    schedule = answer["chargingSchedule"]
    assert schedule["chargingRateUnit"] == unit and schedule["duration"] == duration
    return [(p["startPeriod"], p["limit"]) for p in schedule["chargingSchedulePeriod"]]


def powers(msgs: list[Received]) -> list[float]:
    out = []
    for m in msgs:
        for mv in m.payload["meterValue"]:
            out += [float(v["value"]) for v in mv["sampledValue"] if v.get("measurand") == "Power.Active.Import"]
    return out


def rig_power(octt: Octt) -> float:
    return float(octt.ctl("state")["state"]["connectors"]["1"]["power_w"])


async def test_057_tx_profile_lowers_measured_power_then_clear_restores(octt: Octt) -> None:
    """057 Central Smart Charging - TxProfile: accepted for the running transaction; the EV follows the
    PWM, so the meter and MeterValues show the drop; clearing the profile brings full power back."""
    agent = await octt.start_agent(**METERING)
    await octt.booted()
    await octt.charging()
    await eventually(lambda: rig_power(octt) > 20000, 10, "full power (32 A x 3 phases)")
    body = profile(7, "TxProfile", [(0, 10.0)], transactionId=octt.transaction_id())
    assert await set_profile(octt, 1, body) == "Accepted"
    await eventually(lambda: agent.connector.controller.offered_current_a == 10.0, 8, "10 A offered")
    await eventually(lambda: 6000 < rig_power(octt) < 7500, 8, "the EV at 10 A (6.9 kW)")
    seen = len(octt.msgs("MeterValues"))
    await eventually(lambda: any(p < 7500 for p in powers(octt.msgs("MeterValues")[seen:])), 5,
                     "a MeterValues with the lower power at the CSMS")
    assert await octt.csms.send(CP, "ClearChargingProfile", {"id": 7}) == {"status": "Accepted"}
    await eventually(lambda: rig_power(octt) > 20000, 12, "full power again")
    assert agent.connector.session is not None  # limited, never stopped


async def test_056_tx_default_profile_applies_to_new_transaction(octt: Octt) -> None:
    """056 Central Smart Charging - TxDefaultProfile: set on connector 0 before the transaction, it limits
    the next transaction from its first PWM on."""
    agent = await octt.start_agent()
    await octt.booted()
    assert await set_profile(octt, 0, profile(1, "TxDefaultProfile", [(0, 16.0)])) == "Accepted"
    await octt.charging()
    await eventually(lambda: agent.connector.controller.offered_current_a == 16.0, 8, "16 A offered")
    await eventually(lambda: 10000 < rig_power(octt) < 11500, 10, "the EV at 16 A")


async def test_058_tx_profile_without_or_with_wrong_transaction_rejected(octt: Octt) -> None:
    """058_1 No ongoing transaction; 058_2 (as mapped) a transactionId that is not the running one."""
    await octt.start_agent()
    await octt.booted()
    body = profile(2, "TxProfile", [(0, 10.0)], transactionId=1)
    assert await set_profile(octt, 1, body) == "Rejected"
    await octt.charging()
    assert await set_profile(octt, 1, profile(2, "TxProfile", [(0, 10.0)], transactionId=99)) == "Rejected"
    assert await set_profile(octt, 0, profile(2, "TxProfile", [(0, 10.0)])) == "Rejected"
    assert await set_profile(octt, 1, profile(2, "TxProfile", [(0, 10.0)])) == "Accepted"


async def test_tx_profile_removed_when_transaction_ends(octt: Octt) -> None:
    """TxProfiles live as long as their transaction; TxDefaultProfiles stay."""
    agent = await octt.start_agent()
    await octt.booted()
    await octt.charging()
    assert await set_profile(octt, 1, profile(3, "TxProfile", [(0, 8.0)])) == "Accepted"
    assert await set_profile(octt, 1, profile(4, "TxDefaultProfile", [(0, 20.0)])) == "Accepted"
    assert (await composite(octt))[0] == (0, 8.0)
    assert (await agent.tap(TAG)).accepted
    await octt.wait("StopTransaction")
    assert await octt.csms.send(CP, "ClearChargingProfile", {"id": 3}) == {"status": "Unknown"}
    assert (await composite(octt))[0] == (0, 20.0)


async def test_066_get_composite_schedule(octt: Octt) -> None:
    """066 Get Composite Schedule: the periods of the profile in force; unknown connector Rejected."""
    await octt.start_agent()
    await octt.booted()
    body = profile(1, "TxDefaultProfile", [(0, 6.0), (60, 8.0), (200, 10.0)], stack=1, duration=400,
                   start=time.time())
    assert await set_profile(octt, 1, body) == "Accepted"
    periods = await composite(octt, duration=300)
    assert [limit for _, limit in periods] == [6.0, 8.0, 10.0]
    assert abs(periods[1][0] - 60) <= 2 and abs(periods[2][0] - 200) <= 2
    watts = await composite(octt, duration=30, unit="W")
    assert watts == [(0, 6 * 230 * 3)]
    rejected = await octt.csms.send(CP, "GetCompositeSchedule", {"connectorId": 7, "duration": 60})
    assert rejected == {"status": "Rejected"}


async def test_067_clear_charging_profile(octt: Octt) -> None:
    """067 Clear Charging Profile: by id, by criteria, everything; Unknown when nothing matches."""
    await octt.start_agent()
    await octt.booted()
    assert await set_profile(octt, 0, profile(1, "ChargePointMaxProfile", [(0, 30.0)])) == "Accepted"
    assert await set_profile(octt, 1, profile(2, "TxDefaultProfile", [(0, 20.0)], stack=1)) == "Accepted"
    assert await set_profile(octt, 1, profile(3, "TxDefaultProfile", [(0, 12.0)], stack=2)) == "Accepted"
    assert (await composite(octt))[0] == (0, 12.0)
    assert await octt.csms.send(CP, "ClearChargingProfile", {"id": 3}) == {"status": "Accepted"}
    assert (await composite(octt))[0] == (0, 20.0)
    criteria = {"connectorId": 1, "chargingProfilePurpose": "TxDefaultProfile", "stackLevel": 1}
    assert await octt.csms.send(CP, "ClearChargingProfile", criteria) == {"status": "Accepted"}
    assert (await composite(octt))[0] == (0, 30.0)
    assert await octt.csms.send(CP, "ClearChargingProfile", criteria) == {"status": "Unknown"}
    assert await octt.csms.send(CP, "ClearChargingProfile", {}) == {"status": "Accepted"}
    assert (await composite(octt))[0] == (0, 32.0)  # the connector's own maximum
    assert await octt.csms.send(CP, "ClearChargingProfile", {}) == {"status": "Unknown"}


async def test_072_stacking_charging_profiles(octt: Octt) -> None:
    """072 Stacking Charging Profiles: the higher stack level wins while its schedule lasts, then the
    lower one shows through; same purpose + stack level replaces."""
    await octt.start_agent()
    await octt.booted()
    now = time.time()
    low = profile(1, "TxDefaultProfile", [(0, 6.0), (100, 8.0), (200, 10.0)], stack=0, duration=400, start=now,
                  validFrom=iso(now - 5), validTo=iso(now + 401))
    high = profile(2, "TxDefaultProfile", [(0, 7.0)], stack=1, duration=150, start=now)
    assert await set_profile(octt, 1, low) == "Accepted"
    assert await set_profile(octt, 1, high) == "Accepted"
    periods = await composite(octt, duration=500)
    assert [limit for _, limit in periods] == [7.0, 8.0, 10.0, 32.0]
    assert all(abs(s - want) <= 2 for (s, _), want in zip(periods, [0, 150, 200, 400], strict=True))
    replacement = profile(9, "TxDefaultProfile", [(0, 9.0)], stack=1, start=now)
    assert await set_profile(octt, 1, replacement) == "Accepted"
    assert (await composite(octt))[0] == (0, 9.0)
    assert await octt.csms.send(CP, "ClearChargingProfile", {"id": 2}) == {"status": "Unknown"}  # replaced


async def test_082_charge_point_max_profile_caps_everything(octt: Octt) -> None:
    """082 (as mapped: ChargePointMaxProfile): connector 0 only; the composite is the minimum of it and
    the TxDefaultProfile; it also limits the running transaction."""
    agent = await octt.start_agent()
    await octt.booted()
    assert await set_profile(octt, 1, profile(1, "ChargePointMaxProfile", [(0, 10.0)])) == "Rejected"
    assert await set_profile(octt, 0, profile(1, "ChargePointMaxProfile", [(0, 13.0)])) == "Accepted"
    assert await set_profile(octt, 0, profile(2, "TxDefaultProfile", [(0, 20.0)])) == "Accepted"
    assert (await composite(octt))[0] == (0, 13.0)
    assert (await composite(octt, connector_id=0))[0] == (0, 13.0)
    await octt.charging()
    await eventually(lambda: agent.connector.controller.offered_current_a == 13.0, 8, "13 A offered")


async def test_power_profile_converted_with_measured_voltage(octt: Octt) -> None:
    """A W profile becomes amps through the phases (period's numberPhases, else the connector's 3) and
    the measured voltage (230 V in the simulator)."""
    agent = await octt.start_agent()
    await octt.booted()
    await octt.charging()
    body = profile(5, "TxProfile", [(0, 6900.0)], unit="W")
    assert await set_profile(octt, 1, body) == "Accepted"
    assert agent.service is not None
    await eventually(lambda: agent.service is not None
                     and agent.service.features["SmartCharging"].applied.get(1) == 10.0, 5, "6900 W -> 10 A")
    one_phase = profile(5, "TxProfile", [(0, 2300.0)], unit="W")
    one_phase["chargingSchedule"]["chargingSchedulePeriod"][0]["numberPhases"] = 1
    assert await set_profile(octt, 1, one_phase) == "Accepted"
    await eventually(lambda: agent.service is not None
                     and agent.service.features["SmartCharging"].applied.get(1) == 10.0, 5, "2300 W on 1 phase")


async def test_limit_below_6a_pauses_without_stopping(octt: Octt) -> None:
    """A limit below 6 A pauses the charge (SuspendedEVSE); the transaction goes on and resumes."""
    agent = await octt.start_agent()
    await octt.booted()
    await octt.charging()
    assert await set_profile(octt, 1, profile(6, "TxProfile", [(0, 0.0)])) == "Accepted"
    await octt.wait_status("SuspendedEVSE")
    await eventually(lambda: rig_power(octt) == 0.0, 8, "no power")
    assert octt.msgs("StopTransaction") == [] and agent.connector.session is not None
    assert await octt.csms.send(CP, "ClearChargingProfile", {"id": 6}) == {"status": "Accepted"}
    await eventually(lambda: rig_power(octt) > 20000, 15, "charging again")


async def test_configuration_limits_and_persistence(octt: Octt) -> None:
    """ChargeProfileMaxStackLevel, ChargingScheduleMaxPeriods, ChargingScheduleAllowedChargingRateUnit and
    MaxChargingProfilesInstalled answer Rejected beyond them; installed profiles survive a restart."""
    await octt.start_agent(ChargeProfileMaxStackLevel="3", ChargingScheduleMaxPeriods="2",
                           ChargingScheduleAllowedChargingRateUnit="Current", MaxChargingProfilesInstalled="2")
    await octt.booted()
    assert await set_profile(octt, 1, profile(1, "TxDefaultProfile", [(0, 16.0)], stack=4)) == "Rejected"
    three = profile(1, "TxDefaultProfile", [(0, 16.0), (10, 12.0), (20, 8.0)])
    assert await set_profile(octt, 1, three) == "Rejected"
    assert await set_profile(octt, 1, profile(1, "TxDefaultProfile", [(0, 5000.0)], unit="W")) == "Rejected"
    assert await set_profile(octt, 1, profile(1, "TxDefaultProfile", [(0, 16.0)], stack=3)) == "Accepted"
    assert await set_profile(octt, 0, profile(2, "ChargePointMaxProfile", [(0, 14.0)])) == "Accepted"
    assert await set_profile(octt, 1, profile(3, "TxDefaultProfile", [(0, 10.0)], stack=2)) == "Rejected"
    assert await set_profile(octt, 1, profile(1, "TxDefaultProfile", [(0, 12.0)], stack=3)) == "Accepted"
    await octt.restart_agent()
    await octt.wait("BootNotification", count=2)
    await octt.csms.wait_connected(CP)
    assert (await composite(octt))[0] == (0, 12.0)
    assert await octt.csms.send(CP, "ClearChargingProfile", {"chargingProfilePurpose": "ChargePointMaxProfile"}) == {
        "status": "Accepted"}


async def test_059_remote_start_with_charging_profile(octt: Octt) -> None:
    """059 Remote Start Transaction with Charging Profile: the TxProfile is followed from the start of the
    transaction and reported by GetCompositeSchedule."""
    agent = await octt.start_agent(AuthorizeRemoteTxRequests="false")
    await octt.booted()
    octt.ctl("plug")
    await octt.wait_status("Preparing")
    body = profile(11, "TxProfile", [(0, 12.0)], kind="Relative")
    answer = await octt.csms.send(CP, "RemoteStartTransaction", {"idTag": TAG, "connectorId": 1,
                                                                 "chargingProfile": body})
    assert answer == {"status": "Accepted"}
    await octt.wait("StartTransaction")
    await eventually(lambda: agent.connector.controller.offered_current_a == 12.0, 8, "12 A offered")
    assert (await composite(octt, duration=60))[0] == (0, 12.0)


async def test_060_remote_start_with_wrong_profile_purpose_rejected(octt: Octt) -> None:
    """060 Remote Start Transaction with Charging Profile - Rejected: the purpose is not TxProfile."""
    await octt.start_agent()
    await octt.booted()
    body = profile(12, "TxDefaultProfile", [(0, 12.0)])
    answer = await octt.csms.send(CP, "RemoteStartTransaction", {"idTag": TAG, "connectorId": 1,
                                                                 "chargingProfile": body})
    assert answer == {"status": "Rejected"}
    assert octt.msgs("StartTransaction") == []


async def test_limit_follows_period_boundaries_and_valid_to(octt: Octt) -> None:
    """The background task re-evaluates at each period start and at validTo without any new message."""
    agent = await octt.start_agent()
    await octt.booted()
    await octt.charging()
    now = float(int(time.time()))
    body = profile(13, "TxProfile", [(0, 16.0), (3, 8.0)], start=now, validTo=iso(now + 6))
    assert await set_profile(octt, 1, body) == "Accepted"
    assert agent.service is not None
    applied = agent.service.features["SmartCharging"].applied
    seen: list[float | None] = []

    def track() -> bool:
        if not seen or seen[-1] != applied.get(1):
            seen.append(applied.get(1))
        return len(seen) >= 3 and seen[-1] is None

    await eventually(track, 10, "16 A, then 8 A, then no limit")
    assert seen[-3:] == [16.0, 8.0, None]


# -- issue 11: composite schedule start and cost, hostile profiles ----------------------------------


def iso_ms(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"


def parse_iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def log_frames(octt: Octt, tmp_path: Path) -> Path:
    """From now on the CSMS writes every frame to a JSON-lines file (to read answers to raw CALLs)."""
    path = tmp_path / "frames.jsonl"
    octt.csms.frame_log = FrameLog(path)
    return path


async def raw_call(octt: Octt, frames: Path, action: str, payload_text: str, within: float = 5.0) -> list[Any]:
    """Put a CALL on the wire exactly as written (numbers a schema-checking CSMS library would not send) and
    return the one answer the charge point gives (CALLRESULT or CALLERROR frame)."""
    uid = uuid.uuid4().hex[:16]
    await octt.csms.send_raw(CP, f'[2,"{uid}","{action}",{payload_text}]')

    def answers() -> list[list[Any]]:
        out = []
        for line in frames.read_text().splitlines():
            record = json.loads(line)
            frame = record["frame"]
            if record["dir"] == "in" and isinstance(frame, list) and frame[0] in (3, 4) and frame[1] == uid:
                out.append(frame)
        return out

    found: list[list[Any]] = await eventually(answers, within, f"an answer to the raw {action}")
    return found[0]


async def wait_for_second_fraction(service: Any, at: float) -> None:
    """Sleep until the agent's clock shows ``at`` seconds past a whole second."""
    await asyncio.sleep((at - service.wall() % 1) % 1)


async def test_composite_schedule_starts_when_the_request_is_received(octt: Octt) -> None:
    """1.6 §5.7 / §6.22: the composite schedule is calculated from the moment GetCompositeSchedule.req is
    received, so scheduleStart is that instant (not the whole second before it) and a profile that began
    inside that second yields neither a leading period at the unconstrained limit nor repeated startPeriods
    (issue 11 item 5: [{0,32},{1,10},{1,6},{1,8},{51,10}] was answered where [{0,8},{50,10}] was due)."""
    agent = await octt.start_agent()
    await octt.booted()
    service = agent.service
    assert service is not None
    for attempt in range(5):  # the profile must begin inside the second in which the request arrives
        await wait_for_second_fraction(service, 0.1)
        begun = service.wall()
        low = profile(1, "TxDefaultProfile", [(0, 10.0)], stack=0)
        low["chargingSchedule"]["startSchedule"] = iso_ms(begun - 0.01)
        high = profile(2, "TxDefaultProfile", [(0, 8.0), (50, 10.0)], stack=1, duration=100)
        high["chargingSchedule"]["startSchedule"] = iso_ms(begun)
        assert await set_profile(octt, 1, low) == "Accepted"
        assert await set_profile(octt, 1, high) == "Accepted"
        asked = service.wall()
        answer = await octt.csms.send(CP, "GetCompositeSchedule",
                                      {"connectorId": 1, "duration": 300, "chargingRateUnit": "A"})
        answered = service.wall()
        if math.floor(asked) == math.floor(begun) or attempt == 4:
            break
    assert math.floor(asked) == math.floor(begun), "could not ask within the second the profile began"
    assert answer["status"] == "Accepted"
    start = parse_iso(answer["scheduleStart"])
    assert begun <= start <= answered + 0.001  # when the request was received, not the second before
    schedule = answer["chargingSchedule"]
    assert parse_iso(schedule["startSchedule"]) == start
    periods = [(p["startPeriod"], p["limit"]) for p in schedule["chargingSchedulePeriod"]]
    assert periods == [(0, 8.0), (50, 10.0)]  # 10 A from 50 s on: the low profile's 10 A after 100 s merges


async def test_composite_schedule_cost_is_bounded(octt: Octt) -> None:
    """Issue 11 item 11: GetCompositeSchedule duration 10^9 on a Daily recurring profile with 24 periods
    took 11 s of event loop and 72 MB (277 779 periods). The answer is clipped to what the agent covers
    (at most ChargingScheduleMaxPeriods periods; the reply's duration says how far, §6.22 / §7.13
    ChargingSchedule.duration) and comes back fast."""
    await octt.start_agent()
    await octt.booted()
    conf = await octt.csms.send(CP, "GetConfiguration", {"key": ["ChargingScheduleMaxPeriods"]})
    max_periods = int(conf["configurationKey"][0]["value"])
    hourly = [(h * 3600, 6.0 + h % 2) for h in range(max_periods)]  # 24 periods, every hour a change
    body = profile(1, "TxDefaultProfile", hourly, kind="Recurring", recurrencyKind="Daily")
    assert await set_profile(octt, 1, body) == "Accepted"
    payload = {"connectorId": 1, "duration": 10**9, "chargingRateUnit": "A"}
    began = time.perf_counter()
    answer = await octt.csms.send(CP, "GetCompositeSchedule", payload)
    elapsed = time.perf_counter() - began
    assert answer["status"] == "Accepted"
    schedule = answer["chargingSchedule"]
    periods = schedule["chargingSchedulePeriod"]
    starts = [p["startPeriod"] for p in periods]
    assert 1 <= len(periods) <= max_periods
    assert starts[0] == 0 and all(b > a for a, b in itertools.pairwise(starts))
    assert starts[-1] < schedule["duration"] < 10**9  # clipped, and says what it covers
    assert schedule["duration"] >= 3600 * (max_periods - 1)  # still a useful horizon
    assert all(p["limit"] in (6.0, 7.0) for p in periods)
    assert elapsed < 0.2, f"GetCompositeSchedule took {elapsed * 1000:.0f} ms"
    watts = await octt.csms.send(CP, "GetCompositeSchedule", {**payload, "chargingRateUnit": "W"})
    assert len(watts["chargingSchedule"]["chargingSchedulePeriod"]) <= max_periods


HOSTILE_PROFILES = {
    # what the CSMS put on the wire inside chargingSchedulePeriod / chargingSchedule / csChargingProfiles
    "negative limit": ('{"startPeriod":0,"limit":-8}', "", ""),
    "limit 10^9": ('{"startPeriod":0,"limit":1000000000}', "", ""),
    "minChargingRate negative": ('{"startPeriod":0,"limit":8}', ',"minChargingRate":-6', ""),
    "validTo year 9999": ('{"startPeriod":0,"limit":8}', "", ',"validTo":"9999-12-31T23:59:59Z"'),
    "startPeriod 10^400": ('{"startPeriod":0,"limit":8},{"startPeriod":1' + "0" * 400 + ',"limit":6}', "", ""),
    "numberPhases 10^50": ('{"startPeriod":0,"limit":8,"numberPhases":1' + "0" * 50 + "}", "", ""),
    "duration 10^400": ('{"startPeriod":0,"limit":8}', ',"duration":1' + "0" * 400, ""),
    "validFrom year 9999": ('{"startPeriod":0,"limit":8}', "", ',"validFrom":"9999-12-31T23:59:59-12:00"'),
    "chargingProfileId 2^70": ('{"startPeriod":0,"limit":8}', "", ""),
    "stackLevel 10^400": ('{"startPeriod":0,"limit":8}', "", ""),
    "startSchedule year 10000": ('{"startPeriod":0,"limit":8}', "", ""),
}
# Integers beyond 32 bits may already be refused by the RPC layer (CALLERROR PropertyConstraintViolation).
REFUSALS = ({"status": "Rejected"}, "PropertyConstraintViolation")


def refused(answer: list[Any]) -> bool:
    return (answer[0] == 3 and answer[2] == REFUSALS[0]) or (answer[0] == 4 and answer[2] == REFUSALS[1])


def hostile_profile(case: str, purpose: str, kind: str = "Absolute") -> str:
    periods, schedule_extra, profile_extra = HOSTILE_PROFILES[case]
    pid = str(2**70) if case == "chargingProfileId 2^70" else "21"
    stack = "1" + "0" * 400 if case == "stackLevel 10^400" else "0"
    start = "" if kind == "Relative" else f'"startSchedule":"{iso(time.time() - 1)}",'
    if case == "startSchedule year 10000":
        kind, start = "Absolute", '"startSchedule":"9999-12-31T23:59:59-12:00",'
    return (f'{{"chargingProfileId":{pid},"stackLevel":{stack},"chargingProfilePurpose":"{purpose}",'
            f'"chargingProfileKind":"{kind}","chargingSchedule":{{{start}"chargingRateUnit":"A",'
            f'"chargingSchedulePeriod":[{periods}]{schedule_extra}}}{profile_extra}}}')


@pytest.mark.parametrize("case", list(HOSTILE_PROFILES))
async def test_hostile_charging_profiles_are_rejected(octt: Octt, tmp_path: Path, case: str) -> None:
    """Issue 11 item 12: SetChargingProfile and RemoteStartTransaction whose profile holds values no
    charge point can honour (a negative limit or minChargingRate, §7.13 ChargingSchedulePeriod.limit /
    ChargingSchedule.minChargingRate; 10^9 A; integers beyond 32 bits; times beyond year 3000) are answered
    Rejected (§6.43 SetChargingProfile.conf) or with a CALLERROR PropertyConstraintViolation (§4.2.3),
    never with an InternalError or silence; the link and the feature keep working."""
    agent = await octt.start_agent(AuthorizeRemoteTxRequests="false")
    await octt.booted()
    frames = log_frames(octt, tmp_path)
    body = hostile_profile(case, "TxDefaultProfile")
    answer = await raw_call(octt, frames, "SetChargingProfile", f'{{"connectorId":1,"csChargingProfiles":{body}}}')
    assert refused(answer), answer
    octt.ctl("plug")
    await octt.wait_status("Preparing")
    tx_body = hostile_profile(case, "TxProfile", kind="Relative")
    answer = await raw_call(octt, frames, "RemoteStartTransaction",
                            f'{{"idTag":"{TAG}","connectorId":1,"chargingProfile":{tx_body}}}')
    assert refused(answer), answer
    assert await set_profile(octt, 1, profile(22, "TxDefaultProfile", [(0, 12.0)])) == "Accepted"
    assert (await composite(octt, duration=60)) == [(0, 12.0)]
    assert octt.msgs("StartTransaction") == [] and agent.connector.session is None


async def test_remote_start_profile_beyond_max_installed_rejected(octt: Octt) -> None:
    """Issue 11 item 11: the limits the agent advertises bound RemoteStartTransaction's chargingProfile
    too. With MaxChargingProfilesInstalled profiles installed, a TxProfile that would be one more cannot be
    honoured: RemoteStartTransaction is Rejected (§5.11, §9.4 MaxChargingProfilesInstalled) rather than
    Accepted and the profile silently dropped when the transaction starts unlimited."""
    await octt.start_agent(AuthorizeRemoteTxRequests="false")
    await octt.booted()
    conf = await octt.csms.send(CP, "GetConfiguration", {"key": ["MaxChargingProfilesInstalled"]})
    most = int(conf["configurationKey"][0]["value"])
    for level in range(most):
        assert await set_profile(octt, 1, profile(100 + level, "TxDefaultProfile", [(0, 20.0)], stack=level)) == (
            "Accepted")
    assert await set_profile(octt, 1, profile(99, "TxDefaultProfile", [(0, 20.0)], stack=most)) == "Rejected"
    octt.ctl("plug")
    await octt.wait_status("Preparing")
    body = profile(11, "TxProfile", [(0, 12.0)], kind="Relative")
    answer = await octt.csms.send(CP, "RemoteStartTransaction", {"idTag": TAG, "connectorId": 1,
                                                                 "chargingProfile": body})
    assert answer == {"status": "Rejected"}
    assert await octt.csms.send(CP, "ClearChargingProfile", {"id": 100}) == {"status": "Accepted"}
    answer = await octt.csms.send(CP, "RemoteStartTransaction", {"idTag": TAG, "connectorId": 1,
                                                                 "chargingProfile": body})
    assert answer == {"status": "Accepted"}
    await octt.wait("StartTransaction")
    assert (await composite(octt, duration=60)) == [(0, 12.0)]


@pytest.mark.parametrize("number", ["1e308", "1e400", "NaN", "Infinity", "-Infinity"])
async def test_non_finite_limits_answered_once(octt: Octt, tmp_path: Path, number: str) -> None:
    """Issue 11 item 12, end to end with the real handlers: limits that JSON parsers turn into inf or NaN
    (or that no decimal check can compute) in SetChargingProfile and RemoteStartTransaction get exactly one
    answer - Rejected, or a CALLERROR PropertyConstraintViolation / FormationViolation (NaN and Infinity
    are not JSON, RFC 8259 §6) - and nothing is installed or started."""
    agent = await octt.start_agent(AuthorizeRemoteTxRequests="false")
    await octt.booted()
    frames = log_frames(octt, tmp_path)
    octt.ctl("plug")
    await octt.wait_status("Preparing")
    allowed = {"PropertyConstraintViolation", "FormationViolation"}
    for field in ("limit", "minChargingRate"):
        periods = f'{{"startPeriod":0,"limit":{number if field == "limit" else "8"}}}'
        extra = f',"minChargingRate":{number}' if field == "minChargingRate" else ""
        for action, purpose, kind, wrap in (
            ("SetChargingProfile", "TxDefaultProfile", "Absolute", '{{"connectorId":1,"csChargingProfiles":{}}}'),
            ("RemoteStartTransaction", "TxProfile", "Relative",
             '{{"idTag":"' + TAG + '","connectorId":1,"chargingProfile":{}}}'),
        ):
            start = "" if kind == "Relative" else f'"startSchedule":"{iso(time.time() - 1)}",'
            body = (f'{{"chargingProfileId":31,"stackLevel":0,"chargingProfilePurpose":"{purpose}",'
                    f'"chargingProfileKind":"{kind}","chargingSchedule":{{{start}"chargingRateUnit":"A",'
                    f'"chargingSchedulePeriod":[{periods}]{extra}}}}}')
            answer = await raw_call(octt, frames, action, wrap.format(body))
            assert (answer[0] == 3 and answer[2] == {"status": "Rejected"}) or (
                answer[0] == 4 and answer[2] in allowed), (action, field, answer)
    assert (await composite(octt, duration=60)) == [(0, 32.0)]
    assert octt.msgs("StartTransaction") == [] and agent.connector.session is None
