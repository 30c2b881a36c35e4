from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import ConfigError, load, parse

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = {
    "station": {"id": "CP1", "state_dir": "/tmp/x"},
    "devices": {"b": {"driver": "pilot-board-serial", "port": "/dev/null"}},
    "connectors": [{"id": 1, "pilot": "b", "max_current_a": 16}],
}


def _with(**changes: object) -> dict[str, object]:
    data: dict[str, object] = {k: (dict(v) if isinstance(v, dict) else list(v)) for k, v in MINIMAL.items()}
    data.update(changes)
    return data


def test_example_config_is_valid() -> None:
    config = load(ROOT / "docs" / "agent.example.toml")
    assert config.station.charge_point_id == "CP-0001"
    assert config.connectors[0].power_switch == "board1"
    assert config.ocpp.keys["MeterValuesSampledData"].startswith("Energy.Active.Import.Register,")
    assert config.ocpp.keys["HeartbeatInterval"] == "300"


def test_minimal_defaults() -> None:
    config = parse(MINIMAL)
    c = config.connectors[0]
    assert c.power_switch == "b" and c.phases == 3 and not c.ventilation_available
    assert config.ocpp.endpoint is None


@pytest.mark.parametrize(
    ("data", "key"),
    [
        (_with(connectors=[{"id": 1, "pilot": "b", "max_current_a": 100}]), "connectors[0].max_current_a"),
        (_with(connectors=[{"id": 1, "pilot": "nope"}]), "connectors[0].pilot"),
        (_with(connectors=[{"id": 2, "pilot": "b"}]), "connectors[0].id"),
        (_with(connectors=[{"id": 1, "pilot": "b", "phases": "3"}]), "connectors[0].phases"),
        (_with(connectors=[{"id": 1, "pilot": "b", "colour": "red"}]), "connectors[0].colour"),
        (_with(connectors=[]), "connectors"),
        (_with(station={"id": "has space"}), "station.id"),
        (_with(station={"id": "CP1", "serial_number": "x" * 26}), "station.serial_number"),
        (_with(station={}), "station.id"),
        (_with(ocpp={"endpoint": "http://x"}), "ocpp.endpoint"),
        (_with(ocpp={"keys": {"HeartbeatInterval": {"a": 1}}}), "ocpp.keys.HeartbeatInterval"),
        (_with(devices={"b": {"port": "/dev/null"}}), "devices.b.driver"),
        (_with(authorization={"allow": ["x" * 21]}), "authorization.allow[0]"),
        (_with(logging={"cpagent": "loud"}), "logging.cpagent"),
        (_with(extra={}), "extra"),
    ],
)
def test_errors_name_the_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(data)
    assert err.value.key == key


def test_cli_exits_2_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "agent.toml"
    bad.write_text('[station]\nid = "CP1"\n[[connectors]]\nid = 1\npilot = "ghost"\n')
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(bad)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "connectors[0].pilot" in result.stderr


def test_cli_unknown_driver_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "agent.toml"
    bad.write_text(
        f'[station]\nid = "CP1"\nstate_dir = "{tmp_path}/s"\n[devices.b]\ndriver = "warp-drive"\n'
        '[[connectors]]\nid = 1\npilot = "b"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "check-config", "--config", str(bad)],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert "warp-drive" in result.stderr


def test_not_toml(tmp_path: Path) -> None:
    bad = tmp_path / "agent.toml"
    bad.write_text("[station\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad)


def test_overcurrent_rule_is_configurable_per_connector() -> None:
    connector = {"id": 1, "pilot": "b", "overcurrent_margin_a": 1, "overcurrent_factor": 1.2, "overcurrent_time_s": 3}
    c = parse(_with(connectors=[connector])).connectors[0]
    assert (c.overcurrent_margin_a, c.overcurrent_factor, c.overcurrent_time_s) == (1.0, 1.2, 3.0)
    default = parse(MINIMAL).connectors[0]
    assert (default.overcurrent_margin_a, default.overcurrent_factor, default.overcurrent_time_s) == (0.5, 1.1, 7.0)
    for key, bad in (("overcurrent_factor", 0.9), ("overcurrent_time_s", 0), ("overcurrent_margin_a", -1)):
        with pytest.raises(ConfigError) as err:
            parse(_with(connectors=[{"id": 1, "pilot": "b", key: bad}]))
        assert err.value.key == f"connectors[0].{key}"


def test_connector_trips_on_its_configured_overcurrent_rule(tmp_path: Path) -> None:
    """The configured rule reaches the charge controller: 3 s at > (16 + 1) * 1.2 A trips, not 7 s."""
    from agent import db
    from agent.authorize import AllowList
    from agent.connector import Connector
    from agent.sessions import SessionStore
    from hal import Device, MeterSample, PilotStateChanged, RelayFeedback, Role
    from hal.clock import FakeClock
    from hal.types import CpState, Fault

    class Board(Device):
        cp_state = None
        feedback_closed = None

        @property
        def roles(self) -> frozenset[Role]:
            return frozenset({Role.PILOT, Role.POWER_SWITCH})

        async def run(self) -> None:
            pass

        def set_duty(self, duty_percent: float) -> None:
            pass

        def set_x1(self) -> None:
            pass

        def set_f(self) -> None:
            pass

        def keep_alive(self) -> None:
            pass

        def close_relay(self) -> None:
            self.emit(RelayFeedback(True))

        def open_relay(self) -> None:
            self.emit(RelayFeedback(False))

    connector = {
        "id": 1, "pilot": "b", "max_current_a": 16, "fixed_cable": True,
        "overcurrent_margin_a": 1, "overcurrent_factor": 1.2, "overcurrent_time_s": 3,
    }  # fmt: skip
    config = parse(_with(connectors=[connector]))
    clock, board = FakeClock(), Board("b")
    conn = db.connect(tmp_path / "state.db")
    c = Connector(config.connectors[0], clock, {"b": board}, SessionStore(conn), AllowList([]), lambda e: None)
    ctl = c.controller
    board.emit(PilotStateChanged(CpState.B1))
    ctl.set_energy_allowed(True)
    board.emit(PilotStateChanged(CpState.C2))
    assert ctl.relay_commanded_closed and ctl.offered_current_a == 16.0
    sample = MeterSample(energy_import_wh=0.0, power_w=0.0, voltage_v=(230.0, None, None),
                         current_a=(20.5, None, None), timestamp=clock.wall())  # > 20.4 A
    board.emit(sample)
    clock.advance(2.9)
    assert Fault.OVERCURRENT not in ctl.active_faults
    clock.advance(0.2)
    assert Fault.OVERCURRENT in ctl.active_faults and not ctl.relay_commanded_closed
