"""The site controller (issue 15): keeps the grid connection point under its fuse by sharing it between
the connectors, charges from solar surplus in the solar modes, and falls back to a safe current when the
site meter goes silent or reports nonsense. It runs on the CONTROL side (the fuse is safety), one task,
one step every ``PERIOD_S``.

Each step:
1. Read the site meter (``SiteMeter.latest()``). A reading is fresh while a new one (a new timestamp)
   arrived within ``[site] stale_after_s`` on the monotonic clock; nonsense (not finite, far beyond any
   fuse) counts as no reading. Without a fresh reading every connector gets ``failsafe_current_a``
   (reason "failsafe"), at the latest ``stale_after_s + PERIOD_S`` (<= 2.5 s) after the last good
   reading, and the station-level fault ``Fault.SITE_METER`` is raised (``cpctl faults``, OCPP 1.6
   StatusNotification on connector 0); it clears on the first fresh reading.
2. EV current per site phase from the connector meters (mapped through ``connectors[].site_phases``;
   a connector without a meter counts its offer while its contactor is closed), the capacity left for
   the EVs (``allocator.ev_capacity``: fuse - margin - the non-EV load), then ``allocator.allocate``.
3. Apply each allocation as the connector's site limit (``Connector.set_site_limit``): the charge
   controller takes the minimum with its other limits, names the binding one, and keeps the IEC rules
   (one duty change per 5 s, pause below 6 A). Decreases are applied at once; an increase smaller than
   ``INCREASE_DEADBAND_A`` is not (no duty change for noise). The split passes ``allocator.Stabilizer``
   first: a new split replaces the previous one only after ``STABLE_HOLD_S`` (and when it differs by more
   than ``STABLE_THRESHOLD_A``), unless the previous one no longer fits the fuse or a limit, or a session
   starts, pauses or resumes (no flip-flop between two splits every step).
4. A connector whose EV still draws more than offered (+ ``FOLLOW_TOLERANCE_A``) ``EV_REACTION_S`` plus
   the meter's slack after its offer dropped, while the connection point is over the fuse, is paused
   (site limit 0) for ``NOT_FOLLOWING_PAUSE_S``.
5. Over the fuse, a connector whose lowering would wait for its duty window (> ``URGENT_WAIT_S``) while
   the lowerings that act now do not remove the excess is paused at once (X1, allowed at any time;
   ``overload_pauses``); the charge controller offers its allocation again after T_STEP_X1.
A connector with no session gets the current still free on its phases (0 when less than 6 A), so an EV
that starts is never first offered more than the site has.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.config import SiteConfig
from agent.energy.allocator import Allocation, Demand, Stabilizer, allocate, ev_capacity
from hal.clock import Clock
from hal.roles import SiteMeter
from hal.types import GridSample

if TYPE_CHECKING:
    from agent.connector import Connector

log = logging.getLogger("cpagent.energy")

PERIOD_S = 0.5
IEC_MIN_A = 6.0
INCREASE_DEADBAND_A = 1.0  # an increase smaller than this is not worth a duty change
EV_REACTION_S = 5.0  # IEC 61851-1 Table A.8: the EV follows a new duty within 5 s
METER_SLACK_S = 1.5  # the connector meter's poll period and bus time on top of the EV's reaction
FOLLOW_TOLERANCE_A = 1.0  # drawn above offer by more than this = not following
NOT_FOLLOWING_PAUSE_S = 60.0
STABLE_HOLD_S = 10.0  # a new split replaces the previous one after this, unless a fuse/limit needs it sooner
STABLE_THRESHOLD_A = 0.5  # ... and only when some current differs by more than this
URGENT_WAIT_S = 1.0  # over the fuse, a lowering whose duty window opens later than this pauses (X1) instead
DRAWING_A = 1.0  # a phase carrying more than this is loaded by the EV
NONSENSE_FACTOR = 10.0  # a grid current beyond 10 x the fuse is not a reading
VOLTAGE_V = 230.0

REASON_FUSE = "site-fuse"
REASON_SOLAR = "solar"
REASON_FAILSAFE = "failsafe"


@dataclass(frozen=True, slots=True)
class ConnectorLoad:
    """What the site controller needs of one connector, read at one instant."""

    connector_id: int
    active: bool  # a session runs with the EV connected: it takes part in the sharing
    own_limit_a: float  # every limit of the connector itself (max, cable, OCPP, availability)
    offered_a: float  # what the pilot offers now (0 without PWM)
    relay_closed: bool
    site_phases: tuple[int, ...]  # site phase of the connector's L1, L2, L3 (as wired)
    measured_a: tuple[float | None, ...] | None  # per connector phase; None without a (fresh) meter
    started_s: float = 0.0  # session start (wall), for the pause order
    supply_phases: int = 3  # phases the board supplies now (a phase switch changes it)
    can_switch: bool = False  # the board can switch 1/3 phases for this session now (cap not reached)
    duty_due_s: float = -math.inf  # monotonic time from which the pilot may change its duty again (IEC: 5 s)


def load_of(connector: Connector) -> ConnectorLoad:
    c = connector.controller
    sample = connector.meter.latest if connector.meter is not None else None
    session = connector.session
    switcher = connector.phase_switcher
    supply = switcher.active_phases()
    supplied = min(connector.config.phases, supply)
    wired = connector.config.site_phases[:supplied] or connector.config.site_phases
    return ConnectorLoad(
        connector_id=connector.id,
        active=session is not None and c.ev_connected() and connector.available and not connector.maintenance,
        own_limit_a=c.own_limit_a if connector.available else 0.0,
        offered_a=c.offered_current_a,
        relay_closed=c.relay_commanded_closed,
        site_phases=tuple(wired),
        measured_a=sample.current_a if sample is not None else None,
        started_s=session.start_wall if session is not None else 0.0,
        supply_phases=supply,
        can_switch=switcher.refusal(1 if supply == 3 else 3) is None,
        duty_due_s=c.duty_change_due_s,
    )


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def plausible(sample: GridSample, config: SiteConfig) -> bool:
    """Finite values on the site's phases, none beyond NONSENSE_FACTOR x the fuse."""
    bound = NONSENSE_FACTOR * config.main_fuse_a
    for phase in range(config.phases):
        current, power = sample.current_a[phase], sample.power_w[phase]
        if not (_finite(current) and _finite(power)) or abs(current) > bound:
            return False
    return True


def ev_phases(load: ConnectorLoad) -> tuple[int, ...]:
    """The site phases this EV loads now: those carrying current, else every wired one (conservative)."""
    if load.measured_a is not None and load.relay_closed:
        drawing = tuple(
            site for site, amps in zip(load.site_phases, load.measured_a, strict=False)
            if amps is not None and _finite(amps) and amps > DRAWING_A
        )
        if drawing:
            return drawing
    return load.site_phases


def ev_currents(loads: Sequence[ConnectorLoad]) -> tuple[float, float, float]:
    """What the EVs draw now per site phase (measured; the offer for a connector without a meter)."""
    per_phase = [0.0, 0.0, 0.0]
    for load in loads:
        if not load.relay_closed:
            continue
        if load.measured_a is None:
            for site in load.site_phases:
                per_phase[site - 1] += load.offered_a
            continue
        for site, amps in zip(load.site_phases, load.measured_a, strict=False):
            if amps is not None and _finite(amps) and amps > 0:
                per_phase[site - 1] += amps
    return (per_phase[0], per_phase[1], per_phase[2])


def drawn(load: ConnectorLoad) -> float | None:
    if load.measured_a is None or not load.relay_closed:
        return None
    values = [a for a in load.measured_a if a is not None and _finite(a)]
    return max(values) if values else None


def idle_limit(capacity: tuple[float, float, float], allocations: Sequence[Allocation],
               demands: Sequence[Demand], phases: tuple[int, ...]) -> float:
    """The current still free on ``phases`` after the allocations (0 below 6 A), for a connector
    without a session: what a starting EV may be offered first."""
    left = list(capacity)
    for allocation, demand in zip(allocations, demands, strict=True):
        for site in demand.phases:
            left[site - 1] -= allocation.current_a
    free = min(left[site - 1] for site in phases)
    free = math.floor(max(0.0, free) * 10) / 10
    return free if free >= IEC_MIN_A else 0.0


def failsafe_limits(config: SiteConfig, loads: Sequence[ConnectorLoad]) -> dict[int, float]:
    """Without a site reading: ``failsafe_current_a`` for every session, as far as the sessions alone fit
    under main_fuse_a - margin_a (more sessions than that: the latest ones pause, as in the sharing); a
    connector without a session gets what is left of that, at most the failsafe current."""
    failsafe = config.failsafe_current_a
    room = max(0.0, config.main_fuse_a - config.margin_a)
    capacity = (room, room, room) if config.phases == 3 else (room, 0.0, 0.0)
    demands = [
        Demand(
            connector_id=load.connector_id,
            limit_a=min(load.own_limit_a, failsafe),
            phases=load.site_phases if config.phases == 3 else (1,),  # as wired: the measurement may be stale
            drawn_a=None,
            active=load.active and failsafe > 0,
            started_s=load.started_s,
        )
        for load in loads
    ]
    allocations = allocate(capacity, demands, min_current_a=IEC_MIN_A, binding_reason=REASON_FAILSAFE)
    out: dict[int, float] = {}
    for load, demand, allocation in zip(loads, demands, allocations, strict=True):
        if load.active:
            out[load.connector_id] = allocation.current_a
        else:
            out[load.connector_id] = min(failsafe, idle_limit(capacity, allocations, demands, demand.phases))
    return out


def overload_pauses(grid: GridSample, config: SiteConfig, loads: Sequence[ConnectorLoad],
                    demands: Sequence[Demand], allocations: Sequence[Allocation], now: float) -> set[int]:
    """Connectors to pause at once (X1, allowed at any time) because the site is over its fuse and the
    lowerings that can act soon do not remove the excess: a lowering waits for the connector's duty window
    (one change per 5 s), so without this an overload could last that wait + the meter + the EV's ramp.

    Per site phase over the fuse, counted as relief: what EVs already draw above their offer (they follow
    it), what connectors paused or lowered at once (window open within ``URGENT_WAIT_S``) give up. While
    that is short of the excess, the latest-started connector whose lowering must wait is paused."""
    excess = [grid.current_a[p] - config.main_fuse_a if p < config.phases else 0.0 for p in range(3)]
    if all(e <= 0 for e in excess):
        return set()
    relief = [0.0, 0.0, 0.0]
    waiting: list[tuple[ConnectorLoad, Demand, float]] = []
    for load, demand, allocation in zip(loads, demands, allocations, strict=True):
        if not load.relay_closed:
            continue
        amps = drawn(load)
        now_a = load.offered_a if amps is None else amps
        following = max(0.0, now_a - load.offered_a)  # already asked for: the EV ramps down by itself
        further = max(0.0, min(now_a, load.offered_a) - allocation.current_a)
        soon = load.offered_a <= 0 or allocation.current_a <= 0 or load.duty_due_s - now <= URGENT_WAIT_S
        for site in demand.phases:
            relief[site - 1] += following + (further if soon else 0.0)
        if further > 0 and not soon:
            waiting.append((load, demand, min(now_a, load.offered_a)))
    pauses: set[int] = set()
    for load, demand, amps in sorted(waiting, key=lambda w: (w[0].started_s, w[0].connector_id), reverse=True):
        if any(excess[site - 1] > relief[site - 1] for site in demand.phases):
            pauses.add(load.connector_id)
            for site in demand.phases:
                relief[site - 1] += amps
    return pauses


class SiteController:
    """See the module docstring. ``loads()`` reads the connectors, ``apply(id, amps, reason)`` sets a
    connector's site limit, ``on_fault(active, detail)`` raises/clears the station-level fault."""

    def __init__(
        self,
        config: SiteConfig,
        meter: SiteMeter,
        clock: Clock,
        loads: Callable[[], Sequence[ConnectorLoad]],
        apply: Callable[[int, float | None, str], None],
        on_fault: Callable[[bool, str], None],
        switch: Callable[[int, int], None] | None = None,
    ) -> None:
        self.config = config
        self.meter = meter
        self.clock = clock
        self.loads = loads
        self.apply = apply
        self.on_fault = on_fault
        self.switch = switch  # asks a connector for a 1/3-phase switch (solar modes with phase_switching)
        self.solar: Any = None  # agent.energy.solar.SolarSite in the solar modes, made on first use
        self.failsafe = False
        self.fault_raised = False
        self.started_at = clock.monotonic()
        self._last_timestamp: float | None = None
        self._fresh_at: float | None = None  # monotonic time the last new reading was seen
        self._applied: dict[int, tuple[float | None, str]] = {}
        self._offers: dict[int, tuple[float, float]] = {}  # id -> (offered A, monotonic when it changed)
        self._paused_until: dict[int, float] = {}
        self.stable = Stabilizer(hold_s=STABLE_HOLD_S, threshold_a=STABLE_THRESHOLD_A)
        self.last_capacity: tuple[float, float, float] | None = None
        self.last_grid: GridSample | None = None

    async def run(self) -> None:
        while True:
            try:
                self.step()
            except Exception:  # a bug in one step must not stop the fuse protection: log, fail safe, go on
                log.exception("site controller step failed; failsafe current applied")
                self._apply_failsafe(self.loads(), "internal error in the site controller")
            await asyncio.sleep(PERIOD_S)

    # ------------------------------------------------------------------ one step
    def step(self) -> None:
        now = self.clock.monotonic()
        loads = list(self.loads())
        self._track_offers(loads, now)
        grid = self._fresh_reading(now)
        if grid is None:
            starting = self._fresh_at is None and now - self.started_at < self.config.stale_after_s
            self._apply_failsafe(loads, None if starting else self._stale_detail(now))
            return
        if self.failsafe:
            self.failsafe = False
            log.warning("site meter answers again: load sharing resumes")
        if self.fault_raised:
            self.fault_raised = False
            self.on_fault(False, "site meter answers again")
        self.last_grid = grid
        self._share(grid, loads, now)

    def _fresh_reading(self, now: float) -> GridSample | None:
        sample = self.meter.latest()
        if sample is not None and sample.timestamp != self._last_timestamp:
            self._last_timestamp = sample.timestamp
            if plausible(sample, self.config):
                self._fresh_at = now
        if sample is None or self._fresh_at is None or now - self._fresh_at > self.config.stale_after_s:
            return None
        if not plausible(sample, self.config):
            return None
        return sample

    def _stale_detail(self, now: float) -> str:
        sample = self.meter.latest()
        if sample is not None and not plausible(sample, self.config):
            return f"site meter reports implausible values: {sample.current_a} A"
        if self._fresh_at is None:
            return "site meter has not answered since start"
        return f"no reading from the site meter for {now - self._fresh_at:.1f} s"

    def _apply_failsafe(self, loads: Sequence[ConnectorLoad], detail: str | None) -> None:
        if detail is not None and not self.failsafe:
            self.failsafe = True
            log.warning("%s: failsafe %.1f A on every session", detail, self.config.failsafe_current_a)
        if detail is not None and not self.fault_raised:
            self.fault_raised = True
            self.on_fault(True, detail)
        self.stable.reset()
        for connector_id, amps in failsafe_limits(self.config, loads).items():
            self._set(connector_id, amps, REASON_FAILSAFE, force=True)

    # ------------------------------------------------------------------ sharing
    def _share(self, grid: GridSample, loads: Sequence[ConnectorLoad], now: float) -> None:
        cfg = self.config
        capacity = ev_capacity(grid, ev_currents(loads), cfg.main_fuse_a, cfg.margin_a)
        if cfg.phases == 1:
            capacity = (capacity[0], 0.0, 0.0)
        reason = REASON_FUSE
        solar = self._solar_caps(grid, loads, now)  # connector -> solar current (0 = paused), None: no solar
        self.last_capacity = capacity
        overloaded = any(grid.current_a[p] > cfg.main_fuse_a for p in range(cfg.phases))
        demands: list[Demand] = []
        for load in loads:
            phases = ev_phases(load) if cfg.phases == 3 else (1,)
            if load.active and self._not_following(load, now, overloaded):
                self._paused_until[load.connector_id] = now + NOT_FOLLOWING_PAUSE_S
                log.warning(
                    "connector %d: EV draws %.1f A, %.1f s after the offer dropped to %.1f A, with the site over "
                    "its fuse: paused for %.0f s", load.connector_id, drawn(load) or 0.0, EV_REACTION_S,
                    load.offered_a, NOT_FOLLOWING_PAUSE_S,
                )
            paused = self._paused_until.get(load.connector_id, -math.inf) > now
            cap = solar.get(load.connector_id) if solar is not None else None
            demands.append(
                Demand(
                    connector_id=load.connector_id,
                    limit_a=load.own_limit_a if cap is None else min(load.own_limit_a, cap),
                    phases=phases,
                    drawn_a=self._drawn_if_settled(load, now),
                    active=load.active and not paused and (cap is None or cap > 0),
                    offered_a=load.offered_a if load.relay_closed else None,
                    started_s=load.started_s,
                )
            )
        allocations = allocate(capacity, demands, min_current_a=IEC_MIN_A, binding_reason=reason)
        allocations = self.stable.step(now, capacity, demands, allocations)  # no flip-flop between splits
        urgent = overload_pauses(grid, cfg, loads, demands, allocations, now)
        for load, demand, allocation in zip(loads, demands, allocations, strict=True):
            cap = solar.get(load.connector_id) if solar is not None else None
            solar_binds = cap is not None and cap < load.own_limit_a and allocation.binding == "connector"
            if load.connector_id in urgent:  # X1 now; the controller offers the allocation after T_STEP_X1
                log.warning(
                    "site over its fuse (%s A) and connector %d cannot lower its duty for %.1f s: paused at once",
                    grid.current_a, load.connector_id, load.duty_due_s - now,
                )
                self._set(load.connector_id, 0.0, REASON_FUSE, force=True)
            elif demand.active:
                self._set(load.connector_id, allocation.current_a, REASON_SOLAR if solar_binds else reason)
            elif load.active and cap == 0.0 and self._paused_until.get(load.connector_id, -math.inf) <= now:
                self._set(load.connector_id, 0.0, REASON_SOLAR)  # no surplus: paused by the solar rules
            elif load.active:  # paused for not following
                self._set(load.connector_id, 0.0, REASON_FUSE, force=True)
            elif cfg.mode == "solar":  # no session: nothing before the solar rules start one (no PWM at first)
                self._set(load.connector_id, 0.0, REASON_SOLAR, force=True)
            else:
                phases = load.site_phases if cfg.phases == 3 else (1,)
                self._set(load.connector_id, idle_limit(capacity, allocations, demands, phases), reason, force=True)

    def _solar_caps(self, grid: GridSample, loads: Sequence[ConnectorLoad], now: float) -> dict[int, float] | None:
        """Per connector with a session: the current the solar rules grant (0 = pause), None outside the
        solar modes. Asks for a phase switch when the rules want one and the board can."""
        if self.config.mode not in ("solar", "solar+min"):
            return None
        from agent.energy.solar import SolarSession, SolarSettings, SolarSite

        if self.solar is None:
            c = self.config
            self.solar = SolarSite(SolarSettings(
                mode=c.mode, min_current_a=c.min_current_a, phase_switching=c.phase_switching,
                solar_start_delay_s=c.solar_start_delay_s, solar_stop_delay_s=c.solar_stop_delay_s,
                solar_min_run_s=c.solar_min_run_s, solar_min_pause_s=c.solar_min_pause_s,
                solar_import_margin_w=c.solar_import_margin_w, voltage_v=VOLTAGE_V,
            ))
        active = sorted((x for x in loads if x.active), key=lambda x: (x.started_s, x.connector_id))
        sessions = [
            SolarSession(
                connector_id=x.connector_id,
                running=x.relay_closed and x.offered_a > 0,
                phases=x.supply_phases,
                drawn_w=sum(a for a in (x.measured_a or ()) if a is not None and _finite(a)) * VOLTAGE_V
                if x.measured_a is not None else (x.offered_a * x.supply_phases * VOLTAGE_V if x.relay_closed else 0.0),
                limit_a=x.own_limit_a,
                phase_switching=x.can_switch,
                offered_a=x.offered_a,
                settled=self._settled(x, now),
            )
            for x in active
        ]
        decisions = self.solar.step(now, sum(grid.power_w), sessions)
        caps: dict[int, float] = {}
        for x in active:
            decision = decisions[x.connector_id]
            if decision.phases != x.supply_phases and x.can_switch and self.switch is not None:
                self.switch(x.connector_id, decision.phases)
            amps = float(decision.current_a) if decision.run else 0.0
            caps[x.connector_id] = math.floor(amps * 10) / 10 if math.isfinite(amps) else x.own_limit_a
        return caps

    def _track_offers(self, loads: Sequence[ConnectorLoad], now: float) -> None:
        for load in loads:
            previous = self._offers.get(load.connector_id)
            if previous is None or abs(previous[0] - load.offered_a) > 0.05:
                self._offers[load.connector_id] = (load.offered_a, now)

    def _settled(self, load: ConnectorLoad, now: float) -> bool:
        """The EV has had its reaction time (plus the meter's slack) since the offer last changed."""
        offer = self._offers.get(load.connector_id)
        return offer is not None and now - offer[1] >= EV_REACTION_S + METER_SLACK_S

    def _drawn_if_settled(self, load: ConnectorLoad, now: float) -> float | None:
        return drawn(load) if self._settled(load, now) else None

    def _not_following(self, load: ConnectorLoad, now: float, overloaded: bool) -> bool:
        if not overloaded or not load.relay_closed or load.offered_a <= 0 or not self._settled(load, now):
            return False
        amps = drawn(load)
        return amps is not None and amps > load.offered_a + FOLLOW_TOLERANCE_A

    def _set(self, connector_id: int, amps: float | None, reason: str, *, force: bool = False) -> None:
        previous = self._applied.get(connector_id)
        if previous is not None and not force:
            old, old_reason = previous
            if (
                amps is not None and old is not None and old > 0
                and 0 < amps - old < INCREASE_DEADBAND_A and reason == old_reason
            ):
                return  # a small increase is not worth a duty change
        if previous == (amps, reason):
            return
        self._applied[connector_id] = (amps, reason)
        log.debug("connector %d: site limit %s -> %s A (%s)", connector_id,
                  None if previous is None else previous[0], amps, reason)
        self.apply(connector_id, amps, reason)


def find_site_meter(config: SiteConfig, devices: dict[str, Any]) -> SiteMeter:
    """The configured site meter's role; ConfigError naming ``site.meter`` when the device cannot be one."""
    from agent.config import ConfigError
    from hal.types import Role

    assert config.meter is not None
    device = devices[config.meter]
    if Role.SITE_METER not in device.roles:
        raise ConfigError(
            "site.meter",
            f"device {config.meter!r} does not provide the site_meter role (a modbus-meter whose model "
            "has per-phase current and power, e.g. sdm630, em340, abb_b23, sdm120)",
        )
    role: SiteMeter = device.role(Role.SITE_METER)
    return role
