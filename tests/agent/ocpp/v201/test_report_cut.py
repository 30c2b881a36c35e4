"""A ReportChargingProfiles report cut by a lost connection (K09): the rest of the report is dropped, not
resumed after the reconnect (the CSMS saw the connection go and asks again), with one warning that says which
messages were not sent; nothing raises out of the after-handler. Unit test of SmartCharging's report path
(the service's send stands in; the profiles are bodies only)."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from agent.ocpp.v201.rpc import ConnectionLost
from agent.ocpp.v201.smart_charging import REPORT_CHUNK, SmartCharging


async def test_report_cut_by_a_lost_connection_is_dropped_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    sent: list[dict[str, Any]] = []

    async def request_payload(action: str, payload: dict[str, Any]) -> None:
        if len(sent) == 1:
            raise ConnectionLost("connection lost")
        sent.append(payload)

    feature = SmartCharging.__new__(SmartCharging)
    profiles = [SimpleNamespace(id=n, connector_id=1 + n % 2, transaction_id=None) for n in range(3 * REPORT_CHUNK)]
    feature._svc = SimpleNamespace(request_payload=request_payload)  # type: ignore[assignment]
    feature.selected = lambda evse_id, criterion: profiles  # type: ignore[method-assign,assignment]
    feature._report_body = lambda p: {"id": p.id}  # type: ignore[method-assign,assignment]
    with caplog.at_level(logging.WARNING, logger="cpagent.ocpp.v201.smart_charging"):
        await feature.after_get_charging_profiles(request_id=7, charging_profile={})
    assert len(sent) == 1 and sent[0]["tbc"] is True and sent[0]["evseId"] == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["ReportChargingProfiles 7: messages 2-4 of 4 not sent (connection lost); report dropped"]
