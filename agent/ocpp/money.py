"""Money for the pricing features of every OCPP version (1.6 California pricing, 2.0.1 TariffCostCtrlr):
amounts as integer minor units (never float), parsed from JSON numbers read as ``decimal.Decimal``, and the
cost of a session from a known tariff when the CSMS cannot say it.

    to_minor_units(Decimal("1.005"), 2) == 101      # half up, exact
    format_money(12345, 2) == "123.45"
    local_cost_minor({"kWhPrice": "0.30", "flatFee": 1}, energy_wh=12_345, duration_s=3600, decimals=2) == 470
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

# Largest money amount (and kWh / kW trigger value) accepted: a billion currency units is beyond any charging
# session's cost or price, and keeps the minor-unit integers and display texts small ("1E+999999" would
# overflow the decimal context or make a million-digit integer).
MAX_AMOUNT = Decimal(10) ** 9


class BadAmount(ValueError):
    """A money amount (or a payload carrying one) that cannot be used."""


def to_decimal(value: object) -> Decimal:
    """A JSON number (Decimal or int; a float only as the shortest text that reads back as it, which is the
    number the sender wrote) or a decimal string -> a finite, non-negative Decimal up to ``MAX_AMOUNT``."""
    if isinstance(value, bool) or not isinstance(value, int | str | Decimal | float):
        raise BadAmount(f"not a money amount: {value!r}")
    try:
        amount = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation as exc:
        raise BadAmount(f"not a money amount: {value!r}") from exc
    if not amount.is_finite() or amount < 0:
        raise BadAmount(f"not a money amount: {value!r}")
    if amount > MAX_AMOUNT:
        raise BadAmount(f"amount out of range: {str(value)[:20]}")
    return amount


def to_minor_units(value: object, decimals: int) -> int:
    """A JSON number (already a Decimal or int) or decimal string -> integer minor units, half up.
    A float is refused: money never passes through binary floating point here."""
    if isinstance(value, float):
        raise BadAmount(f"not a money amount: {value!r}")
    return decimal_to_minor(to_decimal(value), decimals)


def decimal_to_minor(amount: Decimal, decimals: int) -> int:
    return int((amount * (Decimal(10) ** decimals)).to_integral_value(rounding=ROUND_HALF_UP))


def format_money(units: int, decimals: int) -> str:
    if decimals == 0:
        return str(units)
    whole, frac = divmod(units, 10**decimals)
    return f"{whole}.{frac:0{decimals}d}"


def price_text(charging_price: Mapping[str, Any], decimals: int) -> str:
    """chargingPrice {kWhPrice, hourPrice, flatFee} -> "0.25/kWh + 2.00/h + 1.00 flat"."""
    parts = []
    for key, suffix in (("kWhPrice", "/kWh"), ("hourPrice", "/h"), ("flatFee", " flat")):
        if charging_price.get(key) is not None:
            parts.append(format_money(to_minor_units(charging_price[key], decimals), decimals) + suffix)
    return " + ".join(parts)


def local_cost_minor(charging_price: Mapping[str, Any], *, energy_wh: float, duration_s: float,
                     decimals: int) -> int:
    """The cost of a session from a known chargingPrice {kWhPrice, hourPrice, flatFee} (each optional):
    flatFee + kWhPrice x kWh + hourPrice x hours, rounded half up once, in minor units. Energy and time
    come from the meter and the clock (floats) and are made exact Decimals (Wh to 1 mWh, s to 1 ms) first."""
    kwh = Decimal(round(max(0.0, energy_wh) * 1000)) / Decimal(1_000_000)
    hours = Decimal(round(max(0.0, duration_s) * 1000)) / Decimal(3_600_000)
    total = Decimal(0)
    for key, quantity in (("flatFee", Decimal(1)), ("kWhPrice", kwh), ("hourPrice", hours)):
        if charging_price.get(key) is not None:
            total += to_decimal(charging_price[key]) * quantity
    return decimal_to_minor(total, decimals)
