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
