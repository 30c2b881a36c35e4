"""The OpenEVSE driver against the RAPI emulator over a real pty (real bytes both ways)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from drivers.serial.openevse import OpenEvse, amps_from_duty, create
from hal.device import DeviceError
from hal.types import (
    CpState,
    DeviceFaultChanged,
    Fault,
    FaultFlagsChanged,
    HalEvent,
    MeterSample,
    PilotStateChanged,
    RelayFeedback,
)
from simulator.openevse import OpenEvseEmulator
from simulator.physics import EvMode, Plant
from tests.drivers.helpers import wait_for


@dataclass
class Rig:
    plant: Plant
    board: OpenEvseEmulator
    driver: OpenEvse
    events: list[HalEvent] = field(default_factory=list)

    wait_for = staticmethod(wait_for)

    def pilot_states(self) -> list[CpState]:
        return [e.state for e in self.events if isinstance(e, PilotStateChanged)]


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    plant = Plant(fixed_cable=True)
    plant.ev.pwm_reaction_s = 0.2
    plant.ev.ramp_a_per_s = 100.0
    board = OpenEvseEmulator(plant)
    driver = OpenEvse("evse", board.port_path, poll_interval_s=0.1, silence_timeout_s=0.5, phases=3)
    r = Rig(plant, board, driver)
    driver.subscribe(r.events.append)
    tasks = [asyncio.create_task(board.run()), asyncio.create_task(driver.run())]
    try:
        await r.wait_for(lambda: driver.cp_state is not None, 3, "first state")
        yield r
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        board.close()


def test_amps_from_duty_inverts_the_iec_formula() -> None:
    assert amps_from_duty(10.0) == 6
    assert amps_from_duty(53.33) == 32  # the agent's rounded duty for 32 A
    assert amps_from_duty(26.67) == 16
    assert amps_from_duty(16.0) == 9  # 9.6 A signalled: never above what the duty says
    assert amps_from_duty(90.0) == 65
    assert amps_from_duty(96.0) == 80


def test_settings_are_validated_with_their_full_name() -> None:
    with pytest.raises(DeviceError, match=r"devices\.evse\.port"):
        create("evse", {})
    with pytest.raises(DeviceError, match=r"devices\.evse\.poll_interval_s"):
        create("evse", {"port": "/dev/ttyS1", "poll_interval_s": 3})
    with pytest.raises(DeviceError, match=r"devices\.evse\.colour"):
        create("evse", {"port": "/dev/ttyS1", "colour": "red"})
    with pytest.raises(DeviceError, match=r"devices\.evse\.baudrate"):
        create("evse", {"port": "/dev/ttyS1", "baudrate": True})
    device = create("evse", {"port": "/dev/ttyS1", "phases": 3})
    assert device.baudrate == 115200 and device.phases == 3


async def test_sleep_enable_and_a_charging_session(rig: Rig) -> None:
    d, plant = rig.driver, rig.plant
    assert d.cp_state is CpState.A  # boots enabled, no EV
    d.open_relay()
    d.set_x1()  # what the agent does at start: sleep
    await rig.wait_for(lambda: rig.board.evse_state == 0xFE, 2, "board asleep")
    plant.plugged = True
    await rig.wait_for(lambda: d.cp_state is CpState.B1, 2, "B1 while asleep")
    d.set_duty(26.67)  # 16 A
    await rig.wait_for(lambda: d.cp_state is CpState.B2, 2, "B2 once enabled")
    assert rig.board.current_capacity_a == 16 and plant.pwm_duty == pytest.approx(26.67, abs=0.01)
    # The EV answers the PWM with C: the board closes its relay itself; C2 comes before the feedback.
    await rig.wait_for(lambda: d.feedback_closed is True, 3, "relay closed by the board")
    i_c2 = rig.events.index(PilotStateChanged(CpState.C2))
    assert rig.events.index(RelayFeedback(True)) > i_c2
    d.close_relay()  # accepted: enabled and the EV asks
    assert plant.relay_closed
    # Energy rises while the EV charges, and comes from the plant.
    await rig.wait_for(lambda: plant.energy_wh > 1.0, 3, "energy flowing")
    await rig.wait_for(lambda: d.latest is not None and d.latest.energy_import_wh >= 1, 3, "energy sample")
    first = d.latest
    assert first is not None and first.current_a[0] == pytest.approx(16, abs=0.5) and first.power_w > 10_000
    await rig.wait_for(lambda: d.latest is not None and d.latest.energy_import_wh > first.energy_import_wh, 3, "more")
    # Set a lower current: the board follows.
    d.set_duty(16.67)  # 10 A
    await rig.wait_for(lambda: rig.board.current_capacity_a == 10, 2, "new capacity")
    await rig.wait_for(lambda: plant.current_a == pytest.approx(10, abs=0.1), 2, "EV follows")
    # Stop through the agent's path: X1 (sleep); the board opens once the EV has left C.
    d.set_x1()
    await rig.wait_for(lambda: d.feedback_closed is False, 4, "relay open after sleep")
    assert not plant.relay_closed and d.cp_state is not None and d.cp_state.letter in "BC"
    assert d.cp_state.pwm is False
    with pytest.raises(DeviceError):
        d.close_relay()  # asleep: the board would not close, so the driver says so
    # Disable drives F and opens at once.
    d.set_f()
    await rig.wait_for(lambda: d.cp_state is CpState.F, 2, "F")
    assert plant.pwm_duty == 0.0
    # Unplug folds the session into the total; the register never runs backwards.
    d.set_x1()
    await rig.wait_for(lambda: d.cp_state is CpState.B1, 2, "B1")
    before = d.latest.energy_import_wh if d.latest else 0
    plant.plugged = False
    await rig.wait_for(lambda: d.cp_state is CpState.A, 2, "A")
    await asyncio.sleep(0.4)
    assert d.latest is not None and d.latest.energy_import_wh >= before
    assert abs(d.latest.energy_import_wh - plant.energy_wh) <= 1.0
    assert d.counters()["bad_checksum"] == 0 and d.counters()["nk_replies"] == 0


async def test_ev_pause_keeps_pwm_and_open_relay_is_a_no_op(rig: Rig) -> None:
    d, plant = rig.driver, rig.plant
    plant.plugged = True
    d.set_duty(53.33)
    await rig.wait_for(lambda: d.feedback_closed is True, 3, "charging")
    plant.ev.mode = EvMode.PAUSE
    await rig.wait_for(lambda: d.cp_state is CpState.B2, 4, "EV back to B")
    assert d.feedback_closed is False
    sent = len(rig.board.commands)
    d.open_relay()  # the agent's reaction to C->B: the board already opened, PWM must stay
    await asyncio.sleep(0.3)
    assert not any(c.token == "FS" for c in rig.board.commands[sent:])
    assert rig.board.evse_state == 2


@pytest.mark.parametrize(
    ("inject", "fault", "state"),
    [
        (lambda p: p.faults.add(Fault.RCD), Fault.RCD, 6),
        (lambda p: p.faults.add(Fault.GROUND), Fault.GROUND, 7),
        (lambda p: p.faults.add(Fault.OVERTEMP), Fault.OVERTEMP, 10),
        (lambda p: p.faults.add(Fault.DIODE), Fault.DIODE, 5),
    ],
)
async def test_board_faults_map_to_hal_faults(
    rig: Rig, inject: Callable[[Plant], None], fault: Fault, state: int
) -> None:
    d, plant = rig.driver, rig.plant
    plant.plugged = True
    d.set_duty(53.33)
    await rig.wait_for(lambda: d.cp_state is not None and d.cp_state.pwm, 3, "PWM on")
    inject(plant)
    await rig.wait_for(lambda: d.active_faults == frozenset({fault}), 2, f"{fault} reported")
    assert rig.board.evse_state == state and d.cp_state is CpState.F and d.feedback_closed is False
    assert not plant.relay_closed
    flags = [e for e in rig.events if isinstance(e, FaultFlagsChanged)]
    assert flags[-1].active == frozenset({fault})
    # The agent's F/X1 commands are held while the board sits in its fault state...
    d.set_f()
    await asyncio.sleep(0.2)
    assert rig.board.evse_state == state
    # ...and applied once the cause is gone.
    plant.faults.clear()
    await rig.wait_for(lambda: d.active_faults == frozenset(), 2, "fault cleared")
    await rig.wait_for(lambda: rig.board.evse_state == 0xFF, 2, "disabled as asked")


async def test_stuck_relay_is_a_weld(rig: Rig) -> None:
    d, plant = rig.driver, rig.plant
    plant.relay_welded = True
    await rig.wait_for(lambda: d.active_faults == frozenset({Fault.WELD}), 2, "weld reported")
    assert rig.board.evse_state == 8 and d.feedback_closed is True


async def test_silence_is_reported_within_2s_and_recovery(rig: Rig) -> None:
    d = rig.driver
    rig.board.silent = True
    took = await rig.wait_for(
        lambda: any(isinstance(e, DeviceFaultChanged) and e.active for e in rig.events), 2, "BOARD_SILENT"
    )
    assert took < 2.0
    assert d.cp_state is None and d.latest is None and d.feedback_closed is None
    rig.board.silent = False
    await rig.wait_for(lambda: d.cp_state is not None, 2, "state again")
    last = [e for e in rig.events if isinstance(e, DeviceFaultChanged)][-1]
    assert last.fault is Fault.BOARD_SILENT and not last.active


async def test_garbage_on_the_line_is_counted_and_dropped(rig: Rig) -> None:
    d = rig.driver
    rig.board.write_raw(b"\x00\xffjunk$AT 03 03 32 0140^00\r$" + b"x" * 200 + b"\r")
    rig.plant.plugged = True
    await rig.wait_for(lambda: d.cp_state is CpState.B2, 2, "next valid state")
    c = d.counters()
    assert c["garbage_bytes"] >= 6 and c["bad_checksum"] >= 1 and c["oversized"] == 1
    assert CpState.C2 not in rig.pilot_states()  # the corrupt $AT never got through


async def test_energy_samples_are_meter_samples(rig: Rig) -> None:
    await rig.wait_for(lambda: any(isinstance(e, MeterSample) for e in rig.events), 2, "a sample")
    sample = next(e for e in rig.events if isinstance(e, MeterSample))
    assert sample.voltage_v == (230.0, 230.0, 230.0) and sample.timestamp > 0
