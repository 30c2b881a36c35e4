"""simulator/schema_audit.py: the strict check of what a station sent (official schemas, RFC 3339 Z, 1.6 decimal
strings), and the bundled CSMS's control socket answering Decimal numbers as JSON numbers."""

from __future__ import annotations

import decimal
import json

from simulator.csms import _json_number
from simulator.schema_audit import audit, check_payload


def test_payload_checks_are_strict_where_the_schemas_are() -> None:
    ok = {"timestamp": "2026-12-04T00:47:17.113Z", "connectorStatus": "Available", "evseId": 1, "connectorId": 1}
    assert check_payload("2.0.1", "request", "StatusNotification", ok) == []
    offset = dict(ok, timestamp="2026-12-04T00:47:17.113+00:00")
    assert "is not a 'date-time'" in check_payload("2.0.1", "request", "StatusNotification", offset)[0]
    assert "'x' was unexpected" in check_payload("2.0.1", "request", "Heartbeat", {"x": 1})[0]
    assert "too long" in check_payload("1.6", "request", "Authorize", {"idTag": "x" * 21})[0]
    assert "should be non-empty" in check_payload("2.0.1", "response", "GetVariables", {"getVariableResult": []})[0]
    meter = {"connectorId": 1, "meterValue": [{"timestamp": "2026-12-04T00:47:17Z",
                                               "sampledValue": [{"value": "12.5"}, {"value": "1e3"}]}]}
    assert check_payload("1.6", "request", "MeterValues", meter) == [
        "MeterValues request /meterValue/0/sampledValue/1/value: '1e3' is not a plain decimal"]
    assert check_payload("1.6", "request", "NoSuchAction", {}) == ["NoSuchAction request: no 1.6 schema NoSuchAction"]


def test_audit_pairs_answers_with_the_csms_calls_and_guesses_the_version() -> None:
    boot = {"chargingStation": {"model": "M", "vendorName": "V"}, "reason": "PowerUp"}
    records = [
        {"t": "1", "dir": "in", "cp": "CP1", "frame": [2, "a", "BootNotification", boot]},
        {"t": "2", "dir": "out", "cp": "CP1", "frame": [2, "b", "ClearCache", {}]},
        {"t": "3", "dir": "in", "cp": "CP1", "frame": [3, "b", {"status": "Maybe"}]},
        {"t": "4", "dir": "in", "cp": "CP1", "frame": [3, "zz", {}]},
        {"t": "5", "dir": "in", "cp": "CP1", "frame": [4, "c", "FormationViolation", "", {}]},
    ]
    violations, checked = audit(records)
    assert [(v.at, v.what.split(":")[0]) for v in violations] == [
        ("3", "ClearCache response /status"), ("4", "CALLRESULT zz answers no CSMS CALL"),
        ("5", "CALLERROR code 'FormationViolation'")]  # a 1.6 spelling on a 2.0.1 link
    assert checked["BootNotification.req"] == 1 and checked["ClearCache.conf"] == 1


def test_control_socket_answers_decimals_as_numbers() -> None:
    reply = {"limit": decimal.Decimal("10.5"), "start": decimal.Decimal("0")}
    assert json.dumps(reply, default=_json_number) == '{"limit": 10.5, "start": 0}'
