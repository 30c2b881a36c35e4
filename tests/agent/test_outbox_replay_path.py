"""Outbox replay path: the cheaper bookkeeping per message keeps every guarantee (attempt counts survive a
process crash, Start/Stop acks are fsynced, a failed ack changes nothing, the durable setting comes back)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent import db
from agent.outbox import Outbox
from hal.clock import FakeClock

FULL = 2


def open_outbox(path: Path) -> tuple[sqlite3.Connection, Outbox]:
    conn = db.connect(path)
    return conn, Outbox(conn, FakeClock())


def synchronous(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA synchronous").fetchone()[0])


@contextmanager
def commits(conn: sqlite3.Connection) -> Iterator[list[str]]:
    """The synchronous mode in force at each COMMIT / autocommitted write, as 'FULL' or 'NORMAL'."""
    seen: list[str] = []
    mode = ["FULL"]

    def trace(statement: str) -> None:
        text = " ".join(statement.split()).upper()
        if text.startswith("PRAGMA SYNCHRONOUS="):
            value = text.split("=", 1)[1]
            mode[0] = "FULL" if value in ("2", "FULL") else "NORMAL"
        elif text == "COMMIT" or (not conn.in_transaction and text.startswith(("UPDATE", "DELETE", "INSERT"))):
            seen.append(mode[0])

    conn.set_trace_callback(trace)
    try:
        yield seen
    finally:
        conn.set_trace_callback(None)


def test_attempt_counts_survive_reopen_and_leave_the_connection_durable(tmp_path: Path) -> None:
    conn, box = open_outbox(tmp_path / "state.db")
    entry = box.append("MeterValues", {"connectorId": 1, "meterValue": []})
    with commits(conn) as seen:
        assert box.record_attempt(entry) == 1
        assert box.record_attempt(entry) == 2
    assert seen == ["NORMAL", "NORMAL"]  # counted without fsync (an OS crash may lose it: a resend, allowed)
    assert synchronous(conn) == FULL
    conn.close()  # like a process crash after the write returned: the count is in the WAL
    conn, box = open_outbox(tmp_path / "state.db")
    head = box.head()
    assert head is not None and head.attempts == 2
    assert box.record_attempt(entry) == 3
    conn.close()


def test_attempt_on_a_missing_entry_raises_and_restores_full_sync(tmp_path: Path) -> None:
    conn, box = open_outbox(tmp_path / "state.db")
    with pytest.raises(KeyError):
        box.record_attempt(12345)
    assert synchronous(conn) == FULL
    conn.close()


def test_start_and_stop_acks_commit_fsynced_meter_values_acks_do_not(tmp_path: Path) -> None:
    conn, box = open_outbox(tmp_path / "state.db")
    start = box.append("StartTransaction", {"connectorId": 1, "idTag": "A"}, tx_ref="t1")
    values = box.append("MeterValues", {"connectorId": 1, "meterValue": []}, tx_ref="t1")
    stop = box.append("StopTransaction", {"meterStop": 5, "timestamp": "t", "reason": "Local"}, tx_ref="t1")
    security = box.append("SecurityEventNotification", {"type": "StartupOfTheDevice", "timestamp": "t"})
    with commits(conn) as seen:
        box.ack(start, transaction_id=42)
    assert seen == ["FULL"]
    with commits(conn) as seen:
        box.ack(values)
    assert seen == ["NORMAL"]
    with commits(conn) as seen:
        box.ack(stop)
    assert seen == ["FULL"]
    with commits(conn) as seen:
        box.ack(security)
        box.ack(security)  # twice: nothing to commit
    assert seen == ["NORMAL"]
    assert synchronous(conn) == FULL
    assert box.depth() == 0 and box.transaction_id("t1") == 42 and box.has_stop("t1")
    conn.close()


def test_ack_binding_an_id_to_an_entry_without_tx_ref_changes_nothing(tmp_path: Path) -> None:
    conn, box = open_outbox(tmp_path / "state.db")
    entry = box.append("MeterValues", {"connectorId": 1, "meterValue": []})
    with pytest.raises(ValueError, match="no tx_ref"):
        box.ack(entry, transaction_id=9)
    head = box.head()
    assert head is not None and head.id == entry and box.depth() == 1  # the delete was rolled back
    assert not conn.in_transaction and synchronous(conn) == FULL
    box.ack(entry)
    assert box.head() is None and box.depth() == 0
    conn.close()


def test_ack_deletes_exactly_the_acked_entry_in_fifo_order(tmp_path: Path) -> None:
    conn, box = open_outbox(tmp_path / "state.db")
    ids = [box.append("MeterValues", {"connectorId": 1, "meterValue": [], "n": n}, tx_ref="t") for n in range(5)]
    box.bind_transaction("t", 3)
    sent = []
    while (head := box.head()) is not None:
        box.record_attempt(head.id)
        sent.append((head.id, box.payload_for_send(head)["transactionId"]))
        box.ack(head.id)
    assert sent == [(i, 3) for i in ids]
    conn.close()
