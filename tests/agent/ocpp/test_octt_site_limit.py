"""OCPP 1.6 sees local energy management (issue 15): the site meter's fault as a StatusNotification on
connector 0 (PowerMeterFailure, vendorErrorCode SITE_METER) and its recovery, and GetCompositeSchedule
capped at the connector's site allocation while a CSMS TxDefaultProfile allows more."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from simulator.csms import Csms
from simulator.rig import RigOptions
from tests.agent.ocpp.conftest import CP, Octt, eventually
from tests.agent.ocpp.inprocess import harness_on


@pytest.fixture
async def site_octt(tmp_path: Path, csms: Csms) -> AsyncIterator[Octt]:
    options = RigOptions(directory=tmp_path, csms_url=csms.url, charge_point_id=CP, site_fuse_a=16.0)
    async with harness_on(Octt, csms, options) as harness:
        yield harness


def connector_zero(octt: Octt) -> list[dict[str, Any]]:
    return [m.payload for m in octt.msgs("StatusNotification") if m.payload["connectorId"] == 0]


async def test_site_meter_fault_on_connector_zero_and_the_composite_capped(site_octt: Octt) -> None:
    octt = site_octt
    await octt.start_agent()
    await octt.booted()
    await octt.charging()
    profile = {
        "chargingProfileId": 7, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Absolute",
        "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 32}]},
    }
    answer = await octt.csms.send(CP, "SetChargingProfile", {"connectorId": 1, "csChargingProfiles": profile})
    assert answer == {"status": "Accepted"}

    octt.ctl("site", action="silent", value=True)
    fault = await eventually(lambda: [p for p in connector_zero(octt) if p["errorCode"] == "PowerMeterFailure"],
                             6, "PowerMeterFailure on connector 0")
    assert fault[-1]["vendorErrorCode"] == "SITE_METER" and fault[-1]["status"] == "Available"
    composite = await octt.csms.send(CP, "GetCompositeSchedule", {"connectorId": 1, "duration": 600})
    assert composite["status"] == "Accepted"
    periods = composite["chargingSchedule"]["chargingSchedulePeriod"]
    assert [p["limit"] for p in periods] == [6.0]  # the failsafe allocation, below the profile's 32 A

    octt.ctl("site", action="silent", value=False)
    await eventually(lambda: connector_zero(octt)[-1]["errorCode"] == "NoError", 6, "NoError on connector 0")
