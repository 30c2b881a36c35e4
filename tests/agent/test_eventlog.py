"""The event log: one station's rows, alone on a charger or beside other stations' in a shared log."""

from __future__ import annotations

from pathlib import Path

from agent import db, eventlog
from agent.eventlog import EventLog


def test_stations_sharing_a_log_each_read_only_their_own_rows(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "events.db", durable=False)
    one, two = EventLog(conn, station="CP-000001"), EventLog(conn, station="CP-000002")
    one.add(1.0, "info", "connector", "one: available")
    two.add(2.0, "warning", "connector", "two: faulted", {"fault": "rcd"})
    one.add(3.0, "info", "session", "one: started")
    assert [e.text for e in one.query()] == ["one: available", "one: started"]
    assert [(e.text, e.data) for e in two.query(since_wall=1.5)] == [("two: faulted", {"fault": "rcd"})]
    assert EventLog(conn).query() == []  # a charger's own log ('') sees none of them
    conn.close()


def test_a_charger_log_of_schema_v1_keeps_its_rows_as_its_own(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "state.db", durable=False)
    db.migrate(conn, "eventlog", eventlog.MIGRATIONS[:1])
    conn.execute("INSERT INTO events(wall, level, source, text) VALUES (5.0, 'info', 'diag', 'before v2')")
    log = EventLog(conn)
    log.add(6.0, "info", "diag", "after v2")
    assert [e.text for e in log.query()] == ["before v2", "after v2"]
    assert db.schema_version(conn, "eventlog") == len(eventlog.MIGRATIONS)
    conn.close()


def test_adding_the_station_column_twice_is_harmless(tmp_path: Path) -> None:
    """The split agent's two sides may both run the step at their first start."""
    conn = db.connect(tmp_path / "state.db", durable=False)
    db.migrate(conn, "eventlog", eventlog.MIGRATIONS[:1])
    step = eventlog.MIGRATIONS[1]
    assert callable(step)
    step(conn)
    step(conn)
    EventLog(conn).add(1.0, "info", "diag", "ok")
    assert [e.text for e in EventLog(conn).query()] == ["ok"]
    conn.close()
