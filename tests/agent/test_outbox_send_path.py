"""Outbox statements per delivered message: the ack of the entry head() returned reads nothing back and is
one autocommitted DELETE without fsync; what decides the ack's durability (Start / Stop / Ended) is still
right after the head was rewritten, and for an entry acked without head() having read it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent import db
from agent.outbox import Outbox
from hal.clock import FakeClock


def open_outbox(path: Path) -> tuple[sqlite3.Connection, Outbox]:
    conn = db.connect(path)
    return conn, Outbox(conn, FakeClock())


@contextmanager
def statements(conn: sqlite3.Connection) -> Iterator[list[str]]:
    """Each statement run, upper case; a COMMIT or autocommitted write also as 'COMMIT FULL' / 'COMMIT NORMAL'."""
    seen: list[str] = []
    mode = ["FULL"]

    def trace(statement: str) -> None:
        text = " ".join(statement.split()).upper()
        seen.append(text)
        if text.startswith("PRAGMA SYNCHRONOUS="):
            mode[0] = "FULL" if text.split("=", 1)[1] in ("2", "FULL") else "NORMAL"
        elif text == "COMMIT" or (not conn.in_transaction and text.startswith(("UPDATE", "DELETE", "INSERT"))):
            seen.append(f"COMMIT {mode[0]}")

    conn.set_trace_callback(trace)
    try:
        yield seen
    finally:
        conn.set_trace_callback(None)


def updated(value: int) -> dict[str, object]:
    return {"eventType": "Updated", "timestamp": "t", "triggerReason": "MeterValuePeriodic",
            "transactionInfo": {"transactionId": "tx"}, "meterValue": [{"value": value}]}


def test_ack_of_the_head_reads_nothing_back_and_commits_once_without_fsync(tmp_path: Path) -> None:
    conn, box = open_outbox(tmp_path / "state.db")
    first = box.append("MeterValues", {"connectorId": 1, "meterValue": []}, tx_ref="t1")
    second = box.append("MeterValues", {"connectorId": 1, "meterValue": [1]}, tx_ref="t1")
    head = box.head()
    assert head is not None and head.id == first
    with statements(conn) as seen:
        box.ack(first)
    assert not [s for s in seen if s.startswith("SELECT")]
    assert [s for s in seen if s.startswith("DELETE") or s.startswith("COMMIT")] == [
        f"DELETE FROM OUTBOX WHERE ID = {first}", "COMMIT NORMAL"]  # the trace shows the bound value
    assert box.depth() == 1
    head = box.head()
    assert head is not None and head.id == second
    box.ack(first)  # twice: harmless, nothing counted twice
    assert box.depth() == 1
    conn.close()
    conn, box = open_outbox(tmp_path / "state.db")  # like a process crash: the delete is in the WAL
    head = box.head()
    assert head is not None and head.id == second and box.depth() == 1
    conn.close()


def test_a_head_rewritten_into_the_end_of_its_transaction_is_acked_as_one(tmp_path: Path) -> None:
    conn, box = open_outbox(tmp_path / "state.db")
    entry = box.append("TransactionEvent", updated(1), tx_ref="tx", seq_field="seqNo")
    assert box.head() is not None  # seen as an Updated ...
    box.rewrite(entry, "TransactionEvent", {**updated(1), "eventType": "Ended"})  # ... now the Ended
    with statements(conn) as seen:
        box.ack(entry)
    assert "COMMIT FULL" in seen and "COMMIT NORMAL" not in seen  # fsynced, as the end of a transaction
    assert box.has_stop("tx") and box.depth() == 0
    conn.close()


def test_an_ack_without_head_reads_the_entry(tmp_path: Path) -> None:
    conn, box = open_outbox(tmp_path / "state.db")
    start = box.append("StartTransaction", {"connectorId": 1, "idTag": "A"}, tx_ref="t1")
    stop = box.append("StopTransaction", {"meterStop": 5, "timestamp": "t", "reason": "Local"}, tx_ref="t1")
    head = box.head()
    assert head is not None and head.id == start
    with statements(conn) as seen:
        box.ack(stop)  # not the head head() read: read back, fsynced, the Stop marked delivered
    assert seen[0].startswith("SELECT ACTION, TX_REF, PAYLOAD FROM OUTBOX")
    assert "COMMIT FULL" in seen and box.has_stop("t1")
    with statements(conn) as seen:
        box.ack(start, transaction_id=7)  # head() read it, but an ack of another entry came in between
    assert seen[0].startswith("SELECT") and "COMMIT FULL" in seen
    assert box.transaction_id("t1") == 7 and box.depth() == 0
    conn.close()
