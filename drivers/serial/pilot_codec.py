"""Wire codec of the control-pilot/relay board protocol (docs/pilot-board-protocol.md).

Pure ``bytes <-> dataclass`` code, no I/O: the driver (drivers/serial/pilot_board.py) and the emulator
(simulator/pilot_board.py) both use it, so the two ends cannot drift apart.

Frame on the wire: ``COBS(version, type, seq, body..., crc_hi, crc_lo) 0x00``; CRC-16/CCITT-FALSE over
everything before it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

from hal.types import CpState, Fault

PROTOCOL_VERSION = 1
HEADER_LEN = 3  # version, type, sequence
CRC_LEN = 2
MAX_FRAME_LEN = 64  # decoded: header + body + CRC
MAX_BODY_LEN = MAX_FRAME_LEN - HEADER_LEN - CRC_LEN
# One COBS overhead byte is enough below 254 bytes; the 0x00 delimiter is not counted here.
MAX_ENCODED_LEN = MAX_FRAME_LEN + 1
DELIMITER = b"\x00"

DUTY_F = 0  # SetDuty value for state F (-12 V)
DUTY_X1 = 10_000  # SetDuty value for steady +12 V (no PWM)
NO_RESISTANCE = 0xFFFF


class CobsError(ValueError):
    """The bytes between two delimiters are not a valid COBS encoding."""


class MalformedFrame(ValueError):
    """CRC was right but the body does not fit the message type."""


# ---------------------------------------------------------------------------------------------- CRC / COBS


def _crc16_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC_TABLE = _crc16_table()


def crc16_ccitt_false(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, xorout 0x0000 ("123456789" -> 0x29B1)."""
    crc = 0xFFFF
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC_TABLE[((crc >> 8) ^ byte) & 0xFF]
    return crc


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing (canonical form); the result contains no 0x00."""
    out = bytearray(b"\x00")
    code_index = 0
    code = 1
    for i, byte in enumerate(data):
        if byte == 0:
            out[code_index] = code
            code_index = len(out)
            out.append(0)
            code = 1
            continue
        out.append(byte)
        code += 1
        if code == 0xFF and i + 1 < len(data):
            out[code_index] = code
            code_index = len(out)
            out.append(0)
            code = 1
    out[code_index] = code
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(data):
        code = data[i]
        if code == 0:
            raise CobsError("zero byte inside a COBS block")
        end = i + code
        if end > len(data):
            raise CobsError("COBS block runs past the end of the frame")
        block = data[i + 1 : end]
        if 0 in block:
            raise CobsError("zero byte inside a COBS block")
        out += block
        i = end
        if code != 0xFF and i < len(data):
            out.append(0)
    return bytes(out)


# -------------------------------------------------------------------------------------------- messages


class Sender(Enum):
    HOST = "host"
    BOARD = "board"


def _bool(value: int) -> bool:
    if value not in (0, 1):
        raise MalformedFrame(f"boolean byte must be 0 or 1, got {value}")
    return value == 1


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """Host is alive; restarts the board's 2 s keep-alive watchdog."""

    TYPE: ClassVar[int] = 0x01

    def pack(self) -> bytes:
        return b""

    @classmethod
    def unpack(cls, body: bytes) -> KeepAlive:
        return cls()


@dataclass(frozen=True, slots=True)
class SetDuty:
    """CP output. ``duty`` in 0.01 %: 0 = state F (-12 V), 10000 = X1 (steady +12 V), else PWM."""

    duty: int
    TYPE: ClassVar[int] = 0x02

    def __post_init__(self) -> None:
        if not 0 <= self.duty <= DUTY_X1:
            raise ValueError(f"duty must be 0..10000 (0.01 %), got {self.duty}")

    def pack(self) -> bytes:
        return struct.pack("<H", self.duty)

    @classmethod
    def unpack(cls, body: bytes) -> SetDuty:
        (duty,) = struct.unpack_from("<H", body)
        if duty > DUTY_X1:
            raise MalformedFrame(f"duty {duty} above 10000")
        return cls(duty)


@dataclass(frozen=True, slots=True)
class SetRelay:
    close: bool
    TYPE: ClassVar[int] = 0x03

    def pack(self) -> bytes:
        return bytes([int(self.close)])

    @classmethod
    def unpack(cls, body: bytes) -> SetRelay:
        return cls(_bool(body[0]))


@dataclass(frozen=True, slots=True)
class SetLock:
    lock: bool
    TYPE: ClassVar[int] = 0x04

    def pack(self) -> bytes:
        return bytes([int(self.lock)])

    @classmethod
    def unpack(cls, body: bytes) -> SetLock:
        return cls(_bool(body[0]))


@dataclass(frozen=True, slots=True)
class Reset:
    TYPE: ClassVar[int] = 0x05

    def pack(self) -> bytes:
        return b""

    @classmethod
    def unpack(cls, body: bytes) -> Reset:
        return cls()


@dataclass(frozen=True, slots=True)
class StatusRequest:
    """Ask for a full status burst now (the board sends one every 250 ms anyway)."""

    TYPE: ClassVar[int] = 0x06

    def pack(self) -> bytes:
        return b""

    @classmethod
    def unpack(cls, body: bytes) -> StatusRequest:
        return cls()


PHASE_CHOICES = (1, 3)


def _phases(value: int) -> int:
    if value not in PHASE_CHOICES:
        raise MalformedFrame(f"phases must be 1 or 3, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class SetPhases:
    """Switch the phase contactor to 1 or 3 phases; the board ignores it while its relay is closed."""

    phases: int
    TYPE: ClassVar[int] = 0x07

    def __post_init__(self) -> None:
        if self.phases not in PHASE_CHOICES:
            raise ValueError(f"phases must be 1 or 3, got {self.phases}")

    def pack(self) -> bytes:
        return bytes([self.phases])

    @classmethod
    def unpack(cls, body: bytes) -> SetPhases:
        return cls(_phases(body[0]))


@dataclass(frozen=True, slots=True)
class Hello:
    """Board identity. Its layout is frozen across protocol versions so a mismatch can be explained."""

    fw_major: int
    fw_minor: int
    fw_patch: int
    hw_revision: int
    keepalive_timeout_ms: int
    status_period_ms: int
    TYPE: ClassVar[int] = 0x80
    _FORMAT: ClassVar[str] = "<BBBBHH"

    def pack(self) -> bytes:
        return struct.pack(
            self._FORMAT,
            self.fw_major,
            self.fw_minor,
            self.fw_patch,
            self.hw_revision,
            self.keepalive_timeout_ms,
            self.status_period_ms,
        )

    @classmethod
    def unpack(cls, body: bytes) -> Hello:
        return cls(*struct.unpack_from(cls._FORMAT, body))


CP_STATE_CODES: tuple[CpState, ...] = (
    CpState.A,
    CpState.B1,
    CpState.B2,
    CpState.C1,
    CpState.C2,
    CpState.D1,
    CpState.D2,
    CpState.E,
    CpState.F,
)


@dataclass(frozen=True, slots=True)
class CpStateReport:
    state: CpState
    TYPE: ClassVar[int] = 0x81

    def pack(self) -> bytes:
        return bytes([CP_STATE_CODES.index(self.state)])

    @classmethod
    def unpack(cls, body: bytes) -> CpStateReport:
        if body[0] >= len(CP_STATE_CODES):
            raise MalformedFrame(f"unknown CP state code {body[0]}")
        return cls(CP_STATE_CODES[body[0]])


def pp_ampacity(resistance_ohm: float | None) -> int | None:
    """Cable rating from the PP-PE resistance (IEC 61851-1 / 62196 Type 2 table); None = no valid cable."""
    if resistance_ohm is None or resistance_ohm < 75 or resistance_ohm > 2200:
        return None
    if resistance_ohm < 150:
        return 63
    if resistance_ohm < 330:
        return 32
    if resistance_ohm < 1000:
        return 20
    return 13


@dataclass(frozen=True, slots=True)
class ProximityReport:
    """PP-PE resistance (None: open / no cable / fixed cable) and the rating the board derived from it."""

    resistance_ohm: int | None
    ampacity_a: int | None
    TYPE: ClassVar[int] = 0x82

    def pack(self) -> bytes:
        ohm = NO_RESISTANCE if self.resistance_ohm is None else self.resistance_ohm
        return struct.pack("<HB", ohm, self.ampacity_a or 0)

    @classmethod
    def unpack(cls, body: bytes) -> ProximityReport:
        ohm, amps = struct.unpack_from("<HB", body)
        return cls(None if ohm == NO_RESISTANCE else ohm, amps or None)


@dataclass(frozen=True, slots=True)
class RelayReport:
    """Mirror contact of the contactor (``closed``) and what the board is driving (``commanded``)."""

    closed: bool
    commanded: bool
    TYPE: ClassVar[int] = 0x83

    def pack(self) -> bytes:
        return bytes([int(self.closed), int(self.commanded)])

    @classmethod
    def unpack(cls, body: bytes) -> RelayReport:
        return cls(_bool(body[0]), _bool(body[1]))


@dataclass(frozen=True, slots=True)
class LockReport:
    locked: bool
    commanded: bool
    TYPE: ClassVar[int] = 0x84

    def pack(self) -> bytes:
        return bytes([int(self.locked), int(self.commanded)])

    @classmethod
    def unpack(cls, body: bytes) -> LockReport:
        return cls(_bool(body[0]), _bool(body[1]))


FAULT_BITS: dict[Fault, int] = {
    Fault.RCD: 0,
    Fault.OVERTEMP: 1,
    Fault.DIODE: 2,
    Fault.GROUND: 3,
    Fault.UNDERVOLTAGE: 4,
    Fault.OVERVOLTAGE: 5,
    Fault.LOCK: 6,
    Fault.OVERCURRENT: 7,
    Fault.WELD: 8,
}


@dataclass(frozen=True, slots=True)
class FaultReport:
    """Faults active on the board right now. Reserved bits from a newer board are ignored."""

    active: frozenset[Fault]
    TYPE: ClassVar[int] = 0x85

    def pack(self) -> bytes:
        mask = 0
        for fault in self.active:
            if fault not in FAULT_BITS:
                raise ValueError(f"fault {fault.value!r} has no bit in the board protocol")
            mask |= 1 << FAULT_BITS[fault]
        return struct.pack("<H", mask)

    @classmethod
    def unpack(cls, body: bytes) -> FaultReport:
        (mask,) = struct.unpack_from("<H", body)
        return cls(frozenset(f for f, bit in FAULT_BITS.items() if mask & (1 << bit)))


@dataclass(frozen=True, slots=True)
class PhaseReport:
    """Phase contactor (boards that have one): phases switched through (mirror contact) and commanded."""

    phases: int
    commanded: int
    TYPE: ClassVar[int] = 0x87

    def pack(self) -> bytes:
        return bytes([self.phases, self.commanded])

    @classmethod
    def unpack(cls, body: bytes) -> PhaseReport:
        return cls(_phases(body[0]), _phases(body[1]))


@dataclass(frozen=True, slots=True)
class Telemetry:
    cp_high_mv: int
    cp_low_mv: int
    temperature_dc: int  # 0.1 degC
    supply_dv: int  # 0.1 V
    duty: int  # CP output actually applied, 0.01 % (as SetDuty)
    keepalive_lapsed: bool  # relay forced open because the host's keep-alives stopped
    rx_bad_frames: int
    rx_unknown_frames: int
    TYPE: ClassVar[int] = 0x86
    _FORMAT: ClassVar[str] = "<hhhHHBHH"

    def pack(self) -> bytes:
        return struct.pack(
            self._FORMAT,
            self.cp_high_mv,
            self.cp_low_mv,
            self.temperature_dc,
            self.supply_dv,
            self.duty,
            int(self.keepalive_lapsed),
            min(self.rx_bad_frames, 0xFFFF),
            min(self.rx_unknown_frames, 0xFFFF),
        )

    @classmethod
    def unpack(cls, body: bytes) -> Telemetry:
        high, low, temp, supply, duty, flags, bad, unknown = struct.unpack_from(cls._FORMAT, body)
        return cls(high, low, temp, supply, duty, bool(flags & 1), bad, unknown)


HostMessage = KeepAlive | SetDuty | SetRelay | SetLock | Reset | StatusRequest | SetPhases
BoardMessage = (
    Hello | CpStateReport | ProximityReport | RelayReport | LockReport | FaultReport | Telemetry | PhaseReport
)
Message = HostMessage | BoardMessage

# type -> (body length, decoder). Extra trailing body bytes are ignored (compatible additions).
_HOST_TYPES: dict[int, tuple[int, Callable[[bytes], Message]]] = {
    KeepAlive.TYPE: (0, KeepAlive.unpack),
    SetDuty.TYPE: (2, SetDuty.unpack),
    SetRelay.TYPE: (1, SetRelay.unpack),
    SetLock.TYPE: (1, SetLock.unpack),
    Reset.TYPE: (0, Reset.unpack),
    StatusRequest.TYPE: (0, StatusRequest.unpack),
    SetPhases.TYPE: (1, SetPhases.unpack),
}
_BOARD_TYPES: dict[int, tuple[int, Callable[[bytes], Message]]] = {
    Hello.TYPE: (8, Hello.unpack),
    CpStateReport.TYPE: (1, CpStateReport.unpack),
    ProximityReport.TYPE: (3, ProximityReport.unpack),
    RelayReport.TYPE: (2, RelayReport.unpack),
    LockReport.TYPE: (2, LockReport.unpack),
    FaultReport.TYPE: (2, FaultReport.unpack),
    Telemetry.TYPE: (15, Telemetry.unpack),
    PhaseReport.TYPE: (2, PhaseReport.unpack),
}


def encode(message: Message, seq: int = 0, version: int = PROTOCOL_VERSION) -> bytes:
    """One complete wire frame, delimiter included."""
    body = message.pack()
    if len(body) > MAX_BODY_LEN:  # pragma: no cover - all bodies are fixed and short
        raise ValueError("message body too long")
    raw = bytes([version & 0xFF, message.TYPE, seq & 0xFF]) + body
    raw += crc16_ccitt_false(raw).to_bytes(CRC_LEN, "big")
    return cobs_encode(raw) + DELIMITER


COUNTER_NAMES = (
    "frames_ok",
    "crc_errors",
    "cobs_errors",
    "short_frames",
    "oversized_frames",
    "malformed_frames",
    "unknown_frames",
    "version_mismatch",
    "seq_gaps",
)
BAD_COUNTERS = ("crc_errors", "cobs_errors", "short_frames", "oversized_frames", "malformed_frames")


class FrameDecoder:
    """Streaming decoder for the frames one side receives from ``sender``.

    Never raises on input: every broken frame is counted and dropped, and decoding resumes after the
    next 0x00 delimiter.
    """

    def __init__(self, sender: Sender) -> None:
        self._types = _BOARD_TYPES if sender is Sender.BOARD else _HOST_TYPES
        self._buffer = bytearray()
        self._discarding = False  # inside an oversized frame: drop until the next delimiter
        self._last_seq: int | None = None
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self.peer_version: int | None = None  # version of the last frame from the wrong protocol version
        self.peer_hello: Hello | None = None  # its Hello, if it sent one (the layout is version-independent)

    @property
    def bad_frames(self) -> int:
        return sum(self.counters[name] for name in BAD_COUNTERS)

    def feed(self, data: bytes) -> list[Message]:
        messages: list[Message] = []
        # split() yields one more piece than there are delimiters: every piece but the first is
        # preceded by a delimiter that completes the frame collected so far.
        for index, piece in enumerate(bytes(data).split(DELIMITER)):
            if index > 0:
                self._finish_frame(messages)
            self._append(piece)
        return messages

    def _append(self, chunk: bytes) -> None:
        if self._discarding or not chunk:
            return
        self._buffer += chunk
        if len(self._buffer) > MAX_ENCODED_LEN:
            self.counters["oversized_frames"] += 1
            self._buffer.clear()
            self._discarding = True

    def _finish_frame(self, messages: list[Message]) -> None:
        encoded = bytes(self._buffer)
        self._buffer.clear()
        if self._discarding:
            self._discarding = False
            return
        if not encoded:
            return  # empty frame: a leading delimiter used to flush the line, not an error
        message = self._decode_frame(encoded)
        if message is not None:
            messages.append(message)

    def _decode_frame(self, encoded: bytes) -> Message | None:
        try:
            raw = cobs_decode(encoded)
        except CobsError:
            self.counters["cobs_errors"] += 1
            return None
        if len(raw) < HEADER_LEN + CRC_LEN:
            self.counters["short_frames"] += 1
            return None
        if crc16_ccitt_false(raw[:-CRC_LEN]) != int.from_bytes(raw[-CRC_LEN:], "big"):
            self.counters["crc_errors"] += 1
            return None
        version, msg_type, seq = raw[0], raw[1], raw[2]
        body = raw[HEADER_LEN:-CRC_LEN]
        if version != PROTOCOL_VERSION:
            self.counters["version_mismatch"] += 1
            self.peer_version = version
            if msg_type == Hello.TYPE and len(body) >= 8:
                self.peer_hello = Hello.unpack(body)
            return None
        entry = self._types.get(msg_type)
        if entry is None:
            self.counters["unknown_frames"] += 1
            return None
        length, unpack = entry
        if len(body) < length:
            self.counters["malformed_frames"] += 1
            return None
        try:
            message = unpack(body)
        except (MalformedFrame, ValueError):
            self.counters["malformed_frames"] += 1
            return None
        if self._last_seq is not None and seq != (self._last_seq + 1) & 0xFF:
            self.counters["seq_gaps"] += 1
        self._last_seq = seq
        self.counters["frames_ok"] += 1
        return message
