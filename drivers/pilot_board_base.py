"""The project's control-pilot/relay/lock board, whatever carries its messages (serial line or CAN).

Role API, events on change, the commands the agent wants (re-asserted when the transport (re)opens or the
board restarts) and the keep-alive serve loop. Commands are written at once, in the caller's call chain, so
CP event -> agent -> ``open_relay()`` never awaits anything. Subclasses give ``keep_alive``, ``_write``
(one message out), ``_transport_lost`` and the transport (see drivers/board_base.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from drivers.board_base import BoardDevice
from drivers.serial.pilot_codec import (
    DUTY_F,
    DUTY_X1,
    CpStateReport,
    FaultReport,
    Hello,
    LockReport,
    PhaseReport,
    ProximityReport,
    RelayReport,
    SetDuty,
    SetLock,
    SetPhases,
    SetRelay,
    StatusRequest,
)
from hal.clock import Clock
from hal.roles import ConnectorLock, ControlPilot, PhaseSwitch, PowerSwitch, check_duty
from hal.types import (
    CpState,
    Fault,
    FaultFlagsChanged,
    LockFeedback,
    PilotStateChanged,
    ProximityChanged,
    RelayFeedback,
    Role,
)


class PilotBoardBase(BoardDevice, ControlPilot, PowerSwitch, ConnectorLock, PhaseSwitch):
    def __init__(
        self, name: str, *, keepalive_interval_s: float, silence_timeout_s: float, clock: Clock | None
    ) -> None:
        super().__init__(name, silence_timeout_s=silence_timeout_s, clock=clock)
        self.keepalive_interval_s = keepalive_interval_s
        # Board state as last reported; None = unknown (never heard, or the board went silent).
        self._cp_state: CpState | None = None
        self._proximity: ProximityReport | None = None
        self._relay_closed: bool | None = None
        self._locked: bool | None = None
        self._faults: frozenset[Fault] | None = None
        self._phase_report: PhaseReport | None = None  # only boards with a phase contactor send one
        self.board_info: Hello | None = None
        self._desired: dict[type, Any] = {}

    # ------------------------------------------------------------------------------------ role API

    @property
    def roles(self) -> frozenset[Role]:
        return frozenset({Role.PILOT, Role.POWER_SWITCH, Role.LOCK, Role.PHASE_SWITCH})

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
        check_duty(duty_percent)
        duty = min(max(round(duty_percent * 100), 1), DUTY_X1 - 1)
        self._send(SetDuty(duty))

    def set_x1(self) -> None:
        self._send(SetDuty(DUTY_X1))

    def set_f(self) -> None:
        self._send(SetDuty(DUTY_F))

    def keep_alive(self) -> None:
        raise NotImplementedError

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

    def supports_phase_switching(self) -> bool:
        return self._phase_report is not None

    def set_phases(self, phases: int) -> None:
        if phases not in (1, 3):
            raise ValueError(f"phases must be 1 or 3, got {phases!r}")
        self._send(SetPhases(phases))

    def phases(self) -> int | None:
        return self._phase_report.phases if self._phase_report is not None else None

    # ------------------------------------------------------------------------------------ commands

    def _send(self, message: Any) -> None:
        if isinstance(message, SetDuty | SetRelay | SetLock | SetPhases):
            # Remember what the agent wants, to re-assert it when the transport (re)opens or the board
            # resets: a command given while it was down must not be lost (e.g. relay open at start-up).
            self._desired[type(message)] = message
        self._write(message)

    def _reassert(self) -> None:
        # The phases first: a board moves its phase contactor only while the relay is open.
        messages = sorted(self._desired.values(), key=lambda m: not isinstance(m, SetPhases))
        for message in messages:
            self._write(message)

    def _write(self, message: Any) -> None:
        raise NotImplementedError

    def _transport_lost(self) -> asyncio.Event | None:
        raise NotImplementedError

    async def _serve(self) -> None:
        lost = self._transport_lost()
        assert lost is not None
        self.keep_alive()
        self._reassert()
        self.request_status()
        while not lost.is_set():
            try:  # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
                async with asyncio.timeout(self.keepalive_interval_s):
                    await lost.wait()
            except TimeoutError:
                self.keep_alive()

    # ------------------------------------------------------------------------------------ protocol

    def _apply_report(self, message: object) -> bool:
        """Apply a message every board variant sends; False if it is not one of those."""
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
        elif isinstance(message, PhaseReport):
            if message != self._phase_report:
                if self._phase_report is None or message.phases != self._phase_report.phases:
                    self.log.info("%s: phase contactor on %d phase(s)", self.name, message.phases)
                self._phase_report = message
        elif isinstance(message, Hello):
            if self.board_info is not None:
                # The board restarted (it says hello again): it forgot our commands and is lapsed until a
                # KeepAlive, refusing SetRelay(close) till then; so the keep-alive goes first.
                self.keep_alive()
                self._reassert()
            if message != self.board_info:
                self.log.info(
                    "%s: board firmware %d.%d.%d hw %d",
                    self.name,
                    message.fw_major,
                    message.fw_minor,
                    message.fw_patch,
                    message.hw_revision,
                )
            self.board_info = message
        else:
            return False
        return True

    def _forget_reports(self) -> None:
        self._cp_state = self._proximity = self._relay_closed = self._locked = self._faults = None
        self._phase_report = None
