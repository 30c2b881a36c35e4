"""OCTT-style scripted cases of `cpsim fleet`, run against every station of the fleet (or a selection) at once.

A case is a named sequence of steps. Actions drive the station's world through the fleet's control API (the
same verbs as `cpsim ctl`): ``plug``, ``unplug``, ``tap``, ``fault`` (``on = false`` clears it), ``clear``,
``offline`` (seconds, or ``true``: until ``online``), ``online``, ``wait``. Checks wait (``within`` seconds)
for: ``expect = "Action"`` (a CALL the station sent and the CSMS received, its payload containing
``payload`` and, when given, the CSMS's CALLRESULT containing ``result``: the answer to the first such CALL
decides; ``from_csms = true``: a CALL the CSMS sent), ``absent = "Action"`` (no such CALL for ``within``
seconds), ``status`` (the connector's status as the station reports it), ``session``, ``relay`` (contactor
closed), ``connected``, ``booted``. An expectation looks at the frames since the last action (so the
messages one action causes may come in any order), the first steps of a case at those since the case
began, or, with ``from_boot = true``, since the station first connected.
Strings ``{tag}`` / ``{invalid_tag}`` stand for the fleet's ``--tag`` / ``--invalid-tag``.

Frames are seen on each station's websocket (``metrics.FRAME_OBSERVER``): what a check accepts is what the
CSMS under test received and answered. Each station runs its cases one after the other; before each (but
``from_boot`` ones) the fleet puts it at rest: online, faults cleared, EVs unplugged, no session (e.g. one
resumed after kill -9). Built-in cases (1.6 and 2.0.1 variants, picked by the station's protocol version) are
in ``builtin_cases``; a scenario file adds its own as ``[[case]]`` tables::

    [[case]]
    name = "my-session"
    stations = [1, "10-20", "CP-000042"]      # optional: indices, index ranges or ids (default: all)
    steps = [
      {plug = 1},
      {tap = "{tag}"},
      {expect = "StartTransaction", result = {idTagInfo = {status = "Accepted"}}, within = 20},
      {status = "Charging"},
      {wait = 5},
      {unplug = 1},
      {expect = "StopTransaction", payload = {reason = "EVDisconnected"}},
    ]
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from agent.events import ConnectorStatus
from simulator.faults import FAULTS

if TYPE_CHECKING:
    from simulator.fleet.fleet import Fleet, FleetStation

log = logging.getLogger("cpsim.fleet.cases")

ACTIONS = ("plug", "unplug", "tap", "fault", "clear", "offline", "online", "wait")
CHECKS = ("expect", "absent", "status", "session", "relay", "connected", "booted")
# The modifiers each kind of step accepts (besides its own key).
_MODIFIERS: dict[str, frozenset[str]] = {
    "plug": frozenset(), "unplug": frozenset(), "clear": frozenset(), "tap": frozenset(),
    "fault": frozenset({"connector", "on"}), "offline": frozenset(), "online": frozenset(), "wait": frozenset(),
    "expect": frozenset({"payload", "result", "within", "from_csms"}),
    "absent": frozenset({"payload", "within", "from_csms"}),
    "status": frozenset({"connector", "within"}), "session": frozenset({"connector", "within"}),
    "relay": frozenset({"connector", "within"}), "connected": frozenset({"within"}),
    "booted": frozenset({"within"}),
}
FLEET_FAULTS = tuple(sorted(set(FAULTS) - {"reader-silent"}))  # the fleet's reader is in-process
STATUSES = tuple(s.value for s in ConnectorStatus)
DEFAULT_WITHIN_S = 30.0
DEFAULT_ABSENT_S = 5.0
FOREVER_S = 10.0**9
MAX_FAILURES_KEPT = 10  # per case, in the report
MAX_ENTRIES = 2000  # frames kept per station while its cases run (the oldest go first)
POLL_S = 0.2
FAULT_REFERENCE = "a fault under a transaction: contactor open, Faulted; charging again once it is gone"


class CaseError(ValueError):
    pass


@dataclass(frozen=True)
class Step:
    kind: str
    value: Any
    connector: int = 1
    payload: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    within: float | None = None
    on: bool = True
    from_csms: bool = False

    @property
    def timeout(self) -> float:
        if self.within is not None:
            return self.within
        return DEFAULT_ABSENT_S if self.kind == "absent" else DEFAULT_WITHIN_S

    def describe(self) -> str:
        if self.kind in ("expect", "absent"):
            text = f"{self.kind} {'CSMS ' if self.from_csms else ''}{self.value}"
            if self.payload:
                text += f" {_compact(self.payload)}"
            if self.result:
                text += f" -> {_compact(self.result)}"
            return text
        if self.kind == "fault":
            return f"fault {self.connector} {self.value} {'on' if self.on else 'off'}"
        if self.kind in ("status", "session", "relay"):
            return f"{self.kind} {self.connector} = {self.value}"
        if self.kind == "offline":
            return "offline until online" if self.value >= FOREVER_S else f"offline {self.value:g} s"
        return f"{self.kind} {self.value}"


@dataclass(frozen=True)
class Case:
    name: str
    steps: tuple[Step, ...]
    reference: str = ""  # the OCTT test case it is modelled on
    from_boot: bool = False  # its expectations see the frames since the station's first connection
    indices: tuple[tuple[int, int], ...] = ()  # selected index ranges (inclusive)
    ids: frozenset[str] = frozenset()  # selected ids; no indices and no ids: every station
    builtin: bool = False  # one of builtin_cases (under --ocpp auto, taken in the version each station speaks)

    def selects(self, index: int, cp_id: str) -> bool:
        if not self.indices and not self.ids:
            return True
        return cp_id in self.ids or any(lo <= index <= hi for lo, hi in self.indices)


@dataclass(frozen=True)
class CasePlan:
    """What `cpsim fleet --case NAME ... / [[case]]` runs: the cases in order, the two cards, and whether
    the fleet stops (SIGTERM-like) once every selected station has run them all."""

    cases: tuple[Case, ...]
    tag: str = "FLEET-TAG"
    invalid_tag: str = "FLEET-BAD"
    boot_within_s: float = 120.0
    stop_when_done: bool = True


# ----------------------------------------------------------------------------------------------- parsing
def _compact(value: Any) -> str:
    import json

    text = json.dumps(value, separators=(",", ":"), sort_keys=True)
    return text if len(text) <= 160 else text[:157] + "..."


def _number(value: Any, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise CaseError(f"{where}: expected a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def _connector(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4:
        raise CaseError(f"{where}: expected a connector number 1..4, got {value!r}")
    return value


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise CaseError(f"{where}: expected true or false, got {value!r}")
    return value


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        raise CaseError(f"{where}: expected a non-empty table of fields, got {value!r}")
    return value


def parse_step(data: Any, where: str) -> Step:
    if not isinstance(data, dict):
        raise CaseError(f"{where}: expected a table like {{plug = 1}}, got {data!r}")
    kinds = [k for k in data if k in ACTIONS or k in CHECKS]
    if len(kinds) != 1:
        raise CaseError(f"{where}: expected exactly one of {', '.join(ACTIONS + CHECKS)}, got "
                        f"{', '.join(sorted(data)) or 'nothing'}")
    kind = kinds[0]
    unknown = set(data) - {kind} - _MODIFIERS[kind]
    if unknown:
        allowed = ", ".join(sorted(_MODIFIERS[kind])) or "none"
        raise CaseError(f"{where}: {kind}: unknown key(s) {', '.join(sorted(unknown))} (allowed: {allowed})")
    value = data[kind]
    at = f"{where}: {kind}"
    fields: dict[str, Any] = {}
    if "connector" in data:
        fields["connector"] = _connector(data["connector"], f"{where}: connector")
    if "within" in data:
        fields["within"] = _number(data["within"], f"{where}: within", 0.0, 86400.0)
    if "on" in data:
        fields["on"] = _flag(data["on"], f"{where}: on")
    if "from_csms" in data:
        fields["from_csms"] = _flag(data["from_csms"], f"{where}: from_csms")
    for key in ("payload", "result"):
        if key in data:
            fields[key] = _table(data[key], f"{where}: {key}")
    if kind in ("plug", "unplug", "clear"):
        fields["connector"] = value = _connector(value, at)
    elif kind == "tap":
        if not isinstance(value, str) or not 0 < len(value) <= 36:
            raise CaseError(f"{at}: expected a card id (1..36 characters) or \"{{tag}}\", got {value!r}")
    elif kind == "fault":
        if value not in FLEET_FAULTS:
            raise CaseError(f"{at}: unknown fault {value!r}; known: {', '.join(FLEET_FAULTS)}")
    elif kind == "offline":
        value = FOREVER_S if value is True else _number(value, at + " (seconds, or true: until online)",
                                                         1.0, 86400.0)
    elif kind == "online":
        if value is not True:
            raise CaseError(f"{at}: expected true, got {value!r}")
    elif kind == "wait":
        value = _number(value, at + " (seconds)", 0.0, 86400.0)
    elif kind in ("expect", "absent"):
        if not isinstance(value, str) or not value.isalnum() or not 0 < len(value) <= 64:
            raise CaseError(f"{at}: expected an OCPP action name (e.g. \"StartTransaction\"), got {value!r}")
    elif kind == "status":
        if value not in STATUSES:
            raise CaseError(f"{at}: expected one of {', '.join(STATUSES)}, got {value!r}")
    else:  # session, relay, connected, booted
        value = _flag(value, at)
    return Step(kind, value, **fields)


def _selection(value: Any, where: str) -> tuple[tuple[tuple[int, int], ...], frozenset[str]]:
    if not isinstance(value, list) or not value:
        raise CaseError(f"{where}: expected a non-empty list of station indices (5), ranges (\"1-10\") or ids")
    ranges: list[tuple[int, int]] = []
    ids: set[str] = set()
    for item in value:
        if isinstance(item, int) and not isinstance(item, bool) and item >= 1:
            ranges.append((item, item))
        elif isinstance(item, str) and item.count("-") == 1 and all(p.isdigit() for p in item.split("-")):
            lo, hi = (int(p) for p in item.split("-"))
            if not 1 <= lo <= hi:
                raise CaseError(f"{where}: range {item!r}: expected 1 <= first <= last")
            ranges.append((lo, hi))
        elif isinstance(item, str) and 0 < len(item) <= 48 and " " not in item:
            ids.add(item)
        else:
            raise CaseError(f"{where}: {item!r} is not a station index, a range \"A-B\" or a station id")
    return tuple(ranges), frozenset(ids)


def parse_case(data: Any, where: str) -> Case:
    if not isinstance(data, dict):
        raise CaseError(f"{where}: expected a table")
    unknown = set(data) - {"name", "reference", "stations", "from_boot", "steps"}
    if unknown:
        raise CaseError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                        "known: name, reference, stations, from_boot, steps")
    name = data.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= 64 or not name.replace("-", "").replace("_", "").isalnum():
        raise CaseError(f"{where}: name: expected 1..64 letters, digits, '-' or '_', got {name!r}")
    where = f"{where} ({name})"
    reference = data.get("reference", "")
    if not isinstance(reference, str):
        raise CaseError(f"{where}: reference: expected a string")
    steps = data.get("steps")
    if not isinstance(steps, list) or not steps:
        raise CaseError(f"{where}: steps: expected a non-empty list of steps")
    indices, ids = _selection(data["stations"], f"{where}: stations") if "stations" in data else ((), frozenset())
    return Case(name=name, reference=reference, from_boot=_flag(data.get("from_boot", False), f"{where}: from_boot"),
                steps=tuple(parse_step(s, f"{where}: step {i}") for i, s in enumerate(steps, 1)),
                indices=indices, ids=ids)


def parse_cases(data: Any, where: str = "scenario") -> tuple[Case, ...]:
    """The ``[[case]]`` tables of a scenario file."""
    if not isinstance(data, list) or not data:
        raise CaseError(f"{where}: case: expected [[case]] tables")
    cases = tuple(parse_case(c, f"{where}: case {i}") for i, c in enumerate(data, 1))
    names = [c.name for c in cases]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise CaseError(f"{where}: case: name(s) given twice: {', '.join(twice)}")
    return cases


# ----------------------------------------------------------------------------------------------- built-in cases
def _steps(*tables: dict[str, Any]) -> tuple[Step, ...]:
    return tuple(parse_step(t, f"built-in step {i}") for i, t in enumerate(tables, 1))


def builtin_cases(version: str) -> dict[str, Case]:
    """The built-in cases for OCPP ``version`` ("1.6" or "2.0.1"), in the order ``--case all`` runs them."""
    if version == "2.0.1":
        boot = _steps(
            {"expect": "BootNotification", "payload": {"reason": "PowerUp"}, "result": {"status": "Accepted"}},
            {"expect": "StatusNotification", "payload": {"evseId": 1, "connectorId": 1,
                                                         "connectorStatus": "Available"}},
            {"booted": True})
        plugged = {"expect": "StatusNotification", "payload": {"evseId": 1, "connectorStatus": "Occupied"}}
        authorize = {"expect": "Authorize", "payload": {"idToken": {"idToken": "{tag}"}},
                     "result": {"idTokenInfo": {"status": "Accepted"}}}
        started = {"expect": "TransactionEvent", "payload": {"eventType": "Started", "evse": {"id": 1}},
                   "result": {"idTokenInfo": {"status": "Accepted"}}}
        charging = {"expect": "TransactionEvent", "payload": {"eventType": "Updated",
                                                              "transactionInfo": {"chargingState": "Charging"}}}
        ended_unplugged = {"expect": "TransactionEvent",
                           "payload": {"eventType": "Ended", "transactionInfo": {"stoppedReason": "EVDisconnected"}}}
        available = {"expect": "StatusNotification", "payload": {"evseId": 1, "connectorStatus": "Available"}}
        invalid: list[dict[str, Any]] = [{"expect": "Authorize", "payload": {"idToken": {"idToken": "{invalid_tag}"}},
                    "result": {"idTokenInfo": {"status": "Invalid"}}},
                   {"absent": "TransactionEvent", "payload": {"eventType": "Started"}, "within": 3}]
        offline_started = {"expect": "TransactionEvent", "payload": {"eventType": "Started", "offline": True},
                           "within": 60}
        faulted = {"expect": "StatusNotification", "payload": {"evseId": 1, "connectorStatus": "Faulted"}}
        resumed = {"expect": "StatusNotification", "payload": {"evseId": 1, "connectorStatus": "Occupied"}}
        refs = {"cold-boot": "OCTT 2.0.1 TC_B_01_CS (cold boot, Accepted)",
                "regular-session": "OCTT 2.0.1 TC_E_01_CS / TC_E_03_CS (cable first, stop by the EV leaving)",
                "invalid-tag": "OCTT 2.0.1 TC_C_02_CS (Authorization Invalid/Unknown)",
                "offline-session": "OCTT 2.0.1 TC_E_43_CS (transaction during offline period)",
                "fault-during-session": FAULT_REFERENCE}
    else:
        boot = _steps(
            {"expect": "BootNotification", "result": {"status": "Accepted"}},
            {"expect": "StatusNotification", "payload": {"connectorId": 1, "status": "Available"}},
            {"booted": True})
        plugged = {"expect": "StatusNotification", "payload": {"connectorId": 1, "status": "Preparing"}}
        authorize = {"expect": "Authorize", "payload": {"idTag": "{tag}"},
                     "result": {"idTagInfo": {"status": "Accepted"}}}
        started = {"expect": "StartTransaction", "payload": {"connectorId": 1, "idTag": "{tag}"},
                   "result": {"idTagInfo": {"status": "Accepted"}}}
        charging = {"expect": "StatusNotification", "payload": {"connectorId": 1, "status": "Charging"}}
        ended_unplugged = {"expect": "StopTransaction", "payload": {"reason": "EVDisconnected"}}
        available = {"expect": "StatusNotification", "payload": {"connectorId": 1, "status": "Available"}}
        invalid = [{"expect": "Authorize", "payload": {"idTag": "{invalid_tag}"},
                    "result": {"idTagInfo": {"status": "Invalid"}}},
                   {"absent": "StartTransaction", "within": 3}]
        offline_started = {"expect": "StartTransaction", "payload": {"idTag": "{tag}"},
                           "result": {"idTagInfo": {"status": "Accepted"}}, "within": 60}
        faulted = {"expect": "StatusNotification", "payload": {"connectorId": 1, "status": "Faulted",
                                                               "errorCode": "HighTemperature"}}
        resumed = charging
        refs = {"cold-boot": "OCTT 1.6 cold boot (TC_B_01_CS in 2.0.1)",
                "regular-session": "OCTT 1.6 regular charging session, plug-in first (TC_E_03_CS in 2.0.1)",
                "invalid-tag": "OCTT 1.6 start charging session, authorize invalid (TC_C_02_CS in 2.0.1)",
                "offline-session": "OCTT 1.6 offline start transaction (TC_E_43_CS in 2.0.1)",
                "fault-during-session": FAULT_REFERENCE}
    cases = [
        Case("cold-boot", boot, refs["cold-boot"], from_boot=True, builtin=True),
        Case("regular-session", _steps(
            {"plug": 1}, plugged, {"tap": "{tag}"}, authorize, started, {"status": "Charging"}, charging,
            {"relay": True}, {"wait": 1}, {"unplug": 1}, ended_unplugged, available, {"session": False}),
            refs["regular-session"], builtin=True),
        Case("invalid-tag", _steps(
            {"plug": 1}, plugged, {"tap": "{invalid_tag}"}, *invalid, {"session": False}, {"relay": False},
            {"unplug": 1}, available), refs["invalid-tag"], builtin=True),
        # The card must be known offline: the station's authorization cache holds it after regular-session.
        Case("offline-session", _steps(
            {"offline": True}, {"connected": False, "within": 10}, {"plug": 1}, {"tap": "{tag}"},
            {"session": True, "within": 15}, {"status": "Charging"}, {"online": True},
            {"connected": True, "within": 60}, offline_started, {"unplug": 1}, ended_unplugged,
            {"session": False}), refs["offline-session"], builtin=True),
        # The session outlives the fault (the contactor opens at once, the connector reports Faulted); once the
        # fault is gone the EV charges again, and leaving ends the session.
        Case("fault-during-session", _steps(
            {"plug": 1}, {"tap": "{tag}"}, started, {"status": "Charging"}, {"fault": "overtemp"},
            {"relay": False, "within": 1}, faulted, {"wait": 1}, {"fault": "overtemp", "on": False}, resumed,
            {"relay": True}, {"unplug": 1}, ended_unplugged, available, {"session": False}),
            refs["fault-during-session"], builtin=True),
    ]
    return {c.name: c for c in cases}


def resolve_case_names(names: Iterable[str], version: str) -> tuple[Case, ...]:
    """``--case NAME[:STATIONS]`` (repeatable; ``all``: every built-in case, in order; STATIONS: a comma list
    of indices, ranges A-B and ids, e.g. ``regular-session:1-10,42``; default every station)."""
    known = builtin_cases("2.0.1" if version == "2.0.1" else "1.6")
    out: list[Case] = []
    for text in names:
        name, _, where = text.partition(":")
        picked = list(known.values()) if name == "all" else [known[name]] if name in known else None
        if picked is None:
            raise CaseError(f"--case {text}: unknown case {name!r}; built-in: all, {', '.join(known)}")
        if where:
            items: list[Any] = [int(i) if i.isdigit() else i for i in where.split(",")]
            indices, ids = _selection(items, f"--case {text}")
            picked = [replace(c, indices=indices, ids=ids) for c in picked]
        for case in picked:
            if case.name in {o.name for o in out}:
                raise CaseError(f"--case {text}: {case.name} is given twice (one --case per case, with all "
                                "its stations)")
            out.append(case)
    return tuple(out)


# ----------------------------------------------------------------------------------------------- matching
def contains(actual: Any, expected: Any) -> bool:
    """``actual`` holds ``expected``: tables by their given keys (recursively), lists when every expected item
    is held by some actual item, anything else by equality."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and contains(actual[k], v) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and all(any(contains(a, e) for a in actual) for e in expected)
    return bool(actual == expected) and isinstance(actual, bool) == isinstance(expected, bool)


def substitute(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, text in names.items():
            value = value.replace("{" + key + "}", text)
        return value
    if isinstance(value, dict):
        return {k: substitute(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, names) for v in value]
    return value


# ----------------------------------------------------------------------------------------------- the frames
@dataclass(eq=False)
class Entry:
    seq: int
    by_station: bool  # a CALL the station sent (else one the CSMS sent)
    action: str
    payload: Any
    answered: bool = False
    error: bool = False  # answered by a CALLERROR
    result: Any = None


@dataclass(eq=False)
class FrameLog:
    """The CALLs of one station, both ways, each with its answer once it comes."""

    entries: list[Entry] = field(default_factory=list)
    base: int = 0  # seq of entries[0]
    calls: dict[str, Entry] = field(default_factory=dict)  # unique id -> CALL awaiting its answer
    early: dict[str, list[Any]] = field(default_factory=dict)  # answers seen before their CALL was recorded
    waiters: list[asyncio.Future[None]] = field(default_factory=list)

    @property
    def end(self) -> int:
        return self.base + len(self.entries)

    def add(self, direction: str, frame: list[Any]) -> None:
        kind = frame[0]
        if kind == 2 and len(frame) >= 4:
            entry = Entry(self.end, direction == "out", str(frame[2]), frame[3])
            self.entries.append(entry)
            answer = self.early.pop(str(frame[1]), None)
            if answer is not None:
                self._answer(entry, answer)
            else:
                self.calls[str(frame[1])] = entry
            if len(self.entries) > MAX_ENTRIES:
                self.trim(self.end - MAX_ENTRIES)
        elif kind in (3, 4) and len(frame) >= 3:
            entry_or_none = self.calls.pop(str(frame[1]), None)
            if entry_or_none is None:
                if len(self.early) < 100:
                    self.early[str(frame[1])] = frame
                return
            self._answer(entry_or_none, frame)
        else:
            return
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.waiters.clear()

    @staticmethod
    def _answer(entry: Entry, frame: list[Any]) -> None:
        entry.answered = True
        entry.error = frame[0] == 4
        entry.result = frame[2] if frame[0] == 3 else frame[2:]

    def since(self, mark: int) -> list[Entry]:
        return self.entries[max(0, mark - self.base):]

    def trim(self, mark: int) -> None:
        drop = min(len(self.entries), max(0, mark - self.base))
        if drop:
            del self.entries[:drop]
            self.base += drop

    async def changed(self, within_s: float) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter, max(0.0, within_s))


def judge(entries: list[Entry], step: Step, payload: Any, result: Any) -> tuple[bool | None, str | None]:
    """An ``expect`` / ``absent`` step over the CALLs seen so far: (True, None) it holds, (False, reason) it
    failed, (None, None) not decided yet. For ``expect`` the first CALL of the action holding ``payload``
    decides, by its answer when ``result`` is given."""
    for entry in entries:
        if entry.by_station == step.from_csms or entry.action != step.value:
            continue
        if payload is not None and not contains(entry.payload, payload):
            continue
        if step.kind == "absent":
            return False, f"sent: {_compact(entry.payload)}"
        if result is None:
            return True, None
        if not entry.answered:
            return None, None
        if not entry.error and contains(entry.result, result):
            return True, None
        return False, (f"{step.value} {_compact(entry.payload)} answered "
                       f"{'CALLERROR ' if entry.error else ''}{_compact(entry.result)}")
    return None, None


def station_of(connection: Any) -> str | None:
    """The station id of a fleet connection: the last segment of the URL path it dialled."""
    request = getattr(connection, "request", None)
    path = getattr(request, "path", None)
    if not isinstance(path, str):
        return None
    return unquote(path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1])


# ----------------------------------------------------------------------------------------------- running
@dataclass
class CaseTally:
    case: Case
    passed: int = 0
    failed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)


class CaseRunner:
    """Runs a plan's cases on every selected station of one fleet process, reports per case."""

    def __init__(self, fleet: Fleet, plan: CasePlan) -> None:
        from simulator.fleet import metrics as fm
        from simulator.fleet.fleet import station_ids

        self.fleet = fleet
        self.plan = plan
        options = fleet.options
        # Under --ocpp auto each station runs the built-in cases in the version it speaks (see _variant).
        self.selected: dict[str, list[Case]] = {}
        for index, cp_id in station_ids(options.id_prefix, options.stations, options.shard):
            picked = [c for c in plan.cases if c.selects(index, cp_id)]
            if picked:
                self.selected[cp_id] = picked
        self.tallies = {c.name: CaseTally(c) for c in plan.cases}
        self.logs: dict[str, FrameLog] = {cp: FrameLog() for cp in self.selected}
        self.done = 0  # stations that ran all their cases
        self.running: dict[str, str] = {}  # station -> the case it runs now
        self._names = {"tag": plan.tag, "invalid_tag": plan.invalid_tag}
        fm.FRAME_OBSERVER = self.observe

    # -- frames
    def observe(self, connection: Any, direction: str, frame: list[Any]) -> None:
        cp_id = station_of(connection)
        frames = self.logs.get(cp_id) if cp_id is not None else None
        if frames is not None:
            frames.add(direction, frame)

    # -- the fleet's side
    def selects(self, cp_id: str) -> bool:
        return cp_id in self.selected

    async def run(self) -> None:
        """Starts each selected station's cases as soon as the fleet has built it; stops the fleet (when the
        plan says so) once every selected station has run them all."""
        started: set[str] = set()
        scanned = 0  # the fleet's stations dict only grows, in the order they are built
        tasks: list[asyncio.Task[None]] = []
        try:
            while True:
                new = list(itertools.islice(self.fleet.stations, scanned, None))
                scanned += len(new)
                for cp_id in new:
                    if cp_id in self.selected and cp_id not in started:
                        started.add(cp_id)
                        tasks.append(asyncio.get_running_loop().create_task(
                            self._run_station(self.fleet.stations[cp_id]), name=f"case:{cp_id}"))
                if len(started) + len(set(self.fleet.failed) & set(self.selected)) >= len(self.selected):
                    break
                await asyncio.sleep(POLL_S)
            for cp_id in set(self.fleet.failed) & set(self.selected):
                for case in self.selected[cp_id]:
                    self._record(cp_id, case, "the station could not be built (see the log)")
                self.done += 1
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.plan.stop_when_done:
            log.warning("every case ran on every selected station: stopping the fleet")
            self.fleet._request_stop()

    async def _run_station(self, fs: FleetStation) -> None:
        for case in self.selected[fs.id]:
            self.running[fs.id] = case.name
            try:
                reason = await self.run_case(fs, case)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug or a broken station: this case fails, the others go on
                log.exception("%s: case %s", fs.id, case.name)
                reason = f"{type(exc).__name__}: {exc}"
            self._record(fs.id, case, reason)
        self.running.pop(fs.id, None)
        self.logs.pop(fs.id, None)  # no more recording for this station
        self.done += 1

    def _record(self, cp_id: str, case: Case, reason: str | None) -> None:
        tally = self.tallies[case.name]
        if reason is None:
            tally.passed += 1
            return
        tally.failed += 1
        log.info("%s: case %s failed: %s", cp_id, case.name, reason)
        if len(tally.failures) < MAX_FAILURES_KEPT:
            tally.failures.append({"station": cp_id, "reason": reason})

    @staticmethod
    def _variant(fs: FleetStation, case: Case) -> Case:
        """A built-in case in the version this station speaks (--ocpp auto: known once it has booted)."""
        speaks = getattr(fs.runner, "speaks", "")
        variant = builtin_cases("2.0.1" if speaks == "ocpp2.0.1" else "1.6")[case.name]
        return replace(variant, indices=case.indices, ids=case.ids)

    async def run_case(self, fs: FleetStation, case: Case) -> str | None:
        """None when every step held, else the reason of the first that did not."""
        frames = self.logs[fs.id]
        if not case.from_boot or (case.builtin and self.fleet.options.ocpp == "auto"):
            if not await _until(fs.booted, self.plan.boot_within_s):
                return f"the station was not booted (BootNotification accepted) within {self.plan.boot_within_s:g} s"
        if case.builtin and self.fleet.options.ocpp == "auto":
            case = self._variant(fs, case)
        if case.from_boot:
            mark = frames.base
        else:
            problem = await self._at_rest(fs)
            if problem:
                return f"not run: the station could not be put at rest ({problem})"
            mark = frames.end
            frames.trim(mark)
        for number, step in enumerate(case.steps, 1):
            if step.kind in ACTIONS:
                mark = frames.end
                frames.trim(mark)
                reason = await self._act(fs, step)
            else:
                reason = await self._check(fs, frames, mark, step)
            if reason is not None:
                return f"step {number} ({substitute(step.describe(), self._names)}): {reason}"
        return None

    async def _act(self, fs: FleetStation, step: Step) -> str | None:
        request: dict[str, Any] = {"cmd": step.kind, "station": fs.id, "connector": step.connector}
        if step.kind == "wait":
            await asyncio.sleep(step.value)
            return None
        if step.kind == "tap":
            request["id_tag"] = substitute(step.value, self._names)
        elif step.kind == "fault":
            if not step.on:
                self.fleet.fault(fs, step.connector, step.value, False)
                return None
            request["name"] = step.value
        elif step.kind == "offline":
            request["value"] = step.value
        elif step.kind == "online":
            fs.offline_until = 0.0
            return None
        reply = self.fleet.control(request)
        return None if reply.get("ok") else str(reply.get("error"))

    async def _check(self, fs: FleetStation, frames: FrameLog, mark: int, step: Step) -> str | None:
        deadline = time.monotonic() + step.timeout
        if step.kind in ("expect", "absent"):
            payload = substitute(step.payload, self._names) if step.payload else None
            result = substitute(step.result, self._names) if step.result else None
            while True:
                held, reason = judge(frames.since(mark), step, payload, result)
                if held is not None:
                    return reason
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                await frames.changed(left)
            seen = [e for e in frames.since(mark) if e.by_station != step.from_csms and e.action == step.value]
            if step.kind == "absent":
                return None
            if not seen:
                return f"no {step.value} within {step.timeout:g} s"
            last = seen[-1]
            answer = ("unanswered" if not last.answered else
                      f"CALLERROR {_compact(last.result)}" if last.error else f"answered {_compact(last.result)}")
            return (f"no matching {step.value} within {step.timeout:g} s; the last: {_compact(last.payload)} "
                    f"{answer} ({len(seen)} seen)")
        probe = self._probe(fs, step)
        if await _until(lambda: probe()[0], step.timeout):
            return None
        return f"not within {step.timeout:g} s (it is {probe()[1]})"

    def _probe(self, fs: FleetStation, step: Step) -> Any:
        from agent.ocpp.v16.link import LinkState

        def probe() -> tuple[bool, Any]:
            station = fs.station
            assert station is not None
            if step.kind == "status":
                status = station.connector_view(step.connector).status.value
                return status == step.value, status
            if step.kind == "session":
                session = station.connector_view(step.connector).session is not None
                return session == step.value, session
            if step.kind == "relay":
                closed = fs.plants[step.connector].relay_closed
                return closed == step.value, closed
            if step.kind == "connected":
                link = getattr(fs.service, "link", None)
                up = link is not None and link.state is LinkState.CONNECTED
                return up == step.value, up
            booted = fs.booted()
            return booted == step.value, booted

        return probe

    async def _at_rest(self, fs: FleetStation) -> str | None:
        """Before a case: online, no fault, EVs gone, no session (at most 60 s; nothing to do at rest)."""
        from agent.ocpp.v16.link import LinkState

        fs.offline_until = 0.0
        for n, plant in fs.plants.items():
            if plant.faults or plant.relay_welded or plant.lock_jammed or plant.ev.extra_draw_a:
                self.fleet.control({"cmd": "clear", "station": fs.id, "connector": n})
            if plant.plugged:
                self.fleet.plug(fs, n, False)
        station = fs.station
        assert station is not None

        def rested() -> bool:  # the station has seen it all: no session, every connector Available, online
            link = getattr(fs.service, "link", None)
            return (all(v.session is None and v.status is ConnectorStatus.AVAILABLE
                        for v in station.connector_views().values())
                    and link is not None and link.state is LinkState.CONNECTED)

        if await _until(rested, 60.0):
            return None
        views = station.connector_views().values()
        return (f"after 60 s: connectors {', '.join(f'{v.id} {v.status.value}' for v in views)}, "
                f"sessions {sum(v.session is not None for v in views)}, link "
                f"{getattr(getattr(fs.service, 'link', None), 'state', None)}")

    # -- reports
    def report(self) -> dict[str, Any]:
        passed = sum(t.passed for t in self.tallies.values())
        failed = sum(t.failed for t in self.tallies.values())
        runs = sum(len(c) for c in self.selected.values())
        return {
            "stations": len(self.selected), "stations_done": self.done, "runs": runs, "passed": passed,
            "failed": failed, "not_run": runs - passed - failed,
            "by_case": {name: {"reference": t.case.reference, "passed": t.passed, "failed": t.failed,
                               "first_failures": t.failures} for name, t in self.tallies.items()},
        }

    def progress(self) -> str:
        passed = sum(t.passed for t in self.tallies.values())
        failed = sum(t.failed for t in self.tallies.values())
        runs = sum(len(c) for c in self.selected.values())
        return f" cases {passed + failed}/{runs} pass {passed} fail {failed}"

    def exit_code(self) -> int:
        report = self.report()
        return 0 if report["failed"] == 0 and report["not_run"] == 0 else 1


async def _until(check: Any, within: float) -> bool:
    deadline = time.monotonic() + within
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
