"""Driver of the project's control-pilot/relay board over CAN (docs/can-pilot-board.md).

Same behaviour as the serial driver (drivers/serial/pilot_board.py): events go synchronously to the
listeners, commands are sent at once in the caller's call chain. Frames arrive through python-can's
``Notifier`` bound to the running loop (a reader on the bus fd where the interface has one, e.g.
socketcan; else its reader thread hands each frame to the loop), so frame -> event -> command frame is
one direct call chain on the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from drivers.board_base import TransportUnavailable
from drivers.can.pilot_codec import (
    MAX_NODE_ID,
    Direction,
    FrameDecoder,
    HostMessage,
    KeepAlive,
    Message,
    TelemetryLevels,
    TelemetryStatus,
    encode_frame,
    load_database,
)
from drivers.pilot_board_base import PilotBoardBase
from drivers.settings import DeviceSettings
from hal.clock import Clock
from hal.device import DeviceError

log = logging.getLogger("cpagent.drivers.can.pilot_board")

DRIVER_NAME = "pilot-board-can"


class CanPilotBoard(PilotBoardBase):
    log = log

    def __init__(
        self,
        name: str,
        *,
        interface: str = "socketcan",
        channel: str = "can0",
        node_id: int = 0,
        bitrate: int = 250_000,
        keepalive_interval_s: float = 0.5,
        silence_timeout_s: float = 1.0,
        clock: Clock | None = None,
    ) -> None:
        if not 0 <= node_id <= MAX_NODE_ID:
            raise DeviceError(f"devices.{name}.node_id: expected 0..{MAX_NODE_ID}, got {node_id!r}")
        super().__init__(
            name, keepalive_interval_s=keepalive_interval_s, silence_timeout_s=silence_timeout_s, clock=clock
        )
        self.interface = interface
        self.channel = channel
        self.node_id = node_id
        self.bitrate = bitrate
        self._db = load_database(DRIVER_NAME)
        self._decoder = FrameDecoder(self._db, Direction.BOARD_TO_HOST, node_id)
        self._bus: Any = None
        self._notifier: Any = None
        self._bus_lost: asyncio.Event | None = None
        self._keepalive_counter = 0
        self._tx_counters = {"frames_sent": 0, "tx_dropped": 0, "bus_opens": 0}
        self.telemetry_levels: TelemetryLevels | None = None
        self.telemetry_status: TelemetryStatus | None = None

    def keep_alive(self) -> None:
        self._keepalive_counter = (self._keepalive_counter + 1) & 0xFF
        self._send(KeepAlive(self._keepalive_counter))

    def counters(self) -> Mapping[str, int]:
        return {**self._decoder.counters, "frames_bad": self._decoder.bad_frames, **self._tx_counters}

    # ------------------------------------------------------------------------------------ transport

    def _open_transport(self, loop: asyncio.AbstractEventLoop) -> None:
        import can  # python-can is a core dependency; imported here so the codec stays I/O free

        self._tx_counters["bus_opens"] += 1
        try:
            bus = can.Bus(interface=self.interface, channel=self.channel, bitrate=self.bitrate)
        except Exception as exc:  # python-can raises many types (CanError, OSError, ImportError...)
            raise TransportUnavailable(f"cannot open CAN {self.interface}:{self.channel}: {exc}") from exc
        self._bus, self._bus_lost = bus, asyncio.Event()
        self._notifier = can.Notifier(bus, [_Receiver(self)], timeout=0.05, loop=loop)
        log.info("%s: on CAN %s:%s as node %d", self.name, self.interface, self.channel, self.node_id)

    def _close_transport(self, loop: asyncio.AbstractEventLoop) -> None:
        bus, notifier = self._bus, self._notifier
        self._bus = self._notifier = None
        notifier.stop(timeout=1.0)
        bus.shutdown()

    def _open_failed(self, why: str) -> None:
        self._go_silent(why)  # which logs it

    def _transport_lost(self) -> asyncio.Event | None:
        return self._bus_lost

    def lose_bus(self, why: str) -> None:
        if self._bus_lost is not None:
            self._bus_lost.set()
        self._go_silent(why)

    def _write(self, message: HostMessage) -> None:
        import can

        if self._bus is None:
            self._tx_counters["tx_dropped"] += 1
            return
        arbitration_id, data = encode_frame(self._db, message, self.node_id)
        try:
            self._bus.send(can.Message(arbitration_id=arbitration_id, data=data, is_extended_id=False), timeout=0)
        except can.CanError as exc:
            # A full TX queue or bus-off: the frame is lost; the next keep-alive or report decides.
            self._tx_counters["tx_dropped"] += 1
            log.debug("%s: send failed: %s", self.name, exc)
            return
        self._tx_counters["frames_sent"] += 1

    # ------------------------------------------------------------------------------------ protocol

    @property
    def temperature_c(self) -> float | None:
        levels = self.telemetry_levels
        return None if levels is None else levels.temperature_dc / 10

    def receive(self, arbitration_id: int, data: bytes, is_extended_id: bool = False) -> None:
        """One frame from the bus (the Notifier's callback; usable by unit tests)."""
        message = self._decoder.decode(arbitration_id, data, is_extended_id)
        if message is None:
            return
        self._heard()
        self._apply(message)

    def _apply(self, message: Message) -> None:
        if self._apply_report(message):
            return
        if isinstance(message, TelemetryLevels):
            self.telemetry_levels = message
        elif isinstance(message, TelemetryStatus):
            self.telemetry_status = message

    def _on_silent(self, detail: str) -> str:
        log.warning("%s: %s", self.name, detail)
        self._forget_reports()
        self.telemetry_levels = self.telemetry_status = None
        return detail


class _Receiver:
    """python-can listener; the Notifier calls it on the event loop (it was given the loop)."""

    def __init__(self, board: CanPilotBoard) -> None:
        self._board = board

    def __call__(self, msg: Any) -> None:
        if msg.is_error_frame or msg.is_remote_frame:
            return
        self._board.receive(msg.arbitration_id, bytes(msg.data), msg.is_extended_id)

    def on_error(self, exc: Exception) -> None:
        self._board.lose_bus(f"CAN receive failed: {exc}")


# ---------------------------------------------------------------------------------------- factory

_KNOWN_SETTINGS = ("interface", "channel", "node_id", "bitrate", "keepalive_interval_s", "silence_timeout_s")


def create(name: str, settings: Mapping[str, Any]) -> CanPilotBoard:
    s = DeviceSettings(name, settings, _KNOWN_SETTINGS)
    return CanPilotBoard(
        name,
        interface=s.text("interface", "socketcan"),
        channel=s.text("channel", "can0"),
        node_id=s.integer("node_id", 0, 0, MAX_NODE_ID),
        bitrate=s.integer("bitrate", 250_000, 10_000, 1_000_000),
        # Well inside the board's 2 s watchdog even if one keep-alive is lost.
        keepalive_interval_s=s.seconds("keepalive_interval_s", 0.5, 0.05, 0.9),
        # Above the board's 250 ms status period, low enough to flag silence within 2 s.
        silence_timeout_s=s.seconds("silence_timeout_s", 1.0, 0.3, 1.5),
    )
