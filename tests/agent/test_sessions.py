from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent import db
from agent.sessions import SessionStore


def test_session_lifecycle_and_single_stop(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "state.db")
    store = SessionStore(conn)
    s = store.begin(1, "TAG", 100.0, 5000.0)
    assert store.open_session(1) == s
    store.progress(s.ref, 110.0, 5400.0)
    store.progress(s.ref, 111.0, 5300.0)  # a lower value never lowers the recorded progress
    assert store.get(s.ref).last_energy_wh == 5400.0  # type: ignore[union-attr]
    done = store.finish(s.ref, 120.0, 5500.0, "Local")
    assert done is not None and done.energy_wh == 500.0 and done.stop_reason == "Local"
    assert store.finish(s.ref, 130.0, 5600.0, "Local") is None  # never stopped twice
    assert store.open_session(1) is None
    assert store.recent(5)[0].ref == s.ref


def test_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    conn = db.connect(path)
    s = SessionStore(conn).begin(2, "T", 1.0, 10.0)
    conn.close()
    again = SessionStore(db.connect(path))
    assert again.open_session(2) is not None and again.open_session(2).ref == s.ref  # type: ignore[union-attr]


def test_migration_refuses_newer_schema(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "state.db")
    SessionStore(conn)
    conn.execute("UPDATE schema_version SET version = 99 WHERE component = 'sessions'")
    with pytest.raises(db.StorageError, match="newer than this agent"):
        SessionStore(conn)


def test_storage_error_is_typed(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "state.db")
    store = SessionStore(conn)
    conn.execute("PRAGMA query_only = ON")
    with pytest.raises(db.StorageError):
        store.begin(1, "T", 1.0, 0.0)


def test_failed_migration_rolls_back(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "state.db")
    with pytest.raises(sqlite3.OperationalError):
        db.migrate(conn, "broken", ["CREATE TABLE a(x INTEGER); CREATE TABLE a(y INTEGER)"])
    assert db.schema_version(conn, "broken") == 0
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'a'").fetchone() is None
