"""Nextion HMI serial protocol (9600 8N1): ASCII instructions ended by FF FF FF, binary replies ended by
FF FF FF. Pure code, no I/O.

Replies used here: 0x01 ok (with ``bkcmd=3``), 0x00 invalid instruction, 0x02 invalid component,
0x03 invalid page, 0x1A invalid variable/attribute, 0x1B invalid operation, 0x24 buffer overflow,
0x65 touch (page, component, 1 press / 0 release), 0x66 current page, 0x70 string, 0x71 number
(int32 little-endian), 0x88 ready after power-on.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

TERMINATOR = b"\xff\xff\xff"
ENCODING = "iso-8859-1"  # the fonts of a stock Nextion project; other characters become '?'

OK = 0x01
INVALID_INSTRUCTION = 0x00
INVALID_COMPONENT = 0x02
INVALID_PAGE = 0x03
INVALID_VARIABLE = 0x1A
INVALID_OPERATION = 0x1B
BUFFER_OVERFLOW = 0x24
TOUCH = 0x65
PAGE = 0x66
STRING = 0x70
NUMBER = 0x71
READY = 0x88
STATUS_CODES = frozenset({OK, INVALID_INSTRUCTION, INVALID_COMPONENT, INVALID_PAGE, 0x04, 0x05, 0x06, 0x09, 0x11,
                          0x12, 0x1A, 0x1B, 0x1C, 0x1D, 0x1E, 0x1F, 0x20, 0x23, 0x24, READY})  # fmt: skip
ERROR_NAMES = {
    INVALID_INSTRUCTION: "invalid instruction",
    INVALID_COMPONENT: "invalid component",
    INVALID_PAGE: "invalid page",
    INVALID_VARIABLE: "invalid variable or attribute",
    INVALID_OPERATION: "invalid variable operation",
    BUFFER_OVERFLOW: "serial buffer overflow",
}


def encode_instruction(instruction: str) -> bytes:
    return instruction.encode(ENCODING, errors="replace") + TERMINATOR


def quote(text: str, max_chars: int) -> str:
    """A Nextion string literal of at most ``max_chars`` characters: backslash and quote escaped, line
    breaks as \\r, control characters dropped."""
    flat = " ".join(text.replace("\r", "\n").split("\n"))
    clean = "".join(ch for ch in flat if ch.isprintable())[:max_chars]
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unquote(literal: str) -> str:
    """The text of a Nextion string literal (the emulator's side of :func:`quote`)."""
    if len(literal) < 2 or literal[0] != '"' or literal[-1] != '"':
        raise ValueError(f"not a string literal: {literal!r}")
    out, i, body = [], 0, literal[1:-1]
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            out.append({"r": "\r", "\\": "\\", '"': '"'}.get(nxt, nxt))
            i += 2
            continue
        if ch == '"':
            raise ValueError("unescaped quote inside a string literal")
        out.append(ch)
        i += 1
    return "".join(out)


def set_text(component: str, text: str, max_chars: int) -> str:
    return f"{component}.txt={quote(text, max_chars)}"


def page(number: int) -> str:
    return f"page {number}"


# ---------------------------------------------------------------------------------------------- replies


@dataclass(frozen=True, slots=True)
class Status:
    code: int

    @property
    def ok(self) -> bool:
        return self.code in (OK, READY)


@dataclass(frozen=True, slots=True)
class Touch:
    page: int
    component: int
    pressed: bool


@dataclass(frozen=True, slots=True)
class PageReply:
    page: int


@dataclass(frozen=True, slots=True)
class StringReply:
    text: str


@dataclass(frozen=True, slots=True)
class NumberReply:
    value: int


Reply = Status | Touch | PageReply | StringReply | NumberReply


def encode_reply(reply: Reply) -> bytes:
    match reply:
        case Status(code):
            body = bytes([code])
        case Touch(page_id, component, pressed):
            body = bytes([TOUCH, page_id, component, int(pressed)])
        case PageReply(page_id):
            body = bytes([PAGE, page_id])
        case StringReply(text):
            body = bytes([STRING]) + text.encode(ENCODING, errors="replace")
        case NumberReply(value):
            body = bytes([NUMBER]) + struct.pack("<i", value)
    return body + TERMINATOR


_FIXED_LENGTH = {TOUCH: 4, PAGE: 2, NUMBER: 5}  # bytes before the terminator


class ReplyDecoder:
    """Streaming decoder of the display's replies. Never raises; unknown or broken replies are counted and
    skipped up to the next terminator. Fixed-length replies are cut by length, since a number may contain
    FF bytes."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.replies = 0
        self.bad_replies = 0

    def feed(self, data: bytes) -> list[Reply]:
        self._buffer += data
        out: list[Reply] = []
        while self._buffer:
            code = self._buffer[0]
            size = _FIXED_LENGTH.get(code)
            if size is not None:
                if len(self._buffer) < size + 3:
                    break
                if self._buffer[size : size + 3] != TERMINATOR:
                    self._skip_to_terminator()
                    continue
                body = bytes(self._buffer[:size])
                del self._buffer[: size + 3]
                out.append(self._fixed(body))
                self.replies += 1
                continue
            end = self._buffer.find(TERMINATOR)
            if end < 0:
                if len(self._buffer) > 1024:  # no terminator in sight: junk
                    self.bad_replies += 1
                    self._buffer.clear()
                break
            body = bytes(self._buffer[:end])
            del self._buffer[: end + 3]
            if code == STRING:
                out.append(StringReply(body[1:].decode(ENCODING)))
            elif code in STATUS_CODES and len(body) == 1:
                out.append(Status(code))
            else:
                self.bad_replies += 1
                continue
            self.replies += 1
        return out

    def _skip_to_terminator(self) -> None:
        self.bad_replies += 1
        end = self._buffer.find(TERMINATOR, 1)
        del self._buffer[: len(self._buffer) if end < 0 else end + 3]

    @staticmethod
    def _fixed(body: bytes) -> Reply:
        if body[0] == TOUCH:
            return Touch(body[1], body[2], body[3] == 1)
        if body[0] == PAGE:
            return PageReply(body[1])
        return NumberReply(struct.unpack("<i", body[1:5])[0])


class InstructionDecoder:
    """The display's side: bytes -> instruction strings (used by the emulator)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[str]:
        self._buffer += data
        out = []
        while (end := self._buffer.find(TERMINATOR)) >= 0:
            out.append(bytes(self._buffer[:end]).decode(ENCODING))
            del self._buffer[: end + 3]
        return out
