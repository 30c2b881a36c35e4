"""The compiled fast path of the schema checks (agent/ocpp/fast_schema.py) never accepts a payload that the
library's jsonschema Draft4Validator (the check it stands in front of) rejects: payloads generated from the
real 1.6 and 2.0.1 schemas with wrong types, 1.0 for integers, booleans for numbers, too-long strings, unknown
enum values, extra properties, missing required ones; and through ``schema_violation`` the CALLERROR codes
are unchanged."""

from __future__ import annotations

import copy
import decimal
import json
import random
from pathlib import Path
from typing import Any

import ocpp
import pytest
from jsonschema import Draft4Validator
from ocpp.messages import MessageType

from agent.ocpp.fast_schema import fast_validator, surely_valid
from agent.ocpp.v16.rpc import V201, ErrorCode, schema_violation

SCHEMAS = Path(ocpp.__file__).resolve().parent
CASES = [  # (version, message type, action, validated with Decimals)
    ("1.6", MessageType.Call, "SetChargingProfile", True),
    ("1.6", MessageType.Call, "SendLocalList", False),
    ("1.6", MessageType.Call, "ChangeConfiguration", False),
    ("1.6", MessageType.CallResult, "GetCompositeSchedule", True),
    ("1.6", MessageType.Call, "StartTransaction", False),
    ("2.0.1", MessageType.Call, "GetBaseReport", False),
    ("2.0.1", MessageType.CallResult, "GetCompositeSchedule", False),
    ("2.0.1", MessageType.Call, "NotifyReport", False),
    ("2.0.1", MessageType.Call, "GetVariables", False),
    ("2.0.1", MessageType.Call, "TransactionEvent", False),
    ("2.0.1", MessageType.Call, "ChangeAvailability", False),
]


def _schema(version: str, kind: int, action: str) -> dict[str, Any]:
    name = action + ("Response" if kind == MessageType.CallResult else "" if version == "1.6" else "Request")
    schema: dict[str, Any] = json.loads((SCHEMAS / f"v{version.replace('.', '')}" / "schemas" / f"{name}.json")
                                        .read_text(encoding="utf-8-sig"))
    return schema


def _generate(rnd: random.Random, node: dict[str, Any], root: dict[str, Any]) -> Any:
    while "$ref" in node:
        target: Any = root
        for part in node["$ref"].split("/")[1:]:
            target = target[part]
        node = target
    if rnd.random() < 0.08:
        return rnd.choice([None, True, 0, 1.0, 2.5, 0.7, 2**40, "", "x" * 600, [], {}, {"a": 1}])
    if "enum" in node:
        return rnd.choice(node["enum"]) if rnd.random() < 0.9 else "Bogus"
    kind = node.get("type")
    if kind == "object" or "properties" in node:
        required = set(node.get("required", []))
        out = {k: _generate(rnd, v, root) for k, v in node.get("properties", {}).items()
               if (k in required and rnd.random() < 0.97) or rnd.random() < 0.5}
        if rnd.random() < 0.05:
            out["extra"] = 1
        return out
    if kind == "array":
        count = rnd.choice([0, 1, 2, node.get("maxItems", 3), node.get("maxItems", 3) + 1])
        return [_generate(rnd, node.get("items", {}), root) for _ in range(min(count, 30))]
    if kind == "integer":
        return rnd.choice([0, 1, -5, 1.0, 2.5, True, 2**31, node.get("minimum", 0) - 1])
    if kind == "number":
        return rnd.choice([0, 1.5, 0.1, 0.7, 16.2, -1.0, True, 12.34, 1e10])
    if kind == "string":
        limit = node.get("maxLength", 20)
        return rnd.choice(["", "a", "x" * limit, "x" * (limit + 1), "2026-01-01T00:00:00Z", "ü" * limit])
    if kind == "boolean":
        return rnd.choice([True, False, 1, "true"])
    return rnd.choice([1, "a", None])


@pytest.mark.parametrize(("version", "kind", "action", "use_decimal"), CASES,
                         ids=[f"{c[0]}-{c[2]}-{c[1]}" for c in CASES])
def test_fast_path_never_accepts_what_jsonschema_rejects(version: str, kind: int, action: str,
                                                         use_decimal: bool) -> None:
    schema = _schema(version, kind, action)
    slow = Draft4Validator(json.loads(json.dumps(schema), parse_float=decimal.Decimal) if use_decimal else schema)
    rnd = random.Random(f"{version}{action}{kind}")
    accepted = 0
    for _ in range(100):
        payload = _generate(rnd, schema, schema)
        before = copy.deepcopy(payload)
        valid = surely_valid(version, kind, action, payload, decimal=use_decimal)
        assert payload == before  # checked, never changed (fastjsonschema fills in defaults unless told not to)
        if valid:
            accepted += 1
            instance = json.loads(json.dumps(payload), parse_float=decimal.Decimal) if use_decimal else payload
            assert slow.is_valid(instance), payload
    assert accepted > 0  # the generator does produce valid payloads, so the fast path is exercised


def test_no_fast_path_for_float_multiple_of_checks_nor_unknown_schemas() -> None:
    assert fast_validator("1.6", MessageType.Call, "SetChargingProfile", False) is None  # multipleOf 0.1
    assert fast_validator("1.6", MessageType.Call, "SetChargingProfile", True) is not None
    assert fast_validator("2.0.1", MessageType.Call, "NoSuchAction", False) is None
    assert not surely_valid("2.0.1", MessageType.Call, "NoSuchAction", {}, decimal=False)


def test_schema_violation_codes_are_unchanged() -> None:
    assert schema_violation(MessageType.Call, "GetBaseReport", {"requestId": 1, "reportBase": "FullInventory"},
                            V201) is None
    wrong_type = schema_violation(MessageType.Call, "GetBaseReport", {"requestId": "1", "reportBase": "FullInventory"},
                                  V201)
    assert wrong_type is not None and wrong_type.code == ErrorCode.TYPE_CONSTRAINT_VIOLATION
    missing = schema_violation(MessageType.Call, "GetBaseReport", {"requestId": 1}, V201)
    assert missing is not None and missing.code == ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION
    bad_enum = schema_violation(MessageType.Call, "GetBaseReport", {"requestId": 1, "reportBase": "All"}, V201)
    assert bad_enum is not None and bad_enum.code == ErrorCode.PROPERTY_CONSTRAINT_VIOLATION
