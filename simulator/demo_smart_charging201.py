"""`cpagent sim --ocpp 2.0.1 --scenario smart-charging`: the simulator (two EVSEs) as its own process, the
bundled 2.0.1 CSMS and the agent in this one (so the scenario can make the CSMS send). The CSMS installs a
ChargingStationMaxProfile of 32 A on EVSE 0 before anything charges; two EVs plug in and charge, sharing it
(16 A each); the CSMS sends a 10 A TxProfile for EVSE 1's transaction: EVSE 1's measured power drops, EVSE 2
keeps its share; the CSMS clears the TxProfile and EVSE 1 comes back to its share. Exit 0 only if the meters
show all three steps."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

from agent.redact import mask
from agent.station import Station
from hal.tasks import cancel_and_wait
from simulator.demo import (
    DEMO_TAG,
    Timeline,
    _ctl,
    _show_wire,
    _wait_for,
    csms_and_simulator,
    show_changes,
    simulator_config,
)

SECOND_TAG = "04A1B2C3D4"
STATION_MAX_A = 32.0  # shared by the two EVSEs charging: 16 A each
TX_LIMIT_A = 10.0
HOLD_S = 6.0
VARIABLES = {"SampledDataCtrlr/TxUpdatedInterval": "2", "TxCtrlr/EVConnectionTimeOut": "60"}


async def run_smart_charging201_demo(keep_dir: Path | None) -> int:
    csms_options = {"accept": [DEMO_TAG, SECOND_TAG], "version": "2.0.1"}
    async with csms_and_simulator(keep_dir, csms_options, "--connectors", "2", "--ocpp", "2.0.1") as world:
        return await _play(*world)


def _profile(pid: int, purpose: str, limit: float, **extra: Any) -> dict[str, Any]:
    return {"id": pid, "stackLevel": 0, "chargingProfilePurpose": purpose, "chargingProfileKind": "Relative",
            "chargingSchedule": [{"id": pid, "chargingRateUnit": "A",
                                  "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}]}], **extra}


async def _play(directory: Path, csms: Any, sim: subprocess.Popen[bytes]) -> int:
    from agent.ocpp.v201.service import OcppService

    tl = Timeline()
    config = await simulator_config(directory, sim)
    if config is None:
        return 1
    config = dataclasses.replace(config, ocpp=dataclasses.replace(
        config.ocpp, version="2.0.1", variables={**config.ocpp.variables, **VARIABLES}))
    cp_id = config.station.charge_point_id
    station = Station(config)
    service = OcppService(station, config)
    tasks = [asyncio.create_task(station.run()), asyncio.create_task(service.run()),
             asyncio.create_task(_show_wire(directory / "csms.jsonl", tl))]

    def connected(evse: int) -> bool:
        state = station.connectors[evse].controller.cp_state
        return state is not None and state.ev_connected

    def power(evse: int) -> float:
        sample = station.connectors[evse].last_sample
        return sample.power_w if sample else 0.0

    def watched() -> str:
        return "  ".join(f"EVSE {e}: offered {station.connectors[e].controller.offered_current_a:4.1f} A, "
                         f"{power(e) / 1000:5.2f} kW" for e in (1, 2))

    tasks.append(asyncio.create_task(show_changes(tl, watched)))
    result: dict[str, Any] = {}
    ok = False
    try:
        await _wait_for(lambda: service.accepted, 15, "the CSMS to accept the BootNotification")
        answer = await csms.send(cp_id, "SetChargingProfile", {
            "evseId": 0, "chargingProfile": _profile(1, "ChargingStationMaxProfile", STATION_MAX_A)})
        tl.line(f"scenario: ChargingStationMaxProfile {STATION_MAX_A:.0f} A on EVSE 0 -> {answer['status']}")
        for evse, tag in ((1, DEMO_TAG), (2, SECOND_TAG)):
            tl.line(f"scenario: plug an EV into EVSE {evse} and present a card")
            await _ctl(directory, cmd="plug", connector=evse)
            await _wait_for(lambda e=evse: connected(e), 5, "EV connected")
            await station.present_token(tag, evse)
        smart = service.features["SmartCharging"]
        await _wait_for(lambda: all(smart.transaction_id(e) for e in (1, 2)), 15, "both transactions")
        await _wait_for(lambda: all(9500 < power(e) < 12000 for e in (1, 2)), 20, "16 A each (the shared 32 A)")
        await asyncio.sleep(HOLD_S)
        result["shared_kw"] = [round(power(e) / 1000, 2) for e in (1, 2)]
        tx = smart.transaction_id(1)
        answer = await csms.send(cp_id, "SetChargingProfile", {
            "evseId": 1, "chargingProfile": _profile(2, "TxProfile", TX_LIMIT_A, transactionId=tx)})
        tl.line(f"scenario: TxProfile {TX_LIMIT_A:.0f} A for EVSE 1's transaction -> {answer['status']}")
        await _wait_for(lambda: 6000 < power(1) < 7500, 20, "EVSE 1 at 10 A")
        await asyncio.sleep(HOLD_S)
        result["tx_profile_kw"] = [round(power(e) / 1000, 2) for e in (1, 2)]
        composite = await csms.send(cp_id, "GetCompositeSchedule", {"evseId": 1, "duration": 300})
        result["composite_evse1"] = composite.get("schedule", {}).get("chargingSchedulePeriod")
        answer = await csms.send(cp_id, "ClearChargingProfile", {"chargingProfileId": 2})
        tl.line(f"scenario: ClearChargingProfile 2 -> {answer['status']}")
        await _wait_for(lambda: 9500 < power(1) < 12000, 20, "EVSE 1 back at 16 A")
        result["cleared_kw"] = [round(power(e) / 1000, 2) for e in (1, 2)]
        ok = (all(9.5 < p < 12 for p in result["shared_kw"]) and 6 < result["tx_profile_kw"][0] < 7.5
              and 9.5 < result["tx_profile_kw"][1] < 12 and 9.5 < result["cleared_kw"][0] < 12)
    except (TimeoutError, LookupError) as exc:
        tl.line(f"FAILED: {exc}")
    finally:
        await service.stop()
        await cancel_and_wait(*tasks)
        station.close()
    print("\nsmart charging (OCPP 2.0.1) summary: " + json.dumps(
        {"id_tags": [mask(DEMO_TAG), mask(SECOND_TAG)], **result, "passed": ok}, indent=2))
    return 0 if ok else 1
