"""The pilot/relay board's MCU, emulated at the byte level on a pty and bound to a simulated Plant.

It speaks docs/pilot-board-protocol.md through the same codec as the driver; the board's behaviour is
simulator/pilot_board_mcu.py's (shared with the CAN emulator). The agent opens
``port_path`` exactly as it would open the real board's UART.
"""

from __future__ import annotations

import asyncio
import logging

from drivers.serial.pilot_codec import BoardMessage, FrameDecoder, Sender, encode
from simulator.physics import Plant
from simulator.pilot_board_mcu import PilotBoardMcu
from simulator.pty import PtyWire, RawPty

log = logging.getLogger("cpsim.pilot_board")


class PilotBoardEmulator(PilotBoardMcu, PtyWire):
    log = log

    def __init__(
        self,
        plant: Plant,
        *,
        tick_s: float = 0.01,
        status_period_s: float = 0.25,
        keepalive_timeout_s: float = 2.0,
        firmware: tuple[int, int, int] = (1, 0, 0),
        phase_switching: bool = True,
    ) -> None:
        super().__init__(plant, tick_s=tick_s, status_period_s=status_period_s,
                         keepalive_timeout_s=keepalive_timeout_s, firmware=firmware, phase_switching=phase_switching)
        self.decoder = FrameDecoder(Sender.HOST)
        self._pty = RawPty()
        self._slave = self._pty.slave  # the host end, for tests that talk to the emulator directly
        self.port_path = self._pty.path
        self._tx_seq = 0
        self._last_mismatch_hello: float | None = None

    # ------------------------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        self._pty.watch(asyncio.get_running_loop(), self._on_readable)
        self._last_keepalive = None
        try:
            await self._serve()
        finally:
            self._pty.unwatch()

    @property
    def counters(self) -> dict[str, int]:
        return {**self.decoder.counters, "bad_frames": self.decoder.bad_frames, "frames_sent": self.frames_sent}

    # ------------------------------------------------------------------------------------ input

    def feed(self, data: bytes) -> None:
        """Bytes from the host, as if they arrived on the UART."""
        if self.silent:
            return
        mismatches = self.decoder.counters["version_mismatch"]
        for message in self.decoder.feed(data):
            self._apply(message)
        if self.decoder.counters["version_mismatch"] > mismatches and (
            self._last_mismatch_hello is None or self._now - self._last_mismatch_hello >= 1.0
        ):
            # Tell a host of another protocol version who we are (Hello's layout never changes).
            self._last_mismatch_hello = self._now
            self._send(self._hello())

    # ------------------------------------------------------------------------------------ output

    def _telemetry_messages(self) -> list[BoardMessage]:
        return [self.telemetry()]

    def _send(self, message: BoardMessage) -> None:
        if self.silent or self._pty.closed:
            return
        self._last_reported[type(message)] = message
        self.write_raw(encode(message, seq=self._tx_seq))
        self._tx_seq = (self._tx_seq + 1) & 0xFF
        self.frames_sent += 1
