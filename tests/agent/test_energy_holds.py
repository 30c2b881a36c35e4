"""The one authority for "energy allowed" (issue 11 item 2): the controller's set of named EnergyHold reasons,
on the FakeClock with the pilot/switch fakes of test_iec61851. Energy is offered only while no reason is held;
a reason ends only when it is released, never by pilot changes, the X1 hold running out, an EV cycling B/C,
an unplug and re-plug, or another reason being released."""

from __future__ import annotations

import pytest

from agent.charge_control import ChargeState, EnergyHold
from hal.types import CpState
from tests.agent.test_iec61851 import Rig, make_rig

S = ChargeState
HELD = [EnergyHold.INVALID_ID, EnergyHold.UNAVAILABLE, EnergyHold.MAINTENANCE, EnergyHold.RESERVED]


@pytest.fixture
def rig() -> Rig:
    return make_rig()


def test_a_new_controller_holds_only_not_authorized(rig: Rig) -> None:
    assert rig.ctl.energy_holds == {EnergyHold.NOT_AUTHORIZED}
    assert rig.ctl.status().energy_holds == {EnergyHold.NOT_AUTHORIZED}
    rig.ctl.on_cp_state(CpState.B1)
    rig.ctl.release_energy(EnergyHold.NOT_AUTHORIZED)
    assert rig.ctl.energy_holds == frozenset() and rig.ctl.state is S.READY


@pytest.mark.parametrize("reason", HELD)
def test_a_hold_stops_charging_and_nothing_but_its_release_resumes(rig: Rig, reason: EnergyHold) -> None:
    t0 = rig.charge()
    rig.ctl.hold_energy(reason)
    t = rig.now
    assert rig.last("duty", "x1", "f")[0] == t and rig.ctl.duty_percent in (None, 0.0)  # offer withdrawn at once
    rig.ctl.on_cp_state(CpState.B1)  # the EV stops drawing and leaves C
    assert not rig.ctl.relay_commanded_closed and rig.last("open", "close") == (t, "open", None)
    # What used to grant energy again: the EV's pilot changes, the X1 hold running out, a B/C cycle, the
    # authorization being given again (what a re-plug into an open transaction does), other reasons ending.
    for cp in (CpState.C1, CpState.B1, CpState.C1, CpState.B1):
        rig.clock.advance(2.0)
        rig.ctl.on_cp_state(cp)
    rig.ctl.set_energy_allowed(True)
    for other in HELD:
        if other is not reason:
            rig.ctl.release_energy(other)
    rig.ctl.set_external_limit(None)
    rig.advance_to(t0 + 60.0)
    assert not [e for e in rig.since(t) if e[1] in ("close", "duty")], "energy offered again"
    assert rig.ctl.energy_holds == {reason} and not rig.ctl.energy_allowed()
    rig.ctl.release_energy(reason)
    assert rig.ctl.state is S.READY and rig.ctl.duty_percent == 53.33
    rig.ctl.on_cp_state(CpState.C2)
    assert rig.ctl.state is S.CHARGING and rig.ctl.relay_commanded_closed


def test_holds_add_up_and_energy_needs_all_released(rig: Rig) -> None:
    rig.charge()
    rig.ctl.hold_energy(EnergyHold.INVALID_ID)
    rig.ctl.hold_energy(EnergyHold.RESERVED)
    rig.ctl.hold_energy(EnergyHold.INVALID_ID)  # holding twice is one hold
    rig.ctl.on_cp_state(CpState.B1)
    rig.clock.advance(10.0)
    rig.ctl.release_energy(EnergyHold.INVALID_ID)
    assert rig.ctl.state is S.CONNECTED and rig.ctl.duty_percent is None
    rig.ctl.release_energy(EnergyHold.RESERVED)
    assert rig.ctl.state is S.READY


def test_unplug_holds_not_authorized_again_and_keeps_the_other_reasons(rig: Rig) -> None:
    rig.charge()
    rig.ctl.hold_energy(EnergyHold.INVALID_ID)
    rig.ctl.on_cp_state(CpState.A)
    assert rig.ctl.energy_holds == {EnergyHold.NOT_AUTHORIZED, EnergyHold.INVALID_ID}
    rig.clock.advance(5.0)
    rig.ctl.on_cp_state(CpState.B1)
    rig.ctl.release_energy(EnergyHold.NOT_AUTHORIZED)  # re-plugged into the open transaction
    rig.clock.advance(10.0)
    assert rig.ctl.state is S.CONNECTED and not rig.commands("duty")[1:]


@pytest.mark.parametrize("reason", [EnergyHold.UNAVAILABLE, EnergyHold.MAINTENANCE])
def test_out_of_service_reasons_drive_f_until_both_are_released(rig: Rig, reason: EnergyHold) -> None:
    rig.ctl.hold_energy(EnergyHold.UNAVAILABLE)
    rig.ctl.hold_energy(EnergyHold.MAINTENANCE)
    assert rig.ctl.state is S.UNAVAILABLE and rig.last("duty", "x1", "f")[1] == "f"
    rig.ctl.release_energy(reason)
    assert rig.ctl.state is S.UNAVAILABLE and not rig.ctl.available()
    other = EnergyHold.MAINTENANCE if reason is EnergyHold.UNAVAILABLE else EnergyHold.UNAVAILABLE
    rig.ctl.release_energy(other)
    assert rig.ctl.state is S.IDLE and rig.ctl.available()


def test_zero_limit_follows_the_current_limit_and_cannot_be_held(rig: Rig) -> None:
    rig.charge()
    rig.ctl.set_external_limit(0.0)
    assert rig.ctl.energy_holds == {EnergyHold.ZERO_LIMIT} and rig.ctl.duty_percent is None
    with pytest.raises(ValueError, match="ZERO_LIMIT"):
        rig.ctl.hold_energy(EnergyHold.ZERO_LIMIT)
    with pytest.raises(ValueError, match="ZERO_LIMIT"):
        rig.ctl.release_energy(EnergyHold.ZERO_LIMIT)
    rig.ctl.set_external_limit(16.0)
    assert rig.ctl.energy_holds == frozenset()
