"""The 2.0.1 stores' multi-statement writes are atomic: an error in the middle leaves the tables as they were.

``agent.db.connect`` opens the connection in autocommit mode (isolation_level=None), where ``with conn:``
starts no transaction: each statement commits on its own and the "rollback" undoes nothing. The stores use
``agent.db.transaction`` (BEGIN IMMEDIATE .. COMMIT / ROLLBACK). Each test makes a later statement of the
block fail for real (a SQLite trigger raising ABORT on the real database file) and checks that the earlier
statements of the block left nothing behind. The objects are made without their OcppService (one class
under test each, only the attributes the write uses).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent import authcache, sessions
from agent.db import StorageError, connect, migrate, transaction
from agent.ocpp.v201 import monitoring, pricing, security
from agent.ocpp.v201.customer_information import CLEARED, CustomerInformation


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    c = connect(tmp_path / "state.db")
    yield c
    c.close()


def _fail_on(conn: sqlite3.Connection, event: str, table: str) -> None:
    conn.execute(f"CREATE TRIGGER fail_{event.lower()}_{table} BEFORE {event} ON {table} "
                 "BEGIN SELECT RAISE(ABORT, 'injected failure'); END")


def _rows(conn: sqlite3.Connection, table: str) -> list[tuple[object, ...]]:
    return conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()


def _monitoring(conn: sqlite3.Connection) -> monitoring.Monitoring:
    migrate(conn, monitoring.COMPONENT, monitoring.MIGRATIONS)
    conn.execute("INSERT INTO ocpp201_monitors(id, component, evse, connector, variable, type, value, severity, tx) "
                 "VALUES (7, 'EVSE', 1, NULL, 'Power', 'UpperThreshold', 11000, 5, 0)")
    conn.execute("INSERT INTO ocpp201_monitor_disabled(id) VALUES (3)")
    conn.execute("INSERT INTO ocpp201_monitor_tripped(id) VALUES (7)")
    m = monitoring.Monitoring.__new__(monitoring.Monitoring)
    m.db = conn
    return m


def test_monitoring_set_base_is_all_or_nothing(conn: sqlite3.Connection) -> None:
    m = _monitoring(conn)
    _fail_on(conn, "DELETE", "ocpp201_monitors")  # the block's third statement
    before = {t: _rows(conn, t) for t in ("ocpp201_monitors", "ocpp201_monitor_disabled", "ocpp201_monitor_tripped")}
    with pytest.raises(sqlite3.IntegrityError, match="injected failure"):
        m.set_base("FactoryDefault")
    assert not conn.in_transaction
    assert {t: _rows(conn, t) for t in before} == before  # the first two DELETEs were rolled back


def test_monitoring_clear_monitor_is_all_or_nothing(conn: sqlite3.Connection) -> None:
    m = _monitoring(conn)
    m._custom = {7: object()}  # type: ignore[dict-item]
    m._states = {}
    _fail_on(conn, "DELETE", "ocpp201_monitor_tripped")
    with pytest.raises(sqlite3.IntegrityError, match="injected failure"):
        m.clear_monitor(7)
    assert not conn.in_transaction
    assert [r[0] for r in _rows(conn, "ocpp201_monitors")] == [7]  # not gone while its tripped state stays
    assert 7 in m._custom


def test_pricing_keep_is_all_or_nothing(conn: sqlite3.Connection, caplog: pytest.LogCaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    migrate(conn, pricing.COMPONENT, pricing.MIGRATIONS)
    conn.execute("INSERT INTO ocpp201_costs VALUES ('T0', 100, 2, 'EUR', 'csms', 1, 0.5)")
    conn.execute("INSERT INTO ocpp201_costs VALUES ('T1', 100, 2, 'EUR', 'local', 0, 1.0)")
    monkeypatch.setattr(pricing, "MAX_KEPT", 2)  # a third row makes the trim delete the oldest
    p = pricing.Pricing.__new__(pricing.Pricing)
    p._db = conn
    p._svc = SimpleNamespace(variables=None, wall=lambda: 2.0)  # type: ignore[assignment]
    _fail_on(conn, "DELETE", "ocpp201_costs")  # the trim after the upsert
    before = _rows(conn, "ocpp201_costs")
    with caplog.at_level(logging.WARNING, logger="cpagent.ocpp.v201.pricing"):
        p._keep("T2", 250, "csms", True)
    assert "cost not kept" in caplog.text
    assert not conn.in_transaction
    assert _rows(conn, "ocpp201_costs") == before  # the upsert was rolled back with the trim


def test_security_network_slot_put_keeps_the_old_profile(conn: sqlite3.Connection) -> None:
    slots = security.NetworkSlots(conn)
    slots.put(1, {"ocppCsmsUrl": "ws://127.0.0.1:9000/", "securityProfile": 1})
    _fail_on(conn, "UPDATE", "ocpp201_network_profiles")
    with pytest.raises(StorageError, match="injected failure"):
        slots.put(1, {"ocppCsmsUrl": "ws://127.0.0.1:9001/", "securityProfile": 2})
    assert not conn.in_transaction
    assert slots.get(1) == {"ocppCsmsUrl": "ws://127.0.0.1:9000/", "securityProfile": 1}


def test_security_network_slot_put_is_one_transaction(conn: sqlite3.Connection) -> None:
    """The write is a BEGIN IMMEDIATE .. COMMIT of its own: entered inside an open transaction it refuses
    (``with conn:`` would have committed the caller's half-done transaction)."""
    slots = security.NetworkSlots(conn)
    with pytest.raises(StorageError), transaction(conn):
        conn.execute("INSERT INTO ocpp201_network_profiles(slot, data) VALUES (2, '{}')")
        slots.put(1, {"ocppCsmsUrl": "ws://127.0.0.1:9000/"})
    assert _rows(conn, "ocpp201_network_profiles") == []


def test_customer_information_clear_is_all_or_nothing(conn: sqlite3.Connection,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    migrate(conn, authcache.COMPONENT, authcache.MIGRATIONS)
    migrate(conn, "sessions", sessions.MIGRATIONS)
    conn.execute("INSERT INTO auth_cache(id_tag, status, last_used) VALUES ('CARD1', 'Accepted', 1)")
    conn.execute("INSERT INTO local_auth_list(id_tag, status) VALUES ('CARD1', 'Accepted')")
    conn.execute("INSERT INTO sessions(ref, connector_id, id_tag, start_wall, start_energy_wh, last_wall, "
                 "last_energy_wh, stop_wall, stop_id_tag) VALUES ('s1', 1, 'CARD1', 1, 0, 2, 5, 2, 'CARD1')")
    info = CustomerInformation.__new__(CustomerInformation)
    info._svc = SimpleNamespace(db=conn)  # type: ignore[assignment]
    _fail_on(conn, "UPDATE", "sessions")  # after both DELETEs
    tables = ("auth_cache", "local_auth_list", "sessions")
    before = {t: _rows(conn, t) for t in tables}
    with caplog.at_level(logging.ERROR, logger="cpagent.ocpp.v201.customer_information"):
        info.clear("CARD1")
    assert "not cleared" in caplog.text
    assert not conn.in_transaction
    assert {t: _rows(conn, t) for t in tables} == before
    conn.execute("DROP TRIGGER fail_update_sessions")
    info.clear("CARD1")  # and without the failure it all goes through
    assert _rows(conn, "auth_cache") == _rows(conn, "local_auth_list") == []
    assert conn.execute("SELECT id_tag, stop_id_tag FROM sessions").fetchall() == [(CLEARED, CLEARED)]
