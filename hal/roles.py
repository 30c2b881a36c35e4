"""One abstract base per hardware role. Commands are synchronous and non-blocking: they queue or
write a frame at once, so the agent can react to a safety event without awaiting anything."""

from __future__ import annotations

import abc
import math
from collections.abc import AsyncIterator

from hal.types import CpState, GridSample, IdToken, MeterSample, Screen


class ControlPilot(abc.ABC):
    @property
    @abc.abstractmethod
    def cp_state(self) -> CpState | None:
        """Last state the board reported; None while unknown or the board is silent."""

    @abc.abstractmethod
    def set_duty(self, duty_percent: float) -> None:
        """Start/keep PWM at this duty (0 < duty < 100, resolution 0.01 %)."""

    @abc.abstractmethod
    def set_x1(self) -> None:
        """PWM off: steady +12 V (state x1, 100 %)."""

    @abc.abstractmethod
    def set_f(self) -> None:
        """Drive -12 V: EVSE not available (state F)."""

    @abc.abstractmethod
    def keep_alive(self) -> None:
        """Tell the MCU the host is alive (drivers also send it on their own schedule)."""

    @property
    def temperature_c(self) -> float | None:
        """The board's own temperature sensor (degrees Celsius); None without one or without a fresh value."""
        return None


def check_duty(duty_percent: float) -> None:
    """What ``ControlPilot.set_duty`` accepts: ValueError unless 0 < duty < 100 (and finite)."""
    if not (math.isfinite(duty_percent) and 0.0 < duty_percent < 100.0):
        raise ValueError(f"PWM duty must be between 0 and 100 % (exclusive), got {duty_percent}")


class PowerSwitch(abc.ABC):
    @property
    @abc.abstractmethod
    def feedback_closed(self) -> bool | None:
        """Mirror contact: True closed, False open, None unknown."""

    @abc.abstractmethod
    def close_relay(self) -> None: ...

    @abc.abstractmethod
    def open_relay(self) -> None: ...


class PhaseSwitch(abc.ABC):
    """The board's phase contactor: the socket gets 1 or 3 phases (1p/3p switching, local energy management)."""

    @abc.abstractmethod
    def supports_phase_switching(self) -> bool:
        """Whether this board can switch phases at all (as far as it has told us)."""

    @abc.abstractmethod
    def set_phases(self, phases: int) -> None:
        """Switch to 1 or 3 phases. A command, never under load: the caller guarantees the relay is open
        (boards refuse it while their relay is closed)."""

    @abc.abstractmethod
    def phases(self) -> int | None:
        """What the board reports it has switched to; None while unknown."""


class ConnectorLock(abc.ABC):
    @property
    @abc.abstractmethod
    def locked(self) -> bool | None: ...

    @abc.abstractmethod
    def lock(self) -> None: ...

    @abc.abstractmethod
    def unlock(self) -> None: ...


class Meter(abc.ABC):
    @property
    @abc.abstractmethod
    def latest(self) -> MeterSample | None:
        """Last fresh sample, or None once the meter has gone silent (never a stale value)."""


class SignedMeter(abc.ABC):
    """Optional, next to Meter: a meter that signs transaction readings (OCMF records, stored verbatim)."""

    @property
    @abc.abstractmethod
    def signs(self) -> bool:
        """Whether this meter (model) can sign at all."""

    @abc.abstractmethod
    async def start_signed(self, tx_ref: str) -> str:
        """A signed reading for the start of transaction ``tx_ref``; raises DeviceError."""

    @abc.abstractmethod
    async def stop_signed(self, tx_ref: str) -> str:
        """A signed reading for its end; raises DeviceError."""

    async def update_signed(self, tx_ref: str) -> str:
        """An intermediate signed reading during the transaction (e.g. clock-aligned); raises DeviceError
        (hal.device) where the meter cannot, as this default does."""
        from hal.device import DeviceError

        raise DeviceError("this meter signs transaction start and end only")


class SiteMeter(abc.ABC):
    """The meter at the grid connection point (local energy management)."""

    @abc.abstractmethod
    def latest(self) -> GridSample | None:
        """Last reading (signed per-phase current and power), None before the first one. The
        caller judges staleness from ``GridSample.timestamp``."""


class TokenReader(abc.ABC):
    @abc.abstractmethod
    def tokens(self) -> AsyncIterator[IdToken]:
        """Tokens as they are presented (a card held still is reported once)."""


class Display(abc.ABC):
    @abc.abstractmethod
    def show(self, screen: Screen) -> None: ...
