"""cpsim fleet's shared state database (simulator/fleet/shared_db.py): the per-station rewriting of SQL (pure), and
two stations' views of one real SQLite connection that never see each other's rows (the agent's own outbox and
session store over them), kept across a reopen of the file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent import db as agent_db
from agent.outbox import Outbox
from agent.sessions import SessionStore
from hal.clock import SystemClock
from simulator.fleet.shared_db import SharedDbError, SharedStateDb, SqlRewriter, Template, split

NAMES = {"outbox", "outbox_tx", "sessions", "sessions_open", "schema_version"}


def test_only_schema_names_get_the_prefix() -> None:
    rw = SqlRewriter(NAMES)
    assert rw.rewrite("SELECT id FROM outbox JOIN outbox_tx USING (tx_ref) WHERE outbox.action = ?", "s1_") == (
        "SELECT id FROM s1_outbox JOIN s1_outbox_tx USING (tx_ref) WHERE s1_outbox.action = ?")
    # a longer word, a column, a literal and a comment are left alone; the case of a keyword does not matter
    assert rw.rewrite("insert into OUTBOX(outbox_x, a) values ('outbox', 1) -- outbox", "s1_") == (
        "insert into s1_OUTBOX(outbox_x, a) values ('outbox', 1) -- outbox")
    assert rw.rewrite('CREATE INDEX "sessions_open" ON [sessions](c) /* sessions */', "s2_") == (
        'CREATE INDEX "s2_sessions_open" ON [s2_sessions](c) /* sessions */')
    # in a query of the schema, a literal naming a table is the table's name
    assert rw.rewrite("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'sessions'", "s3_") == (
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 's3_sessions'")
    assert rw.rewrite("PRAGMA synchronous=NORMAL", "s1_") == "PRAGMA synchronous=NORMAL"
    assert split("SELECT 1", NAMES) == ("SELECT 1",)
    assert split("DELETE FROM outbox", NAMES) == ("DELETE FROM ", "outbox")


def test_the_cache_holds_texts_not_stations_and_is_bounded() -> None:
    rw = SqlRewriter(NAMES, max_texts=3)
    for n in range(1000):
        rw.rewrite("SELECT * FROM outbox WHERE id = ?", f"s{n:06d}_")
    assert len(rw) == 1
    for n in range(10):
        rw.rewrite(f"SELECT * FROM sessions LIMIT {n}", "s1_")
    assert len(rw) <= 3


def test_a_table_created_at_run_time_is_learned() -> None:
    rw = SqlRewriter(NAMES)
    assert rw.rewrite("SELECT * FROM later", "s1_") == "SELECT * FROM later"
    assert rw.rewrite("CREATE TABLE IF NOT EXISTS later (x)", "s1_") == "CREATE TABLE IF NOT EXISTS s1_later (x)"
    assert rw.rewrite("SELECT * FROM later", "s1_") == "SELECT * FROM s1_later"


def test_a_column_named_like_a_table_is_refused() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE a (id INTEGER)")
    conn.execute("CREATE TABLE b (a TEXT)")
    with pytest.raises(SharedDbError, match=r"column b\.a"):
        Template.read(conn)


def _template(tmp_path: Path) -> Path:
    """A template made by the agent's own migrations (outbox, sessions), as the fleet's DIR/.template."""
    path = tmp_path / ".template" / "state.db"
    path.parent.mkdir()
    conn = agent_db.connect(path)
    Outbox(conn, SystemClock())
    SessionStore(conn)
    conn.close()
    return path


def test_two_stations_on_one_connection_never_see_each_others_rows(tmp_path: Path) -> None:
    template = _template(tmp_path)
    shared = SharedStateDb.open(tmp_path, template, slots=2)
    assert shared.provision(["CP-1", "CP-2", "CP-3"]) == 3
    assert sorted(p.name for p in tmp_path.glob("fleet-state-*.db")) == ["fleet-state-001.db", "fleet-state-002.db"]
    shared.install()
    try:
        a = agent_db.connect(tmp_path / "CP-1" / "state.db")
        b = agent_db.connect(tmp_path / "CP-2" / "state.db")  # same file and connection as CP-1
        c = agent_db.connect(tmp_path / "CP-3" / "state.db")  # the second file
        events = agent_db.connect(tmp_path / "other.db")  # any other file is opened as on a charger
        assert isinstance(events, sqlite3.Connection)
        events.close()
        with pytest.raises(SharedDbError, match="non-durable"):
            agent_db.connect(tmp_path / "CP-1" / "state.db", durable=False)
        clock = SystemClock()
        out_a, out_b, out_c = Outbox(a, clock), Outbox(b, clock), Outbox(c, clock)  # nothing to migrate
        sess_a, sess_b = SessionStore(a), SessionStore(b)
        out_a.append("StartTransaction", {"connectorId": 1}, tx_ref="t1")
        out_a.append("MeterValues", {"connectorId": 1}, tx_ref="t1")
        out_b.append("Heartbeat", {})
        started = sess_a.begin(1, "TAG-A", 100.0, 0.0)
        assert (out_a.depth(), out_b.depth(), out_c.depth()) == (2, 1, 0)
        assert out_b.head() is not None and out_b.head().action == "Heartbeat"  # type: ignore[union-attr]
        assert sess_b.open_session(1) is None and sess_a.open_session(1) == started
        rows = a.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'sessions'")
        assert rows.fetchone()[0] == 1  # the station's own table, as customer_information asks
        a.close()
        with pytest.raises(sqlite3.ProgrammingError):
            a.execute("SELECT 1")
        assert out_b.depth() == 1  # closing a view leaves the connection to the others
    finally:
        shared.close()
    assert agent_db.CONNECT_HOOK is None
    assert not (tmp_path / "CP-1" / "state.db").exists()

    again = SharedStateDb.open(tmp_path, template, slots=2)  # a rerun on the same DIR
    try:
        assert again.prefixes == shared.prefixes
        assert again.provision(["CP-3", "CP-4", "CP-5"]) == 2  # CP-4 in the free slot, CP-5 in a new file
        assert len(again.files) == 3 and again.where["CP-4"][0] is again.where["CP-3"][0]
        assert Outbox(again.view("CP-1"), SystemClock()).depth() == 2
        assert SessionStore(again.view("CP-2")).open_session(1) is None
        assert SessionStore(again.view("CP-1")).open_session(1) == started
    finally:
        again.close()


def test_a_dir_of_the_per_station_layout_is_refused(tmp_path: Path) -> None:
    template = _template(tmp_path)
    (tmp_path / "CP-000001").mkdir()
    (tmp_path / "CP-000001" / "state.db").write_bytes(b"")
    with pytest.raises(SharedDbError, match=r"CP-000001/state\.db"):
        SharedStateDb.open(tmp_path, template)
