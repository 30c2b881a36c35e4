"""OCPP 2.0.1 Advanced Device Management: monitoring (N04 SetVariableMonitoring, N05 SetMonitoringLevel,
N06 ClearVariableMonitoring, N03 SetMonitoringBase, N02 GetMonitoringReport -> NotifyMonitoringReport,
N07 NotifyEvent).

A monitor watches one variable of the device model (agent/ocpp/v201/device_model.py, the variables with
``monitorable=True``, reported with ``supportsMonitoring`` true: EVSE Power and Voltage, the
AvailabilityState and Problem of ChargingStation / EVSE / Connector). The values are the device model's,
read from the station's views (``StationPort``), so a monitor fires on a real change: the metered voltage
falling (undervoltage), the power, an EVSE going Faulted. Types:

- UpperThreshold / LowerThreshold (numbers): an event (trigger Alerting) when the value goes above / below
  ``value``, and one with ``cleared`` true when it comes back;
- Delta: numbers, an event when the value moved by more than ``value`` since the last event (or since the
  monitor was set); other types, an event on every change;
- Periodic: an event every ``value`` seconds; PeriodicClockAligned: at every multiple of ``value`` seconds
  of the wall clock.

Three kinds (eventNotificationType): hard-wired monitors (the Problem of the station and of every EVSE,
Delta, severity 1: never cleared), preconfigured monitors (EVSE Voltage below 207 V / above 253 V, EN 50160
+-10 %, in the FactoryDefault set; EVSE AvailabilityState Delta, severity 8, in All only) and custom
monitors (SetVariableMonitoring, persisted in ``state.db``). Besides, every fault of our own (agent/faults.py:
over-temperature, under/over-voltage, RCD, welded contactor, a silent meter ...) raises a
HardWiredNotification on EVSE.Problem with its techCode (the vendor error code) and techInfo, and a
``cleared`` one naming the first as ``cause`` when it goes.

SetMonitoringBase: All (every preconfigured monitor, custom kept), FactoryDefault (the factory set, custom
monitors cleared), HardWiredOnly (no preconfigured, custom cleared). SetMonitoringLevel: events of monitors
with a severity above the level are not sent (MonitoringCtrlr.ActiveMonitoringLevel). Offline, only events
of severity <= MonitoringCtrlr.OfflineQueuingSeverity are queued (in the durable outbox), others dropped.

Bounded cost: at most ``MAX_CUSTOM_MONITORS`` custom monitors, periods of at least ``MIN_PERIOD_S``, the
requests limited by MonitoringCtrlr.ItemsPerMessage / BytesPerMessage (CALLERROR otherwise), at most
``EVENT_BURST`` events at once and ``EVENTS_PER_S`` sustained (the excess dropped, counted, logged once per
episode), evaluation at most every ``TICK_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ocpp.charge_point import snake_to_camel_case
from ocpp.exceptions import FormatViolationError, OccurrenceConstraintViolationError

from agent import faults
from agent.db import StorageError, migrate, transaction
from agent.events import MeterUpdate, StationEvent, StatusChanged
from agent.ocpp.v16.meter_values import ocpp_time
from agent.ocpp.v201.configuration import chunks
from agent.ocpp.v201.device_model import DataType, DeviceModel, Entry
from agent.ocpp.v201.reports import send_report
from hal.types import Fault

if TYPE_CHECKING:
    from agent.ocpp.v201.service import OcppService

log = logging.getLogger("cpagent.ocpp.v201.monitoring")

COMPONENT = "ocpp201_monitoring"
MIGRATIONS = [
    "CREATE TABLE ocpp201_monitors (id INTEGER PRIMARY KEY AUTOINCREMENT, component TEXT NOT NULL, "
    "evse INTEGER, connector INTEGER, variable TEXT NOT NULL, type TEXT NOT NULL, value REAL NOT NULL, "
    "severity INTEGER NOT NULL, tx INTEGER NOT NULL)",
    "CREATE TABLE ocpp201_monitor_disabled (id INTEGER PRIMARY KEY)",  # preconfigured monitors cleared
    "CREATE TABLE ocpp201_monitor_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE ocpp201_monitor_tripped (id INTEGER PRIMARY KEY)",  # thresholds exceeded (N07.FR.14)
]

TYPES = ("UpperThreshold", "LowerThreshold", "Delta", "Periodic", "PeriodicClockAligned")
CRITERIA = {
    "ThresholdMonitoring": {"UpperThreshold", "LowerThreshold"},
    "DeltaMonitoring": {"Delta"},
    "PeriodicMonitoring": {"Periodic", "PeriodicClockAligned"},
}
BASES = ("All", "FactoryDefault", "HardWiredOnly")
NUMERIC = frozenset({DataType.INTEGER, DataType.DECIMAL})
MAX_CUSTOM_MONITORS = 100
MIN_PERIOD_S = 1.0
MAX_PERIOD_S = 7 * 86400.0
TICK_S = 0.25  # evaluation at most this often (and at least every PERIOD_TICK_S)
PERIOD_TICK_S = 0.5
EVENTS_PER_S = 10.0
EVENT_BURST = 20
EVENTS_PER_MESSAGE = 20
BUILTIN_ID = 1_000_000  # hard-wired and preconfigured monitors have ids from here; custom ones below
MAX_ACTUAL = 2500  # EventDataType.actualValue
MAX_PENDING_REPORTS = 4  # GetMonitoringReport accepted and not yet sent
REPORT_STALE_S = 60.0

HARD_WIRED, PRECONFIGURED, CUSTOM = "HardWiredMonitor", "PreconfiguredMonitor", "CustomMonitor"
HW_NOTIFICATION = "HardWiredNotification"
# Severity of our own faults' notifications (0 Danger .. 9 Debug): faults that open the contactor are
# hardware failures, the others (a silent meter or reader) errors.
FAULT_SEVERITY_DEFAULT = 1
FAULT_SEVERITY: Mapping[Fault, int] = {Fault.METER_SILENT: 4, Fault.METER_IMPLAUSIBLE: 4, Fault.READER_SILENT: 4,
                                       Fault.SITE_METER: 4, Fault.VENTILATION: 5}


class MonitoringError(ValueError):
    """A monitor the station refuses: ``status`` (SetMonitoringStatusEnumType), ``reason`` (reasonCode)."""

    def __init__(self, status: str, reason: str, info: str) -> None:
        super().__init__(info)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Monitor:
    id: int
    entry: Entry
    type: str
    value: float
    severity: int
    transaction: bool = False
    kind: str = CUSTOM
    factory: bool = False  # preconfigured: part of the FactoryDefault set

    def report(self) -> dict[str, Any]:
        value: float | int = int(self.value) if float(self.value).is_integer() else self.value
        return {"id": self.id, "transaction": self.transaction, "value": value, "type": self.type,
                "severity": self.severity}


@dataclass
class MonitorState:
    """What a monitor remembers between evaluations (not persisted: re-learnt after a restart)."""

    tripped: bool = False
    reference: str | None = None  # Delta: the value at the last event (or when the monitor was set)
    due: float | None = None  # Periodic: wall time of the next event


@dataclass
class Event:
    monitor: Monitor | None  # None: a HardWiredNotification
    entry: Entry
    trigger: str  # Alerting | Delta | Periodic
    actual: str
    severity: int
    cleared: bool = False
    tech_code: str | None = None
    tech_info: str | None = None
    cause: int | None = None
    key: tuple[Any, ...] = field(default=())  # hard-wired notifications: (evse, fault) for the clearing


def validate_value(entry: Entry, type_: str, value: float) -> None:
    """MonitoringError if ``type_`` with ``value`` cannot watch ``entry``'s variable."""
    spec = entry.spec
    if not spec.monitorable:  # N04.FR.05
        raise MonitoringError("UnsupportedMonitorType", "UnsupportedParam", f"{spec.key} does not support monitoring")
    if type_ not in TYPES:
        raise MonitoringError("UnsupportedMonitorType", "UnsupportedParam", f"unknown monitor type {type_!r}")
    if not math.isfinite(value):
        raise MonitoringError("Rejected", "InvalidValue", "the value must be a finite number")
    if type_ in ("UpperThreshold", "LowerThreshold") and spec.type not in NUMERIC:
        raise MonitoringError("UnsupportedMonitorType", "UnsupportedParam", f"{spec.key} is not a number: no threshold")
    if type_ == "Delta" and value < 0:  # N04.FR.14
        raise MonitoringError("Rejected", "ValueOutOfRange", "a Delta must not be negative")
    if type_ in ("Periodic", "PeriodicClockAligned") and not MIN_PERIOD_S <= value <= MAX_PERIOD_S:
        raise MonitoringError("Rejected", "ValueOutOfRange",
                              f"a period must be {MIN_PERIOD_S:g} to {MAX_PERIOD_S:g} s")


def _number(raw: str) -> float | None:
    try:
        number = float(raw)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def evaluate(monitor: Monitor, state: MonitorState, raw: str | None, now_wall: float) -> Event | None:
    """The event ``monitor`` raises for the current value ``raw`` (None: unknown now) at ``now_wall``,
    updating ``state``; None if none. Pure but for ``state``."""
    kind = monitor.type
    if kind in ("Periodic", "PeriodicClockAligned"):
        if state.due is None:
            period = monitor.value
            state.due = (math.floor(now_wall / period) + 1) * period if kind == "PeriodicClockAligned" \
                else now_wall + period
            return None
        if now_wall < state.due or raw is None:
            return None
        period = monitor.value
        state.due = (math.floor(now_wall / period) + 1) * period if kind == "PeriodicClockAligned" \
            else max(state.due + period, now_wall)
        return Event(monitor, monitor.entry, "Periodic", raw, monitor.severity)
    if raw is None:
        return None
    if kind == "Delta":
        if state.reference is None:
            state.reference = raw
            return None
        now_n, ref_n = _number(raw), _number(state.reference)
        if monitor.entry.spec.type in NUMERIC and now_n is not None and ref_n is not None:
            moved = abs(now_n - ref_n) > monitor.value
        else:
            moved = raw != state.reference
        if not moved:
            return None
        state.reference = raw
        return Event(monitor, monitor.entry, "Delta", raw, monitor.severity)
    number = _number(raw)
    if number is None:
        return None
    beyond = number > monitor.value if kind == "UpperThreshold" else number < monitor.value
    if beyond == state.tripped:
        return None
    state.tripped = beyond
    return Event(monitor, monitor.entry, "Alerting", raw, monitor.severity, cleared=not beyond)


class RateLimit:
    """A token bucket: ``rate`` per second, ``burst`` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last: float | None = None

    def take(self, now: float) -> bool:
        if self.last is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def _component(entry: Entry) -> dict[str, Any]:
    out: dict[str, Any] = {"name": entry.spec.component}
    if entry.evse is not None:
        out["evse"] = {"id": entry.evse}
        if entry.connector is not None:
            out["evse"]["connectorId"] = entry.connector
    return out


def _variable(entry: Entry) -> dict[str, Any]:
    out: dict[str, Any] = {"name": entry.spec.name}
    if entry.spec.instance:
        out["instance"] = entry.spec.instance
    return out


def report_items(monitors: Iterable[Monitor]) -> list[dict[str, Any]]:
    """MonitoringDataType entries: the monitors grouped by component and variable, in id order."""
    grouped: dict[tuple[Any, ...], dict[str, Any]] = {}
    for monitor in sorted(monitors, key=lambda m: m.id):
        key = (monitor.entry.spec.key, monitor.entry.evse, monitor.entry.connector)
        item = grouped.setdefault(key, {"component": _component(monitor.entry),
                                        "variable": _variable(monitor.entry), "variableMonitoring": []})
        item["variableMonitoring"].append(monitor.report())
    return list(grouped.values())


class Monitoring:
    """The N02-N07 handlers, the monitors and the loop that watches them."""

    def __init__(self, service: OcppService) -> None:
        self.service = service
        self.dm: DeviceModel = service.variables
        self.db: sqlite3.Connection = service.db
        try:
            migrate(self.db, COMPONENT, MIGRATIONS)
        except sqlite3.Error as exc:
            raise StorageError(f"OCPP 2.0.1 monitoring: cannot open the monitor store: {exc}") from exc
        self._builtin = self._builtin_monitors()
        self._custom: dict[int, Monitor] = {}
        self._disabled_ids: set[int] | None = None  # preconfigured monitors cleared (cached table)
        self._load()
        self._states: dict[int, MonitorState] = {
            int(r[0]): MonitorState(tripped=True) for r in self.db.execute("SELECT id FROM ocpp201_monitor_tripped")}
        self._faults: dict[int, dict[Fault, int]] = {}  # evse -> fault -> eventId of its notification
        self._limit = RateLimit(EVENTS_PER_S, EVENT_BURST)
        self._dropped = 0
        # requestId -> (monotonic time accepted, the report's items) until its NotifyMonitoringReport is sent
        self._reports: dict[int, tuple[float, list[dict[str, Any]]]] = {}
        self._wake = asyncio.Event()
        self._last_eval = -math.inf
        self._last_error: str | None = None
        # A preset ([ocpp.variables] MonitoringCtrlr/MonitoringBase or MonitoringLevel) takes effect once.
        base = str(self.dm.value("MonitoringCtrlr", "MonitoringBase"))
        if base != self.dm.value("MonitoringCtrlr", "ActiveMonitoringBase"):
            self.set_base(base)
        level = self.dm.integer("MonitoringCtrlr", "MonitoringLevel")
        if level != self.dm.integer("MonitoringCtrlr", "ActiveMonitoringLevel"):
            self.dm.set("MonitoringCtrlr", "ActiveMonitoringLevel", str(level), source="internal")
        self.dm.on_change(self._on_variable)
        service.station.subscribe(self._on_event)

    # -- monitors ---------------------------------------------------------------------------------------

    def _builtin_monitors(self) -> dict[int, Monitor]:
        out: list[Monitor] = []
        n = BUILTIN_ID

        def add(entry: Entry | str, type_: str, value: float, severity: int, kind: str, factory: bool) -> None:
            nonlocal n
            if isinstance(entry, Entry):
                out.append(Monitor(n, entry, type_, value, severity, False, kind, factory))
            n += 1

        add(self.dm.resolve("ChargingStation", "Problem"), "Delta", 1, 1, HARD_WIRED, True)
        for evse in self.dm.evse_ids:
            add(self.dm.resolve("EVSE", "Problem", evse=evse), "Delta", 1, 1, HARD_WIRED, True)
        for evse in self.dm.evse_ids:
            voltage = self.dm.resolve("EVSE", "Voltage", evse=evse)
            add(voltage, "LowerThreshold", 207, 4, PRECONFIGURED, True)
            add(voltage, "UpperThreshold", 253, 4, PRECONFIGURED, True)
            add(self.dm.resolve("EVSE", "AvailabilityState", evse=evse), "Delta", 0, 8, PRECONFIGURED, False)
        return {m.id: m for m in out}

    def _load(self) -> None:
        rows = self.db.execute(
            "SELECT id, component, evse, connector, variable, type, value, severity, tx FROM ocpp201_monitors"
        ).fetchall()
        for mid, component, evse, connector, variable, type_, value, severity, tx in rows:
            entry = self.dm.resolve(component, variable, evse=evse, connector=connector)
            try:
                if not isinstance(entry, Entry):
                    raise MonitoringError("Rejected", "", f"{component}/{variable}: {entry}")
                validate_value(entry, type_, float(value))
            except MonitoringError as exc:
                log.warning("ignoring stored monitor %d (%s)", mid, exc)
                continue
            self._custom[int(mid)] = Monitor(int(mid), entry, type_, float(value), int(severity), bool(tx))

    def _disabled(self) -> set[int]:
        if self._disabled_ids is None:
            self._disabled_ids = {int(r[0]) for r in self.db.execute("SELECT id FROM ocpp201_monitor_disabled")}
        return self._disabled_ids

    def active(self) -> list[Monitor]:
        """Every monitor in force: hard-wired, the preconfigured ones of the base, the custom ones."""
        base = str(self.dm.value("MonitoringCtrlr", "ActiveMonitoringBase"))
        disabled = self._disabled()
        out = [m for m in self._builtin.values() if m.kind == HARD_WIRED or (
            m.id not in disabled and (base == "All" or (base == "FactoryDefault" and m.factory)))]
        return out + list(self._custom.values())

    def set_monitor(self, data: Mapping[str, Any]) -> Monitor:
        """One SetMonitoringData (snake_case): the stored monitor, or MonitoringError."""
        component = data.get("component") or {}
        variable = data.get("variable") or {}
        evse = component.get("evse") or {}
        entry = self.dm.resolve(
            str(component.get("name", "")), str(variable.get("name", "")),
            component_instance=component.get("instance"), evse=evse.get("id"),
            connector=evse.get("connector_id"), instance=variable.get("instance"),
        )
        if not isinstance(entry, Entry):
            raise MonitoringError(entry, "", f"{entry}")
        type_ = str(data.get("type"))
        value = float(data.get("value", 0))
        severity = int(data.get("severity", 9))
        if not 0 <= severity <= 9:
            raise MonitoringError("Rejected", "ValueOutOfRange", "severity must be 0 to 9")
        validate_value(entry, type_, value)
        if type_ in ("UpperThreshold", "LowerThreshold"):  # N04.FR.06: within the variable's range
            low, high = entry.spec.min, self.dm.max_limit(entry)
            if (low is not None and value < low) or (high is not None and value > high):
                raise MonitoringError("Rejected", "ValueOutOfRange", f"{value:g} is outside {entry.spec.key}'s range")
        mid = data.get("id")
        if mid is not None and int(mid) in self._custom and self._custom[int(mid)].entry != entry:  # N04.FR.16
            raise MonitoringError("Rejected", "InvalidValue", f"monitor {mid} watches another variable")
        if mid is not None and int(mid) not in self._custom:
            if int(mid) in self._builtin:
                raise MonitoringError("Rejected", "ReadOnly", f"monitor {mid} is not a custom monitor")
            raise MonitoringError("Rejected", "UnknownMonitor", f"no monitor {mid} to replace")
        for other in self._custom.values():
            if other.id != mid and other.entry == entry and other.type == type_ and other.severity == severity:
                raise MonitoringError("Duplicate", "", f"monitor {other.id} has this type and severity")
        if mid is None and len(self._custom) >= MAX_CUSTOM_MONITORS:
            raise MonitoringError("Rejected", "TooManyElements", f"at most {MAX_CUSTOM_MONITORS} custom monitors")
        tx = bool(data.get("transaction", False))
        row = (entry.spec.component, entry.evse, entry.connector, entry.spec.variable, type_, value, severity, int(tx))
        with transaction(self.db):
            if mid is None:
                cursor = self.db.execute(
                    "INSERT INTO ocpp201_monitors(component, evse, connector, variable, type, value, severity, tx) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
                assert cursor.lastrowid is not None
                mid = cursor.lastrowid
            else:
                self.db.execute(
                    "UPDATE ocpp201_monitors SET component=?, evse=?, connector=?, variable=?, type=?, value=?, "
                    "severity=?, tx=? WHERE id=?", (*row, int(mid)))
        monitor = Monitor(int(mid), entry, type_, value, severity, tx)
        previous = self._custom.get(monitor.id)
        self._custom[monitor.id] = monitor
        # A Delta counts from the value when the monitor was set; the others start at the next evaluation. A
        # threshold replaced by one of the same type keeps whether it was exceeded: the next evaluation says
        # whether the new threshold clears it (N07.FR.11).
        state = MonitorState(reference=self.dm.attribute_value(entry) if type_ == "Delta" else None)
        old = self._states.get(monitor.id)
        if previous is not None and previous.type == type_ and old is not None:
            state.tripped = old.tripped
        self._states[monitor.id] = state
        self._wake.set()
        return monitor

    def clear_monitor(self, mid: int) -> str:
        if mid in self._custom:
            with transaction(self.db):
                self.db.execute("DELETE FROM ocpp201_monitors WHERE id=?", (mid,))
                self.db.execute("DELETE FROM ocpp201_monitor_tripped WHERE id=?", (mid,))
            del self._custom[mid]
            self._states.pop(mid, None)
            return "Accepted"
        builtin = self._builtin.get(mid)
        if builtin is None or mid in self._disabled():
            return "NotFound"
        if builtin.kind == HARD_WIRED:
            return "Rejected"
        with transaction(self.db):
            self.db.execute("INSERT OR IGNORE INTO ocpp201_monitor_disabled(id) VALUES (?)", (mid,))
        self._disabled_ids = None
        return "Accepted"

    def set_base(self, base: str) -> None:
        with transaction(self.db):
            self.db.execute("DELETE FROM ocpp201_monitor_disabled")
            self.db.execute("DELETE FROM ocpp201_monitor_tripped")
            if base != "All":
                self.db.execute("DELETE FROM ocpp201_monitors")
        self._disabled_ids = None
        if base != "All":
            self._custom.clear()
        for variable in ("ActiveMonitoringBase", "MonitoringBase"):
            if str(self.dm.value("MonitoringCtrlr", variable)) != base:
                self.dm.set("MonitoringCtrlr", variable, base, source="internal")
        self._states.clear()
        log.info("monitoring base %s: %d monitors active", base, len(self.active()))

    # -- handlers -------------------------------------------------------------------------------------

    def _check(self, action: str, payload: Mapping[str, Any], items: int) -> None:
        limit = self.dm.integer("MonitoringCtrlr", "ItemsPerMessage", instance=action)
        if items > limit:
            raise OccurrenceConstraintViolationError(description=f"{items} items, ItemsPerMessage{action} is {limit}")
        size = len(json.dumps(payload, separators=(",", ":")))
        max_bytes = self.dm.integer("MonitoringCtrlr", "BytesPerMessage", instance=action)
        if size > max_bytes:
            raise FormatViolationError(description=f"{size} bytes, BytesPerMessage{action} is {max_bytes}")

    async def on_set_variable_monitoring(
        self, set_monitoring_data: list[dict[str, Any]], **extra: Any
    ) -> dict[str, Any]:
        self._check("SetVariableMonitoring", {"set_monitoring_data": set_monitoring_data, **extra},
                    len(set_monitoring_data))
        results: list[dict[str, Any]] = []
        for data in set_monitoring_data:
            result: dict[str, Any] = {"type": data.get("type"), "severity": data.get("severity"),
                                      "component": snake_to_camel_case(data.get("component") or {}),
                                      "variable": snake_to_camel_case(data.get("variable") or {})}
            try:
                monitor = self.set_monitor(data)
            except MonitoringError as exc:
                log.info("SetVariableMonitoring refused: %s %s", exc.status, exc)
                if data.get("id") is not None:
                    result["id"] = data["id"]
                result["status"] = exc.status
                if exc.reason:
                    result["statusInfo"] = {"reasonCode": exc.reason, "additionalInfo": str(exc)[:512]}
            except (StorageError, sqlite3.Error) as exc:
                log.error("SetVariableMonitoring: cannot store the monitor: %s", exc)
                result["status"] = "Rejected"
                result["statusInfo"] = {"reasonCode": "InternalError"}
            else:
                log.info("monitor %d: %s %s %g severity %d", monitor.id, monitor.entry.storage_key, monitor.type,
                         monitor.value, monitor.severity)
                result["id"] = monitor.id
                result["status"] = "Accepted"
            results.append(result)
        return {"setMonitoringResult": results}

    async def on_clear_variable_monitoring(self, id: list[int], **extra: Any) -> dict[str, Any]:
        self._check("ClearVariableMonitoring", {"id": id, **extra}, len(id))
        return {"clearMonitoringResult": [{"id": mid, "status": self.clear_monitor(int(mid))} for mid in id]}

    async def on_set_monitoring_base(self, monitoring_base: str, **_: Any) -> dict[str, Any]:
        if monitoring_base not in BASES:
            return {"status": "NotSupported"}
        self.set_base(monitoring_base)
        return {"status": "Accepted"}

    async def on_set_monitoring_level(self, severity: int, **_: Any) -> dict[str, Any]:
        if not 0 <= severity <= 9:
            return {"status": "Rejected", "statusInfo": {"reasonCode": "ValueOutOfRange"}}
        for variable in ("ActiveMonitoringLevel", "MonitoringLevel"):
            self.dm.set("MonitoringCtrlr", variable, str(severity), source="internal")
        return {"status": "Accepted"}

    def select(self, criteria: Sequence[str] | None, component_variable: Sequence[Mapping[str, Any]] | None
               ) -> list[Monitor]:
        types = set().union(*(CRITERIA.get(c, set()) for c in criteria)) if criteria else set(TYPES)
        out: list[Monitor] = []
        for monitor in self.active():
            if monitor.type not in types:
                continue
            if component_variable and not any(_matches(monitor.entry, cv) for cv in component_variable):
                continue
            out.append(monitor)
        return out

    async def on_get_monitoring_report(self, request_id: int, monitoring_criteria: list[str] | None = None,
                                       component_variable: list[dict[str, Any]] | None = None,
                                       **_: Any) -> dict[str, Any]:
        limit = self.dm.integer("DeviceDataCtrlr", "ItemsPerMessage", instance="GetReport")
        if component_variable and len(component_variable) > limit:
            raise OccurrenceConstraintViolationError(
                description=f"{len(component_variable)} componentVariable entries, ItemsPerMessageGetReport is {limit}")
        now = self.service.clock.monotonic()
        for stale in [rid for rid, (at, _) in self._reports.items() if now - at > REPORT_STALE_S]:
            del self._reports[stale]  # accepted but the answer never went out (connection lost)
        if request_id in self._reports:
            return {"status": "Rejected", "statusInfo": {"reasonCode": "DuplicateRequestId"}}
        if len(self._reports) >= MAX_PENDING_REPORTS:
            return {"status": "Rejected", "statusInfo": {"reasonCode": "OutOfMemory"}}
        monitors = self.select(monitoring_criteria, component_variable)
        if not monitors:
            return {"status": "EmptyResultSet"}
        self._reports[request_id] = (now, report_items(monitors))
        return {"status": "Accepted"}

    async def after_get_monitoring_report(self, request_id: int, **_: Any) -> None:
        pending = self._reports.pop(request_id, None)
        if pending is None:
            return
        items = pending[1]
        parts = chunks(items, self.dm.integer("DeviceDataCtrlr", "ItemsPerMessage", instance="GetReport"),
                       self.dm.integer("DeviceDataCtrlr", "BytesPerMessage", instance="GetReport"))
        generated = ocpp_time(self.service.wall())
        await send_report(self.service, "NotifyMonitoringReport", request_id, [
            {"requestId": request_id, "seqNo": seq, "generatedAt": generated, "monitor": part,
             "tbc": seq < len(parts) - 1} for seq, part in enumerate(parts)])

    # -- watching -------------------------------------------------------------------------------------

    def _on_event(self, event: StationEvent) -> None:
        if isinstance(event, StatusChanged | MeterUpdate):
            self._wake.set()

    def _on_variable(self, component: str, variable: str, value: object) -> None:
        if component != "MonitoringCtrlr":
            return
        if variable == "MonitoringLevel" and self.dm.value("MonitoringCtrlr", "ActiveMonitoringLevel") != value:
            self.dm.set("MonitoringCtrlr", "ActiveMonitoringLevel", str(value), source="internal")
        elif variable == "MonitoringBase" and self.dm.value("MonitoringCtrlr", "ActiveMonitoringBase") != value:
            self.set_base(str(value))
        self._wake.set()

    async def run(self) -> None:
        clock = self.service.clock
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), PERIOD_TICK_S)
            self._wake.clear()
            wait = self._last_eval + TICK_S - clock.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._last_eval = clock.monotonic()
            try:
                self.tick()
            except Exception as exc:  # a bug must not stop the watching for good: logged once, tried again
                if repr(exc) != self._last_error:
                    self._last_error = repr(exc)
                    log.exception("monitor evaluation failed (logged once until it changes)")
            else:
                self._last_error = None

    def tick(self) -> list[Event]:
        """Evaluate every monitor and our faults once; queue the events; returns them (tests)."""
        if not self.dm.boolean("MonitoringCtrlr", "Enabled"):
            return []
        now = self.service.wall()
        events: list[Event] = []
        try:
            views = self.service.station.connector_views()
        except Exception as exc:  # the control side not (yet) there: the monitors read no value now
            log.debug("no station views: %s", exc)
            views = {}
        for monitor in self.active():
            state = self._states.setdefault(monitor.id, MonitorState())
            if monitor.transaction and not _in_transaction(monitor.entry, views):
                continue
            raw = self.dm.attribute_value(monitor.entry)
            was = state.tripped
            event = evaluate(monitor, state, raw, now)
            if event is not None:
                events.append(event)
            if state.tripped != was:  # remembered over a restart: the clearing is reported after it (N07.FR.14)
                self._remember_trip(monitor.id, state.tripped)
        events.extend(self._fault_events(views))
        self._send(events, now)
        return events

    def _fault_events(self, views: Mapping[int, Any]) -> list[Event]:
        events: list[Event] = []
        for evse, view in views.items():
            entry = self.dm.resolve("EVSE", "Problem", evse=evse)
            if not isinstance(entry, Entry):
                continue
            known = self._faults.setdefault(evse, {})
            now_faults = set(view.faults)
            for fault in sorted(now_faults - set(known)):
                info = faults.info(fault)
                event = Event(None, entry, "Alerting", "true", FAULT_SEVERITY.get(fault, FAULT_SEVERITY_DEFAULT),
                              tech_code=info.vendor_error_code, tech_info=info.explanation, key=(evse, fault))
                known[fault] = -1  # the eventId once sent
                events.append(event)
            for fault in sorted(set(known) - now_faults):
                cause = known.pop(fault)
                info = faults.info(fault)
                events.append(Event(None, entry, "Alerting", "true" if now_faults else "false",
                                    FAULT_SEVERITY.get(fault, FAULT_SEVERITY_DEFAULT), cleared=True,
                                    tech_code=info.vendor_error_code, tech_info=f"cleared: {info.explanation}",
                                    cause=cause if cause >= 0 else None))
        return events

    def _remember_trip(self, mid: int, tripped: bool) -> None:
        try:
            with transaction(self.db):
                if tripped:
                    self.db.execute("INSERT OR IGNORE INTO ocpp201_monitor_tripped(id) VALUES (?)", (mid,))
                else:
                    self.db.execute("DELETE FROM ocpp201_monitor_tripped WHERE id=?", (mid,))
        except sqlite3.Error as exc:
            log.error("monitor %d: cannot store its state: %s", mid, exc)

    def _next_event_id(self) -> int:
        row = self.db.execute("SELECT value FROM ocpp201_monitor_meta WHERE key='event_id'").fetchone()
        value = (int(row[0]) if row else 0) % (2**31 - 1) + 1
        with transaction(self.db):
            self.db.execute("INSERT INTO ocpp201_monitor_meta(key, value) VALUES ('event_id', ?) "
                            "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (value,))
        return value

    def _send(self, events: list[Event], now: float) -> None:
        if not events:
            return
        level = self.dm.integer("MonitoringCtrlr", "ActiveMonitoringLevel")
        offline_max = self.dm.integer("MonitoringCtrlr", "OfflineQueuingSeverity")
        online = self.service.online
        data: list[dict[str, Any]] = []
        mono = self.service.clock.monotonic()
        for event in events:
            if event.severity > level or (not online and event.severity > offline_max):
                log.debug("event on %s not sent (severity %d)", event.entry.storage_key, event.severity)
                continue
            if not self._limit.take(mono):
                if self._dropped == 0:
                    log.warning("more than %g monitoring events per second: dropping (counted)", EVENTS_PER_S)
                self._dropped += 1
                continue
            if self._dropped:
                log.warning("%d monitoring events were dropped by the rate limit", self._dropped)
                self._dropped = 0
            try:
                event_id = self._next_event_id()
            except sqlite3.Error as exc:
                log.error("monitoring event not queued: %s", exc)
                continue
            if event.key:
                self._faults.get(event.key[0], {})[event.key[1]] = event_id
            data.append(self._event_data(event, event_id, now))
        for start in range(0, len(data), EVENTS_PER_MESSAGE):
            part = data[start:start + EVENTS_PER_MESSAGE]
            try:
                self.service.enqueue("NotifyEvent", {"generatedAt": ocpp_time(now), "seqNo": 0, "eventData": part})
            except StorageError as exc:
                log.error("NotifyEvent not queued: %s", exc)
            for item in part:
                log.info("event %d %s %s=%s%s", item["eventId"], item["eventNotificationType"],
                         item["component"]["name"], item["actualValue"], " cleared" if item.get("cleared") else "")

    @staticmethod
    def _event_data(event: Event, event_id: int, now: float) -> dict[str, Any]:
        item: dict[str, Any] = {
            "eventId": event_id, "timestamp": ocpp_time(now), "trigger": event.trigger,
            "actualValue": event.actual[:MAX_ACTUAL], "component": _component(event.entry),
            "variable": _variable(event.entry),
            "eventNotificationType": event.monitor.kind if event.monitor is not None else HW_NOTIFICATION,
        }
        if event.monitor is not None:
            item["variableMonitoringId"] = event.monitor.id
        if event.cleared:
            item["cleared"] = True
        if event.tech_code:
            item["techCode"] = event.tech_code[:50]
        if event.tech_info:
            item["techInfo"] = event.tech_info[:500]
        if event.cause is not None:
            item["cause"] = event.cause
        return item


def _matches(entry: Entry, selector: Mapping[str, Any]) -> bool:
    component = selector.get("component") or {}
    if str(component.get("name", "")).lower() != entry.spec.component.lower():
        return False
    evse = component.get("evse")
    if evse is not None and (evse.get("id") != entry.evse or
                             (evse.get("connector_id") is not None and evse.get("connector_id") != entry.connector)):
        return False
    variable = selector.get("variable")
    if variable is None:
        return True
    if str(variable.get("name", "")).lower() != entry.spec.name.lower():
        return False
    instance = variable.get("instance")
    return instance is None or str(instance).lower() == (entry.spec.instance or "").lower()


def _in_transaction(entry: Entry, views: Mapping[int, Any]) -> bool:
    if entry.evse is not None:
        view = views.get(entry.evse)
        return view is not None and view.session is not None
    return any(view.session is not None for view in views.values())


__all__ = [
    "BUILTIN_ID", "CRITERIA", "EVENTS_PER_S", "MAX_CUSTOM_MONITORS", "Event", "Monitor", "MonitorState",
    "Monitoring", "MonitoringError", "RateLimit", "evaluate", "report_items", "validate_value",
]
