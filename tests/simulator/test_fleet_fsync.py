"""`cpsim fleet` durability levels: synchronous=NORMAL by default (kill -9 of the fleet loses nothing: the
fleet tests' kill -9 + rerun run at this level), FULL with --fsync; a charger's outbox still refuses NORMAL."""

from __future__ import annotations

from pathlib import Path

import pytest

import agent.db
import agent.outbox
from agent.outbox import Outbox
from hal.clock import FakeClock
from simulator.fleet import shared_db, tuning
from simulator.fleet.fleet import Fleet, FleetOptions


def _level(conn: object) -> int:
    return int(conn.execute("PRAGMA synchronous").fetchone()[0])  # type: ignore[attr-defined]


def test_a_chargers_outbox_refuses_a_connection_without_fsync(tmp_path: Path) -> None:
    conn = agent.db.connect(tmp_path / "state.db", durable=False)
    with pytest.raises(ValueError, match="durable connection"):
        Outbox(conn, FakeClock())


@pytest.mark.parametrize("fsync, level", [(False, 1), (True, 2)])
def test_fleet_files_and_outbox_follow_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             fsync: bool, level: int) -> None:
    # _tune_agent sets module-wide settings: monkeypatch records each so that the teardown puts them back.
    for module, name in [(shared_db, "SYNCHRONOUS"), (agent.outbox, "MIN_SYNCHRONOUS"), (agent.db, "STATEMENT_CACHE"),
                         (agent.db, "PAGE_CACHE_KIB"), (agent.db, "PAGE_SIZE")]:
        monkeypatch.setattr(module, name, getattr(module, name))
    monkeypatch.setattr(tuning, "tune_agent_periods", lambda **_: None)
    fleet = Fleet(FleetOptions(csms_url="ws://127.0.0.1:9/", stations=1, directory=tmp_path, quiet=True,
                               fsync=fsync))
    fleet._tune_agent()
    conn = shared_db._connect(tmp_path / "fleet-state-001.db")
    assert _level(conn) == level
    outbox = Outbox(conn, FakeClock())  # accepted at the fleet's level
    outbox.append("StartTransaction", {"connectorId": 1}, tx_ref="s1")
    assert _level(conn) == level  # the append's own switches restored it
    assert outbox.depth() == 1
    conn.close()
