"""Nextion HMI display on a serial port (9600 8N1).

The HMI project has one page per screen state (PAGES) with text components t0 (title) and t1..t5 (lines).
``show()`` writes at once (non-blocking) and never raises; the display's error replies are counted and
each kind logged once; a display that stops acknowledging (``bkcmd=3``) is counted, not a fault: no OCPP
error code covers a broken display, and charging does not depend on it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import textwrap
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import serial

from drivers.serial import nextion_codec as codec
from drivers.settings import DeviceSettings
from hal import Device, DeviceError, Display, Role, Screen, ScreenState

log = logging.getLogger("cpagent.drivers.nextion")

PAGES: dict[ScreenState, int] = {
    ScreenState.IDLE: 0,
    ScreenState.AUTHORIZING: 1,
    ScreenState.CHARGING: 2,
    ScreenState.PAUSED: 3,
    ScreenState.FINISHED: 4,
    ScreenState.FAULT: 5,
    ScreenState.UNAVAILABLE: 6,
}
TITLE_CHARS = 24
LINE_CHARS = 40
LINES = 5
REPLY_TIMEOUT_S = 1.0
BACKOFF_S = (0.5, 10.0)


def _kw(watts: float) -> str:
    return f"{watts / 1000:.1f} kW"


def _kwh(wh: float) -> str:
    return f"{wh / 1000:.2f} kWh"


def _hms(seconds: float) -> str:
    total = max(0, int(seconds))
    return f"{total // 3600:d}:{total // 60 % 60:02d}:{total % 60:02d}"


def _wrap2(text: str) -> list[str]:
    """A message over two lines, broken between words (the driver must be able to read all of it)."""
    lines = textwrap.wrap(text, LINE_CHARS) or [""]
    return [lines[0], " ".join(lines[1:])]


def layout(screen: Screen, last_duration_s: float = 0.0) -> tuple[int, list[str]]:
    """(page, [title, line1..line5]) for a screen. Every screen says what to do next.
    ``last_duration_s``: the session's duration, for a finished screen that does not carry it."""
    extra = dict(screen.extra)
    state = screen.state
    if state is ScreenState.IDLE:
        lines = ["Welcome", screen.message or "Tap card or plug in", "", "", "", ""]
    elif state is ScreenState.AUTHORIZING:
        lines = ["Authorizing", screen.message or "Please wait", "", "", "", ""]
    elif state is ScreenState.CHARGING:
        lines = [
            "Charging",
            f"Power: {_kw(screen.power_w)}",
            f"Energy: {_kwh(screen.energy_wh)}",
            f"Time: {_hms(screen.duration_s)}",
            "",
            "Tap your card to stop",
        ]
    elif state is ScreenState.PAUSED:
        lines = [
            "Charging paused",
            f"Energy: {_kwh(screen.energy_wh)}",
            f"Time: {_hms(screen.duration_s)}",
            "Waiting for your car",
            "",
            "Tap your card to stop",
        ]
    elif state is ScreenState.FINISHED:
        duration = screen.duration_s or last_duration_s
        lines = [
            "Charging finished",
            f"Energy: {_kwh(screen.energy_wh)}",
            f"Duration: {_hms(duration)}",
            f"Cost: {extra['cost']}" if "cost" in extra else "",
            "",
            screen.message or "Unplug your car",
        ]
    elif state is ScreenState.FAULT:
        lines = [
            "Out of order",
            *_wrap2(screen.message or "Charger fault. Please use another charger."),
            f"Code: {screen.fault_code}" if screen.fault_code else "",
            f"Support: {screen.support_contact}" if screen.support_contact else "",
            "",
        ]
    else:
        lines = [
            "Unavailable",
            *_wrap2(screen.message or "Out of service. Please use another charger."),
            "",
            f"Support: {screen.support_contact}" if screen.support_contact else "",
            "",
        ]
    if extra.get("message"):  # an operator message on the page's free line (never over a fault's text)
        lines[5 if state in (ScreenState.FAULT, ScreenState.UNAVAILABLE) else 4] = extra["message"]
    return PAGES[state], lines


def instructions(screen: Screen, last_duration_s: float = 0.0) -> list[str]:
    page, lines = layout(screen, last_duration_s)
    out = [codec.page(page), codec.set_text("t0", lines[0], TITLE_CHARS)]
    out += [codec.set_text(f"t{i}", text, LINE_CHARS) for i, text in enumerate(lines[1:], start=1)]
    return out


class NextionDisplay(Device, Display):
    def __init__(self, name: str, port: str, *, baudrate: int = 9600, connector_id: int | None = None) -> None:
        super().__init__(name)
        self.port = port
        self.baudrate = baudrate
        self.connector_id = connector_id  # None: show whichever connector changed last
        self.decoder = codec.ReplyDecoder()
        self._fd: int | None = None
        self._screen: Screen | None = None
        self._durations: dict[int, float] = {}
        self._awaiting: deque[float] = deque()  # send times of instructions not yet acknowledged
        self._errors_logged: set[int] = set()
        self._answering = True
        self._counters = {"screens": 0, "instructions": 0, "acks": 0, "errors": 0, "unanswered": 0,
                          "tx_dropped": 0, "touches": 0, "port_errors": 0}  # fmt: skip

    @property
    def roles(self) -> frozenset[Role]:
        return frozenset({Role.DISPLAY})

    @property
    def screen(self) -> Screen | None:
        return self._screen

    def counters(self) -> Mapping[str, int]:
        return {**self._counters, "bad_replies": self.decoder.bad_replies}

    def show(self, screen: Screen) -> None:
        if self.connector_id is not None and screen.connector_id != self.connector_id:
            return
        if screen.state in (ScreenState.CHARGING, ScreenState.PAUSED) and screen.duration_s:
            self._durations[screen.connector_id] = screen.duration_s
        if screen == self._screen:
            return
        self._screen = screen
        self._counters["screens"] += 1
        self._draw()

    def _draw(self) -> None:
        screen = self._screen
        if screen is None:
            return
        for instruction in instructions(screen, self._durations.get(screen.connector_id, 0.0)):
            self._write(instruction)

    def _write(self, instruction: str) -> None:
        if self._fd is None:
            self._counters["tx_dropped"] += 1
            return
        frame = codec.encode_instruction(instruction)
        try:
            written = os.write(self._fd, frame)
        except OSError:
            written = 0
        if written != len(frame):
            # The UART buffer is full (display not reading): drop; the next screen redraws everything.
            self._counters["tx_dropped"] += 1
            return
        self._counters["instructions"] += 1
        self._awaiting.append(time.monotonic())

    # ------------------------------------------------------------------ task

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = BACKOFF_S[0]
        while True:
            try:
                port = serial.Serial(self.port, self.baudrate, timeout=0, write_timeout=0)
            except (serial.SerialException, OSError, ValueError) as exc:
                self._counters["port_errors"] += 1
                log.debug("display %s: cannot open %s: %s", self.name, self.port, exc)
                await asyncio.sleep(backoff)
                backoff = min(BACKOFF_S[1], backoff * 2)
                continue
            backoff = BACKOFF_S[0]
            failed: asyncio.Future[str] = loop.create_future()
            fd = self._fd = port.fileno()
            loop.add_reader(fd, self._readable, failed)
            try:
                self._write("")  # a bare terminator ends any half instruction left on the line
                self._awaiting.clear()
                self._write("bkcmd=3")  # acknowledge every instruction: that is how we see the display is there
                self._draw()
                while not failed.done():
                    self._check_answers()
                    await asyncio.wait([failed], timeout=REPLY_TIMEOUT_S / 2)
                log.warning("display %s: %s", self.name, failed.result())
            finally:
                loop.remove_reader(fd)
                self._fd = None
                port.close()
            await asyncio.sleep(backoff)

    def _readable(self, failed: asyncio.Future[str]) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            self._counters["port_errors"] += 1
            if not failed.done():
                failed.set_result(f"read from {self.port} failed: {exc}")
            asyncio.get_running_loop().remove_reader(self._fd)
            return
        for reply in self.decoder.feed(data):
            self._on_reply(reply)

    def _on_reply(self, reply: codec.Reply) -> None:
        if isinstance(reply, codec.Status):
            if reply.code == codec.READY:  # the display restarted: it shows its start page again
                self._draw()
                return
            if self._awaiting:
                self._awaiting.popleft()
            self._answered()
            if reply.ok:
                self._counters["acks"] += 1
                return
            self._counters["errors"] += 1
            if reply.code not in self._errors_logged:
                self._errors_logged.add(reply.code)
                what = codec.ERROR_NAMES.get(reply.code, f"error 0x{reply.code:02X}")
                log.warning("display %s: the display reports %s (logged once; see counters)", self.name, what)
        elif isinstance(reply, codec.Touch):
            self._counters["touches"] += 1

    def _answered(self) -> None:
        if not self._answering:
            self._answering = True
            log.info("display %s: answering again", self.name)

    def _check_answers(self) -> None:
        deadline = time.monotonic() - REPLY_TIMEOUT_S
        while self._awaiting and self._awaiting[0] < deadline:
            self._awaiting.popleft()
            self._counters["unanswered"] += 1
            if self._answering:
                self._answering = False
                log.warning("display %s: not acknowledging instructions (counted as 'unanswered')", self.name)


def create(name: str, settings: Mapping[str, Any]) -> NextionDisplay:
    s = DeviceSettings(name, settings, ("port", "baudrate", "connector_id"))
    connector = settings.get("connector_id")
    if connector is not None and (isinstance(connector, bool) or not isinstance(connector, int) or connector < 1):
        raise DeviceError(f"{s.key('connector_id')}: expected a connector number (1, 2, ...), got {connector!r}")
    return NextionDisplay(name, s.serial_port(),
                          baudrate=s.integer("baudrate", 9600, 2400, 921_600, noun="an integer baud rate"),
                          connector_id=connector)
