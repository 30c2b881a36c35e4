"""The pilot/relay board's MCU on a CAN bus, bound to a simulated Plant (docs/can-pilot-board.md).

Same behaviour as the serial emulator (both are simulator/pilot_board_mcu.py's PilotBoardMcu), same codec
as the driver. In one
process use ``interface="virtual"`` with a channel name shared with the driver; across processes run
``python -m simulator.can_pilot_board --interface remote --channel ws://127.0.0.1:PORT/`` against a
python-can-remote server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from typing import Any

import can

from drivers.can.pilot_codec import (
    BoardMessage,
    Direction,
    FrameDecoder,
    KeepAlive,
    encode_frame,
    load_database,
    split_telemetry,
)
from simulator.physics import Plant
from simulator.pilot_board_mcu import PilotBoardMcu

log = logging.getLogger("cpsim.can_pilot_board")


class CanPilotBoardEmulator(PilotBoardMcu):
    port_path: str | None = None  # no pty: the board sits on a CAN bus (same shape as the serial emulators)
    label = "CAN pilot board emulator"
    log = log
    keepalive_type = KeepAlive

    def __init__(
        self,
        plant: Plant,
        *,
        interface: str = "virtual",
        channel: str = "cpsim",
        node_id: int = 0,
        tick_s: float = 0.01,
        status_period_s: float = 0.25,
        keepalive_timeout_s: float = 2.0,
        firmware: tuple[int, int, int] = (1, 0, 0),
        phase_switching: bool = True,
    ) -> None:
        super().__init__(plant, tick_s=tick_s, status_period_s=status_period_s,
                         keepalive_timeout_s=keepalive_timeout_s, firmware=firmware, phase_switching=phase_switching)
        self.interface = interface
        self.channel = channel
        self.node_id = node_id
        self._db = load_database("can pilot board emulator")
        self.decoder = FrameDecoder(self._db, Direction.HOST_TO_BOARD, node_id)
        self._bus: Any = None
        self.keepalive_repeats = 0
        self._last_counter: int | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._bus = can.Bus(interface=self.interface, channel=self.channel, receive_own_messages=False)
        notifier = can.Notifier(self._bus, [self._on_message], timeout=0.05, loop=loop)
        try:
            await self._serve()
        finally:
            notifier.stop(timeout=1.0)
            with contextlib.suppress(Exception):
                self._bus.shutdown()
            self._bus = None

    @property
    def counters(self) -> dict[str, int]:
        return {**self.decoder.counters, "frames_sent": self.frames_sent, "keepalive_repeats": self.keepalive_repeats}

    # ------------------------------------------------------------------------------------ input

    def _on_message(self, msg: can.Message) -> None:
        if not (msg.is_error_frame or msg.is_remote_frame):
            self.feed(msg.arbitration_id, bytes(msg.data), msg.is_extended_id)

    def feed(self, arbitration_id: int, data: bytes, is_extended_id: bool = False) -> None:
        """One frame from the host, as if it arrived on the bus."""
        if self.silent:
            return
        message = self.decoder.decode(arbitration_id, data, is_extended_id)
        if message is not None:
            self._apply(message)

    def _keepalive(self, message: KeepAlive) -> None:
        if message.counter == self._last_counter:
            self.keepalive_repeats += 1  # a stuck transmitter repeating itself proves nothing
        else:
            self._last_counter = message.counter
            super()._keepalive(message)

    # ------------------------------------------------------------------------------------ output

    def _telemetry_messages(self) -> list[BoardMessage]:
        return list(split_telemetry(self.telemetry()))

    def _send(self, message: BoardMessage) -> None:
        if self.silent or self._bus is None:
            return
        self._last_reported[type(message)] = message
        arbitration_id, data = encode_frame(self._db, message, self.node_id)
        self.send_raw(arbitration_id, data)

    def send_raw(self, arbitration_id: int, data: bytes, is_extended_id: bool = False) -> None:
        """Put a frame on the bus towards the host (tests use it to inject corrupt frames)."""
        if self._bus is None:
            return
        try:
            self._bus.send(can.Message(arbitration_id=arbitration_id, data=data, is_extended_id=is_extended_id))
        except can.CanError:
            self.tx_dropped += 1
            return
        self.frames_sent += 1


# ---------------------------------------------------------------------------------------- standalone


async def _main(args: argparse.Namespace) -> None:
    plant = Plant()
    plant.plugged = args.plugged
    board = CanPilotBoardEmulator(plant, interface=args.interface, channel=args.channel, node_id=args.node)
    task = asyncio.create_task(board.run())
    print("ready", flush=True)
    await task


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="CAN pilot board emulator with a simulated EV")
    parser.add_argument("--interface", default="virtual")
    parser.add_argument("--channel", required=True)
    parser.add_argument("--node", type=int, default=0)
    parser.add_argument("--plugged", action="store_true", help="an EV is plugged in from the start")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))


if __name__ == "__main__":
    main()
