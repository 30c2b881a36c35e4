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
import math
from collections.abc import Mapping
from typing import Any

from agent.clock import Clock, SystemClock, TimerHandle
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
from drivers.serial.pilot_codec import (
    DUTY_F,
    DUTY_X1,
    CpStateReport,
    FaultReport,
    Hello,
    LockReport,
    ProximityReport,
    RelayReport,
    SetDuty,
    SetLock,
    SetRelay,
    StatusRequest,
)
from hal.device import Device, DeviceError
from hal.roles import ConnectorLock, ControlPilot, PowerSwitch
from hal.types import (
    CpState,
    DeviceFaultChanged,
    Fault,
    FaultFlagsChanged,
    HalEvent,
    LockFeedback,
    PilotStateChanged,
    ProximityChanged,
    RelayFeedback,
    Role,
)

log = logging.getLogger(__name__)

DRIVER_NAME = "pilot-board-can"
REOPEN_BACKOFF_S = (0.1, 5.0)


class CanPilotBoard(Device, ControlPilot, PowerSwitch, ConnectorLock):
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
        super().__init__(name)
        if not 0 <= node_id <= MAX_NODE_ID:
            raise DeviceError(f"devices.{name}.node_id: expected 0..{MAX_NODE_ID}, got {node_id!r}")
        self.interface = interface
        self.channel = channel
        self.node_id = node_id
        self.bitrate = bitrate
        self.keepalive_interval_s = keepalive_interval_s
        self.silence_timeout_s = silence_timeout_s
        self._clock = clock
        self._db = load_database(DRIVER_NAME)
        self._decoder = FrameDecoder(self._db, Direction.BOARD_TO_HOST, node_id)
        self._bus: Any = None
        self._bus_lost: asyncio.Event | None = None
        self._keepalive_counter = 0
        self._tx_counters = {"frames_sent": 0, "tx_dropped": 0, "bus_opens": 0}
        self._cp_state: CpState | None = None
        self._proximity: ProximityReport | None = None
        self._relay_closed: bool | None = None
        self._locked: bool | None = None
        self._faults: frozenset[Fault] | None = None
        self.telemetry_levels: TelemetryLevels | None = None
        self.telemetry_status: TelemetryStatus | None = None
        self.board_info: Hello | None = None
        self._desired: dict[type, HostMessage] = {}
        self._silent: bool | None = None
        self._last_rx: float | None = None
        self._silence_timer: TimerHandle | None = None
        self._watching = False

    # ------------------------------------------------------------------------------------ role API

    @property
    def roles(self) -> frozenset[Role]:
        return frozenset({Role.PILOT, Role.POWER_SWITCH, Role.LOCK})

    @property
    def cp_state(self) -> CpState | None:
        return self._cp_state

    @property
    def feedback_closed(self) -> bool | None:
        return self._relay_closed

    @property
    def locked(self) -> bool | None:
        return self._locked

    @property
    def proximity(self) -> ProximityReport | None:
        return self._proximity

    @property
    def active_faults(self) -> frozenset[Fault] | None:
        return self._faults

    def set_duty(self, duty_percent: float) -> None:
        if not (math.isfinite(duty_percent) and 0.0 < duty_percent < 100.0):
            raise ValueError(f"PWM duty must be between 0 and 100 % (exclusive), got {duty_percent}")
        self._send(SetDuty(min(max(round(duty_percent * 100), 1), DUTY_X1 - 1)))

    def set_x1(self) -> None:
        self._send(SetDuty(DUTY_X1))

    def set_f(self) -> None:
        self._send(SetDuty(DUTY_F))

    def keep_alive(self) -> None:
        self._keepalive_counter = (self._keepalive_counter + 1) & 0xFF
        self._send(KeepAlive(self._keepalive_counter))

    def close_relay(self) -> None:
        self._send(SetRelay(close=True))

    def open_relay(self) -> None:
        self._send(SetRelay(close=False))

    def lock(self) -> None:
        self._send(SetLock(lock=True))

    def unlock(self) -> None:
        self._send(SetLock(lock=False))

    def request_status(self) -> None:
        self._send(StatusRequest())

    def counters(self) -> Mapping[str, int]:
        return {**self._decoder.counters, "frames_bad": self._decoder.bad_frames, **self._tx_counters}

    # ------------------------------------------------------------------------------------ transport

    async def run(self) -> None:
        import can  # python-can is a core dependency; imported here so the codec stays I/O free

        loop = asyncio.get_running_loop()
        if self._clock is None:
            self._clock = SystemClock(loop)
        self._start_silence_watch()
        backoff = REOPEN_BACKOFF_S[0]
        try:
            while True:
                self._tx_counters["bus_opens"] += 1
                try:
                    bus = can.Bus(interface=self.interface, channel=self.channel, bitrate=self.bitrate)
                except Exception as exc:  # python-can raises many types (CanError, OSError, ImportError...)
                    self._go_silent(f"cannot open CAN {self.interface}:{self.channel}: {exc}")
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, REOPEN_BACKOFF_S[1])
                    continue
                backoff = REOPEN_BACKOFF_S[0]
                self._bus, self._bus_lost = bus, asyncio.Event()
                notifier = can.Notifier(bus, [_Receiver(self)], timeout=0.05, loop=loop)
                log.info("%s: on CAN %s:%s as node %d", self.name, self.interface, self.channel, self.node_id)
                try:
                    await self._serve()
                finally:
                    self._bus = None
                    notifier.stop(timeout=1.0)
                    bus.shutdown()
        finally:
            self._stop_silence_watch()

    async def _serve(self) -> None:
        assert self._bus_lost is not None
        self.keep_alive()
        for message in list(self._desired.values()):
            self._write(message)
        self.request_status()
        while not self._bus_lost.is_set():
            try:  # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
                async with asyncio.timeout(self.keepalive_interval_s):
                    await self._bus_lost.wait()
            except TimeoutError:
                self.keep_alive()

    def lose_bus(self, why: str) -> None:
        if self._bus_lost is not None:
            self._bus_lost.set()
        self._go_silent(why)

    def _send(self, message: HostMessage) -> None:
        if isinstance(message, SetDuty | SetRelay | SetLock):
            # Re-asserted when the bus (re)opens or the board restarts: a command must not be lost.
            self._desired[type(message)] = message
        self._write(message)

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

    def receive(self, arbitration_id: int, data: bytes, is_extended_id: bool = False) -> None:
        """One frame from the bus (the Notifier's callback; usable by unit tests)."""
        message = self._decoder.decode(arbitration_id, data, is_extended_id)
        if message is None:
            return
        assert self._clock is not None, "receive() before run() needs a clock"
        self._last_rx = self._clock.monotonic()
        if self._silent is not False:
            self._silent = False
            self._emit(DeviceFaultChanged(Fault.BOARD_SILENT, active=False, detail="board answering"))
        self._apply(message)

    def _apply(self, message: Message) -> None:
        if isinstance(message, CpStateReport):
            if message.state != self._cp_state:
                self._cp_state = message.state
                self._emit(PilotStateChanged(message.state))
        elif isinstance(message, RelayReport):
            if message.closed != self._relay_closed:
                self._relay_closed = message.closed
                self._emit(RelayFeedback(message.closed))
        elif isinstance(message, LockReport):
            if message.locked != self._locked:
                self._locked = message.locked
                self._emit(LockFeedback(message.locked))
        elif isinstance(message, FaultReport):
            if message.active != self._faults:
                self._faults = message.active
                self._emit(FaultFlagsChanged(message.active))
        elif isinstance(message, ProximityReport):
            if message != self._proximity:
                self._proximity = message
                ohm, amps = message.resistance_ohm, message.ampacity_a
                self._emit(ProximityChanged(None if ohm is None else float(ohm), None if amps is None else float(amps)))
        elif isinstance(message, TelemetryLevels):
            self.telemetry_levels = message
        elif isinstance(message, TelemetryStatus):
            self.telemetry_status = message
        elif isinstance(message, Hello):
            if self.board_info is not None:
                for command in list(self._desired.values()):  # the board restarted: it forgot our commands
                    self._write(command)
            if message != self.board_info:
                log.info("%s: board firmware %d.%d.%d hw %d", self.name, *_version(message))
            self.board_info = message

    def _emit(self, event: HalEvent) -> None:
        # One listener's bug must not keep the event from the others (the safety path among them).
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("%s: listener %r failed on %r", self.name, listener, event)

    # ------------------------------------------------------------------------------------ silence

    def _start_silence_watch(self) -> None:
        self._watching = True
        self._schedule_silence_check(self.silence_timeout_s)

    def _stop_silence_watch(self) -> None:
        self._watching = False
        if self._silence_timer is not None:
            self._silence_timer.cancel()
            self._silence_timer = None

    def _schedule_silence_check(self, delay: float) -> None:
        assert self._clock is not None
        self._silence_timer = self._clock.call_later(delay, self._check_silence)

    def _check_silence(self) -> None:
        if not self._watching or self._clock is None:
            return
        quiet_for = self.silence_timeout_s if self._last_rx is None else self._clock.monotonic() - self._last_rx
        if quiet_for >= self.silence_timeout_s:
            self._go_silent(f"no valid frame from the board for {quiet_for:.2f} s")
            self._schedule_silence_check(self.silence_timeout_s / 4)
        else:
            self._schedule_silence_check(self.silence_timeout_s - quiet_for)

    def _go_silent(self, detail: str) -> None:
        self._last_rx = None
        if self._silent is True:
            return
        log.warning("%s: %s", self.name, detail)
        self._silent = True
        self._cp_state = self._proximity = self._relay_closed = self._locked = self._faults = None
        self.telemetry_levels = self.telemetry_status = None
        self._emit(DeviceFaultChanged(Fault.BOARD_SILENT, active=True, detail=detail))


def _version(hello: Hello) -> tuple[int, int, int, int]:
    return hello.fw_major, hello.fw_minor, hello.fw_patch, hello.hw_revision


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
    def key(k: str) -> str:
        return f"devices.{name}.{k}"

    for k in settings:
        if k not in _KNOWN_SETTINGS:
            raise DeviceError(f"{key(k)}: unknown setting (known: {', '.join(_KNOWN_SETTINGS)})")

    def text(k: str, default: str) -> str:
        value = settings.get(k, default)
        if not isinstance(value, str) or not value.strip():
            raise DeviceError(f"{key(k)}: expected a non-empty string, got {value!r}")
        return value

    def integer(k: str, default: int, low: int, high: int) -> int:
        value = settings.get(k, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise DeviceError(f"{key(k)}: expected an integer from {low} to {high}, got {value!r}")
        return value

    def seconds(k: str, default: float, low: float, high: float) -> float:
        value = settings.get(k, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise DeviceError(f"{key(k)}: expected a number of seconds from {low} to {high}, got {value!r}")
        return float(value)

    return CanPilotBoard(
        name,
        interface=text("interface", "socketcan"),
        channel=text("channel", "can0"),
        node_id=integer("node_id", 0, 0, MAX_NODE_ID),
        bitrate=integer("bitrate", 250_000, 10_000, 1_000_000),
        # Well inside the board's 2 s watchdog even if one keep-alive is lost.
        keepalive_interval_s=seconds("keepalive_interval_s", 0.5, 0.05, 0.9),
        # Above the board's 250 ms status period, low enough to flag silence within 2 s.
        silence_timeout_s=seconds("silence_timeout_s", 1.0, 0.3, 1.5),
    )
