"""The automatic transaction generator of `cpsim fleet --scenario FILE` (TOML or JSON, same keys).

    plug_in_per_hour = 2.0        # mean plug-ins per station and hour (exponential gaps)
    session_minutes = [20, 90]    # the EV leaves (unplugs) after a time drawn uniformly from this range...
    energy_kwh = [5, 30]          # ...or once it has taken this much energy, whichever comes first
    tags = ["TAG-A", "TAG-B"]     # cards tapped to start (one drawn per session)
    invalid_tags = ["BAD-TAG"]    # tapped instead with p_invalid_tag: the CSMS refuses, the EV leaves
    p_offline_start = 0.05        # the station loses its CSMS link just before the plug-in, for offline_s
    offline_s = 120
    p_fault = 0.02                # a fault during the session, for fault_s, then cleared
    faults = ["overtemp", "rcd"]  # drawn from these (names of `cpsim ctl fault`)
    fault_s = 30
    seed = 1                      # per-station random streams derive from it and the station id

    [[case]]                      # OCTT-style scripted cases (simulator/fleet/cases.py), run on the stations
    name = "my-session"           # they select; the generator drives the others (a file may hold only cases)
    steps = [{plug = 1}, {tap = "{tag}"}, {expect = "StartTransaction"}, {unplug = 1}]

Every value is checked at load; an error names the key (exit 2).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulator.faults import FAULTS
from simulator.fleet.cases import Case, CaseError, parse_cases


class ScenarioError(Exception):
    pass


@dataclass(frozen=True)
class Scenario:
    plug_in_per_hour: float = 1.0
    session_minutes: tuple[float, float] = (20.0, 90.0)
    energy_kwh: tuple[float, float] = (5.0, 30.0)
    tags: tuple[str, ...] = ("FLEET-TAG",)
    invalid_tags: tuple[str, ...] = ("FLEET-BAD",)
    p_offline_start: float = 0.0
    offline_s: float = 120.0
    p_fault: float = 0.0
    faults: tuple[str, ...] = ("overtemp",)
    fault_s: float = 30.0
    p_invalid_tag: float = 0.0
    seed: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    cases: tuple[Case, ...] = ()  # the file's [[case]] tables
    generator: bool = True  # the file sets the transaction generator (False: it holds only [[case]] tables)


_KNOWN = {"plug_in_per_hour", "session_minutes", "energy_kwh", "tags", "invalid_tags", "p_offline_start",
          "offline_s", "p_fault", "faults", "fault_s", "p_invalid_tag", "seed"}


def load_scenario(path: Path) -> Scenario:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(f"{path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'}: {exc}") \
            from exc
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: expected a table of keys")
    return parse_scenario(data, str(path))


def parse_scenario(data: dict[str, Any], where: str = "scenario") -> Scenario:
    cases: tuple[Case, ...] = ()
    if "case" in data:
        try:
            cases = parse_cases(data["case"], where)
        except CaseError as exc:
            raise ScenarioError(str(exc)) from None
        data = {k: v for k, v in data.items() if k != "case"}
    unknown = set(data) - _KNOWN
    if unknown:
        raise ScenarioError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: case, "
                            f"{', '.join(sorted(_KNOWN))}")
    out: dict[str, Any] = {}

    def number(key: str, low: float, high: float) -> None:
        if key in data:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
                raise ScenarioError(f"{where}: {key}: expected a number in [{low:g}, {high:g}], got {value!r}")
            out[key] = float(value)

    def span(key: str, low: float, high: float) -> None:
        if key in data:
            value = data[key]
            if (not isinstance(value, list) or len(value) != 2
                    or any(isinstance(v, bool) or not isinstance(v, int | float) for v in value)
                    or not low <= value[0] <= value[1] <= high):
                raise ScenarioError(f"{where}: {key}: expected [min, max] with {low:g} <= min <= max <= {high:g}, "
                                    f"got {value!r}")
            out[key] = (float(value[0]), float(value[1]))

    def strings(key: str, allowed: set[str] | None = None) -> None:
        if key in data:
            value = data[key]
            # 36: a 2.0.1 idToken; cpsim fleet holds a 1.6 (or auto) fleet to the idTag's 20
            if not isinstance(value, list) or not value or not all(isinstance(v, str) and 0 < len(v) <= 36
                                                                    for v in value):
                raise ScenarioError(f"{where}: {key}: expected a non-empty list of tags (1..36 characters, "
                                    f"1..20 for OCPP 1.6)")
            if allowed is not None and not set(value) <= allowed:
                raise ScenarioError(f"{where}: {key}: unknown name(s) {sorted(set(value) - allowed)}; "
                                    f"known: {', '.join(sorted(allowed))}")
            out[key] = tuple(value)

    number("plug_in_per_hour", 0.0, 3600.0)
    span("session_minutes", 0.05, 7 * 24 * 60)
    span("energy_kwh", 0.0, 1000.0)
    strings("tags")
    strings("invalid_tags")
    for key in ("p_offline_start", "p_fault", "p_invalid_tag"):
        number(key, 0.0, 1.0)
    number("offline_s", 1.0, 86400.0)
    number("fault_s", 1.0, 86400.0)
    strings("faults", set(FAULTS))
    if "seed" in data:
        if isinstance(data["seed"], bool) or not isinstance(data["seed"], int):
            raise ScenarioError(f"{where}: seed: expected an integer")
        out["seed"] = data["seed"]
    return Scenario(**out, cases=cases, generator=bool(data) or not cases)
