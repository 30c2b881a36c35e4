"""Read-only tables shared by every station of a process (cpsim fleet runs many): each station keeps its own
state beside them."""

from __future__ import annotations

from pathlib import Path

from agent import db
from agent.ocpp.v16.configuration import ConfigurationStore


def _store(path: Path, profiles: tuple[str, ...]) -> ConfigurationStore:
    return ConfigurationStore(db.connect(path, durable=False), {}, number_of_connectors=1,
                              enabled_profiles=profiles)


def test_configuration_stores_share_their_key_table_not_their_values(tmp_path: Path) -> None:
    one = _store(tmp_path / "one.db", ("Core", "SmartCharging"))
    two = _store(tmp_path / "two.db", ("SmartCharging", "Core"))
    core_only = _store(tmp_path / "three.db", ("Core",))
    assert one._specs is two._specs  # same table and profiles: one mapping
    assert core_only._specs is not one._specs
    assert core_only.spec("ChargeProfileMaxStackLevel") is None and one.spec("ChargeProfileMaxStackLevel")
    assert one.change("HeartbeatInterval", "120") == "Accepted"
    assert one.get_int("HeartbeatInterval") == 120
    assert two.get_int("HeartbeatInterval") != 120
