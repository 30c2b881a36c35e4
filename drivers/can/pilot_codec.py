"""The pilot/relay board protocol carried over CAN (docs/can-pilot-board.md), coded with cantools.

The messages are those of the serial protocol (drivers/serial/pilot_codec.py) and reuse its dataclasses;
only three differ because a classic CAN frame holds 8 bytes and has no sequence number: ``KeepAlive``
carries a counter, and Telemetry is split into ``TelemetryLevels`` and ``TelemetryStatus``.

The layout lives in pilot_board.dbc (ids of board node 0; node n uses id + n). Signals are passed as raw
integers (``scaling=False``) so 0.01 % duty steps stay exact; the DBC's factors give tools physical values.
cantools is optional (the ``[can]`` extra) and imported only by :func:`load_database`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

from drivers.serial.pilot_codec import (
    CP_STATE_CODES,
    DUTY_X1,
    FAULT_BITS,
    NO_RESISTANCE,
    CpStateReport,
    FaultReport,
    Hello,
    LockReport,
    PhaseReport,
    ProximityReport,
    RelayReport,
    Reset,
    SetDuty,
    SetLock,
    SetPhases,
    SetRelay,
    StatusRequest,
    Telemetry,
)
from hal.device import DeviceError
from hal.types import Fault

DBC_PATH = Path(__file__).with_name("pilot_board.dbc")
MAX_NODE_ID = 15  # the low 4 bits of every id select the board (one per connector)
NODE_MASK = 0xF


class Direction(Enum):
    HOST_TO_BOARD = "host"
    BOARD_TO_HOST = "board"


class UnknownFrame(ValueError):
    """No message of the DBC has this id (or it is an extended-id frame)."""


class MalformedFrame(ValueError):
    """The id is known but the data does not fit the message."""


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """Host is alive. The board restarts its watchdog only when ``counter`` moved on, so a transmitter
    stuck repeating one buffered frame does not keep the relay closed."""

    counter: int
    NAME: ClassVar[str] = "KeepAlive"


@dataclass(frozen=True, slots=True)
class TelemetryLevels:
    cp_high_mv: int
    cp_low_mv: int
    temperature_dc: int  # 0.1 degC
    supply_dv: int  # 0.1 V
    NAME: ClassVar[str] = "TelemetryLevels"


@dataclass(frozen=True, slots=True)
class TelemetryStatus:
    duty: int  # CP output actually applied, 0.01 % (as SetDuty)
    keepalive_lapsed: bool
    rx_bad_frames: int
    rx_unknown_frames: int
    NAME: ClassVar[str] = "TelemetryStatus"


HostMessage = KeepAlive | SetDuty | SetRelay | SetLock | Reset | StatusRequest | SetPhases
BoardMessage = (
    Hello
    | CpStateReport
    | ProximityReport
    | RelayReport
    | LockReport
    | FaultReport
    | TelemetryLevels
    | TelemetryStatus
    | PhaseReport
)
Message = HostMessage | BoardMessage

_FAULT_SIGNALS: dict[Fault, str] = {
    Fault.RCD: "FaultRcd",
    Fault.OVERTEMP: "FaultOvertemp",
    Fault.DIODE: "FaultDiode",
    Fault.GROUND: "FaultGround",
    Fault.UNDERVOLTAGE: "FaultUndervoltage",
    Fault.OVERVOLTAGE: "FaultOvervoltage",
    Fault.LOCK: "FaultLock",
    Fault.OVERCURRENT: "FaultOvercurrent",
    Fault.WELD: "FaultWeld",
}
assert set(_FAULT_SIGNALS) == set(FAULT_BITS)

_BOARD_NAMES = frozenset(
    {
        "Hello", "CpState", "Proximity", "RelayState", "LockState", "FaultFlags", "TelemetryLevels",
        "TelemetryStatus", "PhaseState",
    }
)


@functools.cache
def load_database(driver: str = "pilot-board-can") -> Any:
    """The parsed DBC. Raises DeviceError naming ``driver`` when the optional cantools is missing."""
    try:
        import cantools
    except ImportError as exc:
        raise DeviceError(
            f"driver {driver!r} needs the Python module 'cantools' (install chargepoint-agent[can])"
        ) from exc
    return cantools.database.load_file(str(DBC_PATH))


def _signals(message: Message) -> tuple[str, dict[str, int]]:
    match message:
        case KeepAlive(counter):
            return "KeepAlive", {"KeepAliveCounter": counter & 0xFF}
        case SetDuty(duty):
            return "SetDuty", {"Duty": duty}
        case SetRelay(close):
            return "SetRelay", {"RelayClose": int(close)}
        case SetLock(lock):
            return "SetLock", {"Lock": int(lock)}
        case Reset():
            return "Reset", {}
        case StatusRequest():
            return "StatusRequest", {}
        case SetPhases(phases):
            return "SetPhases", {"PhaseCount": phases}
        case PhaseReport(phases, commanded):
            return "PhaseState", {"Phases": phases, "PhasesCommanded": commanded}
        case Hello():
            return "Hello", {
                "FwMajor": message.fw_major,
                "FwMinor": message.fw_minor,
                "FwPatch": message.fw_patch,
                "HwRevision": message.hw_revision,
                "KeepAliveTimeout": message.keepalive_timeout_ms,
                "StatusPeriod": message.status_period_ms,
            }
        case CpStateReport(state):
            return "CpState", {"CpState": CP_STATE_CODES.index(state)}
        case ProximityReport(ohm, amps):
            return "Proximity", {"PpResistance": NO_RESISTANCE if ohm is None else ohm, "CableAmpacity": amps or 0}
        case RelayReport(closed, commanded):
            return "RelayState", {"RelayClosed": int(closed), "RelayCommanded": int(commanded)}
        case LockReport(locked, commanded):
            return "LockState", {"Locked": int(locked), "LockCommanded": int(commanded)}
        case FaultReport(active):
            return "FaultFlags", {name: int(fault in active) for fault, name in _FAULT_SIGNALS.items()}
        case TelemetryLevels():
            return "TelemetryLevels", {
                "CpHigh": message.cp_high_mv,
                "CpLow": message.cp_low_mv,
                "Temperature": message.temperature_dc,
                "SupplyVoltage": message.supply_dv,
            }
        case TelemetryStatus():
            return "TelemetryStatus", {
                "AppliedDuty": message.duty,
                "KeepAliveLapsed": int(message.keepalive_lapsed),
                "RxBadFrames": min(message.rx_bad_frames, 0xFFFF),
                "RxUnknownFrames": min(message.rx_unknown_frames, 0xFFFF),
            }
    raise TypeError(f"not a pilot board message: {message!r}")


def split_telemetry(telemetry: Telemetry) -> tuple[TelemetryLevels, TelemetryStatus]:
    """The serial protocol's Telemetry as the two CAN frames that carry it."""
    return (
        TelemetryLevels(telemetry.cp_high_mv, telemetry.cp_low_mv, telemetry.temperature_dc, telemetry.supply_dv),
        TelemetryStatus(telemetry.duty, telemetry.keepalive_lapsed, telemetry.rx_bad_frames,
                        telemetry.rx_unknown_frames),
    )


def frame_id(db: Any, name: str, node_id: int) -> int:
    if not 0 <= node_id <= MAX_NODE_ID:
        raise ValueError(f"node id must be 0..{MAX_NODE_ID}, got {node_id}")
    return int(db.get_message_by_name(name).frame_id) + node_id


def encode_frame(db: Any, message: Message, node_id: int) -> tuple[int, bytes]:
    """(11-bit arbitration id, data) of ``message`` for board ``node_id``."""
    name, signals = _signals(message)
    data = db.get_message_by_name(name).encode(signals, scaling=False, strict=True)
    return frame_id(db, name, node_id), bytes(data)


def _build(name: str, s: dict[str, int]) -> Message:
    def flag(key: str) -> bool:
        return bool(s[key])

    if name == "CpState":
        if s["CpState"] >= len(CP_STATE_CODES):
            raise MalformedFrame(f"unknown CP state code {s['CpState']}")
        return CpStateReport(CP_STATE_CODES[s["CpState"]])
    if name in ("SetPhases", "PhaseState"):
        values = [s[k] for k in ("PhaseCount",)] if name == "SetPhases" else [s["Phases"], s["PhasesCommanded"]]
        if any(v not in (1, 3) for v in values):
            raise MalformedFrame(f"{name}: phases must be 1 or 3, got {values}")
        return SetPhases(values[0]) if name == "SetPhases" else PhaseReport(values[0], values[1])
    if name == "SetDuty":
        if s["Duty"] > DUTY_X1:
            raise MalformedFrame(f"duty {s['Duty']} above 10000")
        return SetDuty(s["Duty"])
    builders: dict[str, Any] = {
        "KeepAlive": lambda: KeepAlive(s["KeepAliveCounter"]),
        "SetRelay": lambda: SetRelay(flag("RelayClose")),
        "SetLock": lambda: SetLock(flag("Lock")),
        "Reset": Reset,
        "StatusRequest": StatusRequest,
        "Hello": lambda: Hello(
            s["FwMajor"], s["FwMinor"], s["FwPatch"], s["HwRevision"], s["KeepAliveTimeout"], s["StatusPeriod"]
        ),
        "Proximity": lambda: ProximityReport(
            None if s["PpResistance"] == NO_RESISTANCE else s["PpResistance"], s["CableAmpacity"] or None
        ),
        "RelayState": lambda: RelayReport(flag("RelayClosed"), flag("RelayCommanded")),
        "LockState": lambda: LockReport(flag("Locked"), flag("LockCommanded")),
        "FaultFlags": lambda: FaultReport(frozenset(f for f, sig in _FAULT_SIGNALS.items() if s[sig])),
        "TelemetryLevels": lambda: TelemetryLevels(s["CpHigh"], s["CpLow"], s["Temperature"], s["SupplyVoltage"]),
        "TelemetryStatus": lambda: TelemetryStatus(
            s["AppliedDuty"], flag("KeepAliveLapsed"), s["RxBadFrames"], s["RxUnknownFrames"]
        ),
    }
    built: Message = builders[name]()
    return built


def decode_frame(db: Any, arbitration_id: int, data: bytes, is_extended_id: bool = False) -> tuple[int, Message]:
    """(node id, message) of one received frame. Longer data than the layout is accepted (room for
    compatible additions); shorter data or out-of-range values raise MalformedFrame."""
    if is_extended_id:
        raise UnknownFrame(f"extended id 0x{arbitration_id:08X} is not part of the protocol")
    try:
        spec = db.get_message_by_frame_id(arbitration_id & ~NODE_MASK)
    except KeyError:
        raise UnknownFrame(f"unknown id 0x{arbitration_id:03X}") from None
    if len(data) < spec.length:
        raise MalformedFrame(f"{spec.name}: {len(data)} data bytes, needs {spec.length}")
    try:
        signals = spec.decode(bytes(data[: spec.length]), scaling=False, decode_choices=False)
    except Exception as exc:  # cantools raises its own DecodeError family
        raise MalformedFrame(f"{spec.name}: {exc}") from exc
    return arbitration_id & NODE_MASK, _build(spec.name, {k: int(v) for k, v in signals.items()})


def direction_of(message: Message) -> Direction:
    return Direction.BOARD_TO_HOST if _signals(message)[0] in _BOARD_NAMES else Direction.HOST_TO_BOARD


COUNTER_NAMES = ("frames_ok", "unknown_frames", "malformed_frames", "wrong_direction", "other_nodes")


class FrameDecoder:
    """Decodes the frames of direction ``accepts`` for board ``node_id`` and counts what it drops. Never raises."""

    def __init__(self, db: Any, accepts: Direction, node_id: int) -> None:
        self._db = db
        self._expect = accepts
        self.node_id = node_id
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)

    @property
    def bad_frames(self) -> int:
        return self.counters["malformed_frames"]

    def decode(self, arbitration_id: int, data: bytes, is_extended_id: bool = False) -> Message | None:
        try:
            node, message = decode_frame(self._db, arbitration_id, data, is_extended_id)
        except UnknownFrame:
            self.counters["unknown_frames"] += 1
            return None
        except (MalformedFrame, ValueError):
            self.counters["malformed_frames"] += 1
            return None
        if node != self.node_id:
            self.counters["other_nodes"] += 1  # another connector's board on the same bus: not an error
            return None
        if direction_of(message) is not self._expect:
            self.counters["wrong_direction"] += 1
            return None
        self.counters["frames_ok"] += 1
        return message
