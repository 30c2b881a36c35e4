"""Driver of the project's control-pilot/relay board over a serial line (docs/pilot-board-protocol.md).

Reading is event driven (``loop.add_reader`` on the port's fd) and events go synchronously to listeners;
commands are written at once, in the caller's call chain, so CP event -> agent -> ``open_relay()`` never
awaits anything.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from drivers.pilot_board_base import PilotBoardBase
from drivers.serial.pilot_codec import (
    FrameDecoder,
    HostMessage,
    KeepAlive,
    Message,
    Sender,
    Telemetry,
    encode,
)
from drivers.serial.port import NonBlockingPort
from drivers.settings import DeviceSettings
from hal.clock import Clock
from hal.device import DeviceError

log = logging.getLogger("cpagent.drivers.serial.pilot_board")

BOARD_KEEPALIVE_TIMEOUT_S = 2.0  # the board opens the relay after this long without a KeepAlive
BOARD_STATUS_PERIOD_S = 0.25  # the board sends a full status at least this often


class PilotBoard(PilotBoardBase):
    log = log

    def __init__(
        self,
        name: str,
        port: str,
        *,
        baudrate: int = 115200,
        keepalive_interval_s: float = 0.5,
        silence_timeout_s: float = 1.0,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(
            name, keepalive_interval_s=keepalive_interval_s, silence_timeout_s=silence_timeout_s, clock=clock
        )
        self.port = port
        self.baudrate = baudrate
        self._decoder = FrameDecoder(Sender.BOARD)
        self._tx_seq = 0
        self._resync_next_write = False
        self._tx_counters = {"frames_sent": 0, "tx_dropped": 0, "tx_partial": 0, "port_opens": 0}
        self._port = NonBlockingPort(
            port,
            baudrate,
            owner=name,
            on_data=self.receive,
            on_lost=self._port_down,
            counters=self._tx_counters,
            log=log,
        )
        self.telemetry: Telemetry | None = None

    def keep_alive(self) -> None:
        self._send(KeepAlive())

    @property
    def temperature_c(self) -> float | None:
        return None if self.telemetry is None else self.telemetry.temperature_dc / 10

    def counters(self) -> Mapping[str, int]:
        decoder = self._decoder.counters
        return {
            "frames_ok": decoder["frames_ok"],
            "frames_bad": self._decoder.bad_frames,
            "frames_unknown": decoder["unknown_frames"],
            **{key: value for key, value in decoder.items() if key != "frames_ok"},
            **self._tx_counters,
        }

    # ------------------------------------------------------------------------------------ transport

    def _open_transport(self, loop: asyncio.AbstractEventLoop) -> None:
        self._port.open(loop)
        self._resync_next_write = True  # flush whatever half frame the line holds

    def _close_transport(self, loop: asyncio.AbstractEventLoop) -> None:
        self._port.close(loop)

    def _transport_lost(self) -> asyncio.Event | None:
        return self._port.lost

    def _lose_port(self, why: str) -> None:
        self._port.lose(why)

    def _write(self, message: HostMessage) -> None:
        frame = encode(message, seq=self._tx_seq)
        self._tx_seq = (self._tx_seq + 1) & 0xFF
        if self._resync_next_write:
            frame = b"\x00" + frame
        written = self._port.write(frame)
        if written is None:
            return
        # A frame cut short corrupts the next one on the line unless that one starts with a delimiter.
        self._resync_next_write = written < len(frame)
        if written == len(frame):
            self._tx_counters["frames_sent"] += 1
        elif written == 0:
            self._tx_counters["tx_dropped"] += 1
        else:
            self._tx_counters["tx_partial"] += 1

    # ------------------------------------------------------------------------------------ protocol

    def receive(self, data: bytes) -> None:
        """Decode bytes from the board and emit events (the reader callback; usable by unit tests)."""
        messages = self._decoder.feed(data)
        if not messages:
            return
        self._heard()
        for message in messages:
            self._apply(message)

    def _apply(self, message: Message) -> None:
        if self._apply_report(message):
            return
        if isinstance(message, Telemetry):
            self.telemetry = message
        else:  # a host-only message type echoed back: the decoder for board messages never yields one
            self._decoder.counters["unknown_frames"] += 1

    def _on_silent(self, detail: str) -> str:
        if self._decoder.peer_version is not None:
            detail += f"; board speaks protocol version {self._decoder.peer_version}, host speaks 1"
        self._forget_reports()
        self.telemetry = None
        return detail


# ---------------------------------------------------------------------------------------- factory

_KNOWN_SETTINGS = ("port", "baudrate", "keepalive_interval_s", "silence_timeout_s")


def create(name: str, settings: Mapping[str, Any]) -> PilotBoard:
    s = DeviceSettings(name, settings, _KNOWN_SETTINGS)
    port = s.serial_port()
    baudrate = settings.get("baudrate", 115200)
    if isinstance(baudrate, bool) or not isinstance(baudrate, int) or baudrate <= 0:
        raise DeviceError(f"{s.key('baudrate')}: expected a positive integer, got {baudrate!r}")
    # Keep-alives must arrive well inside the board's 2 s watchdog, even if one is lost.
    keepalive = s.seconds("keepalive_interval_s", 0.5, 0.05, 0.9)
    # Above the board's 250 ms status period, and low enough to flag silence within 2 s.
    silence = s.seconds("silence_timeout_s", 1.0, 0.3, 1.5)
    return PilotBoard(name, port, baudrate=baudrate, keepalive_interval_s=keepalive, silence_timeout_s=silence)
