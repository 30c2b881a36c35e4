"""OCPP 1.6 meterValue objects from meter samples: pure functions, no I/O.

Every sampledValue carries context, measurand, unit and location (phase where per phase); values are
strings. The energy register is the meter's absolute register (monotonic, never reset per transaction).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from hal.types import MeterSample

PERIODIC = "Sample.Periodic"
CLOCK = "Sample.Clock"
TX_BEGIN = "Transaction.Begin"
TX_END = "Transaction.End"

ENERGY = "Energy.Active.Import.Register"
POWER = "Power.Active.Import"
CURRENT = "Current.Import"
VOLTAGE = "Voltage"
SOC = "SoC"
OFFERED = "Current.Offered"

# What this station can measure; other measurands are skipped (the configuration store rejects them).
SUPPORTED_MEASURANDS = frozenset({ENERGY, POWER, CURRENT, VOLTAGE, SOC, OFFERED})
_PHASES = ("L1", "L2", "L3")
# Voltage is measured phase to neutral.
_VOLTAGE_PHASES = ("L1-N", "L2-N", "L3-N")
# An interval longer than this (about 31 years) never comes due in practice; it is treated as this value so
# that the schedule arithmetic stays in exact float range whatever a CSMS sets (keys have up to 18 digits).
MAX_INTERVAL_S = 1_000_000_000
_DAY_S = 86400
MAX_NAP_S = float(_DAY_S)  # samplers wait at most this long at a time, then look at the schedule again


def effective_interval(value: int) -> int:
    """A MeterValueSampleInterval / ClockAlignedDataInterval value as the schedule uses it: <= 0 is off (0)."""
    return min(value, MAX_INTERVAL_S) if value > 0 else 0


def next_sample_due(start: float, interval: float, after: float) -> float:
    """Sampled data (MeterValueSampleInterval, 1.6 section 9.1.18): the first time ``start + k * interval``
    (k >= 1) strictly after ``after``; samples are counted from the start of the transaction, so a changed
    interval keeps that grid and applies from the next sample."""
    if after < start:
        return start + interval
    return start + (math.floor((after - start) / interval) + 1) * interval


def next_aligned_boundary(wall: float, interval: float) -> float:
    """Clock-aligned data (ClockAlignedDataInterval, 1.6 section 9.1.2): the first boundary strictly after
    ``wall`` of the evenly spaced intervals per day starting at 00:00:00 UTC (each day starts afresh when
    the interval does not divide a day)."""
    midnight = math.floor(wall / _DAY_S) * _DAY_S
    boundary = midnight + (math.floor((wall - midnight) / interval) + 1) * interval
    return min(boundary, midnight + _DAY_S)


# The last second a datetime can format (9999-12-31T23:59:59Z).
_LAST_FORMATTABLE_WALL = 253_402_300_799.0


def ocpp_time(wall: float) -> str:
    """UTC epoch seconds -> ISO 8601 with milliseconds and a Z (never without a zone).

    Never raises: a time before 1970 or past year 9999 (or NaN) is clamped to the nearest end, so a bad
    clock can make a timestamp wrong but cannot take down the task building a message."""
    if not 0.0 <= wall <= _LAST_FORMATTABLE_WALL:  # NaN fails both comparisons
        wall = _LAST_FORMATTABLE_WALL if wall > 0 else 0.0
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def number(value: float) -> str:
    """A measured value as OCPP wants it: a decimal string, no exponent, at most 3 decimals."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def sampled_values(
    sample: MeterSample, measurands: Iterable[str], context: str, *, offered_a: float | None = None
) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []

    def add(measurand: str, value: float, unit: str, phase: str | None = None, location: str = "Outlet") -> None:
        item = {"value": number(value), "context": context, "format": "Raw", "measurand": measurand,
                "location": location, "unit": unit}
        if phase is not None:
            item["phase"] = phase
        out.append(item)

    for measurand in measurands:
        if measurand == ENERGY:
            add(ENERGY, sample.energy_import_wh, "Wh")
        elif measurand == POWER:
            add(POWER, max(0.0, sample.power_w), "W")
        elif measurand == CURRENT:
            for phase, amps in zip(_PHASES, sample.current_a, strict=True):
                if amps is not None:
                    add(CURRENT, amps, "A", phase)
        elif measurand == VOLTAGE:
            for phase, volts in zip(_VOLTAGE_PHASES, sample.voltage_v, strict=True):
                if volts is not None:
                    add(VOLTAGE, volts, "V", phase)
        elif measurand == SOC:
            if sample.soc_percent is not None:
                add(SOC, sample.soc_percent, "Percent", location="EV")
        elif measurand == OFFERED and offered_a is not None:
            add(OFFERED, offered_a, "A")
    return out


def meter_value(
    wall: float, sample: MeterSample, measurands: Iterable[str], context: str, *, offered_a: float | None = None
) -> dict[str, Any] | None:
    """One meterValue object, or None if none of the measurands could be measured."""
    values = sampled_values(sample, measurands, context, offered_a=offered_a)
    if not values:
        return None
    return {"timestamp": ocpp_time(wall), "sampledValue": values}


def energy_only(wall: float, energy_wh: float, context: str) -> dict[str, Any]:
    """A meterValue with only the energy register (e.g. the last persisted value after a power loss)."""
    return meter_value(wall, MeterSample(energy_import_wh=energy_wh, power_w=0.0), [ENERGY], context) or {}
