"""`cpagent sim --ocpp 2.0.1`: the timeline's 2.0.1 lines and the summary's verdict (pure parts)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from simulator.demo import _brief, _summary_201


def test_brief_shows_2_0_1_fields_with_the_token_masked() -> None:
    event = {"eventType": "Started", "seqNo": 0, "triggerReason": "Authorized", "timestamp": "T", "offline": False,
             "transactionInfo": {"transactionId": "tx-1", "chargingState": "EVConnected"}, "evse": {"id": 1},
             "idToken": {"idToken": "DEADBEEF01", "type": "ISO14443"}}
    line = _brief(event)
    assert line == ("transactionId=tx-1 eventType=Started seqNo=0 triggerReason=Authorized chargingState=EVConnected "
                    "offline=False evse=1 idToken=******EF01")
    assert "DEADBEEF01" not in line
    assert _brief({"idTokenInfo": {"status": "Accepted"}}) == "idTokenInfo=Accepted"
    assert _brief({"evseId": 1, "connectorId": 1, "connectorStatus": "Occupied", "timestamp": "T"}) == (
        "connectorId=1 evseId=1 connectorStatus=Occupied")
    assert _brief({"idTag": "DEADBEEF01", "connectorId": 1}) == "connectorId=1 idTag=******EF01"  # 1.6 unchanged


def _event(kind: str, seq: int, tx: str = "tx-1", **info: Any) -> dict[str, Any]:
    return {"eventType": kind, "seqNo": seq, "triggerReason": "Authorized", "transactionInfo": {"transactionId": tx,
                                                                                                   **info}}


@pytest.mark.parametrize(("energy", "events", "code"), [
    (9.5, [_event("Started", 0), _event("Ended", 1, stoppedReason="EVDisconnected")], 0),
    (0.0, [_event("Started", 0), _event("Ended", 1)], 1),  # no energy
    (9.5, [_event("Started", 0)], 1),  # never Ended at the CSMS
    (9.5, [], 1),
])
def test_summary_exit_code(energy: float, events: list[dict[str, Any]], code: int,
                           capsys: pytest.CaptureFixture[str]) -> None:
    session = SimpleNamespace(ref="s1", id_tag="DEADBEEF01", start_wall=100.0, stop_wall=104.0, energy_wh=energy)
    assert _summary_201(session, events) == code
    summary = json.loads(capsys.readouterr().out.split("(OCPP 2.0.1): ", 1)[1])
    assert summary["id_token"] == "******EF01" and summary["duration_s"] == 4.0
    if events:
        assert summary["transaction_id"] == "tx-1" and summary["events"][0] == "Started#0 Authorized"
