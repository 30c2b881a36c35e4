"""SolarPolicy / SolarSite: each rule on a scripted surplus, then closed loops over seeded cloudy PV series."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.energy.solar import SolarDecision, SolarPolicy, SolarSession, SolarSettings, SolarSite

P1 = 6.0 * 230.0  # 1380 W: 1 phase at 6 A
P3 = 3 * P1  # 4140 W


def run_series(policy: SolarPolicy, surplus: list[float], *, running: bool = False, phases: int = 1,
               switching: bool = False, t0: float = 0.0) -> list[SolarDecision]:  # fmt: skip
    """One step per second; ``running`` follows the decision at once (the caller's part)."""
    out = []
    for i, value in enumerate(surplus):
        decision = policy.step(t0 + i, value, running, phases, switching)
        running, phases = decision.run, decision.phases
        out.append(decision)
    return out


def first_run(decisions: list[SolarDecision]) -> int | None:
    return next((i for i, x in enumerate(decisions) if x.run), None)


def test_start_only_after_the_surplus_covered_the_minimum_for_the_start_delay() -> None:
    policy = SolarPolicy(SolarSettings(solar_start_delay_s=30.0))
    out = run_series(policy, [2000.0] * 40)
    assert first_run(out) == 30
    assert out[30] == SolarDecision(True, pytest.approx(2000 / 230), 1, "surplus: start")
    # a dip under 1380 W (a cloud) restarts the wait
    policy = SolarPolicy(SolarSettings(solar_start_delay_s=30.0))
    out = run_series(policy, [2000.0] * 20 + [1000.0] * 3 + [2000.0] * 40)
    assert first_run(out) == 23 + 30


def test_stop_only_after_the_stop_delay_and_the_min_run() -> None:
    s = SolarSettings(solar_start_delay_s=0.0, solar_stop_delay_s=120.0, solar_min_run_s=300.0,
                      solar_import_margin_w=200.0)  # fmt: skip
    # started at t=0 (seen running from t=1), the sun goes at t=10: the min run holds it (at 6 A) until t=301
    out = run_series(SolarPolicy(s), [2000.0] * 10 + [0.0] * 400)
    stop = next(i for i, x in enumerate(out) if not x.run)
    assert stop == 301
    assert {x.current_a for x in out[10:300]} == {6.0}
    assert out[stop].reason == "importing beyond the margin: pause"
    # after the min run: the stop delay counts from the drop
    out = run_series(SolarPolicy(s), [2000.0] * 400 + [0.0] * 200)
    assert next(i for i, x in enumerate(out) if not x.run) == 400 + 120
    # an import within the margin (surplus 1200 W at a 1380 W minimum) is no reason to stop
    out = run_series(SolarPolicy(s), [2000.0] * 10 + [1200.0] * 1000)
    assert all(x.run for x in out)


def test_min_pause_after_a_stop_whatever_the_sun_does() -> None:
    s = SolarSettings(solar_start_delay_s=10.0, solar_stop_delay_s=20.0, solar_min_run_s=0.0, solar_min_pause_s=120.0)
    out = run_series(SolarPolicy(s), [2000.0] * 50 + [0.0] * 25 + [5000.0] * 200)
    stop = next(i for i, x in enumerate(out) if i > 10 and not x.run)
    assert stop == 50 + 20
    restart = next(i for i, x in enumerate(out) if i > stop and x.run)
    assert restart == stop + 1 + 120  # the pause is seen one step after the decision
    assert out[stop + 60].reason == "min pause time"


def test_current_follows_the_surplus_but_never_below_the_minimum() -> None:
    policy = SolarPolicy(SolarSettings(solar_start_delay_s=0.0, min_current_a=8.0))
    assert policy.step(0.0, 3680.0, False, 1, False).current_a == pytest.approx(16.0)
    assert policy.step(1.0, 2000.0, True, 1, False).current_a == pytest.approx(8.7, abs=0.01)
    assert policy.step(2.0, 1500.0, True, 1, False).current_a == 8.0
    assert policy.step(3.0, 9000.0, True, 3, False).current_a == pytest.approx(9000 / 690)


def test_solar_plus_min_always_runs_at_least_the_minimum() -> None:
    policy = SolarPolicy(SolarSettings(mode="solar+min", min_current_a=10.0))
    out = run_series(policy, [0.0] * 5 + [math.nan] + [6900.0] * 5 + [-5000.0] * 300, phases=3)
    assert all(x.run for x in out)
    assert out[0] == SolarDecision(True, 10.0, 3, "solar+min")
    assert out[7].current_a == pytest.approx(10.0)  # 6900 W on 3 phases = 10 A
    assert out[-1].current_a == 10.0


def test_off_and_grid_limit_set_no_solar_limit() -> None:
    for mode in ("off", "grid-limit"):
        decision = SolarPolicy(SolarSettings(mode=mode)).step(0.0, -9999.0, False, 3, True)
        assert decision.run and decision.current_a == math.inf and decision.phases == 3


@pytest.mark.parametrize(("field", "value"), [("mode", "eco"), ("min_current_a", 5.0), ("min_current_a", math.nan),
                                               ("solar_stop_delay_s", -1.0), ("max_phase_switches", -1)])  # fmt: skip
def test_settings_are_checked_and_the_error_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        SolarSettings(**{field: value})  # type: ignore[arg-type]


def test_nonsense_surplus_and_time_going_backwards() -> None:
    policy = SolarPolicy(SolarSettings(solar_start_delay_s=10.0))
    for t in range(20):
        assert not policy.step(float(t), math.nan, False, 1, False).run  # NaN = no surplus
    policy = SolarPolicy(SolarSettings(solar_start_delay_s=10.0))
    policy.step(100.0, 2000.0, False, 1, False)
    assert not policy.step(50.0, 2000.0, False, 1, False).run  # no time passed
    assert not policy.step(math.nan, 2000.0, False, 1, False).run
    assert policy.step(110.0, 2000.0, False, 1, False).run


def test_phase_choice_with_hysteresis_and_the_switch_cap() -> None:
    s = SolarSettings(phase_switching=True, max_phase_switches=2, solar_start_delay_s=30.0, solar_stop_delay_s=60.0,
                      solar_min_run_s=100.0)  # fmt: skip
    policy = SolarPolicy(s)
    # 3 kW: enough for 1 phase only -> a 3-phase connector is switched to 1 phase for the start
    out = run_series(policy, [3000.0] * 31, phases=3, switching=True)
    assert first_run(out) == 30 and out[30].phases == 1 and policy.phase_switches == 1
    assert out[30].reason == "start on 1 phase"
    # while the switch is under way (board still reports 3, relay open) the decision holds: no stop, no new switch
    held = policy.step(31.0, 3000.0, False, 3, True)
    assert held == SolarDecision(True, pytest.approx(3000 / 230), 1, "phase-switch")
    assert policy.step(40.0, 3000.0, True, 1, True).phases == 1  # done
    # 5 kW for less than the start delay: stays on 1 phase; then long enough (and past the min interval): 3 phases
    t = 41.0
    for _ in range(20):
        assert policy.step(t, 5000.0, True, 1, True).phases == 1
        t += 1
    for _ in range(200):
        decision = policy.step(t, 5000.0, True, 1, True)
        t += 1
        if decision.phases == 3:
            break
    assert decision.phases == 3 and policy.phase_switches == 2 and t - 1 >= 130.0
    policy.step(t, 5000.0, True, 3, True)
    # the cap is reached: a surplus that would call for 1 phase leaves it on 3 and, at the end, pauses it
    out = [policy.step(t + 1 + i, 2000.0, True, 3, True) for i in range(400)]
    assert policy.phase_switches == 2 and all(x.phases == 3 for x in out)
    assert not out[-1].run


def test_a_running_three_phase_session_goes_to_one_phase_instead_of_stopping() -> None:
    s = SolarSettings(phase_switching=True, solar_start_delay_s=0.0, solar_stop_delay_s=60.0, solar_min_run_s=0.0)
    policy = SolarPolicy(s)
    assert policy.step(0.0, 6000.0, False, 3, True).phases == 3
    out = [policy.step(1.0 + i, 3000.0, True, 3, True) for i in range(70)]
    switched = next(i for i, x in enumerate(out) if x.phases == 1)
    assert switched == 60 and all(x.run for x in out)
    # a switch while running is no new run: if 1 phase does not help either, the stop follows at once
    policy = SolarPolicy(SolarSettings(phase_switching=True, solar_start_delay_s=0.0, solar_stop_delay_s=60.0,
                                       solar_min_run_s=100.0))  # fmt: skip
    policy.step(0.0, 6000.0, False, 3, True)
    out = [policy.step(1.0 + i, 500.0, True, 3, True) for i in range(61)]
    assert out[-1].phases == 1 and out[-1].run and policy.phase_switches == 1  # at t=61: below 3 x 6 A for 60 s
    assert policy.step(70.0, 500.0, False, 3, True).reason == "phase-switch"  # under way: relay open, no stop
    assert policy.step(75.0, 500.0, True, 1, True).reason == "min run time"  # done; the run began at t=1
    assert policy.step(101.0, 500.0, True, 1, True).run is False  # min run over, import since t=1: pause
    # a board that cannot switch: the same surplus stops it instead
    policy = SolarPolicy(s)
    policy.step(0.0, 6000.0, False, 3, False)
    out = [policy.step(1.0 + i, 3000.0, True, 3, False) for i in range(70)]
    assert all(x.phases == 3 for x in out) and not out[-1].run


def test_solar_site_shares_the_surplus_and_pauses_the_lowest_priority_first() -> None:
    s = SolarSettings(solar_start_delay_s=0.0, solar_stop_delay_s=10.0, solar_min_run_s=0.0, solar_min_pause_s=0.0)
    site = SolarSite(s)
    # 8 kW of export, nobody charging: the first (priority) 3-phase session starts; both fit (4140 + 1380)
    sessions = [SolarSession(1, False, 3, 0.0), SolarSession(2, False, 1, 0.0)]
    out = site.step(0.0, -8000.0, sessions)
    assert out[1].run and out[2].run
    # the same current per phase for both: 8000 W / (4 x 230 V)
    assert out[1].current_a == pytest.approx(8000 / 920) and out[2].current_a == pytest.approx(8000 / 920)
    # the sun fades to 5 kW surplus (both drawing 8 kW, importing 3 kW): session 2 pauses after the stop delay
    sessions = [SolarSession(1, True, 3, 6000.0), SolarSession(2, True, 1, 2000.0)]
    for t in range(1, 12):
        out = site.step(float(t), 3000.0, sessions)
    assert out[1].run and not out[2].run
    assert out[1].current_a == pytest.approx(5000 / 690)
    # a session that ends drops its policy (and its switch count)
    site.step(12.0, 0.0, sessions[:1])
    assert set(site.policies) == {1}


def test_solar_site_a_full_battery_does_not_keep_the_sun_from_the_others() -> None:
    s = SolarSettings(solar_start_delay_s=0.0, solar_min_pause_s=0.0)
    site = SolarSite(s)
    # session 1 runs (first in priority) but its EV draws nothing: 2.5 kW of export start the 1-phase session 2
    out = site.step(0.0, -2500.0, [SolarSession(1, True, 1, 0.0), SolarSession(2, False, 1, 0.0)])
    assert out[1].run and out[2].run
    # both were granted 6 A; session 1 keeps drawing nothing: held at 6 A, session 2 gets the rest (not 9.5 A each)
    out = site.step(1.0, -3000.0, [SolarSession(1, True, 1, 0.0), SolarSession(2, True, 1, 1380.0)])
    assert out[1].current_a == 6.0 and out[2].current_a == pytest.approx(4380 / 230 - 6.0)
    # with room for all (session 2 at its 16 A limit), nobody is held back
    out = site.step(2.0, -9000.0, [SolarSession(1, True, 1, 0.0), SolarSession(2, True, 1, 1380.0, limit_a=16.0)])
    assert out[1].current_a == pytest.approx(10380 / 230 - 16.0) and out[2].current_a == 16.0


def test_solar_site_limits_and_nonsense_grid_power() -> None:
    site = SolarSite(SolarSettings(solar_start_delay_s=0.0))
    out = site.step(0.0, -30000.0, [SolarSession(1, False, 3, 0.0, limit_a=16.0),
                                    SolarSession(2, False, 3, 0.0, limit_a=32.0)])  # fmt: skip
    assert out[1].current_a == 16.0 and out[2].current_a == pytest.approx(30000 / 690 - 16.0)
    site = SolarSite(SolarSettings(solar_start_delay_s=0.0))
    assert not site.step(0.0, math.nan, [SolarSession(1, False, 1, 0.0)])[1].run


# --- closed loop over cloudy PV series ----------------------------------------------------------------------------


def cloudy_pv(rng: random.Random, seconds: int, peak_w: float) -> list[float]:
    """A bell-shaped day with clouds: random stretches (20 s .. 10 min) at 15-60 % of the clear-sky power, with
    ragged edges (a few seconds of flicker)."""
    pv = []
    shade, left = 1.0, 0
    for t in range(seconds):
        if left <= 0:
            shade = rng.uniform(0.15, 0.6) if shade == 1.0 and rng.random() < 0.6 else 1.0
            left = rng.randint(20, 600)
        left -= 1
        flicker = rng.uniform(0.85, 1.0) if rng.random() < 0.2 else 1.0
        clear = peak_w * max(0.0, math.sin(math.pi * (t + 0.1 * seconds) / (1.2 * seconds)))
        pv.append(clear * shade * flicker)
    return pv


@dataclass
class Ev:
    """First-order EV: the current approaches the offer with a 2 s time constant; a phase switch keeps the relay
    open for ``settle_s``, then reports the new phases and closes (a start when it was open before: a toggle)."""

    phases: int
    settle_s: int = 10
    current: float = 0.0
    closed: bool = False
    switching_left: int = 0
    target_phases: int = 0
    was_closed: bool = False
    toggles: list[tuple[int, bool]] = field(default_factory=list)

    def apply(self, t: int, decision: SolarDecision) -> None:
        if self.switching_left > 0:
            self.switching_left -= 1
            if self.switching_left == 0:
                self.phases, self.closed = self.target_phases, True
                if not self.was_closed:
                    self.toggles.append((t, True))
            return
        if decision.phases != self.phases:
            self.was_closed = self.closed
            self.closed, self.current = False, 0.0
            self.switching_left, self.target_phases = self.settle_s, decision.phases
            return
        if decision.run != self.closed:
            self.closed = decision.run
            self.toggles.append((t, decision.run))
        offer = min(decision.current_a, 16.0) if self.closed else 0.0
        self.current += (offer - self.current) * (1 - math.exp(-1 / 2.0))


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2**32 - 1), st.booleans(), st.booleans())
def test_no_oscillation_and_no_long_import_on_a_cloudy_day(seed: int, three_phase: bool, switching: bool) -> None:
    s = SolarSettings(phase_switching=switching, solar_start_delay_s=30.0, solar_stop_delay_s=120.0,
                      solar_min_run_s=300.0, solar_min_pause_s=120.0, solar_import_margin_w=200.0)  # fmt: skip
    rng = random.Random(seed)
    seconds = 4 * 3600
    pv = cloudy_pv(rng, seconds, peak_w=rng.uniform(3000.0, 9000.0))
    house = 400.0
    policy, ev = SolarPolicy(s), Ev(phases=3 if three_phase else 1)
    import_since: int | None = None
    longest_import = 0
    for t in range(seconds):
        ev_w = ev.current * ev.phases * 230.0
        grid_w = house + ev_w - pv[t]
        decision = policy.step(float(t), -grid_w + ev_w, ev.closed and ev.current > 0.5, ev.phases, switching)
        ev.apply(t, decision)
        if min(grid_w, ev_w) > s.solar_import_margin_w:  # import for charging (not the house's own import)
            import_since = t if import_since is None else import_since
            longest_import = max(longest_import, t - import_since + 1)
        else:
            import_since = None
    # contactor toggles: every run lasts the min run, every pause the min pause (one step of slack)
    for (t_a, on_a), (t_b, _) in zip(ev.toggles, ev.toggles[1:], strict=False):
        assert t_b - t_a >= (s.solar_min_run_s if on_a else s.solar_min_pause_s) - 1, ev.toggles
    # import beyond the margin: at most the longer of the stop delay and the min run, plus the EV's settling
    assert longest_import <= max(s.solar_stop_delay_s, s.solar_min_run_s) + 15
    assert policy.phase_switches <= s.max_phase_switches
    # it did charge whenever the surplus covered the minimum for the start delay
    need = P1 * (1 if switching else ev.phases)
    stretch = longest_stretch = 0
    for value in pv:
        stretch = stretch + 1 if value - house >= need else 0
        longest_stretch = max(longest_stretch, stretch)
    assert bool(ev.toggles) == (longest_stretch > s.solar_start_delay_s)


@settings(max_examples=3, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_two_sessions_share_without_oscillation(seed: int) -> None:
    """SolarSite with a 1-phase and a switchable 3-phase session over 3 cloudy hours: each session's pauses and
    runs last their minimum times, phase switches stay under the cap, the surplus is never exceeded for longer
    than the min run (+ the EVs' settling), and when the sun allows it both charge."""
    s = SolarSettings(phase_switching=True, solar_start_delay_s=30.0, solar_stop_delay_s=120.0,
                      solar_min_run_s=300.0, solar_min_pause_s=120.0)  # fmt: skip
    rng = random.Random(seed)
    seconds = 3 * 3600
    pv = cloudy_pv(rng, seconds, peak_w=rng.uniform(6000.0, 12000.0))
    site, evs = SolarSite(s), {1: Ev(phases=1), 2: Ev(phases=3)}
    import_since: int | None = None
    longest_import = 0
    for t in range(seconds):
        draws = {cid: ev.current * ev.phases * 230.0 for cid, ev in evs.items()}
        grid_w = 400.0 + sum(draws.values()) - pv[t]
        sessions = [SolarSession(cid, ev.closed and ev.current > 0.5, ev.phases, draws[cid], 16.0,
                                 phase_switching=cid == 2) for cid, ev in evs.items()]  # fmt: skip
        decisions = site.step(float(t), grid_w, sessions)
        for cid, ev in evs.items():
            ev.apply(t, decisions[cid])
        if min(grid_w, sum(draws.values())) > s.solar_import_margin_w:
            import_since = t if import_since is None else import_since
            longest_import = max(longest_import, t - import_since + 1)
        else:
            import_since = None
    for ev in evs.values():
        for (t_a, on_a), (t_b, _) in zip(ev.toggles, ev.toggles[1:], strict=False):
            assert t_b - t_a >= (s.solar_min_run_s if on_a else s.solar_min_pause_s) - 1, ev.toggles
    assert longest_import <= s.solar_min_run_s + 15
    assert all(policy.phase_switches <= s.max_phase_switches for policy in site.policies.values())
    assert evs[1].toggles and evs[2].toggles
