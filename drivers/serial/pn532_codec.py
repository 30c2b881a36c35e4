"""PN532 NFC controller over HSU (UART, 115200 8N1): frames, ACK, and the few commands a reader needs.

Information frame: ``00 00 FF LEN LCS TFI DATA... DCS 00`` with LEN = len(TFI + DATA), LEN + LCS = 0 and
TFI + sum(DATA) + DCS = 0 (mod 256). TFI is D4 host -> PN532, D5 PN532 -> host; a response's first data
byte is the command code + 1. ACK ``00 00 FF 00 FF 00``, NACK ``00 00 FF FF 00 00``. Pure code, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

TFI_HOST = 0xD4
TFI_PN532 = 0xD5
START = b"\x00\xff"
ACK = b"\x00\x00\xff\x00\xff\x00"
NACK = b"\x00\x00\xff\xff\x00\x00"
WAKEUP = b"\x55\x55\x00\x00\x00"  # HSU wake-up: leaves power-down / low-VBAT mode before the first command

CMD_GET_FIRMWARE_VERSION = 0x02
CMD_SAM_CONFIGURATION = 0x14
CMD_RF_CONFIGURATION = 0x32
CMD_IN_LIST_PASSIVE_TARGET = 0x4A
BRTY_106_TYPE_A = 0x00  # ISO/IEC 14443 Type A at 106 kbps


def _checksum(data: bytes) -> int:
    return (-sum(data)) & 0xFF


def encode_frame(tfi: int, data: bytes) -> bytes:
    body = bytes([tfi]) + data
    if len(body) > 0xFE:
        raise ValueError("normal information frames carry at most 254 bytes (TFI + data)")
    return b"\x00\x00\xff" + bytes([len(body), _checksum(bytes([len(body)]))]) + body + bytes([_checksum(body), 0])


def command(code: int, params: bytes = b"") -> bytes:
    """A host -> PN532 command frame."""
    return encode_frame(TFI_HOST, bytes([code]) + params)


def response(code: int, payload: bytes = b"") -> bytes:
    """The PN532's answer frame to command ``code``."""
    return encode_frame(TFI_PN532, bytes([code + 1]) + payload)


def get_firmware_version() -> bytes:
    return command(CMD_GET_FIRMWARE_VERSION)


def sam_configuration() -> bytes:
    # Normal mode (no SAM), timeout 0x14 * 50 ms, IRQ pin used.
    return command(CMD_SAM_CONFIGURATION, b"\x01\x14\x01")


def limit_passive_retries(retries: int = 2) -> bytes:
    """RFConfiguration item 5 (MaxRetries): without it InListPassiveTarget waits forever for a card."""
    return command(CMD_RF_CONFIGURATION, bytes([0x05, 0xFF, 0x01, retries]))


def in_list_passive_target(max_targets: int = 1) -> bytes:
    return command(CMD_IN_LIST_PASSIVE_TARGET, bytes([max_targets, BRTY_106_TYPE_A]))


@dataclass(frozen=True, slots=True)
class Ack:
    pass


@dataclass(frozen=True, slots=True)
class Nack:
    pass


@dataclass(frozen=True, slots=True)
class Frame:
    tfi: int
    data: bytes

    @property
    def code(self) -> int | None:
        return self.data[0] if self.data else None


@dataclass(frozen=True, slots=True)
class FirmwareVersion:
    ic: int  # 0x32 for a PN532
    version: int
    revision: int
    support: int


@dataclass(frozen=True, slots=True)
class TypeATarget:
    number: int
    sens_res: int
    sel_res: int
    uid: bytes

    @property
    def uid_hex(self) -> str:
        return self.uid.hex().upper()


class MalformedResponse(ValueError):
    pass


def parse_firmware_version(frame: Frame) -> FirmwareVersion:
    if frame.tfi != TFI_PN532 or frame.code != CMD_GET_FIRMWARE_VERSION + 1 or len(frame.data) < 5:
        raise MalformedResponse(f"not a GetFirmwareVersion response: {frame.data.hex()}")
    return FirmwareVersion(*frame.data[1:5])


def encode_targets(targets: list[TypeATarget]) -> bytes:
    """InListPassiveTarget response payload (after the response code)."""
    out = bytearray([len(targets)])
    for t in targets:
        out += bytes([t.number]) + t.sens_res.to_bytes(2, "big") + bytes([t.sel_res, len(t.uid)]) + t.uid
    return bytes(out)


def parse_targets(frame: Frame) -> list[TypeATarget]:
    """Type A targets of an InListPassiveTarget response (NbTg, then Tg SENS_RES(2) SEL_RES len UID)."""
    data = frame.data
    if frame.tfi != TFI_PN532 or frame.code != CMD_IN_LIST_PASSIVE_TARGET + 1 or len(data) < 2:
        raise MalformedResponse(f"not an InListPassiveTarget response: {data.hex()}")
    count, pos, targets = data[1], 2, []
    for _ in range(count):
        if pos + 5 > len(data):
            raise MalformedResponse("target record cut short")
        number, sens_res, sel_res, uid_len = (
            data[pos],
            int.from_bytes(data[pos + 1 : pos + 3]),
            data[pos + 3],
            data[pos + 4],
        )
        uid = data[pos + 5 : pos + 5 + uid_len]
        if uid_len not in (4, 7, 10) or len(uid) != uid_len:
            raise MalformedResponse(f"UID of {uid_len} bytes")
        targets.append(TypeATarget(number, sens_res, sel_res, uid))
        pos += 5 + uid_len
        if sel_res & 0x20 and pos < len(data):  # ISO 14443-4 card: an ATS follows, its first byte is its length
            pos += data[pos]
    return targets


Decoded = Ack | Nack | Frame
COUNTER_NAMES = ("frames", "acks", "nacks", "bad_lcs", "bad_dcs", "bad_postamble", "unsupported")


class Pn532Decoder:
    """Streaming decoder. Never raises: a bad LCS/DCS is counted and decoding resyncs on the next start code."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)

    @property
    def errors(self) -> int:
        return sum(self.counters[k] for k in ("bad_lcs", "bad_dcs", "bad_postamble", "unsupported"))

    def feed(self, data: bytes) -> list[Decoded]:
        self._buffer += data
        out: list[Decoded] = []
        while True:
            start = self._buffer.find(START)
            if start < 0:
                # Keep a trailing 0x00: it may be the first half of the next start code.
                del self._buffer[: max(0, len(self._buffer) - 1)]
                return out
            del self._buffer[:start]
            if len(self._buffer) < 4:
                return out
            length, lcs = self._buffer[2], self._buffer[3]
            if (length, lcs) == (0x00, 0xFF) or (length, lcs) == (0xFF, 0x00):
                is_ack = length == 0
                self.counters["acks" if is_ack else "nacks"] += 1
                out.append(Ack() if is_ack else Nack())
                del self._buffer[:4]
                continue
            if (length + lcs) & 0xFF:
                self.counters["bad_lcs"] += 1
                del self._buffer[:2]  # resync: look for the next start code after this one
                continue
            if length == 0:  # LEN 00 LCS 00 cannot carry a TFI
                self.counters["bad_lcs"] += 1
                del self._buffer[:2]
                continue
            if length == 0xFF:  # extended frame (LEN FF, LCS FF... not used by these commands)
                self.counters["unsupported"] += 1
                del self._buffer[:2]
                continue
            total = 4 + length + 2  # start, LEN, LCS, TFI+DATA, DCS, postamble
            if len(self._buffer) < total:
                return out
            body = bytes(self._buffer[4 : 4 + length])
            dcs, post = self._buffer[4 + length], self._buffer[5 + length]
            if (sum(body) + dcs) & 0xFF:
                self.counters["bad_dcs"] += 1
                del self._buffer[:2]
                continue
            del self._buffer[:total]
            if post != 0x00:
                self.counters["bad_postamble"] += 1  # counted, but the checksums held: keep the frame
            self.counters["frames"] += 1
            out.append(Frame(body[0], body[1:]))
