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
