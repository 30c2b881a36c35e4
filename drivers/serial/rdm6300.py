"""RDM6300 125 kHz RFID reader on a serial port (9600 8N1). The reader repeats the frame while a card
is in the field; a card held still is reported once (``repeat_suppress_s``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import serial

from drivers.serial.card_reader import CardReader
from drivers.serial.rdm6300_codec import Rdm6300Decoder
from drivers.settings import DeviceSettings
from hal import DeviceFaultChanged, Fault, IdToken
from hal.clock import Clock, SystemClock

log = logging.getLogger("cpagent.drivers.rdm6300")

TOKEN_KIND = "RFID125"
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 10.0


class Rdm6300Reader(CardReader):
    token_kind = TOKEN_KIND

    def __init__(
        self,
        name: str,
        port: str,
        *,
        baudrate: int = 9600,
        repeat_suppress_s: float = 2.0,
        backoff_max_s: float = BACKOFF_MAX_S,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(name, repeat_suppress_s=repeat_suppress_s)
        self.port = port
        self.baudrate = baudrate
        self.backoff_max_s = backoff_max_s
        self.clock: Clock = clock or SystemClock()
        self.decoder = Rdm6300Decoder()
        self._port_fault = False
        self._counters.update(port_errors=0)

    def counters(self) -> Mapping[str, int]:
        return {**self._counters, "frames": self.decoder.frames, "bad_frames": self.decoder.errors}

    # ------------------------------------------------------------------ input

    def feed(self, data: bytes) -> list[IdToken]:
        """Bytes from the port -> tokens newly presented (also published to tokens() iterators)."""
        presented = []
        for read in self.decoder.feed(data):
            token = self._card_seen(read.uid, self.clock.monotonic())
            if token is not None:
                presented.append(token)
        return presented

    # ------------------------------------------------------------------ task

    async def run(self) -> None:
        backoff = BACKOFF_START_S
        while True:
            try:
                port = serial.Serial(self.port, self.baudrate, timeout=0)
            except (serial.SerialException, OSError, ValueError) as exc:
                self._port_failed(f"cannot open {self.port}: {exc}")
                await asyncio.sleep(backoff)
                backoff = min(self.backoff_max_s, backoff * 2)
                continue
            backoff = BACKOFF_START_S
            if self._port_fault:
                self._port_fault = False
                log.info("reader %s: %s open again", self.name, self.port)
                self.emit(DeviceFaultChanged(Fault.READER_SILENT, False))
            try:
                await self._read_until_error(port)
            finally:
                port.close()

    async def _read_until_error(self, port: serial.Serial) -> None:
        loop = asyncio.get_running_loop()
        failed: asyncio.Future[str] = loop.create_future()

        def readable() -> None:
            try:
                data = port.read(port.in_waiting or 1)
            except (serial.SerialException, OSError) as exc:
                if not failed.done():
                    failed.set_result(f"read from {self.port} failed: {exc}")
                return
            try:
                self.feed(data)
            except Exception:  # a listener bug must not stop the reader
                log.exception("reader %s: error while handling input", self.name)

        fd = port.fileno()
        loop.add_reader(fd, readable)
        try:
            detail = await failed
        finally:
            loop.remove_reader(fd)
        self._port_failed(detail)
        await asyncio.sleep(BACKOFF_START_S)

    def _port_failed(self, detail: str) -> None:
        self._counters["port_errors"] += 1
        if not self._port_fault:
            self._port_fault = True
            log.warning("reader %s: %s (retrying with back-off)", self.name, detail)
            self.emit(DeviceFaultChanged(Fault.READER_SILENT, True, detail))
        else:
            log.debug("reader %s: %s", self.name, detail)


def create(name: str, settings: Mapping[str, Any]) -> Rdm6300Reader:
    s = DeviceSettings(name, settings, ("port", "baudrate", "repeat_suppress_s", "driver"))
    return Rdm6300Reader(
        name,
        s.serial_port(),
        baudrate=s.integer("baudrate", 9600, 300, 1_000_000, noun="an integer baud rate"),
        repeat_suppress_s=s.seconds("repeat_suppress_s", 2.0, 0.0, 60.0),
    )
