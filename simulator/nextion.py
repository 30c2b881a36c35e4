"""A Nextion HMI on a pty, loaded with the project's HMI design (one page per screen state, text
components t0..t5). It keeps a model of what the screen shows (``page_name``, ``texts``) and answers
like the device: status codes per ``bkcmd``, 0x66 for ``sendme``, 0x70 for ``get x.txt``."""

from __future__ import annotations

import re

from drivers.serial import nextion_codec as codec
from simulator.pty import PtyPeripheral

PAGE_NAMES = ("idle", "authorizing", "charging", "paused", "finished", "fault", "unavailable")
COMPONENTS = {"t0": 24, "t1": 40, "t2": 40, "t3": 40, "t4": 40, "t5": 40}  # name -> txt_maxl
_ASSIGN = re.compile(r"^([A-Za-z_]\w*)\.(\w+)=(.*)$", re.S)


class NextionEmulator(PtyPeripheral):
    def __init__(self) -> None:
        super().__init__()
        self.decoder = codec.InstructionDecoder()
        self.bkcmd = 2  # power-on default: report failures only
        self.page = 0
        self.texts: dict[str, str] = dict.fromkeys(COMPONENTS, "")
        self.history: list[tuple[str, dict[str, str]]] = []  # every page as it was when left (for tests)
        self.instructions: list[str] = []
        self.errors_sent = 0

    @property
    def page_name(self) -> str:
        return PAGE_NAMES[self.page]

    def shown(self) -> str:
        """The current page as one line of text."""
        return " | ".join(t for t in self.texts.values() if t)

    def pages_shown(self) -> list[tuple[str, str]]:
        """(page name, text) of every page drawn so far, the current one last."""
        return [(name, " | ".join(t for t in texts.values() if t)) for name, texts in self.history] + [
            (self.page_name, self.shown())
        ]

    # ------------------------------------------------------------------ transport

    def feed(self, data: bytes) -> None:
        if self.silent:
            return
        for instruction in self.decoder.feed(data):
            if instruction:  # a bare terminator only flushes the line
                self.instructions.append(instruction)
                self._status(self.execute(instruction))

    def touch(self, component: int, pressed: bool = True) -> None:
        self.send(codec.Touch(self.page, component, pressed))

    def send(self, reply: codec.Reply) -> None:
        self.write_raw(codec.encode_reply(reply))

    def _status(self, code: int | None) -> None:
        if code is None:
            return
        if code == codec.OK:
            if self.bkcmd in (1, 3):
                self.send(codec.Status(code))
        else:
            self.errors_sent += 1
            if self.bkcmd in (2, 3):
                self.send(codec.Status(code))

    # ------------------------------------------------------------------ instruction set (the part we use)

    def execute(self, instruction: str) -> int | None:
        """Run one instruction; the status code to report (None: the instruction answers by itself)."""
        if instruction.startswith("page "):
            arg = instruction[5:].strip()
            number = int(arg) if arg.isdigit() else (PAGE_NAMES.index(arg) if arg in PAGE_NAMES else -1)
            if not 0 <= number < len(PAGE_NAMES):
                return codec.INVALID_PAGE
            self.history.append((self.page_name, dict(self.texts)))
            self.page, self.texts = number, dict.fromkeys(COMPONENTS, "")  # a page loads its design values
            return codec.OK
        if instruction == "sendme":
            self.send(codec.PageReply(self.page))
            return None
        if instruction.startswith("get "):
            target = instruction[4:].strip()
            name, _, attribute = target.partition(".")
            if name not in COMPONENTS:
                return codec.INVALID_COMPONENT
            if attribute != "txt":
                return codec.INVALID_VARIABLE
            self.send(codec.StringReply(self.texts[name]))
            return None
        match = _ASSIGN.match(instruction)
        if match is not None:
            name, attribute, value = match.groups()
            if name not in COMPONENTS:
                return codec.INVALID_COMPONENT
            if attribute != "txt":
                return codec.INVALID_VARIABLE
            try:
                text = codec.unquote(value)
            except ValueError:
                return codec.INVALID_VARIABLE
            self.texts[name] = text[: COMPONENTS[name]]  # the device truncates to txt_maxl
            return codec.OK
        if instruction.startswith("bkcmd="):
            level = instruction[6:]
            if not level.isdigit() or int(level) > 3:
                return codec.INVALID_VARIABLE
            self.bkcmd = int(level)
            return codec.OK
        return codec.INVALID_INSTRUCTION
