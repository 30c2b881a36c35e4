"""Strict check of what a charge point sent, read from the bundled CSMS's frame log (`cpsim csms --log`).

`python -m simulator.schema_audit LOG.jsonl [--ocpp 1.6|2.0.1]`: every frame the station sent ("dir": "in")
is checked against the official OCPP JSON schema shipped in the `ocpp` library, more strictly than the
library itself checks (it uses draft 4 without formats):

- CALLs against `<Action>.json` (1.6) / `<Action>Request.json` (2.0.1), CALLRESULTs the station sent for a
  CSMS CALL against the response schema of that CALL's action; the 2.0.1 schemas with their own draft (6);
- `additionalProperties: false` where a schema says so (the schema's own rule), string `maxLength`, enums;
- every `date-time` as RFC 3339 with an explicit `Z` (what strict central systems parse), seconds present;
- 1.6 numbers carried in strings (`sampledValue.value`) as plain decimals (no exponent, no NaN/Infinity);
- CALLERRORs with an error code of the version.

Exit 0 when every frame passes, 1 with one line per violation (on stdout), 2 on a usage problem.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from jsonschema import Draft4Validator, Draft6Validator, FormatChecker

RFC3339_Z = re.compile(
    r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d{1,9})?Z$")
DECIMAL_STRING = re.compile(r"^-?\d+(\.\d+)?$")
ERROR_CODES = {
    "1.6": {"NotImplemented", "NotSupported", "InternalError", "ProtocolError", "SecurityError",
            "FormationViolation", "PropertyConstraintViolation", "OccurenceConstraintViolation",
            "TypeConstraintViolation", "GenericError"},
    "2.0.1": {"FormatViolation", "GenericError", "InternalError", "MessageTypeNotSupported", "NotImplemented",
              "NotSupported", "OccurrenceConstraintViolation", "PropertyConstraintViolation", "ProtocolError",
              "RpcFrameworkError", "SecurityError", "TypeConstraintViolation"},
}

def _is_rfc3339_z(value: object) -> bool:
    return not isinstance(value, str) or RFC3339_Z.match(value) is not None


_FORMATS = FormatChecker(formats=())
_FORMATS.checks("date-time")(_is_rfc3339_z)


@dataclass(frozen=True)
class Violation:
    cp: str
    at: str
    what: str

    def __str__(self) -> str:
        return f"{self.cp} {self.at}: {self.what}"


@cache
def _validator(version: str, name: str) -> Draft4Validator | Draft6Validator | None:
    folder = "v16" if version == "1.6" else "v201"
    try:
        text = resources.files("ocpp").joinpath(f"{folder}/schemas/{name}.json").read_text(encoding="utf-8-sig")
    except (FileNotFoundError, OSError):
        return None
    schema = json.loads(text)
    cls = Draft4Validator if version == "1.6" else Draft6Validator
    return cls(schema, format_checker=_FORMATS)


def check_payload(version: str, kind: str, action: str, payload: Any) -> list[str]:
    """Problems of one payload: kind is "request" or "response"; an empty list when it passes."""
    if version == "1.6":
        name = action if kind == "request" else f"{action}Response"
    else:
        name = f"{action}{'Request' if kind == 'request' else 'Response'}"
    validator = _validator(version, name)
    if validator is None:
        return [f"{action} {kind}: no {version} schema {name}"]
    problems = [
        f"{action} {kind} /{'/'.join(str(p) for p in error.absolute_path)}: {error.message[:160]}"
        for error in validator.iter_errors(payload)
    ]
    if version == "1.6":
        problems.extend(f"{action} {kind} {where}: {value!r} is not a plain decimal"
                        for where, value in _sampled_strings(payload) if not DECIMAL_STRING.match(value))
    return problems


def _sampled_strings(payload: Any) -> Iterator[tuple[str, str]]:
    """1.6 meter values carry numbers as strings: (path, value) of each sampledValue.value."""
    if not isinstance(payload, dict):
        return
    for key in ("meterValue", "transactionData"):
        for i, meter_value in enumerate(payload.get(key) or []):
            for j, sampled in enumerate((meter_value or {}).get("sampledValue") or []):
                if isinstance(sampled, dict) and isinstance(sampled.get("value"), str) \
                        and sampled.get("format", "Raw") == "Raw":
                    yield f"/{key}/{i}/sampledValue/{j}/value", sampled["value"]


def _guess_version(frames: list[dict[str, Any]]) -> str:
    for record in frames:
        frame = record.get("frame")
        if isinstance(frame, list) and len(frame) == 4 and frame[0] == 2 and frame[2] == "BootNotification":
            return "2.0.1" if isinstance(frame[3], dict) and "chargingStation" in frame[3] else "1.6"
    return "1.6"


def audit(records: list[dict[str, Any]], version: str | None = None) -> tuple[list[Violation], Counter[str]]:
    """Check every frame a station sent; returns the violations and how many frames of each kind passed."""
    by_cp: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_cp.setdefault(str(record.get("cp")), []).append(record)
    violations: list[Violation] = []
    checked: Counter[str] = Counter()
    for cp, frames in by_cp.items():
        cp_version = version or _guess_version(frames)
        pending: dict[str, str] = {}  # CSMS CALL id -> action
        for record in frames:
            frame = record.get("frame")
            at = str(record.get("t"))
            if not isinstance(frame, list) or not frame:
                violations.append(Violation(cp, at, f"not an OCPP-J frame: {str(frame)[:80]}"))
                continue
            if record.get("dir") == "out":
                if frame[0] == 2 and len(frame) == 4:
                    pending[str(frame[1])] = str(frame[2])
                continue
            if frame[0] == 2 and len(frame) == 4:
                problems = check_payload(cp_version, "request", str(frame[2]), frame[3])
                checked[f"{frame[2]}.req"] += 1
            elif frame[0] == 3 and len(frame) == 3:
                action = pending.pop(str(frame[1]), None)
                if action is None:
                    problems = [f"CALLRESULT {frame[1]} answers no CSMS CALL"]
                else:
                    problems = check_payload(cp_version, "response", action, frame[2])
                    checked[f"{action}.conf"] += 1
            elif frame[0] == 4 and len(frame) == 5:
                pending.pop(str(frame[1]), None)
                problems = [] if frame[2] in ERROR_CODES[cp_version] else [f"CALLERROR code {frame[2]!r}"]
                checked["CALLERROR"] += 1
            else:
                problems = [f"malformed frame {str(frame)[:80]}"]
            violations.extend(Violation(cp, at, problem) for problem in problems)
    return violations, checked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulator.schema_audit", description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path, help="JSON-lines frame log of `cpsim csms --log`")
    parser.add_argument("--ocpp", choices=["1.6", "2.0.1"], help="version (default: from BootNotification)")
    args = parser.parse_args(argv)
    try:
        lines = args.log.read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError) as error:
        print(f"schema_audit: {args.log}: {error}", file=sys.stderr)
        return 2
    violations, checked = audit(records, args.ocpp)
    for violation in violations:
        print(violation)
    summary = ", ".join(f"{name} {count}" for name, count in sorted(checked.items()))
    print(f"checked {sum(checked.values())} frames ({summary}); {len(violations)} violations", file=sys.stderr)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
