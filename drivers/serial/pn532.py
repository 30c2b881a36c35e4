"""PN532 13.56 MHz reader (ISO 14443A cards) over HSU. Polls InListPassiveTarget; a card held in the
field is reported once (``repeat_suppress_s``); a reader that stops answering is READER_SILENT."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import serial

from drivers.serial import pn532_codec as codec
from drivers.serial.card_reader import CardReader
from drivers.settings import DeviceSettings
from hal import DeviceFaultChanged, Fault, IdToken

log = logging.getLogger("cpagent.drivers.pn532")

TOKEN_KIND = "ISO14443"
BACKOFF_S = (0.5, 10.0)


class Pn532Reader(CardReader):
    token_kind = TOKEN_KIND

    def __init__(
        self,
        name: str,
        port: str,
        *,
        baudrate: int = 115200,
        poll_interval_s: float = 0.25,
        answer_timeout_s: float = 0.3,
        silence_timeout_s: float = 2.0,
        repeat_suppress_s: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name, repeat_suppress_s=repeat_suppress_s)
        self.port = port
        self.baudrate = baudrate
        self.poll_interval_s = poll_interval_s
        self.answer_timeout_s = answer_timeout_s
        self.silence_timeout_s = silence_timeout_s
        self._monotonic = monotonic
        self.decoder = codec.Pn532Decoder()
        self.firmware: codec.FirmwareVersion | None = None
        self._pending: asyncio.Future[codec.Frame] | None = None
        self._serial: Any = None
        self._port_error: Exception | None = None
        self._last_answer: float | None = None
        self._silent: bool | None = None  # None until the first verdict
        self._counters.update(timeouts=0, port_errors=0, bad_answers=0)

    def counters(self) -> Mapping[str, int]:
        return {**self._counters, **self.decoder.counters}

    # ------------------------------------------------------------------ cards

    def present(self, uids: list[str]) -> list[IdToken]:
        """Cards found by one poll -> tokens newly presented (also published to tokens() iterators)."""
        presented = []
        now = self._monotonic()
        for uid in uids[:1]:  # one card at a time, as the agent expects
            token = self._card_seen(uid, now)
            if token is not None:
                presented.append(token)
        return presented

    # ------------------------------------------------------------------ task

    async def run(self) -> None:
        backoff = BACKOFF_S[0]
        loop = asyncio.get_running_loop()
        while True:
            try:
                port = serial.Serial(self.port, self.baudrate, timeout=0, write_timeout=0)
            except (serial.SerialException, OSError, ValueError) as exc:
                self._counters["port_errors"] += 1
                self._set_silent(True, f"cannot open {self.port}: {exc}")
                await asyncio.sleep(backoff)
                backoff = min(BACKOFF_S[1], backoff * 2)
                continue
            backoff = BACKOFF_S[0]
            self._serial, self._port_error = port, None
            fd = port.fileno()
            loop.add_reader(fd, self._readable)
            try:
                await self._session()
            except (serial.SerialException, OSError) as exc:
                self._counters["port_errors"] += 1
                self._set_silent(True, f"{self.port}: {exc}")
                await asyncio.sleep(backoff)
            finally:
                loop.remove_reader(fd)
                self._serial = None
                port.close()

    async def _session(self) -> None:
        """Set the reader up, then poll. Each step is retried until the reader answers."""
        self._last_answer = self._monotonic()  # silence is measured from the moment the port opened
        while True:
            self._write(codec.WAKEUP)
            if await self._call(codec.sam_configuration()) and await self._call(codec.limit_passive_retries()):
                break
            await asyncio.sleep(self.poll_interval_s)
        fw = await self._call(codec.get_firmware_version())
        if fw is not None:
            try:
                self.firmware = codec.parse_firmware_version(fw)
                log.info("reader %s: PN5%02X firmware %d.%d", self.name, self.firmware.ic, self.firmware.version,
                         self.firmware.revision)  # fmt: skip
            except codec.MalformedResponse:
                self._counters["bad_answers"] += 1
        while True:
            frame = await self._call(codec.in_list_passive_target())
            if frame is not None:
                try:
                    uids = [t.uid_hex for t in codec.parse_targets(frame)]
                except codec.MalformedResponse as exc:
                    self._counters["bad_answers"] += 1
                    log.debug("reader %s: %s", self.name, exc)
                else:
                    self.present(uids)
            await asyncio.sleep(self.poll_interval_s)

    async def _call(self, frame: bytes) -> codec.Frame | None:
        """Send a command and wait for its ACK and response; None (and maybe READER_SILENT) on timeout."""
        if self._port_error is not None:
            raise self._port_error
        self._pending = asyncio.get_running_loop().create_future()
        self._write(frame)
        try:
            async with asyncio.timeout(self.answer_timeout_s):  # not wait_for: 3.11 can lose a cancel
                answer = await asyncio.shield(self._pending)
        except TimeoutError:
            self._counters["timeouts"] += 1
            self._write(codec.ACK)  # a late response is aborted by an ACK from the host (PN532 manual 6.2.1.3)
            quiet = self._monotonic() - (self._last_answer or 0.0)
            if quiet >= self.silence_timeout_s:
                self._set_silent(True, f"no answer from the reader for {quiet:.1f} s")
            return None
        finally:
            self._pending = None
        self._last_answer = self._monotonic()
        self._set_silent(False, "reader answering")
        return answer

    def _write(self, data: bytes) -> None:
        if self._serial is not None:
            self._serial.write(data)

    def _readable(self) -> None:
        try:
            data = self._serial.read(self._serial.in_waiting or 1)
        except (serial.SerialException, OSError) as exc:
            # Stop watching the fd (it would report readable forever); the session fails on its next step.
            asyncio.get_running_loop().remove_reader(self._serial.fileno())
            self._port_error = exc
            if self._pending is not None and not self._pending.done():
                self._pending.set_exception(exc)
            return
        for item in self.decoder.feed(data):
            # ACKs only confirm receipt; the response decides. A NACK or a stray frame lets the command
            # time out, and it is sent again on the next round.
            if isinstance(item, codec.Frame) and item.tfi == codec.TFI_PN532:
                if self._pending is not None and not self._pending.done():
                    self._pending.set_result(item)

    def _set_silent(self, silent: bool, detail: str) -> None:
        if self._silent is silent:
            return
        was_known = self._silent is not None
        self._silent = silent
        if silent:
            log.warning("reader %s: %s", self.name, detail)
            self.emit(DeviceFaultChanged(Fault.READER_SILENT, True, detail))
        elif was_known:
            log.info("reader %s: answering again", self.name)
            self.emit(DeviceFaultChanged(Fault.READER_SILENT, False, detail))


def create(name: str, settings: Mapping[str, Any]) -> Pn532Reader:
    known = ("port", "baudrate", "poll_interval_s", "silence_timeout_s", "repeat_suppress_s")
    s = DeviceSettings(name, settings, known)
    return Pn532Reader(
        name,
        s.serial_port(),
        baudrate=s.integer("baudrate", 115200, 9600, 1_000_000, noun="an integer baud rate"),
        poll_interval_s=s.seconds("poll_interval_s", 0.25, 0.05, 5.0),
        silence_timeout_s=s.seconds("silence_timeout_s", 2.0, 0.5, 30.0),
        repeat_suppress_s=s.seconds("repeat_suppress_s", 1.0, 0.0, 60.0),
    )
