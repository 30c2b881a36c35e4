"""The simulated plant (simulator/physics.py) against the EV-model rules of the station-core issue and the
EV-side duty reading of shared/reference/iec61851.md: no I/O, time is passed in."""

from __future__ import annotations

import pytest

from hal.types import CpState
from simulator.physics import EvMode, Plant, current_from_duty

DT = 0.05


@pytest.mark.parametrize(
    ("duty", "amps"),
    [
        (None, 0.0), (0.0, 0.0), (2.9, 0.0),  # <3 %: no charging
        (5.0, 0.0), (7.5, 0.0),  # 3..7 % digital communication, 7..8 % error: no current by PWM
        (8.0, 6.0), (9.9, 6.0),  # 8..10 % -> 6 A
        (10.0, 6.0), (53.33, 31.998), (85.0, 51.0),  # 10..85 % -> D * 0.6
        (90.0, 65.0), (96.0, 80.0),  # 85..96 % -> (D - 64) * 2.5
        (96.5, 80.0), (97.0, 80.0),  # 96..97 % -> 80 A
        (97.5, 0.0), (100.0, 0.0),  # > 97 %: no charging
    ],
)  # fmt: skip
def test_ev_reads_the_duty_as_the_reference_says(duty: float | None, amps: float) -> None:
    assert current_from_duty(duty) == pytest.approx(amps)


def _run(plant: Plant, start: float, end: float) -> float:
    t = start
    while t < end - 1e-9:
        t = round(t + DT, 6)
        plant.step(t)
    return t


def _plugged(duty: float | None = 53.33, relay: bool = True) -> Plant:
    plant = Plant(plugged=True)
    plant.step(0.0)
    plant.pwm_duty = duty
    plant.relay_commanded_closed = relay
    return plant


def test_ev_waits_about_1_s_after_pwm_before_asking_for_energy() -> None:
    plant = _plugged()
    _run(plant, 0.0, 0.9)
    assert plant.cp_state() is CpState.B2 and plant.current_a == 0.0
    _run(plant, 0.9, 1.2)
    assert plant.cp_state() is CpState.C2


def test_ev_ramps_to_the_signalled_current_within_3_s_and_never_above_its_max() -> None:
    plant = _plugged(duty=53.33)  # 32 A signalled
    plant.ev.max_current_a = 20.0
    t = _run(plant, 0.0, 1.2)
    assert 0.0 < plant.current_a < 20.0  # ramping, not a step
    _run(plant, t, 1.2 + 3.0)
    assert plant.current_a == pytest.approx(20.0)


def test_ev_stops_drawing_within_3_s_of_pwm_off_and_then_leaves_c() -> None:
    plant = _plugged()
    t = _run(plant, 0.0, 5.0)
    assert plant.current_a == pytest.approx(32.0, abs=0.01)
    plant.pwm_duty = None  # X1
    t = _run(plant, t, t + 3.0)
    assert plant.current_a == 0.0
    assert plant.cp_state() is CpState.B1


def test_energy_flows_only_while_the_relay_is_closed() -> None:
    plant = _plugged(relay=False)
    t = _run(plant, 0.0, 5.0)
    assert plant.cp_state() is CpState.C2  # the EV asks ...
    assert plant.energy_wh == 0.0 and plant.current_a == 0.0 and plant.power_w() == 0.0  # ... but gets nothing
    plant.relay_commanded_closed = True
    t = _run(plant, t, t + 10.0)
    energy = plant.energy_wh
    # at most 10 s of 3 x 32 A x 230 V, and most of it (the ramp takes under 3 s)
    assert 0.7 * 22_080 * 10 / 3600 < energy <= 22_080 * 10 / 3600 + 1e-6
    plant.relay_commanded_closed = False
    _run(plant, t, t + 5.0)
    assert plant.energy_wh == energy


def test_soc_rises_with_energy_and_a_full_battery_stops_drawing() -> None:
    plant = _plugged()
    soc = plant.ev.soc_percent
    t = _run(plant, 0.0, 10.0)
    assert plant.ev.soc_percent == pytest.approx(soc + 100.0 * plant.energy_wh / plant.ev.battery_wh)
    plant.ev.soc_percent = 100.0
    _run(plant, t, t + 3.0)
    assert plant.current_a == 0.0


def test_ventilation_mode_asks_in_d_and_pause_stays_in_b() -> None:
    plant = _plugged()
    plant.ev.mode = EvMode.VENTILATION
    _run(plant, 0.0, 1.5)
    assert plant.cp_state() is CpState.D2
    other = _plugged()
    other.ev.mode = EvMode.PAUSE
    _run(other, 0.0, 5.0)
    assert other.cp_state() is CpState.B2 and other.energy_wh == 0.0
