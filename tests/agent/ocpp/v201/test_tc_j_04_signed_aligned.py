"""OCPP 2.0.1 TC_J_04_CS (clock-aligned meter values, signed) over real websockets against the bundled CSMS,
with the rig's OCMF meter (simulator/meter.py) on a real pty: AlignedDataCtrlr.SignReadings true -> each
clock-aligned TransactionEvent (MeterValueClock) carries the energy register as the meter's signed OCMF record
(signedMeterValue, context Sample.Clock), an intermediate reading (TX "C") the meter signs on request over
Modbus (command 3 of its signing block, drivers/modbus/maps/ocmf.toml); the signature checks with the meter's
public key."""

from __future__ import annotations

import json
from pathlib import Path

from drivers.modbus.ocmf import verify_ocmf
from simulator.csms import Csms
from simulator.rig import Rig, RigOptions
from tests.agent.ocpp.v201.conftest import CP, Octt201, eventually


async def test_tc_j_04_cs_clock_aligned_values_signed(tmp_path: Path, csms: Csms) -> None:
    rig = Rig(RigOptions(directory=tmp_path / "ocmf", csms_url=csms.url, charge_point_id=CP, ocpp_version="2.0.1",
                         meter_model="ocmf"))
    await rig.start()
    octt = Octt201(csms, rig)
    try:
        await octt.start_agent({"AlignedDataCtrlr/Interval": 1, "AlignedDataCtrlr/SignReadings": True,
                                "AlignedDataCtrlr/Measurands": "Energy.Active.Import.Register"})
        await octt.booted()
        started = await octt.charging()
        tx_id = started["transactionInfo"]["transactionId"]

        def signed_clock() -> list[dict[str, object]]:
            return [s for e in octt.tx_events(tx_id) if e["eventType"] == "Updated"
                    and e["triggerReason"] == "MeterValueClock"
                    for v in e.get("meterValue", []) for s in v["sampledValue"] if "signedMeterValue" in s]

        found = await eventually(lambda: len(signed_clock()) >= 2 and signed_clock(), 10, "two signed aligned values")
        signer = rig.connectors[1].meter.signer
        assert signer is not None
        for value in found[:2]:
            assert value["context"] == "Sample.Clock" and value["measurand"] == "Energy.Active.Import.Register"
            signed = value["signedMeterValue"]
            assert isinstance(signed, dict) and signed["encodingMethod"] == "OCMF"
            record = str(signed["signedMeterData"])
            assert verify_ocmf(record, signer.public_key)
            payload = json.loads(record.split("|")[1])
            assert payload["RD"][0]["TX"] == "C"
        # one unsigned energy value per event, not both
        for event in octt.tx_events(tx_id):
            if event["triggerReason"] == "MeterValueClock":
                energy = [s for v in event["meterValue"] for s in v["sampledValue"]
                          if s.get("measurand", "Energy.Active.Import.Register") == "Energy.Active.Import.Register"]
                assert len(energy) == 1 and "signedMeterValue" in energy[0]
    finally:
        if octt.agent is not None:
            await octt.agent.stop()
        await rig.stop()
