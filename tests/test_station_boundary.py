"""The boundary between the control side and the network side (agent/station_api.py): network-side modules
(agent/ocpp/**, agent/diag.py) use the station only through StationPort. This test reads their source
(AST) and fails when one imports the control side or reaches into its objects."""

from __future__ import annotations

import ast
import dataclasses
import pickle
import typing
from pathlib import Path

import pytest

from agent import station_api
from agent.station import Station
from agent.station_api import ConnectorView, StationPort

ROOT = Path(__file__).resolve().parents[1]
NETWORK_SIDE = sorted([*(ROOT / "agent" / "ocpp").rglob("*.py"), ROOT / "agent" / "diag.py"])

# Control-side modules the network side must not import (the API module carries the shared vocabulary).
FORBIDDEN_MODULES = (
    "agent.connector", "agent.charge_control", "agent.station", "agent.iec61851", "agent.supervisor",
    "hal.roles", "hal.device", "hal.registry", "drivers",
)
# Attributes that exist only on control-side objects (Station, Connector, ChargeController, drivers):
# reading or writing one of them from the network side means holding a live control object.
CONTROL_ATTRIBUTES = frozenset({
    "connectors", "controller", "supervisor", "stop_check", "hal_event", "pilot", "switch", "lock", "meter",
    "display", "reader", "devices", "device_faults", "set_external_limit", "set_energy_allowed", "manual_pilot",
    "end_manual", "release_held_lock", "snapshot", "ocpp_diagnostics", "present_token", "active_faults",
    "connection_timeout_s", "stop_on_ev_disconnect", "unlock_on_ev_disconnect", "current_limit_a",
    "energy_allowed", "on_cp_state", "on_relay_feedback", "on_fault_flags", "on_device_fault", "on_proximity",
    "on_measured_current", "view",
})
STATION_NAMES = frozenset({"station", "_station"})
PORT_MEMBERS = frozenset(n for n in dir(StationPort) if not n.startswith("_"))


def _imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return []


def _is_station(node: ast.expr) -> bool:
    """``station`` / ``x.station`` / ``x._station``, but not the configuration's ``[station]`` table."""
    if isinstance(node, ast.Name):
        return node.id in STATION_NAMES
    if isinstance(node, ast.Attribute) and node.attr in STATION_NAMES:
        owner = node.value
        return not (isinstance(owner, ast.Attribute | ast.Name) and getattr(owner, "attr", getattr(owner, "id", ""))
                    in ("config", "_config"))
    return False


def violations(source: str, name: str = "<source>") -> list[str]:
    """Every place in ``source`` where the network side crosses the boundary other than through StationPort."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source, name)):
        for module in _imported(node):
            if any(module == m or module.startswith(m + ".") for m in FORBIDDEN_MODULES):
                found.append(f"{name}:{node.lineno}: imports {module}")
        if isinstance(node, ast.Attribute):
            if node.attr in CONTROL_ATTRIBUTES:
                found.append(f"{name}:{node.lineno}: uses .{node.attr} (a control-side object's attribute)")
            elif _is_station(node.value) and node.attr not in PORT_MEMBERS:
                found.append(f"{name}:{node.lineno}: station.{node.attr} is not part of StationPort")
    return found


@pytest.mark.parametrize("path", NETWORK_SIDE, ids=lambda p: str(p.relative_to(ROOT)))
def test_network_side_uses_only_the_station_port(path: Path) -> None:
    assert violations(path.read_text(), str(path.relative_to(ROOT))) == []


@pytest.mark.parametrize(
    "snippet",
    [
        "from agent.connector import Connector",
        "from agent.charge_control import EnergyHold",
        "import agent.station",
        "if TYPE_CHECKING:\n    from agent.station import Station",
        "svc.station.connectors[1].stop_session(reason)",
        "connector.controller.set_energy_allowed(False)",
        "connector.lock.unlock()",
        "self._svc.station.db.execute('SELECT 1')",
        "station.authorizer = auth",
        "station.sessions.recent(5)",
        "connector.stop_on_ev_disconnect = False",
    ],
)
def test_the_check_catches_a_crossing(snippet: str) -> None:
    assert violations(snippet), f"not caught: {snippet}"


@pytest.mark.parametrize(
    "snippet",
    [
        "from agent.station_api import ConnectorView, EnergyHold, StationPort",
        "self._svc.station.connector_view(1).session",
        "station.stop_session(1, StopReason.REMOTE)",
        "station.shared.db.execute('SELECT 1')",
        "[v.offered_current_a for v in station.connector_views().values()]",
    ],
)
def test_the_check_lets_the_port_through(snippet: str) -> None:
    assert violations(snippet) == []


def test_station_implements_every_port_member() -> None:
    missing = sorted(n for n in PORT_MEMBERS if not hasattr(Station, n))
    assert missing == []


# Types a value crossing the boundary may have: plain values, enums and frozen dataclasses of them.
_VALUE_TYPES = {
    "int", "float", "str", "bool", "None", "frozenset", "tuple", "ConnectorStatus", "Fault", "Session",
    "MeterSample", "CpState", "EnergyHold", "ConnectorReservation", "ConnectorSettings", "TaskView", "...",
}


@pytest.mark.parametrize(
    "cls",
    [station_api.ConnectorView, station_api.StationFacts, station_api.ConnectorSettings, station_api.TaskView,
     station_api.ConnectorReservation],
    ids=lambda c: c.__name__,
)
def test_values_crossing_are_frozen_plain_data(cls: type) -> None:
    assert dataclasses.is_dataclass(cls)
    assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    for f in dataclasses.fields(cls):
        words = {w for w in str(f.type).replace("|", " ").replace("[", " ").replace("]", " ").replace(",", " ")
                 .split()}
        assert words <= _VALUE_TYPES, f"{cls.__name__}.{f.name}: {f.type} is not a plain value type"
    hints = typing.get_type_hints(cls)  # the annotations resolve (no stale name)
    assert set(hints) >= {f.name for f in dataclasses.fields(cls)}


def test_a_connector_view_survives_pickling() -> None:
    """Serializable, so it can cross a process boundary: built from plain values only."""
    from agent.events import ConnectorStatus
    from agent.station_api import ConnectorSettings

    view = ConnectorView(
        id=1, status=ConnectorStatus.AVAILABLE, faults=frozenset(), available=True, maintenance=False,
        session=None, pending_id_tag=None, session_energy_wh=0.0, last_sample=None, meter_latest=None,
        has_meter=True, cp_state=None, ev_connected=False, charge_state="idle", offered_current_a=0.0,
        duty_percent=None, relay_commanded_closed=False, relay_feedback_closed=None,
        energy_holds=frozenset({station_api.EnergyHold.NOT_AUTHORIZED}), has_lock=True, locked=None,
        lock_held_for=None, reservation=station_api.ConnectorReservation(7, "TAG"), used_reservation=None,
        display_extra=(("price", "0.30/kWh"),), max_current_a=16.0, phases=3, fixed_cable=False,
        settings=ConnectorSettings(),
    )
    assert pickle.loads(pickle.dumps(view)) == view
