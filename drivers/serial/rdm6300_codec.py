"""RDM6300 / RDM630 125 kHz reader frames: 0x02, 10 ASCII hex (2 version + 8 tag), 2 ASCII hex
checksum (XOR of the 5 data bytes), 0x03. Pure functions plus a streaming decoder that resyncs."""

from __future__ import annotations

from dataclasses import dataclass

STX = 0x02
ETX = 0x03
FRAME_LEN = 14
UID_CHARS = 10
_HEX = frozenset(b"0123456789ABCDEF")  # the reader sends upper case only; anything else is corrupt


class FrameError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class TagRead:
    uid: str  # 10 upper-case hex chars: version byte + 4 tag bytes

    @property
    def version(self) -> int:
        return int(self.uid[:2], 16)

    @property
    def tag(self) -> int:
        return int(self.uid[2:], 16)


def checksum(data: bytes) -> int:
    result = 0
    for byte in data:
        result ^= byte
    return result


def normalize_uid(uid: str) -> str:
    text = uid.strip().upper()
    if len(text) != UID_CHARS or any(c not in "0123456789ABCDEF" for c in text):
        raise FrameError(f"an RDM6300 uid is {UID_CHARS} hex digits, got {uid!r}")
    return text


def encode_frame(uid: str) -> bytes:
    text = normalize_uid(uid)
    data = bytes.fromhex(text)
    return bytes([STX]) + text.encode("ascii") + f"{checksum(data):02X}".encode("ascii") + bytes([ETX])


def decode_frame(frame: bytes) -> TagRead:
    if len(frame) != FRAME_LEN:
        raise FrameError(f"frame is {len(frame)} bytes, expected {FRAME_LEN}")
    if frame[0] != STX or frame[-1] != ETX:
        raise FrameError("frame does not start with STX and end with ETX")
    body = frame[1:-1]
    if any(b not in _HEX for b in body):
        raise FrameError("frame body is not upper-case ASCII hex")
    data = bytes.fromhex(body[:UID_CHARS].decode("ascii"))
    expected = int(body[UID_CHARS:].decode("ascii"), 16)
    if checksum(data) != expected:
        raise FrameError(f"checksum {expected:02X} does not match data ({checksum(data):02X})")
    return TagRead(body[:UID_CHARS].decode("ascii"))


class Rdm6300Decoder:
    """Feed raw bytes in any chunking; get complete valid reads back. Every corrupt candidate frame and
    every run of bytes outside a frame counts one error; the decoder resyncs on the next STX."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.frames = 0
        self.errors = 0
        self._in_junk = False

    def feed(self, data: bytes) -> list[TagRead]:
        self._buffer += data
        reads: list[TagRead] = []
        while self._buffer:
            start = self._buffer.find(STX)
            if start != 0:
                # bytes before the next STX (or all of them) belong to no frame
                if not self._in_junk:
                    self.errors += 1
                    self._in_junk = True
                del self._buffer[: len(self._buffer) if start < 0 else start]
                continue
            self._in_junk = False
            candidate = bytes(self._buffer[:FRAME_LEN])
            if self._broken_prefix(candidate):
                self._reject()
                continue
            if len(candidate) < FRAME_LEN:
                break  # wait for the rest
            try:
                reads.append(decode_frame(candidate))
            except FrameError:
                self._reject()
                continue
            self.frames += 1
            del self._buffer[:FRAME_LEN]
        return reads

    def _reject(self) -> None:
        """Count one error and resync on the next STX; the rest of this frame is not counted again."""
        self.errors += 1
        self._in_junk = True
        del self._buffer[0]

    @staticmethod
    def _broken_prefix(candidate: bytes) -> bool:
        """Reject a partial frame early, so a valid frame right after it is not delayed."""
        body = candidate[1 : FRAME_LEN - 1]
        if any(b not in _HEX for b in body):
            return True
        return len(candidate) == FRAME_LEN and candidate[-1] != ETX
