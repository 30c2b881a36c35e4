"""OCPP 1.6 SmartCharging profile: SetChargingProfile, ClearChargingProfile, GetCompositeSchedule, the
profiles persisted in the state db, and a background task that keeps every connector's external current
limit equal to the composite limit (re-evaluated at each period boundary, validFrom/validTo, and when
transactions start or stop). The rules themselves live in ``agent.smart_charging``.

The controller does the rest: below 6 A it pauses (the transaction goes on), and it changes the PWM
duty at most once per 5 s.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agent import smart_charging as sc
from agent.db import migrate, transaction
from agent.events import SessionStarted, SessionStopped, StationEvent
from agent.ocpp.limit_loop import MAX_WAIT_S as MAX_WAIT_S  # this module's: the cpsim fleet lengthens it
from agent.ocpp.limit_loop import MIN_WAIT_S, CompositeMemos, keep_limits, push_limit
from agent.ocpp.v16.meter_values import ocpp_time
from hal.flag import Flag

if TYPE_CHECKING:
    from agent.ocpp.v16.service import OcppService
    from agent.station_api import ConnectorView

log = logging.getLogger("cpagent.ocpp.v16.smart_charging")

COMPONENT = "ocpp_smart_charging"
MIGRATIONS = [
    "CREATE TABLE charging_profiles (id INTEGER PRIMARY KEY, body TEXT NOT NULL)",
]
_UNITS = {"Current": sc.RateUnit.AMPS, "Power": sc.RateUnit.WATTS}


# -- wire form <-> model (pure) ------------------------------------------------------------------


def _time(text: Any) -> float | None:
    if text is None:
        return None
    from agent.ocpp.v16.service import parse_time

    return parse_time(str(text))


def parse_profile(connector_id: int, data: Mapping[str, Any], installed_at: float) -> sc.Profile:
    """A csChargingProfiles object (snake_case keys, as handlers receive it) -> Profile; raises
    ValueError/KeyError/TypeError on anything malformed."""
    schedule = data["charging_schedule"]
    periods = tuple(
        sc.Period(float(p["start_period"]), float(p["limit"]),
                  int(p["number_phases"]) if p.get("number_phases") is not None else None)
        for p in schedule["charging_schedule_period"]
    )
    recurrency = data.get("recurrency_kind")
    duration = schedule.get("duration")
    min_rate = schedule.get("min_charging_rate")
    tx = data.get("transaction_id")
    return sc.Profile(
        id=int(data["charging_profile_id"]),
        connector_id=int(connector_id),
        stack_level=int(data["stack_level"]),
        purpose=sc.Purpose(data["charging_profile_purpose"]),
        kind=sc.Kind(data["charging_profile_kind"]),
        schedule=sc.Schedule(
            unit=sc.RateUnit(schedule["charging_rate_unit"]),
            periods=periods,
            start=_time(schedule.get("start_schedule")),
            duration_s=float(duration) if duration is not None else None,
            min_rate=float(min_rate) if min_rate is not None else None,
        ),
        recurrency=sc.Recurrency(recurrency) if recurrency is not None else None,
        valid_from=_time(data.get("valid_from")),
        valid_to=_time(data.get("valid_to")),
        transaction_id=int(tx) if tx is not None else None,
        installed_at=installed_at,
    )


def profile_to_json(profile: sc.Profile) -> str:
    return json.dumps(dataclasses.asdict(profile))


def profile_from_json(text: str) -> sc.Profile:
    d = json.loads(text)
    s = d["schedule"]
    return sc.Profile(
        **{**d, "purpose": sc.Purpose(d["purpose"]), "kind": sc.Kind(d["kind"]),
           "recurrency": sc.Recurrency(d["recurrency"]) if d["recurrency"] else None,
           "schedule": sc.Schedule(**{**s, "unit": sc.RateUnit(s["unit"]),
                                      "periods": tuple(sc.Period(**p) for p in s["periods"])})}
    )


def _limit_value(amps: float, unit: sc.RateUnit, electrical: sc.Electrical, phases: int) -> float:
    if unit is sc.RateUnit.AMPS:
        return round(amps, 1)
    return float(round(electrical.watts(amps, phases)))


# -- the feature ---------------------------------------------------------------------------------


class SmartCharging:
    profile = "SmartCharging"

    def __init__(self, service: OcppService) -> None:
        self._svc = service
        self._db = service.station.shared.db
        migrate(self._db, COMPONENT, MIGRATIONS)
        self.profiles: list[sc.Profile] = self._load()
        self.applied: dict[int, float | None] = {}  # connector -> limit last given to its controller
        self._remote_start: dict[int, tuple[str, sc.Profile]] = {}  # RemoteStartTransaction's TxProfile
        self._changed = Flag()
        # GetCompositeSchedule: the limits at change times evaluated so far, per connector situation of the
        # installed set (as 2.0.1); cleared whenever the set changes (_store).
        self._memos = CompositeMemos()
        service.station.subscribe(self._on_event)

    # -- persistence -------------------------------------------------------------------------------

    def _load(self) -> list[sc.Profile]:
        out = []
        for (body,) in self._db.execute("SELECT body FROM charging_profiles ORDER BY id"):
            try:
                out.append(profile_from_json(body))
            except (ValueError, KeyError, TypeError) as exc:
                log.error("dropping an unreadable stored charging profile: %s", exc)
        return out

    def _store(self, profiles: list[sc.Profile]) -> bool:
        """Persist the whole (small) set in one transaction; only then is it in force."""
        try:
            with transaction(self._db):
                self._db.execute("DELETE FROM charging_profiles")
                self._db.executemany(
                    "INSERT INTO charging_profiles(id, body) VALUES (?, ?)",
                    [(p.id, profile_to_json(p)) for p in profiles],
                )
        except Exception as exc:  # sqlite3.Error and friends: keep the old set
            log.error("charging profiles not stored: %s", exc)
            return False
        self.profiles = profiles
        self._memos.clear()  # the limits remembered for GetCompositeSchedule were for the old set
        self._changed.set()
        return True

    # -- station facts -----------------------------------------------------------------------------

    @property
    def _connectors(self) -> Mapping[int, ConnectorView]:
        return self._svc.station.connector_views()

    def limits(self) -> sc.Limits:
        store = self._svc.store
        units = frozenset(_UNITS[u] for u in store.get_csl("ChargingScheduleAllowedChargingRateUnit") if u in _UNITS)
        return sc.Limits(
            max_stack_level=store.get_int("ChargeProfileMaxStackLevel"),
            allowed_units=units,
            max_periods=store.get_int("ChargingScheduleMaxPeriods"),
            max_installed=store.get_int("MaxChargingProfilesInstalled"),
        )

    def _transaction_id(self, connector: ConnectorView) -> int | None:
        session = connector.session
        return self._svc.outbox.transaction_id(session.ref) if session is not None else None

    def situation(self, connector_id: int) -> sc.Situation:
        if connector_id == 0:
            total = sum(c.max_current_a for c in self._connectors.values())
            return sc.Situation(0, sc.Electrical(total, 3, self._voltage(None)))
        connector = self._svc.station.connector_view(connector_id)
        session = connector.session
        return sc.Situation(
            connector_id,
            sc.Electrical(connector.max_current_a, connector.phases, self._voltage(connector)),
            transaction_id=self._transaction_id(connector),
            tx_start=session.start_wall + self._svc.clock_offset_s if session is not None else None,
            cp_share=sum(1 for c in self._connectors.values() if c.session is not None),
        )

    def _site_limit(self, connector_id: int) -> float | None:
        """The site allocation now (local energy management, an external limit the composite includes);
        for connector 0 the sum over the connectors. None: no site limit."""
        views = self._connectors
        if connector_id != 0:
            return views[connector_id].site_limit_a
        if all(c.site_limit_a is None for c in views.values()):
            return None
        return sum(c.max_current_a if c.site_limit_a is None else c.site_limit_a for c in views.values())

    def _voltage(self, connector: ConnectorView | None) -> float:
        """Measured phase voltage (whole volts, so noise does not move the limit), else 230 V."""
        connectors = [connector] if connector is not None else list(self._connectors.values())
        volts = [
            v for c in connectors if c.last_sample is not None for v in c.last_sample.voltage_v
            if v is not None and v > 50.0
        ]
        return float(round(sum(volts) / len(volts))) if volts else sc.DEFAULT_VOLTAGE_V

    # -- CS -> CP ----------------------------------------------------------------------------------

    def _check(self, connector_id: int, data: Mapping[str, Any]) -> sc.Profile | None:
        limits = self.limits()
        try:
            count = len(data["charging_schedule"]["charging_schedule_period"])
        except (KeyError, TypeError):
            count = 0  # parse_profile says what is wrong
        if count > limits.max_periods:  # before building them: the cost stays bounded by what we advertise
            log.warning("charging profile rejected: %d periods, ChargingScheduleMaxPeriods is %d",
                        count, limits.max_periods)
            return None
        try:
            profile = parse_profile(connector_id, data, self._svc.wall())
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:  # OverflowError: 10^400 as a float
            log.warning("charging profile rejected: malformed (%.200s)", exc)
            return None
        found = sc.problems(profile, limits, self._svc.station.connector_ids())
        if found:
            log.warning("charging profile %d rejected: %s", profile.id, "; ".join(found))
            return None
        return profile

    async def on_set_charging_profile(
        self, connector_id: int, cs_charging_profiles: dict[str, Any], **_: Any
    ) -> dict[str, Any]:
        profile = self._check(connector_id, cs_charging_profiles)
        if profile is None:
            return {"status": "Rejected"}
        if profile.purpose is sc.Purpose.TX:
            connector = self._svc.station.connector_view(profile.connector_id)
            current = self._transaction_id(connector)
            if connector.session is None or (
                profile.transaction_id is not None and profile.transaction_id != current
            ):
                log.warning("TxProfile %d rejected: no such transaction on connector %d",
                            profile.id, profile.connector_id)
                return {"status": "Rejected"}
        installed = sc.install(self.profiles, profile, self.limits())
        if installed is None:
            log.warning("charging profile %d rejected: MaxChargingProfilesInstalled reached", profile.id)
            return {"status": "Rejected"}
        if not self._store(installed):
            return {"status": "Rejected"}
        log.info("charging profile %d installed (%s, connector %d, stack level %d)",
                 profile.id, profile.purpose.value, profile.connector_id, profile.stack_level)
        return {"status": "Accepted"}

    async def on_clear_charging_profile(
        self,
        id: int | None = None,  # the field's name on the wire
        connector_id: int | None = None,
        charging_profile_purpose: str | None = None,
        stack_level: int | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        purpose = sc.Purpose(charging_profile_purpose) if charging_profile_purpose else None
        kept, removed = sc.clear(self.profiles, id, connector_id, purpose, stack_level)
        if not removed:
            return {"status": "Unknown"}
        if not self._store(kept):
            return {"status": "Unknown"}
        log.info("charging profiles %s cleared", sorted(p.id for p in removed))
        return {"status": "Accepted"}

    async def on_get_composite_schedule(
        self, connector_id: int, duration: int, charging_rate_unit: str | None = None, **_: Any
    ) -> dict[str, Any]:
        """1.6 section 5.7: the schedule from the moment the request is received (scheduleStart, with the
        milliseconds), whole-second startPeriods from there. Clipped to ChargingScheduleMaxPeriods periods
        and ``sc.MAX_COMPOSITE_S``: the reply's duration says how much it covers."""
        if connector_id != 0 and connector_id not in self._svc.station.connector_ids():
            return {"status": "Rejected"}
        units = {u.value: u for u in sc.RateUnit}
        unit = units.get(charging_rate_unit or "A")
        limits = self.limits()
        if unit not in limits.allowed_units or not isinstance(duration, int | float) or not duration > 0:
            return {"status": "Rejected"}
        now = round(self._svc.wall(), 3)  # as scheduleStart says it
        situation = self.situation(connector_id)
        schedule = sc.capped(sc.composite(self.profiles, situation, now, duration, limits.max_periods,
                                          memo=self._memos.get(situation)),
                             self._site_limit(connector_id))
        try:
            start = ocpp_time(now)
        except (ValueError, OverflowError) as exc:  # a clock beyond what a timestamp can say
            log.warning("GetCompositeSchedule rejected: %s", exc)
            return {"status": "Rejected"}
        return {
            "status": "Accepted",
            "connectorId": connector_id,
            "scheduleStart": start,
            "chargingSchedule": {
                "duration": schedule.duration_s,
                "startSchedule": start,
                "chargingRateUnit": unit.value,
                "chargingSchedulePeriod": [
                    {"startPeriod": round(p.start - now),
                     "limit": _limit_value(p.amps, unit, situation.electrical, p.phases),
                     "numberPhases": p.phases}
                    for p in schedule.periods
                ],
            },
        }

    def hold_for_remote_start(self, connector_id: int, id_tag: str, data: Mapping[str, Any]) -> bool:
        """RemoteStartTransaction with a chargingProfile: a TxProfile installed once that idTag's
        transaction starts on the connector. False (answer Rejected) if it is not a valid TxProfile or
        installing it would exceed MaxChargingProfilesInstalled."""
        profile = self._check(connector_id, data)
        if profile is None or profile.purpose is not sc.Purpose.TX or profile.transaction_id is not None:
            return False
        if sc.install(self.profiles, profile, self.limits()) is None:
            log.warning("RemoteStartTransaction's charging profile %d rejected: MaxChargingProfilesInstalled "
                        "reached", profile.id)
            return False
        self._remote_start[connector_id] = (id_tag.upper(), profile)
        return True

    # -- events and the limit loop -----------------------------------------------------------------

    def _on_event(self, event: StationEvent) -> None:
        if isinstance(event, SessionStarted):
            held = self._remote_start.pop(event.connector_id, None)
            if held is not None and held[0] == event.session.id_tag.upper():
                installed = sc.install(self.profiles, held[1], self.limits())
                if installed is not None:
                    self._store(installed)
                else:
                    log.warning("RemoteStartTransaction's charging profile %d not installed: "
                                "MaxChargingProfilesInstalled reached meanwhile", held[1].id)
            self._changed.set()
        elif isinstance(event, SessionStopped):
            self._remote_start.pop(event.connector_id, None)
            kept, removed = sc.clear(self.profiles, connector_id=event.connector_id, purpose=sc.Purpose.TX)
            if removed:
                log.info("TxProfile(s) %s removed: transaction ended", sorted(p.id for p in removed))
                self._store(kept)
            self._changed.set()

    def apply(self) -> float:
        """Give every connector its composite limit now; returns seconds until the next change."""
        now = self._svc.wall()
        wait = MAX_WAIT_S
        for cid, connector in self._connectors.items():
            situation = self.situation(cid)
            amps = sc.limit_at(self.profiles, situation, now).amps
            push_limit(self._svc.station, self.applied, cid, amps, connector.max_current_a, "connector", log)
            upcoming = sc.next_change(self.profiles, situation, now)
            if upcoming is not None:
                wait = min(wait, upcoming - now)
        return max(MIN_WAIT_S, wait)

    async def run(self) -> None:
        await keep_limits(self.apply, self._changed, log, MAX_WAIT_S)

