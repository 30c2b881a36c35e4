"""OCPP 2.0.1 Smart Charging (functional block K, an AC station without ISO 15118): SetChargingProfile
(K01: ChargingStationMaxProfile on EVSE 0, TxDefaultProfile on EVSE 0 or one EVSE, TxProfile for a running
transaction), RequestStartTransaction with a TxProfile (K05 / F01.FR.08-12, through ``hold_for_remote_start``),
ClearChargingProfile by id or criteria (K10), GetChargingProfiles answered with ReportChargingProfiles in chunks
(K09), GetCompositeSchedule in A or W (K08), the profiles persisted in the network side's state.db, and a
background task that keeps every EVSE's current limit (``StationPort.set_current_limit``) equal to the
composite limit now: re-evaluated at each period boundary, validFrom/validTo, when transactions start or stop,
online or offline (K01 offline behaviour: the profiles keep working without the CSMS).

The rules (stacking, recurring / relative schedules, W -> A through the phases and the measured voltage, the
composite schedule and its bounds) are the protocol-neutral ``agent.smart_charging`` that 1.6 uses too; this
module maps the 2.0.1 wire form onto it and adds what 2.0.1 says differently:

- A profile with the same id replaces the installed one (K01.FR.05); another one with the same purpose, stack
  level and EVSE (and transactionId for a TxProfile) whose validity overlaps is Rejected, DuplicateProfile
  (K01.FR.06 / K01.FR.39) -- 1.6 replaces it instead.
- TxProfile: only for a running transaction on that EVSE with that transactionId (K01.FR.03 / FR.09 / FR.16);
  it ends with its transaction. ChargingStationMaxProfile only on EVSE 0. ChargingStationExternalConstraints
  is what the station itself reports, never installed by the CSMS (K01.FR.22).
- One ChargingSchedule per profile (more are ISO 15118 SASchedules); at most ``PeriodsPerSchedule`` periods,
  stack level at most ``ProfileStackLevel``, a unit of ``RateUnit``, at most ``Entries.ChargingProfiles``'s
  maxLimit (``MAX_PROFILES``) installed. Every Rejected carries a statusInfo reasonCode.
- The composite schedule includes the station's own limits: the connector's rating and the site allocation of
  local energy management (``ConnectorView.site_limit_a``, the external limit agent/ocpp/v201/external_limits.py
  reports): a profile lowers it, never raises it.

SmartChargingCtrlr.Enabled false: SetChargingProfile is Rejected, installed profiles stay but limit nothing,
a RequestStartTransaction's chargingProfile is ignored (F01.FR.12). ExternalControlSignalsEnabled is ReadOnly
true: the site controller protects the grid connection and cannot be switched off over OCPP.

Below 6 A the control side pauses (the transaction goes on); it changes the PWM duty at most once per 5 s.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ocpp.charge_point import snake_to_camel_case

from agent import smart_charging as sc
from agent.db import Migration, migrate, transaction
from agent.events import SessionStarted, SessionStopped, StationEvent
from agent.ocpp.limit_loop import MAX_WAIT_S as MAX_WAIT_S  # this module's: the cpsim fleet lengthens it
from agent.ocpp.limit_loop import MIN_WAIT_S, CompositeMemos, keep_limits, push_limit
from agent.ocpp.v16.meter_values import ocpp_time
from agent.ocpp.v201.device_model import DeviceModelError
from agent.ocpp.v201.reports import send_report
from hal.flag import Flag

if TYPE_CHECKING:
    from agent.station_api import ConnectorView

log = logging.getLogger("cpagent.ocpp.v201.smart_charging")

COMPONENT = "ocpp201_smart_charging"
MIGRATIONS: list[Migration] = [
    "CREATE TABLE ocpp201_charging_profiles (id INTEGER PRIMARY KEY, evse_id INTEGER NOT NULL, "
    "installed_wall REAL NOT NULL, body TEXT NOT NULL)",
]
CTRLR = "SmartChargingCtrlr"
MAX_PROFILES = 32  # SmartChargingCtrlr.Entries[ChargingProfiles] maxLimit (device_model.py says the same)
REPORT_CHUNK = 8  # profiles per ReportChargingProfiles message
SOURCE_CSO = "CSO"

PURPOSES: dict[str, sc.Purpose] = {
    "ChargingStationMaxProfile": sc.Purpose.CHARGE_POINT_MAX,
    "TxDefaultProfile": sc.Purpose.TX_DEFAULT,
    "TxProfile": sc.Purpose.TX,
}
WIRE_PURPOSE: dict[sc.Purpose, str] = {v: k for k, v in PURPOSES.items()}


class ProfileError(ValueError):
    """A charging profile that cannot be installed: ``reason`` is the statusInfo reasonCode."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Settings:
    """What SmartChargingCtrlr allows now."""

    enabled: bool = True
    max_stack_level: int = 10
    units: frozenset[sc.RateUnit] = frozenset({sc.RateUnit.AMPS, sc.RateUnit.WATTS})
    max_periods: int = 24
    max_profiles: int = MAX_PROFILES

    def limits(self) -> sc.Limits:
        return sc.Limits(self.max_stack_level, self.units, self.max_periods, self.max_profiles)


# -- wire form <-> model (pure) ------------------------------------------------------------------


def _time(text: Any) -> float | None:
    if text is None:
        return None
    from agent.ocpp.v16.service import parse_time

    return parse_time(str(text))


def parse_profile(evse_id: int, data: Mapping[str, Any], installed_at: float, settings: Settings) -> sc.Profile:
    """A ChargingProfileType (camelCase, as on the wire) -> Profile; ProfileError names what is wrong.
    Counts are checked before anything is built (the cost stays bounded by what the station advertises)."""
    try:
        schedules = data["chargingSchedule"]
        if not isinstance(schedules, list) or len(schedules) != 1:
            raise ProfileError("InvalidSchedule", "exactly one chargingSchedule (no ISO 15118 here)")
        schedule = schedules[0]
        raw_periods = schedule["chargingSchedulePeriod"]
        if not isinstance(raw_periods, list) or not 1 <= len(raw_periods) <= settings.max_periods:
            raise ProfileError("InvalidSchedule", f"1..{settings.max_periods} periods (PeriodsPerSchedule)")
        purpose_text = data["chargingProfilePurpose"]
        if purpose_text not in PURPOSES:
            raise ProfileError("InvalidProfile", f"chargingProfilePurpose {purpose_text} is not installed by a CSMS")
        unit_text = schedule["chargingRateUnit"]
        if unit_text not in {u.value for u in settings.units}:
            raise ProfileError("UnsupportedRateUnit", f"chargingRateUnit {unit_text} not in RateUnit")
        kind = sc.Kind(data["chargingProfileKind"])
        start = _time(schedule.get("startSchedule"))
        if kind is sc.Kind.RELATIVE and start is not None:
            raise ProfileError("InvalidSchedule", "a Relative profile has no startSchedule")
        if kind is not sc.Kind.RELATIVE and start is None:
            raise ProfileError("InvalidSchedule", f"an {kind.value} profile needs startSchedule")
        recurrency = data.get("recurrencyKind")
        if (recurrency is not None) != (kind is sc.Kind.RECURRING):
            raise ProfileError("InvalidProfile", "recurrencyKind goes with Recurring only")
        periods = tuple(
            sc.Period(float(p["startPeriod"]), float(p["limit"]),
                      int(p["numberPhases"]) if p.get("numberPhases") is not None else None)
            for p in raw_periods
        )
        duration = schedule.get("duration")
        min_rate = schedule.get("minChargingRate")
        tx = data.get("transactionId")
        profile = sc.Profile(
            id=int(data["id"]),
            connector_id=int(evse_id),
            stack_level=int(data["stackLevel"]),
            purpose=PURPOSES[purpose_text],
            kind=kind,
            schedule=sc.Schedule(
                unit=sc.RateUnit(unit_text),
                periods=periods,
                start=start,
                duration_s=float(duration) if duration is not None else None,
                min_rate=float(min_rate) if min_rate is not None else None,
            ),
            recurrency=sc.Recurrency(recurrency) if recurrency is not None else None,
            valid_from=_time(data.get("validFrom")),
            valid_to=_time(data.get("validTo")),
            transaction_id=str(tx) if tx is not None else None,
            installed_at=installed_at,
        )
    except ProfileError:
        raise
    except (KeyError, TypeError, ValueError, ArithmeticError, AttributeError) as exc:
        raise ProfileError("InvalidValue", f"malformed: {exc!s:.200}") from exc
    return profile


def problems(profile: sc.Profile, settings: Settings, evse_ids: Iterable[int]) -> list[str]:
    """Why this profile cannot be installed on its EVSE (empty = fine), state aside (running transactions)."""
    found = [p.replace("ChargePointMaxProfile", "ChargingStationMaxProfile").replace("a connector", "an EVSE")
             .replace("connector", "EVSE")
             for p in sc.problems(profile, settings.limits(), evse_ids)]
    if profile.purpose is sc.Purpose.TX and profile.transaction_id is None:
        found.append("a TxProfile needs a transactionId")
    return found


def _overlap(a: sc.Profile, b: sc.Profile) -> bool:
    a_from, a_to = a.valid_from or -math.inf, a.valid_to or math.inf
    b_from, b_to = b.valid_from or -math.inf, b.valid_to or math.inf
    return a_from < b_to and b_from < a_to


def conflict(installed: Iterable[sc.Profile], new: sc.Profile) -> sc.Profile | None:
    """An installed profile (another id) with the new one's purpose, stack level, EVSE (and transaction for a
    TxProfile) valid at the same time: K01.FR.06 / K01.FR.39, the new one is Rejected."""
    for p in installed:
        if p.id == new.id or (p.purpose, p.stack_level, p.connector_id) != (new.purpose, new.stack_level,
                                                                            new.connector_id):
            continue
        if new.purpose is sc.Purpose.TX and p.transaction_id != new.transaction_id:
            continue
        if _overlap(p, new):
            return p
    return None


def matches(profile: sc.Profile, evse_id: int | None, criterion: Mapping[str, Any]) -> bool:
    """GetChargingProfiles (K09): ``evse_id`` None = every EVSE; a list of ids selects by id, else purpose
    and stackLevel (when given) must match; a chargingLimitSource list must name CSO (all ours are)."""
    if evse_id is not None and profile.connector_id != evse_id:
        return False
    sources = criterion.get("chargingLimitSource")
    if sources is not None and SOURCE_CSO not in sources:
        return False
    ids = criterion.get("chargingProfileId")
    if ids is not None:
        return profile.id in (ids if isinstance(ids, frozenset) else {int(i) for i in ids})
    purpose = criterion.get("chargingProfilePurpose")
    if purpose is not None and PURPOSES.get(purpose) is not profile.purpose:
        return False
    stack = criterion.get("stackLevel")
    return stack is None or profile.stack_level == stack


def chunks(items: list[Any], size: int = REPORT_CHUNK) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)] or [[]]


def composite_payload(schedule: sc.Composite, evse_id: int, unit: sc.RateUnit, electrical: sc.Electrical,
                      start: str) -> dict[str, Any]:
    """The CompositeScheduleType of a GetCompositeScheduleResponse."""
    return {
        "evseId": evse_id,
        "duration": schedule.duration_s,
        "scheduleStart": start,
        "chargingRateUnit": unit.value,
        "chargingSchedulePeriod": [
            {"startPeriod": round(p.start - schedule.begin),
             "limit": round(p.amps, 1) if unit is sc.RateUnit.AMPS else float(round(electrical.watts(p.amps,
                                                                                                      p.phases))),
             "numberPhases": p.phases}
            for p in schedule.periods
        ],
    }


# -- the feature ---------------------------------------------------------------------------------


class SmartCharging:
    """Functional block K over the 2.0.1 service (agent/ocpp/v201/features.py)."""

    def __init__(self, service: Any) -> None:
        self._svc = service
        self._station = service.station
        self._vars = service.variables
        self._db = service.db
        migrate(self._db, COMPONENT, MIGRATIONS)
        self.profiles: list[sc.Profile] = []
        self.bodies: dict[int, dict[str, Any]] = {}  # id -> the profile as the CSMS sent it (camelCase)
        self._load()
        self.applied: dict[int, float | None] = {}  # EVSE -> limit last given to its controller
        # EVSE -> (idToken, TxProfile body, profile) of a RequestStartTransaction until its session starts
        self._remote_start: dict[int, tuple[str, dict[str, Any], sc.Profile, float]] = {}
        self._changed = Flag()
        # GetCompositeSchedule: (EVSE situation, enabled) -> the limits at change times evaluated so far for the
        # installed set (sc.composite's memo, agent/ocpp/limit_loop.py); cleared whenever the set changes.
        self._memos = CompositeMemos()
        self._vars.bind("charging_profile_entries", lambda: len(self.profiles))
        self._vars.on_change(self._on_variable)
        self._station.subscribe(self._on_event)

    # -- settings ----------------------------------------------------------------------------------

    def settings(self) -> Settings:
        def get(variable: str, default: Any) -> Any:
            try:
                return self._vars.value(CTRLR, variable)
            except DeviceModelError:
                return default

        units = get("RateUnit", ("A", "W"))
        return Settings(
            enabled=get("Enabled", True) is True,
            max_stack_level=int(get("ProfileStackLevel", 10)),
            units=frozenset(sc.RateUnit(u) for u in units if u in ("A", "W")),
            max_periods=int(get("PeriodsPerSchedule", 24)),
        )

    def _on_variable(self, component: str, variable: str, value: object) -> None:
        if component == CTRLR:
            self._changed.set()

    # -- persistence -------------------------------------------------------------------------------

    def _load(self) -> None:
        settings = dataclasses.replace(Settings(), max_periods=1024, max_stack_level=1 << 30)  # as accepted then
        for pid, evse, installed, body in self._db.execute(
                "SELECT id, evse_id, installed_wall, body FROM ocpp201_charging_profiles ORDER BY id"):
            try:
                data = json.loads(body)
                self.profiles.append(parse_profile(evse, data, installed, settings))
                self.bodies[pid] = data
            except (ValueError, TypeError) as exc:
                log.error("dropping unreadable stored charging profile %s: %s", pid, exc)

    def _store(self, profiles: list[sc.Profile], bodies: dict[int, dict[str, Any]]) -> bool:
        """Persist the whole (small, bounded) set in one transaction; only then is it in force."""
        try:
            with transaction(self._db):
                self._db.execute("DELETE FROM ocpp201_charging_profiles")
                self._db.executemany(
                    "INSERT INTO ocpp201_charging_profiles(id, evse_id, installed_wall, body) VALUES (?, ?, ?, ?)",
                    [(p.id, p.connector_id, p.installed_at, json.dumps(bodies[p.id])) for p in profiles],
                )
        except Exception as exc:  # sqlite3.Error and friends: keep the old set
            log.error("charging profiles not stored: %s", exc)
            return False
        self.profiles = profiles
        self.bodies = {p.id: bodies[p.id] for p in profiles}
        self._memos.clear()  # the limits remembered for GetCompositeSchedule were for the old set
        self._changed.set()
        return True

    # -- station facts -----------------------------------------------------------------------------

    def _views(self) -> Mapping[int, ConnectorView]:
        views: Mapping[int, ConnectorView] = self._station.connector_views()
        return views

    def transaction_id(self, evse_id: int) -> str | None:
        transactions = self._svc.features.get("Transactions")
        machine = getattr(transactions, "machines", {}).get(evse_id) if transactions is not None else None
        tx = getattr(machine, "transaction_id", None)
        return tx if isinstance(tx, str) else None

    def _voltage(self, views: Iterable[ConnectorView]) -> float:
        """Measured phase voltage (whole volts, so noise does not move the limit), else 230 V."""
        volts = [v for c in views if c.last_sample is not None for v in c.last_sample.voltage_v
                 if v is not None and v > 50.0]
        return float(round(sum(volts) / len(volts))) if volts else sc.DEFAULT_VOLTAGE_V

    def situation(self, evse_id: int) -> sc.Situation:
        views = self._views()
        if evse_id == 0:
            total = sum(c.max_current_a for c in views.values())
            return sc.Situation(0, sc.Electrical(total, 3, self._voltage(views.values())))
        view = views[evse_id]
        session = view.session
        tx = self.transaction_id(evse_id)
        return sc.Situation(
            evse_id,
            sc.Electrical(view.max_current_a, view.phases, self._voltage([view])),
            transaction_id=tx,
            tx_start=session.start_wall + self._svc.clock_offset_s if session is not None else None,
            cp_share=sum(1 for c in views.values() if c.session is not None),
        )

    def site_limit(self, evse_id: int) -> float | None:
        """The station's own limit from local energy management now (None: none); EVSE 0: the sum."""
        views = self._views()
        if evse_id != 0:
            return views[evse_id].site_limit_a
        if all(c.site_limit_a is None for c in views.values()):
            return None
        return sum(c.max_current_a if c.site_limit_a is None else c.site_limit_a for c in views.values())

    # -- CSMS -> station ---------------------------------------------------------------------------

    def check(self, evse_id: int, body: Mapping[str, Any]) -> sc.Profile:
        """The profile ``body`` (camelCase) for ``evse_id`` if it may be installed now; else ProfileError."""
        settings = self.settings()
        if not settings.enabled:
            raise ProfileError("NotEnabled", "SmartChargingCtrlr.Enabled is false")
        profile = parse_profile(evse_id, body, self._svc.wall(), settings)
        found = problems(profile, settings, self._station.connector_ids())
        if found:
            raise ProfileError("UnknownEvse" if any(f.startswith("no EVSE") for f in found) else "InvalidProfile",
                               "; ".join(found))
        return profile

    def install(self, profile: sc.Profile, body: Mapping[str, Any]) -> None:
        kept = [p for p in self.profiles if p.id != profile.id]
        other = conflict(kept, profile)
        if other is not None:
            raise ProfileError("DuplicateProfile", f"profile {other.id} has this purpose and stack level then")
        if len(kept) + 1 > MAX_PROFILES:
            raise ProfileError("MaxProfiles", f"{MAX_PROFILES} profiles installed (Entries maxLimit)")
        if not self._store([*kept, profile], {**self.bodies, profile.id: dict(body)}):
            raise ProfileError("InternalError", "not stored")
        log.info("charging profile %d installed (%s, EVSE %d, stack level %d)", profile.id,
                 WIRE_PURPOSE[profile.purpose], profile.connector_id, profile.stack_level)

    async def on_set_charging_profile(self, evse_id: int, charging_profile: dict[str, Any],
                                      **_: Any) -> dict[str, Any]:
        body = snake_to_camel_case(charging_profile)
        try:
            profile = self.check(evse_id, body)
            running = self.transaction_id(evse_id)
            if profile.purpose is sc.Purpose.TX and (running is None or running != profile.transaction_id):
                raise ProfileError("TxNotFound", f"no transaction {profile.transaction_id} on EVSE {evse_id}")
            self.install(profile, body)
        except ProfileError as exc:
            log.warning("SetChargingProfile %s on EVSE %s rejected: %s (%s)", body.get("id"), evse_id, exc.reason,
                        exc)
            return {"status": "Rejected", "statusInfo": {"reasonCode": exc.reason,
                                                          "additionalInfo": str(exc)[:512]}}
        return {"status": "Accepted"}

    async def on_clear_charging_profile(self, charging_profile_id: int | None = None,
                                        charging_profile_criteria: dict[str, Any] | None = None,
                                        **_: Any) -> dict[str, Any]:
        criteria = charging_profile_criteria or {}
        purpose_text = criteria.get("charging_profile_purpose")
        if charging_profile_id is None and purpose_text is not None and purpose_text not in PURPOSES:
            return {"status": "Unknown"}  # ChargingStationExternalConstraints: not the CSMS's to clear
        kept, removed = sc.clear(
            self.profiles, charging_profile_id,
            None if charging_profile_id is not None else criteria.get("evse_id"),
            PURPOSES.get(purpose_text) if purpose_text is not None else None,
            None if charging_profile_id is not None else criteria.get("stack_level"),
        )
        if not removed or not self._store(kept, self.bodies):
            return {"status": "Unknown"}
        log.info("charging profiles %s cleared", sorted(p.id for p in removed))
        return {"status": "Accepted"}

    def selected(self, evse_id: int | None, criterion: Mapping[str, Any]) -> list[sc.Profile]:
        ids = criterion.get("chargingProfileId")
        if ids is not None:  # once per request, not per profile
            criterion = {**criterion, "chargingProfileId": frozenset(int(i) for i in ids)}
        return [p for p in self.profiles if matches(p, evse_id, criterion)]

    async def on_get_charging_profiles(self, request_id: int, charging_profile: dict[str, Any],
                                       evse_id: int | None = None, **_: Any) -> dict[str, Any]:
        found = self.selected(evse_id, snake_to_camel_case(charging_profile))
        return {"status": "Accepted" if found else "NoProfiles"}

    async def after_get_charging_profiles(self, request_id: int, charging_profile: dict[str, Any],
                                          evse_id: int | None = None, **_: Any) -> None:
        """K09: one ReportChargingProfiles per EVSE and chunk of ``REPORT_CHUNK``, tbc on all but the last; the
        profiles are sent camelCase as the CSMS sent them (no round trip through the dataclass); a report cut by
        the connection: ``agent.ocpp.v201.reports``."""
        found = self.selected(evse_id, snake_to_camel_case(charging_profile))
        messages: list[tuple[int, list[dict[str, Any]]]] = []
        for evse in sorted({p.connector_id for p in found}):
            bodies = [self._report_body(p) for p in found if p.connector_id == evse]
            messages += [(evse, chunk) for chunk in chunks(bodies)]
        await send_report(self._svc, "ReportChargingProfiles", request_id, [
            {"requestId": request_id, "chargingLimitSource": SOURCE_CSO, "evseId": evse, "chargingProfile": chunk,
             "tbc": index < len(messages) - 1} for index, (evse, chunk) in enumerate(messages)])

    def _report_body(self, profile: sc.Profile) -> dict[str, Any]:
        body = dict(self.bodies[profile.id])
        if profile.transaction_id is not None:
            body["transactionId"] = profile.transaction_id
        return body

    async def on_get_composite_schedule(self, duration: int, evse_id: int, charging_rate_unit: str | None = None,
                                        **_: Any) -> dict[str, Any]:
        """K08: from the moment the request is received, whole-second startPeriods, clipped to
        PeriodsPerSchedule periods and ``sc.MAX_COMPOSITE_S`` (the answer's duration says how far it got)."""
        settings = self.settings()
        if evse_id != 0 and evse_id not in self._station.connector_ids():
            return {"status": "Rejected", "statusInfo": {"reasonCode": "UnknownEvse"}}
        units = {u.value: u for u in settings.units}
        if charging_rate_unit is None:
            unit = sc.RateUnit.AMPS if sc.RateUnit.AMPS in settings.units else sc.RateUnit.WATTS
        elif charging_rate_unit in units:
            unit = units[charging_rate_unit]
        else:
            return {"status": "Rejected", "statusInfo": {"reasonCode": "UnsupportedRateUnit"}}
        if not isinstance(duration, int) or duration <= 0:
            return {"status": "Rejected", "statusInfo": {"reasonCode": "InvalidValue"}}
        now = round(self._svc.wall(), 3)
        situation = self.situation(evse_id)
        profiles = self.profiles if settings.enabled else []
        schedule = sc.capped(sc.composite(profiles, situation, now, duration, settings.max_periods,
                                          memo=self._memos.get((situation, settings.enabled))),
                             self.site_limit(evse_id))
        try:
            start = ocpp_time(now)
        except (ValueError, OverflowError) as exc:
            log.warning("GetCompositeSchedule rejected: %s", exc)
            return {"status": "Rejected", "statusInfo": {"reasonCode": "InternalError"}}
        return {"status": "Accepted",
                "schedule": composite_payload(schedule, evse_id, unit, situation.electrical, start)}

    def hold_for_remote_start(self, evse_id: int, id_token: str, charging_profile: Mapping[str, Any]) -> str | None:
        """RequestStartTransaction with a chargingProfile (F01.FR.08-12): None if it is taken (installed
        for the transaction that request starts) or ignored (smart charging disabled); else the reasonCode
        of the Rejected answer (not a TxProfile, a transactionId, invalid, no room)."""
        if not self.settings().enabled:
            log.info("RequestStartTransaction's chargingProfile ignored: smart charging disabled")
            return None
        body = snake_to_camel_case(dict(charging_profile))
        if body.get("chargingProfilePurpose") != "TxProfile" or body.get("transactionId") is not None:
            return "InvalidProfile"
        try:
            settings = self.settings()
            profile = parse_profile(evse_id, body, self._svc.wall(), settings)
            found = [f for f in problems(profile, settings, self._station.connector_ids())
                     if f != "a TxProfile needs a transactionId"]
            if found:
                raise ProfileError("InvalidProfile", "; ".join(found))
        except ProfileError as exc:
            log.warning("RequestStartTransaction's chargingProfile rejected: %s", exc)
            return exc.reason
        if len([p for p in self.profiles if p.id != profile.id]) + 1 > MAX_PROFILES:
            return "MaxProfiles"
        tx = self.transaction_id(evse_id)
        if tx is not None:  # the transaction started already (TxStartPoint EVConnected)
            return self._install_for(evse_id, body, tx)
        self._remote_start[evse_id] = (id_token.upper(), body, profile, self._svc.clock.monotonic())
        self._changed.set()  # its limit is in force before the session starts: the first PWM follows it
        return None

    def _install_for(self, evse_id: int, body: dict[str, Any], tx: str | None) -> str | None:
        body = {**body, "transactionId": tx} if tx is not None else body
        try:
            profile = parse_profile(evse_id, body, self._svc.wall(), self.settings())
            self.install(profile, body)
        except ProfileError as exc:
            log.warning("RequestStartTransaction's chargingProfile not installed: %s", exc)
            return exc.reason
        return None

    def _hold_s(self) -> float:
        try:
            timeout = self._vars.value("TxCtrlr", "EVConnectionTimeOut")
        except DeviceModelError:
            timeout = 120
        return float(timeout) + 5.0 if isinstance(timeout, int | float) else 125.0

    # -- events and the limit loop -----------------------------------------------------------------

    def _on_event(self, event: StationEvent) -> None:
        if isinstance(event, SessionStarted):
            held = self._remote_start.pop(event.connector_id, None)
            if held is not None and held[0] == event.session.id_tag.upper():
                self._install_for(event.connector_id, held[1], self.transaction_id(event.connector_id))
            self._changed.set()
        elif isinstance(event, SessionStopped):
            self._remote_start.pop(event.connector_id, None)
            kept, removed = sc.clear(self.profiles, connector_id=event.connector_id, purpose=sc.Purpose.TX)
            if removed:
                log.info("TxProfile(s) %s removed: transaction ended", sorted(p.id for p in removed))
                self._store(kept, self.bodies)
            self._changed.set()

    def apply(self) -> float:
        """Give every EVSE its composite limit now; returns seconds until the next change."""
        now = self._svc.wall()
        wait = MAX_WAIT_S
        stale = [p for p in self.profiles if p.purpose is sc.Purpose.TX and p.transaction_id is not None
                 and p.transaction_id != self.transaction_id(p.connector_id)]
        if stale:  # its transaction ended unseen (e.g. while the network side restarted)
            log.info("TxProfile(s) %s removed: their transaction is over", sorted(p.id for p in stale))
            self._store([p for p in self.profiles if p not in stale], self.bodies)
        enabled = self.settings().enabled
        profiles = self.profiles if enabled else []
        for evse_id, view in self._views().items():
            situation = self.situation(evse_id)
            held = self._remote_start.get(evse_id)
            if held is not None and self._svc.clock.monotonic() - held[3] > self._hold_s():
                del self._remote_start[evse_id]  # that request never became a session (EVConnectionTimeOut)
                held = None
            if held is not None and view.session is None and enabled:  # as if its transaction started now
                situation = dataclasses.replace(situation, tx_start=now)
                amps = sc.limit_at([*profiles, held[2]], situation, now).amps
            else:
                amps = sc.limit_at(profiles, situation, now).amps
            push_limit(self._station, self.applied, evse_id, amps, view.max_current_a, "EVSE", log)
            upcoming = sc.next_change(profiles, situation, now)
            if upcoming is not None:
                wait = min(wait, upcoming - now)
        return max(MIN_WAIT_S, wait)

    async def run(self) -> None:
        await keep_limits(self.apply, self._changed, log, MAX_WAIT_S)
