"""OCPP 2.0.1 meterValue objects (J01-J03) from meter samples: pure functions, no I/O.

The measurands, phases and units are those of the 1.6 builder (``agent.ocpp.v16.meter_values``: what
the station's meters really provide; the measurand names are the same in 2.0.1); this module only writes
them in the 2.0.1 form: ``value`` is a number, ``unitOfMeasure`` an object, no ``format``, and a signed
reading is a ``signedMeterValue``. The schedules (TxUpdatedInterval counted from the transaction's start,
AlignedDataCtrlr.Interval from midnight UTC) are the 1.6 ones, reused: ``next_sample_due``,
``next_aligned_boundary``, ``effective_interval``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from agent.ocpp.v16 import meter_values as v16
from hal.types import MeterSample

PERIODIC = v16.PERIODIC
CLOCK = v16.CLOCK
TX_BEGIN = v16.TX_BEGIN
TX_END = v16.TX_END
TRIGGER = "Trigger"
ENERGY = v16.ENERGY
SUPPORTED_MEASURANDS = v16.SUPPORTED_MEASURANDS

effective_interval = v16.effective_interval
next_sample_due = v16.next_sample_due
next_aligned_boundary = v16.next_aligned_boundary
ocpp_time = v16.ocpp_time

SIGNED_DATA_MAX = 2500  # SignedMeterValueType.signedMeterData / publicKey: string[0..2500]


def measurands(value: object) -> tuple[str, ...]:
    """A *Measurands variable's value (a tuple from the device model, or comma separated text) -> the
    measurands this station can measure, in order; others are left out (the device model refuses them)."""
    items = value if isinstance(value, (tuple, list)) else str(value or "").split(",")
    return tuple(m for m in (str(i).strip() for i in items) if m in SUPPORTED_MEASURANDS)


def _sampled_value(v: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"value": float(v["value"]), "context": v["context"], "measurand": v["measurand"],
                           "location": v["location"], "unitOfMeasure": {"unit": v["unit"]}}
    if "phase" in v:
        out["phase"] = v["phase"]
    return out


def sampled_values(sample: MeterSample, names: Iterable[str], context: str, *,
                   offered_a: float | None = None) -> list[dict[str, Any]]:
    return [_sampled_value(v) for v in v16.sampled_values(sample, names, context, offered_a=offered_a)]


def meter_value(wall: float, sample: MeterSample, names: Iterable[str], context: str, *,
                offered_a: float | None = None) -> dict[str, Any] | None:
    """One MeterValueType, or None if none of the measurands could be measured."""
    values = sampled_values(sample, names, context, offered_a=offered_a)
    if not values:
        return None
    return {"timestamp": ocpp_time(wall), "sampledValue": values}


def energy_only(wall: float, energy_wh: float, context: str) -> dict[str, Any]:
    """A MeterValueType with only the energy register (e.g. the last persisted value after a power loss)."""
    return meter_value(wall, MeterSample(energy_import_wh=energy_wh, power_w=0.0), [ENERGY], context) or {}


def _ocmf_parts(record: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """OCMF "OCMF|{payload}|{signature}" -> (payload, signature) objects; ({}, {}) if unreadable."""
    parts = record.split("|", 2)
    if len(parts) != 3 or parts[0] != "OCMF":
        return {}, {}
    try:
        payload, signature = json.loads(parts[1]), json.loads(parts[2])
    except ValueError:
        return {}, {}
    return (payload if isinstance(payload, dict) else {}), (signature if isinstance(signature, dict) else {})


def signed_value(record: str, context: str, energy_wh: float, *, public_key: str = "") -> dict[str, Any]:
    """A SampledValueType carrying a meter's signed record (OCMF) verbatim in ``signedMeterValue``, with
    the energy register it signs as ``value``. signingMethod comes from the record's own signature
    algorithm (OCMF "SA"), encodingMethod is "OCMF"."""
    _payload, signature = _ocmf_parts(record)
    method = str(signature.get("SA", "")) if signature else ""
    if not re.fullmatch(r"[\w.\-]{0,50}", method):
        method = ""
    return {
        "value": float(energy_wh),
        "context": context,
        "measurand": ENERGY,
        "location": "Outlet",
        "unitOfMeasure": {"unit": "Wh"},
        "signedMeterValue": {
            "signedMeterData": record[:SIGNED_DATA_MAX],
            "signingMethod": method,
            "encodingMethod": "OCMF",
            "publicKey": public_key[:SIGNED_DATA_MAX],
        },
    }


class EndedValues:
    """TxEndedMeasurands sampled every TxEndedInterval during a transaction, for its Ended event (J02):
    the values of one transaction, bounded (oldest dropped beyond ``limit``, keeping the first)."""

    def __init__(self, limit: int = 200) -> None:
        self._values: dict[str, list[dict[str, Any]]] = {}
        self._limit = max(2, limit)

    def add(self, transaction_id: str, value: dict[str, Any] | None) -> None:
        if value is None:
            return
        values = self._values.setdefault(transaction_id, [])
        values.append(value)
        if len(values) > self._limit:
            del values[1]

    def take(self, transaction_id: str) -> list[dict[str, Any]]:
        return self._values.pop(transaction_id, [])

    def __contains__(self, transaction_id: str) -> bool:
        return transaction_id in self._values


def v16_to_201(value: Mapping[str, Any]) -> dict[str, Any]:
    """A 1.6 meterValue object (strings, ``unit``, ``format``) in the 2.0.1 form, for a 1.6 entry delivered
    after a version change. A signed 1.6 value keeps its record in signedMeterValue."""
    out = []
    for v in value.get("sampledValue", []):
        if v.get("format") == "SignedData":
            out.append(signed_value(str(v.get("value", "")), str(v.get("context", TX_END)), 0.0))
            continue
        try:
            number = float(v.get("value", "0"))
        except (TypeError, ValueError):
            continue
        item: dict[str, Any] = {"value": number, "context": v.get("context", PERIODIC),
                                "measurand": v.get("measurand", ENERGY), "location": v.get("location", "Outlet"),
                                "unitOfMeasure": {"unit": v.get("unit", "Wh")}}
        if "phase" in v:
            item["phase"] = v["phase"]
        out.append(item)
    return {"timestamp": value.get("timestamp"), "sampledValue": out}


def v201_to_16(value: Mapping[str, Any]) -> dict[str, Any]:
    """A 2.0.1 MeterValueType in the 1.6 form (for a 2.0.1 entry delivered after a change back to 1.6)."""
    out = []
    for v in value.get("sampledValue", []):
        signed = v.get("signedMeterValue")
        item: dict[str, Any] = {
            "value": str(signed["signedMeterData"]) if signed else v16.number(float(v.get("value", 0.0))),
            "context": v.get("context", PERIODIC),
            "format": "SignedData" if signed else "Raw",
            "measurand": v.get("measurand", ENERGY),
            "location": v.get("location", "Outlet"),
            "unit": (v.get("unitOfMeasure") or {}).get("unit", "Wh"),
        }
        if "phase" in v:
            item["phase"] = v["phase"]
        out.append(item)
    return {"timestamp": value.get("timestamp"), "sampledValue": out}


def energy_of(values: Iterable[Mapping[str, Any]], context: str | None = None) -> float | None:
    """The energy register (Wh) in 2.0.1 meter values (the last one with that context, if given)."""
    found = None
    for value in values:
        for v in value.get("sampledValue", []):
            if v.get("measurand", ENERGY) == ENERGY and "phase" not in v and (context is None or
                                                                             v.get("context") == context):
                unit = (v.get("unitOfMeasure") or {}).get("unit", "Wh")
                multiplier = (v.get("unitOfMeasure") or {}).get("multiplier", 0)
                scale = (1000.0 if unit == "kWh" else 1.0) * 10.0 ** int(multiplier)
                if "signedMeterValue" not in v or v.get("value"):
                    found = float(v.get("value", 0.0)) * scale
    return found
