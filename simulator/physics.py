"""The simulated plant behind one connector: the EV, the cable, the contactor and the supply.

Every emulator (pilot board, meter) reads and writes this one object, so the physics stay
consistent: energy only flows while the simulated contactor is closed and the EV draws current,
and wrong relay handling by the agent shows up as wrong energy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from hal.types import CpState, Fault

NOMINAL_VOLTAGE_V = 230.0


class EvMode(StrEnum):
    CHARGE = "charge"  # wants energy (state C once PWM is seen)
    PAUSE = "pause"  # stays in B
    VENTILATION = "ventilation"  # wants energy, needs ventilation (state D)


def current_from_duty(duty_percent: float | None) -> float:
    """The EV side reading of the PWM duty (IEC 61851-1 Annex A); 0 = must not charge."""
    if duty_percent is None or duty_percent <= 0:
        return 0.0
    d = duty_percent
    if d < 8.0:
        return 0.0
    if d < 10.0:
        return 6.0
    if d <= 85.0:
        return d * 0.6
    if d <= 96.0:
        return (d - 64.0) * 2.5
    if d <= 97.0:
        return 80.0
    return 0.0


@dataclass
class EvModel:
    max_current_a: float = 32.0
    phases: int = 3
    battery_wh: float = 60_000.0
    soc_percent: float = 20.0
    mode: EvMode = EvMode.CHARGE
    pwm_reaction_s: float = 1.0  # waits this long after PWM appears before closing S2
    ramp_a_per_s: float = 12.0  # reaches 32 A in under 3 s
    extra_draw_a: float = 0.0  # fault injection: draw more than signalled


@dataclass
class Plant:
    """State of one simulated connector. Times are simulator monotonic seconds."""

    ev: EvModel = field(default_factory=EvModel)
    plugged: bool = False
    fixed_cable: bool = False
    cable_ampacity_a: float = 32.0
    # What the EVSE drives: None = steady +12 V (X1), 0.0 = -12 V (F), else PWM duty in percent.
    pwm_duty: float | None = None
    relay_commanded_closed: bool = False
    relay_welded: bool = False
    lock_commanded: bool = False
    lock_jammed: bool = False
    faults: set[Fault] = field(default_factory=set)
    energy_wh: float = 0.0
    current_a: float = 0.0  # per phase actually flowing, on each phase in use
    # Phase contactor of the board (1 or 3 phases switched through to the socket); a 1-phase EV or a
    # 1-phase supply loads socket L1 only. ``site_phases``: site phase (1..3) behind socket L1, L2, L3.
    supply_phases: int = 3
    site_phases: tuple[int, ...] = (1, 2, 3)
    phase_switches: int = 0
    phase_switches_under_load: int = 0  # a switch while current flowed: the board must never do that
    s2_closed: bool = False
    _pwm_seen_since: float | None = None
    _last_step: float | None = None

    @property
    def relay_closed(self) -> bool:
        return self.relay_commanded_closed or self.relay_welded

    @property
    def locked(self) -> bool:
        if self.fixed_cable:
            return True
        return self.lock_commanded and not self.lock_jammed

    @property
    def voltage_v(self) -> float:
        if Fault.UNDERVOLTAGE in self.faults:
            return 180.0
        if Fault.OVERVOLTAGE in self.faults:
            return 265.0
        return NOMINAL_VOLTAGE_V

    @property
    def pp_resistance_ohm(self) -> float | None:
        if not self.plugged or self.fixed_cable:
            return None
        return {13.0: 1500.0, 20.0: 680.0, 32.0: 220.0, 63.0: 100.0}.get(self.cable_ampacity_a, 220.0)

    def cp_state(self) -> CpState:
        """What the board's CP sampling would see right now."""
        if Fault.GROUND in self.faults and self.plugged:
            return CpState.E
        if self.pwm_duty == 0.0:
            return CpState.F
        if not self.plugged:
            return CpState.A
        pwm = self.pwm_duty is not None
        if self.s2_closed:
            letter = "D" if self.ev.mode is EvMode.VENTILATION else "C"
        else:
            letter = "B"
        return CpState(f"{letter}{2 if pwm else 1}")

    def diode_ok(self) -> bool:
        return Fault.DIODE not in self.faults

    @property
    def phases_in_use(self) -> int:
        """Phases the EV draws on: what the EV can take and the supply gives (1 or 3)."""
        return max(1, min(self.ev.phases, self.supply_phases, 3))

    def phase_currents(self) -> tuple[float, float, float]:
        """Current on socket L1, L2, L3 now."""
        current = self.current_a if self.relay_closed else 0.0
        n = self.phases_in_use
        return (current, current if n >= 2 else 0.0, current if n >= 3 else 0.0)

    def site_currents(self) -> tuple[float, float, float]:
        """The same currents on the site phases (``site_phases`` maps socket phase -> site phase)."""
        out = [0.0, 0.0, 0.0]
        for socket_phase, amps in enumerate(self.phase_currents()):
            site_phase = self.site_phases[socket_phase] if socket_phase < len(self.site_phases) else socket_phase + 1
            out[site_phase - 1] += amps
        return (out[0], out[1], out[2])

    def set_supply_phases(self, phases: int) -> None:
        """The board's phase contactor moves (1 or 3); a move while current flows is counted as a failure."""
        if phases not in (1, 3):
            raise ValueError(f"supply phases must be 1 or 3, got {phases}")
        if phases != self.supply_phases:
            self.phase_switches += 1
            if self.relay_closed and self.current_a > 0:
                self.phase_switches_under_load += 1
            self.supply_phases = phases

    def power_w(self) -> float:
        return self.current_a * self.voltage_v * self.phases_in_use

    def step(self, now: float) -> None:
        """Advance the EV and the energy integration to ``now``."""
        dt = 0.0 if self._last_step is None else max(0.0, now - self._last_step)
        self._last_step = now
        offered = current_from_duty(self.pwm_duty) if self.pwm_duty else 0.0
        wants = self.plugged and self.ev.mode is not EvMode.PAUSE and self.ev.soc_percent < 100.0
        if self.pwm_duty and self.pwm_duty > 0 and self.plugged:
            if self._pwm_seen_since is None:
                self._pwm_seen_since = now
        else:
            self._pwm_seen_since = None
        if not self.plugged:
            self.s2_closed = False
        elif wants and self._pwm_seen_since is not None and (
            now - self._pwm_seen_since >= self.ev.pwm_reaction_s
        ):
            self.s2_closed = True
        elif not wants or self.pwm_duty is None:
            # The EV opens S2 once its current has ramped down (within 3 s of PWM off).
            if self.current_a <= 0.0:
                self.s2_closed = False
        target = 0.0
        if self.s2_closed and self.relay_closed and wants and offered > 0:
            target = min(offered, self.ev.max_current_a) + self.ev.extra_draw_a
        if not self.relay_closed or not self.plugged:
            self.current_a = 0.0
        elif self.current_a < target:
            self.current_a = min(target, self.current_a + self.ev.ramp_a_per_s * dt)
        elif self.current_a > target:
            self.current_a = max(target, self.current_a - self.ev.ramp_a_per_s * dt)
        if self.relay_closed and self.current_a > 0 and dt > 0:
            wh = self.power_w() * dt / 3600.0
            self.energy_wh += wh
            self.ev.soc_percent = min(100.0, self.ev.soc_percent + 100.0 * wh / self.ev.battery_wh)
        if math.isnan(self.energy_wh):  # pragma: no cover - defensive
            self.energy_wh = 0.0
