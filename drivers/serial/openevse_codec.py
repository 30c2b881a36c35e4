"""OpenEVSE RAPI framing and parsing: pure ``bytes <-> dataclass`` functions, no I/O.

Taken from the firmware source (lincomatic/open_evse ``rapi_proc.h`` / ``rapi_proc.cpp`` /
``J1772EvseController.h``, RAPI 5.x), which wins where the short reference in
shared/reference/hardware.md is silent or differs:

- A line is ``$TOKEN arg arg ... [:ss]^XK\\r``; XK is the XOR of every byte before ``^``, written by the
  board as two upper-case hex digits (it accepts either case). The optional sequence id ``:ss`` is
  separated by a space, is 2 hex digits, and 00 is reserved as "no id".
- Replies are ``$OK ...`` / ``$NK ...`` and echo the command's sequence id; asynchronous lines start
  with ``A`` (``$AT``, ``$AB``, ``$AN``) or are ``$WF`` and never carry one.
- ``$AT evsestate pilotstate currentcapacity vflags``: states and vflags in hex, capacity in decimal.
  ``$GS`` answers ``evsestate(hex) elapsed(dec) pilotstate(hex) vflags(hex)``.
- EVSE states: 1 A, 2 B, 3 C, 4 D (vent required, the first "fault" state), 5 diode check failed,
  6 GFCI fault, 7 no ground, 8 stuck relay, 9 GFI self-test failed, 10 over temperature, 11 over
  current, 14 relay closure fault, 254 sleeping, 255 disabled. (The task brief numbered the faults
  from 4; the source numbers them as here, and this module follows the source.)
- The board's command buffer holds 32 bytes: longer commands are silently dropped by the firmware.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

SOC = ord("$")
EOC = ord("\r")
MAX_COMMAND_LEN = 32  # firmware ESRAPI_BUFLEN, including '$' and the terminator
MAX_LINE_LEN = 80  # longest line we accept from the board ($GV, $AT and $GS are far shorter)


class EvseState(IntEnum):
    UNKNOWN = 0x00
    A = 0x01
    B = 0x02
    C = 0x03
    D = 0x04
    DIODE_CHECK_FAILED = 0x05
    GFCI_FAULT = 0x06
    NO_GROUND = 0x07
    STUCK_RELAY = 0x08
    GFI_SELF_TEST_FAILED = 0x09
    OVER_TEMPERATURE = 0x0A
    OVER_CURRENT = 0x0B
    RELAY_CLOSURE_FAULT = 0x0E
    SLEEPING = 0xFE
    DISABLED = 0xFF


FAULT_STATES = frozenset(range(0x05, 0x0F))  # firmware EVSE_FAULT_STATE_BEGIN..END, minus D (vent)

# m_wVFlags bits (volatile flags) that the driver uses.
VFLAG_HARD_FAULT = 0x0002
VFLAG_CHARGING_ON = 0x0040  # the charging relay is closed
VFLAG_GFI_TRIPPED = 0x0080
VFLAG_EV_CONNECTED = 0x0100  # valid only while the pilot is not at -12 V
VFLAG_SESSION_ENDED = 0x0200


class RapiFormatError(ValueError):
    """A line framed correctly but whose fields do not parse."""


# ---------------------------------------------------------------------------------------- framing


def checksum(body: bytes) -> int:
    """8-bit XOR of all bytes (everything before the ``^``)."""
    value = 0
    for byte in body:
        value ^= byte
    return value


def encode(token: str, *args: str | int, seq: int | None = None) -> bytes:
    """One RAPI line, e.g. ``encode("SC", 16, "V", seq=7) == b"$SC 16 V :07^xx\\r"``."""
    if len(token) != 2 or not token.isascii() or not token.isalnum():
        raise ValueError(f"RAPI token must be 2 ASCII letters/digits, got {token!r}")
    parts = [f"${token}", *(str(a) for a in args)]
    if any(" " in p or "^" in p or "\r" in p for p in parts[1:]):
        raise ValueError(f"RAPI arguments must not contain spaces, '^' or CR: {args!r}")
    if seq is not None:
        if not 1 <= seq <= 0xFF:
            raise ValueError(f"sequence id must be 1..255 (00 is reserved), got {seq}")
        parts.append(f":{seq:02X}")
    body = " ".join(parts).encode("ascii")
    return body + f"^{checksum(body):02X}\r".encode("ascii")


@dataclass(frozen=True, slots=True)
class Line:
    """One checked line: ``token`` (``OK``, ``NK``, ``AT``, ``GS``...), its arguments and sequence id."""

    token: str
    args: tuple[str, ...] = ()
    seq: int | None = None

    @property
    def is_reply(self) -> bool:
        return self.token in ("OK", "NK")

    @property
    def is_async(self) -> bool:
        return self.token.startswith("A") or self.token == "WF"


def _parse_hex_byte(text: str) -> int | None:
    if len(text) != 2:
        return None
    try:
        return int(text, 16)
    except ValueError:
        return None


def decode_line(raw: bytes) -> Line | None:
    """Check and split one line (from ``$`` up to, not including, the CR); None if corrupt."""
    caret = raw.rfind(b"^")
    if not raw.startswith(b"$") or caret < 0:
        return None
    body, chk = raw[:caret], raw[caret + 1 :]
    try:
        text = body.decode("ascii")
        expected = int(chk.decode("ascii"), 16)
    except (UnicodeDecodeError, ValueError):
        return None
    if len(chk) != 2 or expected != checksum(body) or not text[1:].isprintable():
        return None
    words = text[1:].split(" ")
    if not words[0]:
        return None
    seq = None
    if len(words) > 1 and words[-1].startswith(":"):
        seq = _parse_hex_byte(words[-1][1:])
        if seq is None:
            return None
        words.pop()
        if seq == 0:
            seq = None
    return Line(words[0], tuple(w for w in words[1:] if w), seq)


@dataclass
class LineDecoder:
    """Splits a byte stream into checked lines. Corruption is counted and dropped, never raised:
    the decoder resynchronises on the next ``$``."""

    max_line: int = MAX_LINE_LEN
    counters: dict[str, int] = field(
        default_factory=lambda: {"lines_ok": 0, "bad_checksum": 0, "garbage_bytes": 0, "oversized": 0}
    )
    _buf: bytearray = field(default_factory=bytearray)
    _in_line: bool = False
    _overflow: bool = False

    @property
    def errors(self) -> int:
        c = self.counters
        return c["bad_checksum"] + c["garbage_bytes"] + c["oversized"]

    def feed(self, data: bytes) -> list[Line]:
        out: list[Line] = []
        for byte in data:
            if byte == SOC:
                if self._in_line and not self._overflow:
                    self.counters["bad_checksum"] += 1  # a line cut short by the next one
                self._buf = bytearray(b"$")
                self._in_line, self._overflow = True, False
            elif not self._in_line:
                if byte not in (EOC, 0x0A):  # stray CR/LF between lines is normal (echo mode adds LF)
                    self.counters["garbage_bytes"] += 1
            elif byte == EOC:
                if not self._overflow:
                    line = decode_line(bytes(self._buf))
                    if line is None:
                        self.counters["bad_checksum"] += 1
                    else:
                        self.counters["lines_ok"] += 1
                        out.append(line)
                self._buf = bytearray()
                self._in_line = self._overflow = False
            elif not self._overflow:
                self._buf.append(byte)
                if len(self._buf) > self.max_line:
                    self.counters["oversized"] += 1
                    self._overflow = True
                    self._buf = bytearray()
        return out


# ---------------------------------------------------------------------------------------- payloads


@dataclass(frozen=True, slots=True)
class Reply:
    ok: bool
    args: tuple[str, ...]
    seq: int | None


@dataclass(frozen=True, slots=True)
class StateReport:
    """``$AT`` (asynchronous) or the ``$GS`` reply: the board's state machine as it stands."""

    evse_state: int
    pilot_state: int
    vflags: int
    current_capacity_a: int | None = None  # only in $AT
    elapsed_s: int | None = None  # only in $GS

    @property
    def ev_connected(self) -> bool:
        return bool(self.vflags & VFLAG_EV_CONNECTED)

    @property
    def relay_closed(self) -> bool:
        return bool(self.vflags & VFLAG_CHARGING_ON) or self.evse_state == EvseState.C


@dataclass(frozen=True, slots=True)
class EnergyUsage:
    """``$GU``: watt-seconds of the current (or last) session, and the Wh total of finished sessions."""

    session_ws: int
    total_wh: int


@dataclass(frozen=True, slots=True)
class Measurement:
    """``$GG``: charging current and line voltage; None where the board has no such meter (-1)."""

    current_ma: int | None
    voltage_mv: int | None


@dataclass(frozen=True, slots=True)
class Version:
    firmware: str
    protocol: str


@dataclass(frozen=True, slots=True)
class Settings:
    """``$GE``: current capacity and the EEPROM feature flags (ECF_*)."""

    current_capacity_a: int
    flags: int


@dataclass(frozen=True, slots=True)
class FaultCounters:
    """``$GF``: trip counts since the counters were last cleared."""

    gfi_trips: int
    no_ground_trips: int
    stuck_relay_trips: int


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """``$SY`` / ``$GY``: heartbeat supervision interval, fallback current and trigger state."""

    interval_s: int
    fallback_a: int
    trigger: int


def _ints(args: tuple[str, ...], count: int, bases: tuple[int, ...], what: str) -> list[int]:
    if len(args) < count:
        raise RapiFormatError(f"{what}: expected {count} fields, got {len(args)}: {args!r}")
    try:
        return [int(a, b) for a, b in zip(args[:count], bases, strict=True)]
    except ValueError as exc:
        raise RapiFormatError(f"{what}: bad number in {args!r}") from exc


def parse_reply(line: Line) -> Reply:
    if not line.is_reply:
        raise RapiFormatError(f"not a reply: ${line.token}")
    return Reply(line.token == "OK", line.args, line.seq)


def parse_async_state(line: Line) -> StateReport:
    if line.token != "AT":
        raise RapiFormatError(f"not an $AT line: ${line.token}")
    evse, pilot, amps, vflags = _ints(line.args, 4, (16, 16, 10, 16), "$AT")
    return StateReport(evse, pilot, vflags, current_capacity_a=amps)


def parse_state(args: tuple[str, ...]) -> StateReport:
    evse, elapsed, pilot, vflags = _ints(args, 4, (16, 10, 16, 16), "$GS")
    return StateReport(evse, pilot, vflags, elapsed_s=elapsed)


def parse_energy(args: tuple[str, ...]) -> EnergyUsage:
    ws, wh = _ints(args, 2, (10, 10), "$GU")
    if ws < 0 or wh < 0:
        raise RapiFormatError(f"$GU: negative energy {args!r}")
    return EnergyUsage(ws, wh)


def parse_measurement(args: tuple[str, ...]) -> Measurement:
    ma, mv = _ints(args, 2, (10, 10), "$GG")
    return Measurement(None if ma < 0 else ma, None if mv < 0 else mv)


def parse_version(args: tuple[str, ...]) -> Version:
    if not args:
        raise RapiFormatError("$GV: no version")
    return Version(args[0], args[1] if len(args) > 1 else "")


def parse_settings(args: tuple[str, ...]) -> Settings:
    amps, flags = _ints(args, 2, (10, 16), "$GE")
    return Settings(amps, flags)


def parse_fault_counters(args: tuple[str, ...]) -> FaultCounters:
    return FaultCounters(*_ints(args, 3, (16, 16, 16), "$GF"))


def parse_heartbeat(args: tuple[str, ...]) -> Heartbeat:
    return Heartbeat(*_ints(args, 3, (10, 10, 10), "$SY"))


def format_state_report(report: StateReport) -> tuple[str, ...]:
    """The ``$AT`` arguments as the firmware prints them (``%02x %02x %d %04x``)."""
    amps = report.current_capacity_a or 0
    return (f"{report.evse_state:02x}", f"{report.pilot_state:02x}", str(amps), f"{report.vflags:04x}")


def format_state_reply(report: StateReport) -> tuple[str, ...]:
    """The ``$GS`` reply arguments as the firmware prints them (``%02x %ld %02x %04x``)."""
    return (f"{report.evse_state:02x}", str(report.elapsed_s or 0), f"{report.pilot_state:02x}", f"{report.vflags:04x}")
