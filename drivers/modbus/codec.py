"""Register maps as data, and the pure functions around them: load/validate a map, plan batched
reads, decode/encode register words, build a MeterSample. No I/O except reading the map file."""

from __future__ import annotations

import math
import re
import struct
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from drivers.modbus.ocmf import OcmfError, SigningLayout, parse_signing
from hal.types import GridSample, MeterSample

MODBUS_MAX_REGISTERS = 125  # protocol limit for one FC03/FC04 read
FUNCTIONS = frozenset({3, 4})
ORDERS = frozenset({"big", "little"})

# data type -> (registers, struct format, is_float)
DATA_TYPES: dict[str, tuple[int, str, bool]] = {
    "int16": (1, ">h", False),
    "uint16": (1, ">H", False),
    "int32": (2, ">i", False),
    "uint32": (2, ">I", False),
    "int64": (4, ">q", False),
    "uint64": (4, ">Q", False),
    "float32": (2, ">f", True),
    "float64": (4, ">d", True),
}

# unit -> (canonical unit, factor to it)
UNITS: dict[str, tuple[str, float]] = {
    "V": ("V", 1.0),
    "kV": ("V", 1000.0),
    "A": ("A", 1.0),
    "mA": ("A", 0.001),
    "W": ("W", 1.0),
    "kW": ("W", 1000.0),
    "Wh": ("Wh", 1.0),
    "kWh": ("Wh", 1000.0),
    "Hz": ("Hz", 1.0),
}

# quantity name prefix -> canonical unit it must convert to (catches "energy in V" typos)
QUANTITY_UNITS: dict[str, str] = {
    "voltage": "V",
    "current": "A",
    "power": "W",
    "energy": "Wh",
    "frequency": "Hz",
}

REQUIRED_QUANTITIES = ("energy_import", "power")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class MapError(ValueError):
    """A register map file is missing or malformed."""


class IncompleteReading(ValueError):
    """A mandatory quantity was not available in an otherwise valid answer."""


@dataclass(frozen=True, slots=True)
class RegisterSpec:
    quantity: str
    address: int
    function: int
    data_type: str
    word_order: str
    byte_order: str
    scale: float
    unit: str
    not_available: tuple[bytes, ...] = ()

    @property
    def width(self) -> int:
        return DATA_TYPES[self.data_type][0]

    @property
    def end(self) -> int:
        """First address after this register."""
        return self.address + self.width

    @property
    def to_canonical(self) -> float:
        return self.scale * UNITS[self.unit][1]


@dataclass(frozen=True, slots=True)
class RegisterMap:
    model: str
    description: str
    registers: tuple[RegisterSpec, ...]
    max_registers_per_read: int = 80
    max_gap: int = 0
    signing: SigningLayout | None = None  # an OCMF-signing meter's vendor block

    def spec(self, quantity: str) -> RegisterSpec | None:
        for register in self.registers:
            if register.quantity == quantity:
                return register
        return None


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One FC03/FC04 read covering several registers (possibly with unused gaps)."""

    function: int
    address: int
    count: int
    registers: tuple[RegisterSpec, ...]


# ---------------------------------------------------------------- loading / validation


def available_maps() -> list[str]:
    folder = resources.files("drivers.modbus") / "maps"
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def load_map(model: str) -> RegisterMap:
    """Load a bundled map by model name (``drivers/modbus/maps/<model>.toml``)."""
    if not _NAME.match(model):
        raise MapError(f"invalid meter model name {model!r}")
    resource = resources.files("drivers.modbus") / "maps" / f"{model}.toml"
    if not resource.is_file():
        known = ", ".join(available_maps()) or "none"
        raise MapError(f"no register map for meter model {model!r} (known: {known})")
    try:
        data = tomllib.loads(resource.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise MapError(f"{model}.toml: {exc}") from exc
    return parse_map(data, source=f"{model}.toml")


def parse_map(data: Mapping[str, Any], source: str = "<map>") -> RegisterMap:
    meter = _table(data, "meter", source)
    defaults = _table(data, "defaults", source, required=False)
    registers = _table(data, "registers", source)
    model = meter.get("model")
    if not isinstance(model, str) or not model:
        raise MapError(f"{source}: [meter] model must be a non-empty string")
    max_read = _int(meter.get("max_registers_per_read", 80), f"{source}: [meter] max_registers_per_read")
    if not 4 <= max_read <= MODBUS_MAX_REGISTERS:
        raise MapError(f"{source}: [meter] max_registers_per_read must be 4..{MODBUS_MAX_REGISTERS}")
    max_gap = _int(meter.get("max_gap", 0), f"{source}: [meter] max_gap")
    if max_gap < 0:
        raise MapError(f"{source}: [meter] max_gap must be >= 0")
    specs = tuple(
        _parse_register(name, {**defaults, **_entry(entry, f"{source}: registers.{name}")}, source)
        for name, entry in registers.items()
    )
    signing = None
    if "signing" in data:
        try:
            signing = parse_signing(_table(data, "signing", source), f"{source}: [signing]")
        except OcmfError as exc:
            raise MapError(str(exc)) from exc
    present = {spec.quantity for spec in specs}
    missing = [q for q in REQUIRED_QUANTITIES if q not in present]
    if missing:
        raise MapError(f"{source}: the map must define {', '.join(missing)}")
    return RegisterMap(
        model=model,
        description=str(meter.get("description", "")),
        registers=specs,
        max_registers_per_read=max_read,
        max_gap=max_gap,
        signing=signing,
    )


def _table(data: Mapping[str, Any], key: str, source: str, required: bool = True) -> Mapping[str, Any]:
    value = data.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, Mapping):
        raise MapError(f"{source}: missing table [{key}]")
    return value


def _entry(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MapError(f'{where}: expected a table such as {{ address = 0x48, unit = "kWh" }}')
    return value


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MapError(f"{where}: expected an integer, got {value!r}")
    return value


def _parse_register(name: str, entry: Mapping[str, Any], source: str) -> RegisterSpec:
    where = f"{source}: registers.{name}"
    if not _NAME.match(name):
        raise MapError(f"{where}: quantity names are lower_snake_case")
    address = _int(entry.get("address"), f"{where}.address")
    function = _int(entry.get("function", 4), f"{where}.function")
    if function not in FUNCTIONS:
        raise MapError(f"{where}.function: expected 3 or 4, got {function}")
    data_type = entry.get("type", "float32")
    if data_type not in DATA_TYPES:
        raise MapError(f"{where}.type: expected one of {', '.join(DATA_TYPES)}, got {data_type!r}")
    width = DATA_TYPES[data_type][0]
    if not 0 <= address <= 0xFFFF - width + 1:
        raise MapError(f"{where}.address: {address} is outside 0..65535")
    orders = {}
    for key in ("word_order", "byte_order"):
        value = entry.get(key, "big")
        if value not in ORDERS:
            raise MapError(f"{where}.{key}: expected 'big' or 'little', got {value!r}")
        orders[key] = value
    scale = entry.get("scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale) or scale == 0:
        raise MapError(f"{where}.scale: expected a non-zero number, got {scale!r}")
    unit = entry.get("unit")
    if unit not in UNITS:
        raise MapError(f"{where}.unit: expected one of {', '.join(UNITS)}, got {unit!r}")
    expected = QUANTITY_UNITS.get(name.split("_", 1)[0])
    if expected is not None and UNITS[unit][0] != expected:
        raise MapError(f"{where}.unit: {unit!r} is not a unit of {expected} as the name {name!r} implies")
    return RegisterSpec(
        quantity=name,
        address=address,
        function=function,
        data_type=data_type,
        word_order=orders["word_order"],
        byte_order=orders["byte_order"],
        scale=float(scale),
        unit=unit,
        not_available=_patterns(entry.get("not_available", ()), width, where),
    )


def _patterns(value: Any, width: int, where: str) -> tuple[bytes, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise MapError(f"{where}.not_available: expected a hex string or a list of them")
    patterns = []
    for item in items:
        try:
            raw = bytes.fromhex(str(item))
        except ValueError as exc:
            raise MapError(f"{where}.not_available: {item!r} is not hex") from exc
        if len(raw) == 1:
            raw = raw * (2 * width)
        if len(raw) != 2 * width:
            raise MapError(f"{where}.not_available: {item!r} must be 1 or {2 * width} bytes")
        patterns.append(raw)
    return tuple(patterns)


# ---------------------------------------------------------------- read planning


def plan_reads(register_map: RegisterMap) -> tuple[ReadRequest, ...]:
    """Group registers by function code into as few reads as possible, each at most
    ``max_registers_per_read`` long, bridging gaps of at most ``max_gap`` unused registers."""
    limit = register_map.max_registers_per_read
    requests: list[ReadRequest] = []
    for function in sorted({r.function for r in register_map.registers}):
        specs = sorted((r for r in register_map.registers if r.function == function), key=lambda r: r.address)
        group: list[RegisterSpec] = []
        start = end = 0
        for spec in specs:
            if group and spec.address - end <= register_map.max_gap and max(end, spec.end) - start <= limit:
                group.append(spec)
                end = max(end, spec.end)
                continue
            if group:
                requests.append(ReadRequest(function, start, end - start, tuple(group)))
            group, start, end = [spec], spec.address, spec.end
        if group:
            requests.append(ReadRequest(function, start, end - start, tuple(group)))
    return tuple(requests)


# ---------------------------------------------------------------- decode / encode


def _wire_bytes(words: Sequence[int]) -> bytes:
    return b"".join((w & 0xFFFF).to_bytes(2, "big") for w in words)


def _reorder(raw: bytes, spec: RegisterSpec) -> bytes:
    """Wire order <-> big-endian value bytes (the operation is its own inverse)."""
    words = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    if spec.word_order == "little":
        words.reverse()
    if spec.byte_order == "little":
        words = [w[::-1] for w in words]
    return b"".join(words)


def decode_register(spec: RegisterSpec, words: Sequence[int]) -> float | None:
    """Value in canonical units (V, A, W, Wh, Hz), or None when the meter says "not available"."""
    if len(words) != spec.width:
        raise ValueError(f"{spec.quantity}: expected {spec.width} registers, got {len(words)}")
    raw = _wire_bytes(words)
    if raw in spec.not_available:
        return None
    _, fmt, _ = DATA_TYPES[spec.data_type]
    value = float(struct.unpack(fmt, _reorder(raw, spec))[0])
    if not math.isfinite(value):
        return None
    return value * spec.to_canonical


def encode_register(spec: RegisterSpec, value: float | None) -> list[int]:
    """Inverse of decode_register (used by the meter emulator); None encodes "not available"."""
    if value is None:
        if not spec.not_available:
            raise ValueError(f"{spec.quantity}: the map has no not-available pattern")
        raw = spec.not_available[0]
    else:
        _, fmt, is_float = DATA_TYPES[spec.data_type]
        scaled = value / spec.to_canonical
        raw = _reorder(struct.pack(fmt, scaled if is_float else round(scaled)), spec)
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def decode_batch(request: ReadRequest, words: Sequence[int]) -> dict[str, float | None]:
    if len(words) != request.count:
        raise ValueError(f"read of {request.count} registers returned {len(words)}")
    values: dict[str, float | None] = {}
    for spec in request.registers:
        offset = spec.address - request.address
        values[spec.quantity] = decode_register(spec, words[offset : offset + spec.width])
    return values


def build_sample(values: Mapping[str, float | None], timestamp: float) -> MeterSample:
    """A MeterSample from decoded canonical values; raises IncompleteReading without energy or power."""
    energy = values.get("energy_import")
    power = values.get("power")
    if energy is None or power is None:
        missing = [q for q in REQUIRED_QUANTITIES if values.get(q) is None]
        raise IncompleteReading(f"meter did not report {', '.join(missing)}")
    return MeterSample(
        energy_import_wh=energy,
        power_w=power,
        voltage_v=(values.get("voltage_l1"), values.get("voltage_l2"), values.get("voltage_l3")),
        current_a=(values.get("current_l1"), values.get("current_l2"), values.get("current_l3")),
        timestamp=timestamp,
    )


# ---------------------------------------------------------------- site (grid connection point) meter

GRID_CURRENT_LIMIT_A = 2000.0  # beyond this a reading is nonsense for any connection point we serve


def supports_grid(register_map: RegisterMap) -> bool:
    """Whether a map can serve as a site meter: per-phase current and signed per-phase power on three
    phases, or a single-phase meter (current_l1 and the signed total power, nothing on L2/L3)."""
    present = {spec.quantity for spec in register_map.registers}
    three = {f"{q}_l{i}" for q in ("current", "power") for i in (1, 2, 3)}
    if three <= present:
        return True
    return "current_l1" in present and "current_l2" not in present and "current_l3" not in present


def build_grid_sample(values: Mapping[str, float | None], timestamp: float) -> GridSample:
    """A GridSample from decoded canonical values. Current registers are magnitudes; the sign comes
    from the phase's active power (import +, export -). Raises IncompleteReading when a phase's
    current or power is missing, or a value is beyond any connection point."""
    single = "current_l2" not in values and "power_l1" not in values
    currents: list[float] = []
    powers: list[float] = []
    for index in (1, 2, 3):
        if single and index > 1:
            currents.append(0.0)
            powers.append(0.0)
            continue
        current = values.get(f"current_l{index}")
        power = values.get("power" if single else f"power_l{index}")
        if current is None or power is None:
            raise IncompleteReading(f"site meter did not report current and power of L{index}")
        if abs(current) > GRID_CURRENT_LIMIT_A:
            raise IncompleteReading(f"site meter reports {current:g} A on L{index}")
        signed = -abs(current) if power < 0 else abs(current)
        currents.append(signed)
        powers.append(power)
    return GridSample(
        current_a=(currents[0], currents[1], currents[2]),
        power_w=(powers[0], powers[1], powers[2]),
        timestamp=timestamp,
    )
