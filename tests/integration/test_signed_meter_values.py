"""Signed meter values end to end: the rig's OCMF meter signs the transaction start and end over Modbus
TCP, the agent stores both records on the session and hands them to the bundled CSMS verbatim (MeterValues
Transaction.Begin, StopTransaction transactionData Begin + End), where they verify with the meter's key."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from agent.ocpp.v16.link import Backoff
from agent.ocpp.v16.service import OcppService
from drivers.modbus.ocmf import parse_ocmf, verify_ocmf
from tests.integration.conftest import start_bench, stop_bench

TAG = "DEADBEEF01"


def signed_values(meter_values: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [sv for mv in meter_values for sv in mv["sampledValue"] if sv.get("format") == "SignedData"]


async def test_signed_start_and_stop_reach_the_csms_and_verify(tmp_path: Path) -> None:
    bench = await start_bench(tmp_path / "rig", meter_model="ocmf", bundled_csms=True)
    service = OcppService(bench.station, bench.station.config, backoff=Backoff(base=0.05, cap=0.3, jitter=0.0))
    task = asyncio.create_task(service.run())
    csms = bench.rig.csms
    assert csms is not None
    cp = bench.station.config.station.charge_point_id
    try:
        await bench.wait_for(lambda: service.online, 10, "OCPP online")
        connector = bench.station.connectors[1]
        bench.ctl(cmd="plug")
        await bench.wait_for(lambda: connector.controller.cp_state is not None
                             and connector.controller.cp_state.ev_connected, 5, "EV connected")
        assert (await bench.station.present_token(TAG, 1)).accepted
        await bench.wait_for(lambda: csms.messages(cp, "StartTransaction"), 10, "StartTransaction")
        await bench.wait_for(lambda: signed_values([m for r in csms.messages(cp, "MeterValues")
                                                    for m in r.payload["meterValue"]]), 10, "signed Begin")
        await bench.wait_for(lambda: connector.status().value == "Charging", 10, "charging")
        await asyncio.sleep(1.5)  # some energy
        assert (await bench.station.present_token(TAG, 1)).accepted  # stop
        stop = (await csms.wait_for(cp, "StopTransaction", within=15)).payload

        begin_mv = signed_values([m for r in csms.messages(cp, "MeterValues") for m in r.payload["meterValue"]])
        assert [sv["context"] for sv in begin_mv] == ["Transaction.Begin"]
        in_stop = signed_values(stop["transactionData"])
        assert [sv["context"] for sv in in_stop] == ["Transaction.Begin", "Transaction.End"]
        assert in_stop[0]["value"] == begin_mv[0]["value"]
        assert {sv["measurand"] for sv in in_stop} == {"Energy.Active.Import.Register"}

        meter = connector.meter
        key = await meter.public_key()  # type: ignore[union-attr]
        for sv in in_stop:
            assert sv["value"].startswith("OCMF|")
            assert verify_ocmf(sv["value"], key)
        start_reading = parse_ocmf(in_stop[0]["value"]).reading
        end_reading = parse_ocmf(in_stop[1]["value"]).reading
        assert end_reading["TX"] == "E" and end_reading["RV"] >= start_reading["RV"]
        # Stored on the session too, verbatim.
        session = bench.station.sessions.recent(1)[0]
        assert (session.start_signed, session.stop_signed) == (in_stop[0]["value"], in_stop[1]["value"])
        assert verify_ocmf(session.stop_signed or "", key)
        tampered = in_stop[1]["value"].replace('"RV":', '"RV":1', 1)
        assert not verify_ocmf(tampered, key)
    finally:
        await service.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await stop_bench(bench)
