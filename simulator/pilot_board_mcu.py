"""The pilot/relay board's firmware, whatever carries its messages: one behaviour for the serial emulator
(simulator/pilot_board.py, a pty) and the CAN one (simulator/can_pilot_board.py, a python-can bus).

It obeys the host's commands on a simulated Plant (PWM duty, relay while the host's keep-alives come, lock,
1p/3p phase contactor only with the relay open, reset), opens the relay and drives F when the keep-alives
stop, and reports: every state message whose content changed, and its complete status every
``status_period_s``. A subclass gives the transport: ``_send`` (one message out), its telemetry messages
(serial: one Telemetry; CAN: split over two frames) and the decoder of the host's messages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable
from typing import Any, ClassVar

from drivers.serial.pilot_codec import (
    DUTY_F,
    DUTY_X1,
    CpStateReport,
    FaultReport,
    Hello,
    KeepAlive,
    LockReport,
    PhaseReport,
    ProximityReport,
    RelayReport,
    Reset,
    SetDuty,
    SetLock,
    SetPhases,
    SetRelay,
    StatusRequest,
    Telemetry,
    pp_ampacity,
)
from hal.types import Fault
from simulator.physics import Plant

# Faults the plant can carry that the board's own sensors would see.
SENSED_FAULTS = frozenset({Fault.RCD, Fault.OVERTEMP, Fault.GROUND, Fault.UNDERVOLTAGE, Fault.OVERVOLTAGE, Fault.LOCK})
CP_HIGH_MV = {"A": 12_000, "B": 9_000, "C": 6_000, "D": 3_000, "E": 0, "F": -12_000}


class PilotBoardMcu(ABC):
    """The board's behaviour; subclasses set ``decoder`` (with ``counters`` and ``bad_frames``) and ``log``."""

    label: ClassVar[str] = "pilot board emulator"  # how the log names this board
    log: ClassVar[logging.Logger]
    keepalive_type: ClassVar[type] = KeepAlive  # the transport's KeepAlive (CAN's carries a counter)
    decoder: Any

    def __init__(
        self,
        plant: Plant,
        *,
        tick_s: float,
        status_period_s: float,
        keepalive_timeout_s: float,
        firmware: tuple[int, int, int],
        phase_switching: bool,
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
        self.frames_sent = 0
        self.tx_dropped = 0
        self._now = 0.0
        self._last_keepalive: float | None = None
        self.keepalive_lapsed = True  # until the first KeepAlive: relay close is refused
        self._last_status: float | None = None
        self._last_reported: dict[type, Any] = {}

    # ------------------------------------------------------------------------------------ transport

    @abstractmethod
    def _send(self, message: Any) -> None:
        """One board message towards the host (subclasses record it in ``_last_reported`` once sent)."""
        raise NotImplementedError

    @abstractmethod
    def _telemetry_messages(self) -> list[Any]:
        """The telemetry part of the status, as this transport carries it (never reported on change)."""
        raise NotImplementedError

    async def _serve(self) -> None:
        """Boot (Hello), then advance the board every ``tick_s`` until cancelled."""
        loop = asyncio.get_running_loop()
        self._now = loop.time()
        self.plant.step(self._now)
        self._send(self._hello())
        while True:
            self.tick(loop.time())
            await asyncio.sleep(self.tick_s)

    # ------------------------------------------------------------------------------------ input

    def _keepalive(self, message: Any) -> None:
        self._last_keepalive = self._now
        self.keepalive_lapsed = False

    def _apply(self, message: Any) -> None:
        plant = self.plant
        if isinstance(message, self.keepalive_type):
            self._keepalive(message)
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
            self.log.warning("%s: SetPhases(%d) refused, relay closed", self.label, phases)
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
            self.log.warning("%s: host keep-alive lost, opening relay and driving F", self.label)
            self.keepalive_lapsed = True
            self.plant.relay_commanded_closed = False
            self.plant.pwm_duty = 0.0
        self._report_changes()
        if self._last_status is None or now - self._last_status >= self.status_period_s:
            self._send_status()

    def state_reports(self) -> list[Any]:
        """The board's state messages as it would report them now (its status without the telemetry)."""
        plant = self.plant
        faults = set(plant.faults & SENSED_FAULTS)
        if plant.pwm_duty and not plant.diode_ok():
            faults.add(Fault.DIODE)
        if plant.lock_commanded and plant.lock_jammed:
            faults.add(Fault.LOCK)
        ohm = plant.pp_resistance_ohm
        reports: list[Any] = [
            CpStateReport(plant.cp_state()),
            ProximityReport(None if ohm is None else round(ohm), pp_ampacity(ohm)),
            RelayReport(closed=plant.relay_closed, commanded=plant.relay_commanded_closed),
            LockReport(locked=plant.locked, commanded=plant.lock_commanded),
            FaultReport(frozenset(faults)),
        ]
        if self.phase_switching:
            reports.append(PhaseReport(plant.supply_phases, self.phases_commanded))
        return reports

    def telemetry(self) -> Telemetry:
        """Pilot levels, temperature, supply, applied duty and receive counters, as the board measures them."""
        plant = self.plant
        high = CP_HIGH_MV[plant.cp_state().letter]
        if not plant.pwm_duty:
            low = high
        elif plant.diode_ok():
            low = -12_000
        else:
            low = -high  # no diode: the negative half mirrors the positive one
        duty = plant.pwm_duty
        return Telemetry(
            cp_high_mv=high,
            cp_low_mv=low,
            temperature_dc=850 if Fault.OVERTEMP in plant.faults else 250,
            supply_dv=round(plant.voltage_v * 10),
            duty=DUTY_X1 if duty is None else round(duty * 100),
            keepalive_lapsed=self.keepalive_lapsed,
            rx_bad_frames=self.decoder.bad_frames,
            rx_unknown_frames=self.decoder.counters["unknown_frames"],
        )

    def status(self) -> list[Any]:
        """The board's complete status as it would report it now."""
        return [*self.state_reports(), *self._telemetry_messages()]

    def _report_changes(self) -> None:
        """Send every state message whose content changed since it was last sent (not telemetry)."""
        changed = [m for m in self.state_reports() if self._last_reported.get(type(m)) != m]
        self._send_all(changed)

    def _send_status(self) -> None:
        self._last_status = self._now
        self._send_all(self.status())

    def _send_all(self, messages: Iterable[Any]) -> None:
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
