"""Driver of the project's control-pilot/relay board over a serial line (docs/pilot-board-protocol.md).

Reading is event driven (``loop.add_reader`` on the port's fd) and events go synchronously to listeners;
commands are written at once, in the caller's call chain, so CP event -> agent -> ``open_relay()`` never
awaits anything.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import serial

from agent.clock import Clock, SystemClock, TimerHandle
from drivers.serial.pilot_codec import (
    DUTY_F,
    DUTY_X1,
    CpStateReport,
    FaultReport,
    FrameDecoder,
    Hello,
    HostMessage,
    KeepAlive,
    LockReport,
    Message,
    ProximityReport,
    RelayReport,
    Sender,
    SetDuty,
    SetLock,
    SetRelay,
    StatusRequest,
    Telemetry,
    encode,
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

BOARD_KEEPALIVE_TIMEOUT_S = 2.0  # the board opens the relay after this long without a KeepAlive
BOARD_STATUS_PERIOD_S = 0.25  # the board sends a full status at least this often
REOPEN_BACKOFF_S = (0.1, 5.0)  # first and longest wait between attempts to reopen the port


class PilotBoard(Device, ControlPilot, PowerSwitch, ConnectorLock):
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
        super().__init__(name)
        self.port = port
        self.baudrate = baudrate
        self.keepalive_interval_s = keepalive_interval_s
        self.silence_timeout_s = silence_timeout_s
        self._clock = clock
        self._decoder = FrameDecoder(Sender.BOARD)
        self._serial: Any = None
        self._fd: int | None = None
        self._port_lost: asyncio.Event | None = None
        self._tx_seq = 0
        self._resync_next_write = False
        self._tx_counters = {"frames_sent": 0, "tx_dropped": 0, "tx_partial": 0, "port_opens": 0}
        # Board state as last reported; None = unknown (never heard, or the board went silent).
        self._cp_state: CpState | None = None
        self._proximity: ProximityReport | None = None
        self._relay_closed: bool | None = None
        self._locked: bool | None = None
        self._faults: frozenset[Fault] | None = None
        self.telemetry: Telemetry | None = None
        self.board_info: Hello | None = None
        self._desired: dict[type, HostMessage] = {}
        # Silence watch: None = never reported yet; True/False = last reported BOARD_SILENT state.
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
        duty = min(max(round(duty_percent * 100), 1), DUTY_X1 - 1)
        self._send(SetDuty(duty))

    def set_x1(self) -> None:
        self._send(SetDuty(DUTY_X1))

    def set_f(self) -> None:
        self._send(SetDuty(DUTY_F))

    def keep_alive(self) -> None:
        self._send(KeepAlive())

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
        decoder = self._decoder.counters
        return {
            "frames_ok": decoder["frames_ok"],
            "frames_bad": self._decoder.bad_frames,
            "frames_unknown": decoder["unknown_frames"],
            **{key: value for key, value in decoder.items() if key != "frames_ok"},
            **self._tx_counters,
        }

    # ------------------------------------------------------------------------------------ transport

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        if self._clock is None:
            self._clock = SystemClock(loop)
        self._start_silence_watch()
        backoff = REOPEN_BACKOFF_S[0]
        try:
            while True:
                try:
                    self._open(loop)
                except (serial.SerialException, OSError, ValueError) as exc:
                    self._port_down(f"cannot open {self.port}: {exc}")
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, REOPEN_BACKOFF_S[1])
                    continue
                backoff = REOPEN_BACKOFF_S[0]
                try:
                    await self._serve()
                finally:
                    self._close(loop)
        finally:
            self._stop_silence_watch()

    def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        self._tx_counters["port_opens"] += 1
        port = serial.serial_for_url(self.port, baudrate=self.baudrate, timeout=0, write_timeout=0)
        try:
            fd = port.fileno()
        except (AttributeError, NotImplementedError, serial.SerialException) as exc:
            port.close()
            raise ValueError(f"port {self.port!r} has no file descriptor to wait on") from exc
        self._serial, self._fd = port, fd
        self._port_lost = asyncio.Event()
        self._resync_next_write = True  # flush whatever half frame the line holds
        loop.add_reader(fd, self._on_readable)
        log.info("%s: opened %s", self.name, self.port)

    def _close(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._fd is not None:
            loop.remove_reader(self._fd)
        if self._serial is not None:
            try:
                self._serial.close()
            except (serial.SerialException, OSError):
                pass
        self._serial = self._fd = None

    async def _serve(self) -> None:
        assert self._port_lost is not None
        self.keep_alive()
        self._reassert()
        self.request_status()
        while not self._port_lost.is_set():
            try:  # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
                async with asyncio.timeout(self.keepalive_interval_s):
                    await self._port_lost.wait()
            except TimeoutError:
                self.keep_alive()

    def _on_readable(self) -> None:
        if self._fd is None:
            return
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lose_port(f"read from {self.port} failed: {exc}")
            return
        if not data:
            self._lose_port(f"{self.port} reached end of file")
            return
        self.receive(data)

    def _lose_port(self, why: str) -> None:
        if self._fd is not None:
            asyncio.get_running_loop().remove_reader(self._fd)
            self._fd = None
        if self._port_lost is not None:
            self._port_lost.set()
        self._port_down(why)

    def _port_down(self, why: str) -> None:
        # Without a port nothing the board says can reach us: treat it like silence at once.
        if self._silent is not True:
            log.warning("%s: %s", self.name, why)
        self._go_silent(why)

    def _send(self, message: HostMessage) -> None:
        if isinstance(message, SetDuty | SetRelay | SetLock):
            # Remember what the agent wants, to re-assert it when the port (re)opens or the board resets:
            # a command given while the port was down must not be lost (e.g. relay open at start-up).
            self._desired[type(message)] = message
        self._write(message)

    def _reassert(self) -> None:
        for message in list(self._desired.values()):
            self._write(message)

    def _write(self, message: HostMessage) -> None:
        frame = encode(message, seq=self._tx_seq)
        self._tx_seq = (self._tx_seq + 1) & 0xFF
        if self._fd is None:
            self._tx_counters["tx_dropped"] += 1
            return
        if self._resync_next_write:
            frame = b"\x00" + frame
        try:
            written = os.write(self._fd, frame)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            self._tx_counters["tx_dropped"] += 1
            self._lose_port(f"write to {self.port} failed: {exc}")
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
        assert self._clock is not None, "receive() before run() needs a clock"
        self._last_rx = self._clock.monotonic()
        if self._silent is not False:
            self._silent = False
            self._emit(DeviceFaultChanged(Fault.BOARD_SILENT, active=False, detail="board answering"))
        for message in messages:
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
        elif isinstance(message, Telemetry):
            self.telemetry = message
        elif isinstance(message, Hello):
            if self.board_info is not None:
                self._reassert()  # the board restarted (it says hello again): it forgot our commands
            if message != self.board_info:
                log.info(
                    "%s: board firmware %d.%d.%d hw %d",
                    self.name,
                    message.fw_major,
                    message.fw_minor,
                    message.fw_patch,
                    message.hw_revision,
                )
            self.board_info = message
        else:  # a host-only message type echoed back: the decoder for board messages never yields one
            self._decoder.counters["unknown_frames"] += 1

    def _emit(self, event: HalEvent) -> None:
        # Each listener on its own: one listener's bug must not keep the event from the others (the
        # safety path among them), nor stop the remaining events of this read or the reader itself.
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("%s: listener %r failed on %r", self.name, listener, event)

    # ------------------------------------------------------------------------------------ silence

    def _start_silence_watch(self) -> None:
        assert self._clock is not None
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
        now = self._clock.monotonic()
        quiet_for = self.silence_timeout_s if self._last_rx is None else now - self._last_rx
        if quiet_for >= self.silence_timeout_s:
            self._go_silent(f"no valid frame from the board for {quiet_for:.2f} s")
            # Check again one period after it starts talking (or keep checking cheaply meanwhile).
            self._schedule_silence_check(self.silence_timeout_s / 4)
        else:
            self._schedule_silence_check(self.silence_timeout_s - quiet_for)

    def _go_silent(self, detail: str) -> None:
        self._last_rx = None
        if self._silent is True:
            return
        if self._decoder.peer_version is not None:
            detail += f"; board speaks protocol version {self._decoder.peer_version}, host speaks 1"
        self._silent = True
        self._cp_state = None
        self._proximity = None
        self._relay_closed = None
        self._locked = None
        self._faults = None
        self.telemetry = None
        self._emit(DeviceFaultChanged(Fault.BOARD_SILENT, active=True, detail=detail))


# ---------------------------------------------------------------------------------------- factory

_KNOWN_SETTINGS = ("port", "baudrate", "keepalive_interval_s", "silence_timeout_s")


def create(name: str, settings: Mapping[str, Any]) -> PilotBoard:
    def key(k: str) -> str:
        return f"devices.{name}.{k}"

    for k in settings:
        if k not in _KNOWN_SETTINGS:
            raise DeviceError(f"{key(k)}: unknown setting (known: {', '.join(_KNOWN_SETTINGS)})")
    port = settings.get("port")
    if not isinstance(port, str) or not port.strip():
        raise DeviceError(f"{key('port')}: expected a serial device path or pyserial URL (required)")
    baudrate = settings.get("baudrate", 115200)
    if isinstance(baudrate, bool) or not isinstance(baudrate, int) or baudrate <= 0:
        raise DeviceError(f"{key('baudrate')}: expected a positive integer, got {baudrate!r}")

    def seconds(k: str, default: float, low: float, high: float) -> float:
        value = settings.get(k, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise DeviceError(f"{key(k)}: expected a number of seconds from {low} to {high}, got {value!r}")
        return float(value)

    # Keep-alives must arrive well inside the board's 2 s watchdog, even if one is lost.
    keepalive = seconds("keepalive_interval_s", 0.5, 0.05, 0.9)
    # Above the board's 250 ms status period, and low enough to flag silence within 2 s.
    silence = seconds("silence_timeout_s", 1.0, 0.3, 1.5)
    return PilotBoard(name, port, baudrate=baudrate, keepalive_interval_s=keepalive, silence_timeout_s=silence)
