"""Local energy management on the agent side (issue 15), on the FakeClock: the charge controller's one place
for the effective limit and its binding name, the SiteController's failsafe / recovery / sharing / pausing
rules with a scripted site meter, the [site] configuration errors, and the composite schedule's cap."""

from __future__ import annotations

import math
from typing import Any

import pytest

from agent.charge_control import ControlLimits
from agent.config import ConfigError, SiteConfig, parse
from agent.energy.site import ConnectorLoad, SiteController, idle_limit
from agent.smart_charging import Composite, CompositePeriod, capped
from hal.clock import FakeClock
from hal.roles import SiteMeter
from hal.types import GridSample
from tests.agent.test_iec61851 import make_rig

# ----------------------------------------------------------------------------- the binding limit


def test_the_lowest_limit_binds_and_names_itself() -> None:
    rig = make_rig(ControlLimits(max_current_a=16.0, fixed_cable=True))
    c = rig.ctl
    rig.charge()
    assert (c.current_limit_a, c.binding_limit, c.site_limit_a) == (16.0, "connector", None)
    c.set_external_limit(10.0)
    assert (c.current_limit_a, c.binding_limit) == (10.0, "ocpp")
    c.set_site_limit(8.0, "site-fuse")
    assert (c.current_limit_a, c.binding_limit, c.site_limit_a, c.own_limit_a) == (8.0, "site-fuse", 8.0, 10.0)
    c.set_site_limit(10.0, "site-fuse")  # a tie: the connector's own limit is named
    assert c.binding_limit == "ocpp"
    c.set_site_limit(7.0, "solar")
    c.set_external_limit(32.0)  # a CSMS limit above the site's cannot raise the result
    assert (c.current_limit_a, c.binding_limit) == (7.0, "solar")
    status = c.status()
    assert status.binding_limit == "solar" and status.site_limit_a == 7.0


def test_a_site_limit_of_zero_pauses_in_x1() -> None:
    rig = make_rig(ControlLimits(max_current_a=16.0, fixed_cable=True))
    rig.charge()
    rig.ctl.set_site_limit(0.0, "failsafe")
    assert rig.ctl.duty_percent is None and rig.ctl.binding_limit == "failsafe"
    rig.ctl.set_site_limit(float("nan"), "site-fuse")  # garbage pauses, never raises
    assert rig.ctl.current_limit_a == 0.0


# ----------------------------------------------------------------------------- the site controller


class ScriptedMeter(SiteMeter):
    def __init__(self) -> None:
        self.sample: GridSample | None = None

    def latest(self) -> GridSample | None:
        return self.sample

    def answer(self, clock: FakeClock, amps: tuple[float, float, float]) -> None:
        self.sample = GridSample(amps, tuple(a * 230.0 for a in amps), clock.wall())  # type: ignore[arg-type]


def load(cid: int, *, offered: float = 0.0, measured: float | None = None, active: bool = True,
         started: float = 0.0) -> ConnectorLoad:
    return ConnectorLoad(
        connector_id=cid, active=active, own_limit_a=32.0, offered_a=offered, relay_closed=offered > 0,
        site_phases=(1, 2, 3), measured_a=None if measured is None else (measured, measured, measured),
        started_s=started,
    )


class Harness:
    def __init__(self, loads: list[ConnectorLoad], **site: Any) -> None:
        self.clock = FakeClock()
        self.meter = ScriptedMeter()
        self.loads = loads
        self.applied: dict[int, tuple[float | None, str]] = {}
        self.faults: list[tuple[bool, str]] = []
        fuse, mode = site.pop("fuse", 16.0), site.pop("mode", "grid-limit")
        config = SiteConfig(meter="grid", main_fuse_a=fuse, mode=mode, **site)
        self.site = SiteController(
            config, self.meter, self.clock, lambda: self.loads,
            lambda cid, amps, reason: self.applied.__setitem__(cid, (amps, reason)),
            lambda active, detail: self.faults.append((active, detail)),
        )

    def run(self, seconds: float, answer: tuple[float, float, float] | None = None) -> None:
        """Step every 0.5 s for ``seconds``; the meter answers ``answer`` each time (None: silent)."""
        for _ in range(round(seconds / 0.5)):
            self.clock.advance(0.5)
            if answer is not None:
                self.meter.answer(self.clock, answer)
            self.site.step()


def test_failsafe_until_the_first_reading_then_sharing_then_failsafe_and_fault_when_silent() -> None:
    h = Harness([load(1, offered=6.0, measured=6.0), load(2, offered=6.0, measured=6.0, started=1.0)])
    h.site.step()
    assert h.applied == {1: (6.0, "failsafe"), 2: (6.0, "failsafe")} and h.faults == []  # starting: no fault
    h.run(2.0, answer=(12.0, 12.0, 12.0))  # 12 A = the two EVs: nothing else on the site
    assert h.applied == {1: (7.5, "site-fuse"), 2: (7.5, "site-fuse")} and h.faults == []
    h.loads = [load(1, offered=7.5, measured=7.5), load(2, offered=7.5, measured=7.5, started=1.0)]
    silent_from = h.clock.monotonic()
    while h.applied[1][1] != "failsafe":
        h.run(0.5)  # no new reading
    assert h.clock.monotonic() - silent_from <= 2.5
    assert h.applied == {1: (6.0, "failsafe"), 2: (6.0, "failsafe")}
    assert h.faults and h.faults[-1][0] is True and "no reading" in h.faults[-1][1]
    h.run(0.5, answer=(15.0, 15.0, 15.0))
    assert h.faults[-1][0] is False and h.applied[1][1] == "site-fuse"
    assert len(h.faults) == 2, "raised once, cleared once"


def test_failsafe_sessions_that_do_not_fit_under_the_fuse_pause_latest_first() -> None:
    loads = [load(n, offered=10.0, measured=10.0, started=float(n)) for n in (1, 2, 3)] + [load(4, active=False)]
    h = Harness(loads, failsafe_current_a=6.0)  # 3 x 6 A > 16 A - 1 A: the third (latest) session pauses
    h.site.step()
    assert h.applied == {1: (6.0, "failsafe"), 2: (6.0, "failsafe"), 3: (0.0, "failsafe"), 4: (0.0, "failsafe")}
    h = Harness([loads[0], load(4, active=False)], failsafe_current_a=6.0)
    h.site.step()
    assert h.applied == {1: (6.0, "failsafe"), 4: (6.0, "failsafe")}  # room left: an idle one may start at 6 A


def test_a_nonsense_reading_fails_safe_at_once() -> None:
    h = Harness([load(1, offered=10.0, measured=10.0)])
    h.run(1.0, answer=(10.0, 10.0, 10.0))
    assert h.applied[1] == (15.0, "site-fuse")
    h.run(0.5, answer=(math.nan, 10.0, 10.0))
    assert h.applied[1] == (6.0, "failsafe") and "implausible" in h.faults[-1][1]
    h.run(0.5, answer=(5000.0, 10.0, 10.0))
    assert h.applied[1] == (6.0, "failsafe") and len(h.faults) == 1


def test_an_ev_that_does_not_follow_a_lower_offer_is_paused_while_the_site_is_over_its_fuse() -> None:
    h = Harness([load(1, offered=10.0, measured=10.0), load(2, offered=10.0, measured=10.0, started=1.0)])
    h.run(1.0, answer=(22.0, 22.0, 22.0))  # 2 A of house load, 20 A of EVs on a 16 A fuse
    assert h.applied[1] == (6.5, "site-fuse") and h.applied[2] == (6.5, "site-fuse")
    # The controller lowered both offers; EV 2 keeps drawing 10 A.
    h.loads = [load(1, offered=6.5, measured=6.5), load(2, offered=6.5, measured=10.0, started=1.0)]
    h.run(6.0, answer=(18.5, 18.5, 18.5))
    assert h.applied[2] == (6.5, "site-fuse"), "the EV still has its reaction time"
    h.run(1.0, answer=(18.5, 18.5, 18.5))
    assert h.applied[2] == (0.0, "site-fuse")  # paused
    assert h.applied[1][0] is not None and h.applied[1][0] > 6.5  # the other EV gets what it leaves


def test_small_increases_wait_decreases_do_not() -> None:
    h = Harness([load(1, offered=10.0, measured=10.0)])
    h.run(0.5, answer=(14.0, 14.0, 14.0))  # 4 A house: 11 A for the EV
    assert h.applied[1] == (11.0, "site-fuse")
    h.run(0.5, answer=(13.5, 13.5, 13.5))  # house 3.5 A: 11.5 A possible, +0.5 A is noise
    assert h.applied[1] == (11.0, "site-fuse")
    h.run(0.5, answer=(14.2, 14.2, 14.2))  # house 4.2 A: 10.8 A, applied at once
    assert h.applied[1] == (10.8, "site-fuse")


def test_an_idle_connector_is_offered_only_what_is_free() -> None:
    h = Harness([load(1, offered=10.0, measured=10.0), load(2, active=False)])
    h.run(0.5, answer=(14.0, 14.0, 14.0))
    assert h.applied[1] == (11.0, "site-fuse") and h.applied[2] == (0.0, "site-fuse")  # 0 A free
    assert idle_limit((20.0, 20.0, 20.0), [], [], (1, 2, 3)) == 20.0
    assert idle_limit((20.0, 5.0, 20.0), [], [], (1, 2, 3)) == 0.0


def exporting(watts_per_phase: float) -> tuple[float, float, float]:
    amps = -watts_per_phase / 230.0
    return (amps, amps, amps)


def test_solar_mode_starts_after_the_delay_and_follows_the_surplus() -> None:
    h = Harness([load(1)], mode="solar", solar_start_delay_s=10.0, solar_min_pause_s=0.0)
    h.run(5.0, answer=exporting(2300.0))  # 6.9 kW export: 10 A per phase of surplus
    assert h.applied[1] == (0.0, "solar"), "waiting for the start delay"
    h.run(6.0, answer=exporting(2300.0))
    assert h.applied[1] == (10.0, "solar")  # the surplus, below the 16 A fuse share
    # The EV draws its 10 A: the export is gone, the surplus stays (export + what the EV draws).
    h.loads = [load(1, offered=10.0, measured=10.0)]
    h.run(1.0, answer=(0.0, 0.0, 0.0))
    assert h.applied[1] == (10.0, "solar")


def test_solar_plus_min_never_pauses_and_the_fuse_still_binds() -> None:
    h = Harness([load(1, offered=6.0, measured=6.0)], mode="solar+min", min_current_a=6.0)
    h.run(1.0, answer=(6.0, 6.0, 6.0))  # no sun: the minimum from the grid
    assert h.applied[1] == (6.0, "solar")
    h.run(1.0, answer=(20.0, 20.0, 20.0))  # the house takes 14 A of the 15: the minimum does not fit
    assert h.applied[1] == (0.0, "site-fuse")


# ----------------------------------------------------------------------------- [site] configuration

BASE = {
    "station": {"id": "CP1"},
    "devices": {"board": {"driver": "pilot-board-serial"}, "grid": {"driver": "modbus-meter"}},
    "connectors": [{"pilot": "board"}],
}


def test_site_defaults_and_a_full_table() -> None:
    assert not parse(BASE).site.enabled
    config = parse({**BASE, "site": {"meter": "grid", "main_fuse_a": 25, "mode": "solar+min", "min_current_a": 8}})
    site = config.site
    assert site.enabled and site.main_fuse_a == 25.0 and site.mode == "solar+min" and site.min_current_a == 8.0
    assert config.connectors[0].site_phases == (1, 2, 3)


@pytest.mark.parametrize(
    ("site", "key"),
    [
        ({"meter": "nope"}, "site.meter"),
        ({"mode": "grid-limit"}, "site.meter"),
        ({"meter": "grid", "mode": "cheap"}, "site.mode"),
        ({"meter": "grid", "phases": 2}, "site.phases"),
        ({"meter": "grid", "main_fuse_a": 3}, "site.main_fuse_a"),
        ({"meter": "grid", "main_fuse_a": 10, "margin_a": 5}, "site.margin_a"),
        ({"meter": "grid", "failsafe_current_a": 3}, "site.failsafe_current_a"),
        ({"meter": "grid", "stale_after_s": 5}, "site.stale_after_s"),
        ({"meter": "grid", "fuse": 35}, "site.fuse"),
        ({"meter": "grid", "main_fuse_a": 12, "margin_a": 1, "failsafe_current_a": 12}, "site.failsafe_current_a"),
        ({"meter": "grid", "failsafe_current_a": 100}, "site.failsafe_current_a"),
    ],
)
def test_site_errors_name_the_key(site: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse({**BASE, "site": site})
    assert caught.value.key == key


def test_site_phases_errors_name_the_key() -> None:
    with pytest.raises(ConfigError) as caught:
        parse({**BASE, "connectors": [{"pilot": "board", "site_phases": [1, 1]}]})
    assert caught.value.key == "connectors[0].site_phases"


# ----------------------------------------------------------------------------- the composite schedule's cap


def test_composite_schedule_capped_by_the_site_limit() -> None:
    schedule = Composite(0.0, 300, (CompositePeriod(0.0, 32.0, 3), CompositePeriod(60.0, 10.0, 3),
                                    CompositePeriod(120.0, 20.0, 3)))
    out = capped(schedule, 16.0)
    assert [(p.start, p.amps) for p in out.periods] == [(0.0, 16.0), (60.0, 10.0), (120.0, 16.0)]
    assert capped(schedule, None) is schedule
    merged = capped(schedule, 8.0)
    assert [(p.start, p.amps) for p in merged.periods] == [(0.0, 8.0)] and merged.duration_s == 300
