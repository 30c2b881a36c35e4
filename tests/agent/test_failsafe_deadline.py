"""Issue 15: the site meter goes silent just after a duty change. The SiteController applies the failsafe
current within 2.5 s, but the IEC one-duty-change-per-5-s rule would hold the lower duty until the window
opens (up to 7.5 s after the silence). The charge controller pauses in X1 instead (not a duty change) and
offers the failsafe current after T_STEP_X1: the offer is safe within 3 s and no two duty changes are ever
closer than 5 s. The real SiteController and ChargeController on one FakeClock."""

from __future__ import annotations

from agent.charge_control import DUTY_CHANGE_INTERVAL_S, ControlLimits
from agent.config import SiteConfig
from agent.energy.site import ConnectorLoad, SiteController
from hal.types import CpState
from tests.agent.test_iec61851 import Rig, make_rig
from tests.agent.test_site_controller import ScriptedMeter

HOUSE_A = 15.0  # per phase, besides the EV


def _duty_changes_apart(rig: Rig) -> list[float]:
    """Gaps between consecutive duty changes of one PWM run (an X1 or F in between starts a new run)."""
    gaps: list[float] = []
    previous: float | None = None
    for t, what, _ in rig.log:
        if what == "duty":
            if previous is not None:
                gaps.append(t - previous)
            previous = t
        elif what in ("x1", "f"):
            previous = None
    return gaps


def _setup(failsafe_a: float = 6.0) -> tuple[Rig, SiteController, ScriptedMeter]:
    rig = make_rig(ControlLimits(max_current_a=32.0, fixed_cable=True))
    ctl = rig.ctl
    meter = ScriptedMeter()

    def loads() -> list[ConnectorLoad]:
        offered = ctl.offered_current_a
        return [ConnectorLoad(connector_id=1, active=True, own_limit_a=ctl.own_limit_a, offered_a=offered,
                              relay_closed=bool(ctl.relay_commanded_closed), site_phases=(1, 2, 3),
                              measured_a=(offered, offered, offered))]

    site = SiteController(
        SiteConfig(meter="grid", main_fuse_a=35.0, failsafe_current_a=failsafe_a), meter, rig.clock, loads,
        lambda _cid, amps, reason: ctl.set_site_limit(amps, reason), lambda _active, _detail: None,
    )
    return rig, site, meter


def _play(rig: Rig, site: SiteController, meter: ScriptedMeter, silent_after: float, until: float,
          t0: float) -> list[tuple[float, float]]:
    """Step 0.1 s at a time, the site every 0.5 s; the meter answers (house + EV) until ``t0 + silent_after``.
    The EV follows the pilot: B1 under X1, C2 again once PWM is back. Returns (t - t0, offered A)."""
    ctl = rig.ctl
    offers: list[tuple[float, float]] = []
    ticks = 0
    while rig.now - t0 < until:
        rig.clock.advance(0.1)
        ticks += 1
        if rig.now - t0 <= silent_after + 1e-9:
            ev = ctl.offered_current_a
            meter.answer(rig.clock, (HOUSE_A + ev, HOUSE_A + ev, HOUSE_A + ev))
        if ticks % 5 == 0:
            site.step()
        if ctl.duty_percent is None and ctl.cp_state is CpState.C2:
            ctl.on_cp_state(CpState.B1)  # the EV follows X1
        elif ctl.duty_percent and ctl.cp_state is CpState.B1:
            ctl.on_cp_state(CpState.B2)
            ctl.on_cp_state(CpState.C2)
        offers.append((rig.now - t0, ctl.offered_current_a))
    return offers


def test_meter_silent_half_a_second_after_a_duty_change_safe_offer_within_3_s_and_5_s_between_changes() -> None:
    rig, site, meter = _setup()
    rig.charge()
    rig.clock.advance(DUTY_CHANGE_INTERVAL_S + 1)  # the PWM start's window is over
    assert rig.ctl.offered_current_a == 32.0
    # The first reading: 15 A of house load leaves 35 - 1 - 15 = 19 A: a duty change now (t0).
    meter.answer(rig.clock, (HOUSE_A + 32.0, HOUSE_A + 32.0, HOUSE_A + 32.0))
    site.step()
    t0 = rig.last("duty")[0]
    assert t0 == rig.now and rig.ctl.offered_current_a == 19.0 and rig.ctl.binding_limit == "site-fuse"
    offers = _play(rig, site, meter, silent_after=0.5, until=14.0, t0=t0)
    late = [(t, a) for t, a in offers if t >= 3.5]
    assert late and max(a for _, a in late) <= 6.0, "the failsafe current (or a pause) by 3 s after the silence"
    assert all(gap >= DUTY_CHANGE_INTERVAL_S - 1e-9 for gap in _duty_changes_apart(rig))
    x1 = [t - t0 for t, what, _ in rig.log if what == "x1" and t > t0]
    assert x1 and x1[0] <= 3.5, "paused in X1, not waiting for the duty window"
    # After T_STEP_X1 (and the EV's stop) the PWM comes back at the failsafe current: 6 A = 10 %.
    assert rig.ctl.duty_percent == 10.0 and rig.ctl.offered_current_a == 6.0
    assert rig.ctl.binding_limit == "failsafe" and rig.ctl.relay_commanded_closed


def test_a_failsafe_lowering_that_the_window_allows_is_a_plain_duty_change() -> None:
    rig, site, meter = _setup()
    rig.charge()
    rig.clock.advance(DUTY_CHANGE_INTERVAL_S + 1)
    meter.answer(rig.clock, (HOUSE_A + 32.0, HOUSE_A + 32.0, HOUSE_A + 32.0))
    site.step()
    t0 = rig.last("duty")[0]
    rig.clock.advance(4.0)  # the failsafe comes at t0 + 4.5: waiting 0.5 s for the window (t0 + 5) is allowed
    offers = _play(rig, site, meter, silent_after=0.0, until=8.0, t0=t0)
    assert not [t for t, what, _ in rig.log if what == "x1" and t > t0], "no pause needed"
    assert max(a for t, a in offers if t >= 6.0) == 6.0
    assert all(gap >= DUTY_CHANGE_INTERVAL_S - 1e-9 for gap in _duty_changes_apart(rig))
