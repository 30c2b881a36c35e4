"""`cpagent sim --scenario smart-charging`: the simulator as its own process, the bundled CSMS and the
agent in this one (so the scenario can make the CSMS send). Plug, tap, charge at full power, the CSMS
sends a 10 A TxProfile, the power drops; the CSMS clears it, the power comes back. Exit 0 only if the
meter and the MeterValues the CSMS received both show the drop."""

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

LIMIT_A = 10.0
FULL_POWER_S = 6.0
LIMITED_S = 12.0
DEMO_KEYS = {"MeterValueSampleInterval": "2",
             "MeterValuesSampledData": "Energy.Active.Import.Register,Power.Active.Import"}


async def run_smart_charging_demo(connectors: int, keep_dir: Path | None) -> int:
    async with csms_and_simulator(keep_dir, {"accept": [DEMO_TAG]}, "--connectors", str(connectors)) as world:
        return await _play(*world)


def _csms_powers(csms: Any, charge_point_id: str) -> list[float]:
    out = []
    for m in csms.messages(charge_point_id, "MeterValues"):
        for mv in m.payload.get("meterValue", []):
            out += [float(v["value"]) for v in mv["sampledValue"] if v.get("measurand") == "Power.Active.Import"]
    return out


async def _play(directory: Path, csms: Any, sim: subprocess.Popen[bytes]) -> int:
    from agent.ocpp.v16.service import OcppService

    tl = Timeline()
    config = await simulator_config(directory, sim)
    if config is None:
        return 1
    config = dataclasses.replace(config, ocpp=dataclasses.replace(config.ocpp, keys={**config.ocpp.keys, **DEMO_KEYS}))
    cp_id = config.station.charge_point_id
    station = Station(config)
    service = OcppService(station, config)
    tasks = [asyncio.create_task(station.run()), asyncio.create_task(service.run()),
             asyncio.create_task(_show_wire(directory / "csms.jsonl", tl))]
    connector = station.connectors[1]

    def power() -> float:
        return connector.last_sample.power_w if connector.last_sample else 0.0

    def watched() -> str:
        return f"offered={connector.controller.offered_current_a:4.1f} A  measured power={power() / 1000:6.2f} kW"

    tasks.append(asyncio.create_task(show_changes(tl, watched)))
    result = {"full_w": 0.0, "limited_w": 0.0, "restored_w": 0.0, "csms_saw_drop": False}
    ok = False
    try:
        await _wait_for(lambda: service.accepted, 15, "the CSMS to accept the BootNotification")
        tl.line("scenario: plug in the EV and tap the card")
        await _ctl(directory, cmd="plug", connector=1)
        await _wait_for(lambda: connector.controller.cp_state is not None
                        and connector.controller.cp_state.ev_connected, 5, "EV connected")
        await _ctl(directory, cmd="tap", id_tag=DEMO_TAG)
        await _wait_for(lambda: connector.session is not None
                        and service.outbox.transaction_id(connector.session.ref) is not None, 15, "the transaction")
        await _wait_for(lambda: power() > 20000, 15, "full power")
        tl.line(f"scenario: charging at full power for {FULL_POWER_S:.0f} s")
        await asyncio.sleep(FULL_POWER_S)
        result["full_w"] = power()
        assert connector.session is not None
        tx_id = service.outbox.transaction_id(connector.session.ref)
        tl.line(f"scenario: the CSMS limits transaction {tx_id} to {LIMIT_A:.0f} A (TxProfile)")
        answer = await csms.send(cp_id, "SetChargingProfile", {"connectorId": 1, "csChargingProfiles": {
            "chargingProfileId": 1, "transactionId": tx_id, "stackLevel": 0, "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Relative", "chargingSchedule": {
                "chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": LIMIT_A}]}}})
        tl.line(f"scenario: SetChargingProfile -> {answer['status']}")
        seen = len(_csms_powers(csms, cp_id))
        await _wait_for(lambda: power() < result["full_w"] * 0.5, 15, "the power to drop")
        await asyncio.sleep(LIMITED_S)
        result["limited_w"] = power()
        result["csms_saw_drop"] = any(p < result["full_w"] * 0.5 for p in _csms_powers(csms, cp_id)[seen:])
        tl.line("scenario: the CSMS clears the profile")
        answer = await csms.send(cp_id, "ClearChargingProfile", {"id": 1})
        tl.line(f"scenario: ClearChargingProfile -> {answer['status']}")
        await _wait_for(lambda: power() > result["full_w"] * 0.9, 20, "full power again")
        result["restored_w"] = power()
        tl.line("scenario: unplug the EV")
        await _ctl(directory, cmd="unplug", connector=1)
        await _wait_for(lambda: connector.session is None, 10, "the session to stop")
        await _wait_for(lambda: service.outbox.depth() == 0, 15, "the StopTransaction to be delivered")
        ok = result["limited_w"] < result["full_w"] * 0.5 and bool(result["csms_saw_drop"])
    except (TimeoutError, LookupError) as exc:
        tl.line(f"FAILED: {exc}")
    finally:
        await service.stop()
        await cancel_and_wait(*tasks)
        station.close()
    print("\nsmart charging summary: " + json.dumps({
        "id_tag": mask(DEMO_TAG),
        "full_power_kw": round(result["full_w"] / 1000, 2),
        "limited_power_kw": round(result["limited_w"] / 1000, 2),
        "restored_power_kw": round(result["restored_w"] / 1000, 2),
        "csms_meter_values_show_drop": result["csms_saw_drop"],
        "passed": ok,
    }, indent=2))
    return 0 if ok else 1
