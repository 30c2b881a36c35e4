"""A typed JSON codec for the values that cross ``StationPort``, and the line framing of the IPC socket.

Encoding is generic over the registered frozen dataclasses (``dataclasses.fields``): a dataclass becomes a
JSON object ``{"$t": "<registered name>", field: value, ...}``, an enum its value, a tuple or list a JSON
array, a frozenset a sorted JSON array, a dict an array of ``[key, value]`` pairs (keys need not be
strings), a non-finite float ``{"$float": "nan"|"inf"|"-inf"}``.

Decoding is driven by the expected type (``typing.get_type_hints`` of the dataclass, or the type a command
declares), so what the peer sends can only ever become one of the types the receiver asked for: a dataclass
is looked up by name in ``REGISTRY`` (never imported, never ``pickle``), its fields are checked one by one,
and anything unexpected raises ``CodecError`` naming the path of the bad value. No other exception leaves
``decode`` or ``decode_line``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from enum import Enum
from typing import Any, Union

from agent.authorize import AuthDecision
from agent.events import (
    ConnectorStatus,
    MeterUpdate,
    SessionStarted,
    SessionStopped,
    StationEvent,
    StatusChanged,
    StopReason,
    TokenPresented,
)
from agent.sessions import Session
from agent.station_api import (
    ConnectorReservation,
    ConnectorSettings,
    ConnectorView,
    EnergyHold,
    MessagePriority,
    OperatorMessage,
    StationFacts,
    TaskView,
)
from hal.types import (
    CpState,
    DeviceFault,
    DeviceFaultChanged,
    Fault,
    FaultFlagsChanged,
    IdToken,
    LockFeedback,
    MeterSample,
    PilotStateChanged,
    ProximityChanged,
    RelayFeedback,
    Role,
    Screen,
    ScreenState,
)

__all__ = [
    "MAX_LINE_BYTES", "REGISTRY", "STATION_EVENT", "CodecError", "FrameTooLong", "decode", "decode_line", "encode",
    "encode_line",
]

MAX_LINE_BYTES = 256 * 1024  # one frame (JSON object + newline); a longer line is a protocol error
MAX_DEPTH = 32  # nesting of decoded values (the deepest legitimate value is ~6)

_DATACLASSES: tuple[type[Any], ...] = (
    ConnectorView, StationFacts, TaskView, ConnectorSettings, ConnectorReservation, Session, AuthDecision,
    StatusChanged, SessionStarted, SessionStopped, MeterUpdate, TokenPresented,
    MeterSample, PilotStateChanged, ProximityChanged, RelayFeedback, LockFeedback, FaultFlagsChanged,
    DeviceFaultChanged, IdToken, DeviceFault, Screen, OperatorMessage,
)
_ENUMS: tuple[type[Enum], ...] = (ConnectorStatus, StopReason, EnergyHold, CpState, Fault, Role, ScreenState,
                                  MessagePriority)

# The allow-list: the only dataclasses a peer can make the receiver build, by name.
REGISTRY: Mapping[str, type[Any]] = {cls.__name__: cls for cls in _DATACLASSES}
ENUMS: frozenset[type[Enum]] = frozenset(_ENUMS)


class CodecError(ValueError):
    """A value that does not fit the expected type, an unknown type name, or a frame that is not one JSON
    object. The message names where in the value the problem is."""


class FrameTooLong(CodecError):
    """A line longer than ``MAX_LINE_BYTES``."""


# ----------------------------------------------------------------------------------------------- encode
def encode(value: Any) -> Any:
    """``value`` as plain JSON data. TypeError for a value of a type that may not cross."""
    if value is None or (isinstance(value, (bool, int, str)) and not isinstance(value, Enum)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {"$float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, Enum):
        if type(value) not in ENUMS:
            raise TypeError(f"enum {type(value).__name__} may not cross the station port")
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if REGISTRY.get(name) is not type(value):
            raise TypeError(f"dataclass {name} may not cross the station port")
        out: dict[str, Any] = {"$t": name}
        for f in dataclasses.fields(value):
            out[f.name] = encode(getattr(value, f.name))
        return out
    if isinstance(value, (tuple, list)):
        return [encode(v) for v in value]
    if isinstance(value, frozenset):
        items = [encode(v) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, Mapping):
        return [[encode(k), encode(v)] for k, v in value.items()]
    raise TypeError(f"{type(value).__name__} may not cross the station port")


def encode_line(message: Mapping[str, Any]) -> bytes:
    """One frame: ``message`` (already plain data, e.g. from ``encode``) as one JSON line."""
    data = json.dumps(message, separators=(",", ":"), allow_nan=False).encode() + b"\n"
    if len(data) > MAX_LINE_BYTES:
        raise FrameTooLong(f"frame of {len(data)} bytes exceeds {MAX_LINE_BYTES}")
    return data


# ----------------------------------------------------------------------------------------------- decode
_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = hints
    return hints


def decode_line(line: bytes) -> dict[str, Any]:
    """One frame as a JSON object (its values still plain data, for ``decode``)."""
    if len(line) > MAX_LINE_BYTES:
        raise FrameTooLong(f"frame of {len(line)} bytes exceeds {MAX_LINE_BYTES}")
    try:
        obj = json.loads(line, parse_constant=_reject_constant)
    except CodecError:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CodecError(f"frame is not JSON: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise CodecError(f"frame is a JSON {type(obj).__name__}, not an object")
    return obj


def _reject_constant(name: str) -> Any:
    raise CodecError(f"{name} is not JSON")


def decode(data: Any, tp: Any, path: str = "$") -> Any:
    """``data`` (plain JSON data) as a value of type ``tp``; CodecError if it is not one."""
    try:
        return _decode(data, tp, path, 0)
    except CodecError:
        raise
    except RecursionError:
        raise CodecError(f"{path}: nested too deeply") from None
    except Exception as exc:  # a constructor refusing a value, a hash of an odd key...
        raise CodecError(f"{path}: {type(exc).__name__}: {exc}") from None


def _decode(data: Any, tp: Any, path: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise CodecError(f"{path}: nested too deeply")
    if tp is Any:
        raise CodecError(f"{path}: no type to decode into")
    if tp is None or tp is type(None):
        if data is not None:
            raise CodecError(f"{path}: expected null")
        return None
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return _decode_union(data, typing.get_args(tp), path, depth)
    if tp is bool:
        if not isinstance(data, bool):
            raise CodecError(f"{path}: expected a boolean")
        return data
    if tp is int:
        if not isinstance(data, int) or isinstance(data, bool):
            raise CodecError(f"{path}: expected an integer")
        return data
    if tp is float:
        return _decode_float(data, path)
    if tp is str:
        if not isinstance(data, str):
            raise CodecError(f"{path}: expected a string")
        return data
    if isinstance(tp, type) and issubclass(tp, Enum):
        if tp not in ENUMS:
            raise CodecError(f"{path}: enum {tp.__name__} may not cross")
        try:
            return tp(data)
        except (ValueError, TypeError):
            raise CodecError(f"{path}: {data!r:.40} is not a {tp.__name__}") from None
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _decode_dataclass(data, (tp,), path, depth)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(data, list):
            raise CodecError(f"{path}: expected an array")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(v, args[0], f"{path}[{i}]", depth + 1) for i, v in enumerate(data))
        if len(data) != len(args):
            raise CodecError(f"{path}: expected {len(args)} items, got {len(data)}")
        return tuple(_decode(v, a, f"{path}[{i}]", depth + 1) for i, (v, a) in enumerate(zip(data, args, strict=True)))
    if origin in (frozenset, list):
        (arg,) = typing.get_args(tp)
        if not isinstance(data, list):
            raise CodecError(f"{path}: expected an array")
        items = [_decode(v, arg, f"{path}[{i}]", depth + 1) for i, v in enumerate(data)]
        return frozenset(items) if origin is frozenset else items
    if origin in (dict, Mapping):
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(data, list):
            raise CodecError(f"{path}: expected an array of [key, value] pairs")
        out: dict[Any, Any] = {}
        for i, pair in enumerate(data):
            if not isinstance(pair, list) or len(pair) != 2:
                raise CodecError(f"{path}[{i}]: expected a [key, value] pair")
            key = _decode(pair[0], key_tp, f"{path}[{i}][0]", depth + 1)
            out[key] = _decode(pair[1], value_tp, f"{path}[{i}][1]", depth + 1)
        return out
    raise CodecError(f"{path}: type {tp!r} cannot be decoded")


def _decode_float(data: Any, path: str) -> float:
    if isinstance(data, (int, float)) and not isinstance(data, bool):
        return float(data)
    if isinstance(data, dict) and set(data) == {"$float"} and isinstance(data["$float"], str):
        special = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}.get(data["$float"])
        if special is not None:
            return special
    raise CodecError(f"{path}: expected a number")


def _decode_union(data: Any, members: tuple[Any, ...], path: str, depth: int) -> Any:
    if data is None:
        if type(None) in members:
            return None
        raise CodecError(f"{path}: null is not allowed here")
    members = tuple(m for m in members if m is not type(None))
    classes = tuple(m for m in members if isinstance(m, type) and dataclasses.is_dataclass(m))
    if classes and (isinstance(data, dict) or len(classes) == len(members)):
        return _decode_dataclass(data, classes, path, depth)
    errors = []
    for member in members:
        if member in classes:
            continue
        try:
            return _decode(data, member, path, depth)
        except CodecError as exc:
            errors.append(str(exc))
    raise CodecError(errors[0] if len(errors) == 1 else f"{path}: fits none of the allowed types")


def _decode_dataclass(data: Any, allowed: tuple[type[Any], ...], path: str, depth: int) -> Any:
    if not isinstance(data, dict):
        raise CodecError(f"{path}: expected an object")
    name = data.get("$t")
    if not isinstance(name, str):
        raise CodecError(f"{path}: object without a type name")
    cls = REGISTRY.get(name)
    if cls is None:
        raise CodecError(f"{path}: unknown type {name[:40]!r}")
    if cls not in allowed:
        raise CodecError(f"{path}: {name} is not allowed here (expected {' | '.join(c.__name__ for c in allowed)})")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    extra = set(data) - set(fields) - {"$t"}
    if extra:
        raise CodecError(f"{path}: {name} has no field {sorted(extra)[0][:40]!r}")
    kwargs: dict[str, Any] = {}
    for fname, f in fields.items():
        if fname not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise CodecError(f"{path}: {name}.{fname} is missing")
            continue
        kwargs[fname] = _decode(data[fname], hints[fname], f"{path}.{fname}", depth + 1)
    return cls(**kwargs)


# The events a station pushes (a tagged union: each carries its registered name).
STATION_EVENT: Any = StationEvent
