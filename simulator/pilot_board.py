"""The pilot/relay board's MCU, emulated at the byte level on a pty and bound to a simulated Plant.

It speaks docs/pilot-board-protocol.md through the same codec as the driver. The agent opens
``port_path`` exactly as it would open the real board's UART.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable

from drivers.serial.pilot_codec import (
    DUTY_F,
    DUTY_X1,
    BoardMessage,
    CpStateReport,
    FaultReport,
    FrameDecoder,
    Hello,
    KeepAlive,
    LockReport,
    Message,
    PhaseReport,
    ProximityReport,
    RelayReport,
    Reset,
    Sender,
    SetDuty,
    SetLock,
    SetPhases,
    SetRelay,
    StatusRequest,
    Telemetry,
    encode,
    pp_ampacity,
)
from hal.types import CpState, Fault
from simulator.physics import Plant
from simulator.pty import RawPty

log = logging.getLogger("cpsim.pilot_board")

# Faults the plant can carry that the board's own sensors would see.
_SENSED_FAULTS = frozenset({Fault.RCD, Fault.OVERTEMP, Fault.GROUND, Fault.UNDERVOLTAGE, Fault.OVERVOLTAGE, Fault.LOCK})
_CP_HIGH_MV = {"A": 12_000, "B": 9_000, "C": 6_000, "D": 3_000, "E": 0, "F": -12_000}


class PilotBoardEmulator:
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
        self.plant = plant
        self.phase_switching = phase_switching  # the board has a 1p/3p phase contactor
        self.phases_commanded = plant.supply_phases
        self.phase_commands_refused = 0  # SetPhases while the relay was closed
        self.duty_changes: deque[float] = deque(maxlen=1000)  # monotonic times of PWM duty changes, as received
        self.tick_s = tick_s
        self.status_period_s = status_period_s
        self.keepalive_timeout_s = keepalive_timeout_s
        self.firmware = firmware
        self.silent = False  # fault injection "board-silent": sends nothing, ignores all input
        self.decoder = FrameDecoder(Sender.HOST)
        self._pty = RawPty()
        self._slave = self._pty.slave  # the host end, for tests that talk to the emulator directly
        self.port_path = self._pty.path
        self._tx_seq = 0
        self.frames_sent = 0
        self.tx_dropped = 0
        self._now = 0.0
        self._last_keepalive: float | None = None
        self.keepalive_lapsed = True  # until the first KeepAlive: relay close is refused
        self._last_status: float | None = None
        self._last_reported: dict[type, BoardMessage] = {}
        self._last_mismatch_hello: float | None = None

    # ------------------------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._pty.watch(loop, self._on_readable)
        self._now = loop.time()
        self.plant.step(self._now)
        self._send(self._hello())
        self._last_keepalive = None
        try:
            while True:
                self.tick(loop.time())
                await asyncio.sleep(self.tick_s)
        finally:
            self._pty.unwatch()

    def close(self) -> None:
        """Close the pty: the driver then sees its port fail."""
        self._pty.close()

    @property
    def counters(self) -> dict[str, int]:
        return {**self.decoder.counters, "bad_frames": self.decoder.bad_frames, "frames_sent": self.frames_sent}

    # ------------------------------------------------------------------------------------ input

    def _on_readable(self) -> None:
        data = self._pty.read()
        if data is not None:
            self.feed(data)

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

    def _apply(self, message: Message) -> None:
        plant = self.plant
        if isinstance(message, KeepAlive):
            self._last_keepalive = self._now
            self.keepalive_lapsed = False
        elif isinstance(message, SetDuty):
            before = plant.pwm_duty
            if message.duty == DUTY_X1:
                plant.pwm_duty = None
            elif message.duty == DUTY_F:
                plant.pwm_duty = 0.0
            else:
                plant.pwm_duty = message.duty / 100.0
            if before and plant.pwm_duty and before != plant.pwm_duty:  # a new offer under PWM (not start/stop)
                self.duty_changes.append(time.monotonic())
        elif isinstance(message, SetRelay):
            # While the host is not proven alive the board keeps the relay open.
            plant.relay_commanded_closed = message.close and not self.keepalive_lapsed
        elif isinstance(message, SetLock):
            plant.lock_commanded = message.lock
        elif isinstance(message, StatusRequest):
            self._send(self._hello())
            self._send_status()
        elif isinstance(message, SetPhases):
            self._set_phases(message.phases)
        elif isinstance(message, Reset):
            self._boot()
        self._report_changes()

    def _set_phases(self, phases: int) -> None:
        if not self.phase_switching:
            self.decoder.counters["unknown_frames"] += 1  # a board without a phase contactor does not know it
            return
        if self.plant.relay_commanded_closed or self.plant.relay_closed:
            # Never under load: the phase contactor moves only while the main contactor is open.
            self.phase_commands_refused += 1
            log.warning("pilot board emulator: SetPhases(%d) refused, relay closed", phases)
            return
        self.phases_commanded = phases
        self.plant.set_supply_phases(phases)

    def _boot(self) -> None:
        self.plant.relay_commanded_closed = False
        self.plant.pwm_duty = None
        self.keepalive_lapsed = True
        self._last_keepalive = None
        if self.phase_switching:  # the phase contactor's rest position
            self.phases_commanded = 3
            self.plant.set_supply_phases(3)
        self._last_reported.clear()
        self._send(self._hello())
        self._send_status()

    # ------------------------------------------------------------------------------------ output

    def tick(self, now: float) -> None:
        """Advance the plant and the board's timers to ``now`` (loop time)."""
        self._now = now
        self.plant.step(now)
        if (
            not self.keepalive_lapsed
            and self._last_keepalive is not None
            and now - self._last_keepalive >= self.keepalive_timeout_s
        ):
            log.warning("pilot board emulator: host keep-alive lost, opening relay and driving F")
            self.keepalive_lapsed = True
            self.plant.relay_commanded_closed = False
            self.plant.pwm_duty = 0.0
        self._report_changes()
        if self._last_status is None or now - self._last_status >= self.status_period_s:
            self._send_status()

    def status(self) -> list[BoardMessage]:
        """The board's complete status as it would report it now."""
        plant = self.plant
        pwm_on = bool(plant.pwm_duty)
        faults = set(plant.faults & _SENSED_FAULTS)
        if pwm_on and not plant.diode_ok():
            faults.add(Fault.DIODE)
        if plant.lock_commanded and plant.lock_jammed:
            faults.add(Fault.LOCK)
        ohm = plant.pp_resistance_ohm
        state = plant.cp_state()
        reports: list[BoardMessage] = [
            CpStateReport(state),
            ProximityReport(None if ohm is None else round(ohm), pp_ampacity(ohm)),
            RelayReport(closed=plant.relay_closed, commanded=plant.relay_commanded_closed),
            LockReport(locked=plant.locked, commanded=plant.lock_commanded),
            FaultReport(frozenset(faults)),
        ]
        if self.phase_switching:
            reports.append(PhaseReport(plant.supply_phases, self.phases_commanded))
        return [*reports, self._telemetry(state, pwm_on)]

    def _telemetry(self, state: CpState, pwm_on: bool) -> Telemetry:
        high = _CP_HIGH_MV[state.letter]
        if not pwm_on:
            low = high
        elif self.plant.diode_ok():
            low = -12_000
        else:
            low = -high  # no diode: the negative half mirrors the positive one
        duty = self.plant.pwm_duty
        return Telemetry(
            cp_high_mv=high,
            cp_low_mv=low,
            temperature_dc=850 if Fault.OVERTEMP in self.plant.faults else 250,
            supply_dv=round(self.plant.voltage_v * 10),
            duty=DUTY_X1 if duty is None else round(duty * 100),
            keepalive_lapsed=self.keepalive_lapsed,
            rx_bad_frames=self.decoder.bad_frames,
            rx_unknown_frames=self.decoder.counters["unknown_frames"],
        )

    def _report_changes(self) -> None:
        """Send every state message whose content changed since it was last sent (not telemetry)."""
        changed = [m for m in self.status()[:-1] if self._last_reported.get(type(m)) != m]
        self._send_all(changed)

    def _send_status(self) -> None:
        self._last_status = self._now
        self._send_all(self.status())

    def _send_all(self, messages: Iterable[BoardMessage]) -> None:
        for message in messages:
            self._send(message)

    def _hello(self) -> Hello:
        major, minor, patch = self.firmware
        return Hello(
            fw_major=major,
            fw_minor=minor,
            fw_patch=patch,
            hw_revision=1,
            keepalive_timeout_ms=round(self.keepalive_timeout_s * 1000),
            status_period_ms=round(self.status_period_s * 1000),
        )

    def _send(self, message: BoardMessage) -> None:
        if self.silent or self._pty.closed:
            return
        self._last_reported[type(message)] = message
        self.write_raw(encode(message, seq=self._tx_seq))
        self._tx_seq = (self._tx_seq + 1) & 0xFF
        self.frames_sent += 1

    def write_raw(self, data: bytes) -> None:
        """Put bytes on the wire towards the host (tests use it to inject corruption)."""
        try:
            self._pty.write(data)
        except OSError:
            # Nobody is reading (agent not running): the pty buffer is full; a real UART drops too.
            self.tx_dropped += 1
