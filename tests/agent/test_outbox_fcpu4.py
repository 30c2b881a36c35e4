"""Outbox send path: the statements saved per delivered message (FCPU4) and that nothing else changed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import agent.outbox
from agent import db
from agent.outbox import Outbox
from hal.clock import FakeClock


def traced(conn: sqlite3.Connection) -> list[str]:
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    return seen


def mv(n: int) -> dict[str, object]:
    return {"connectorId": 1, "meterValue": [{"timestamp": f"t{n}", "sampledValue": [{"value": str(n)}]}]}


def send_one(box: Outbox) -> None:
    head = box.head()
    assert head is not None
    box.payload_for_send(head)
    box.record_attempt(head.id)
    box.ack(head.id)


@pytest.mark.parametrize("level", [1, 2])
def test_send_and_ack_switch_the_level_only_on_a_durable_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, level: int
) -> None:
    monkeypatch.setattr(agent.outbox, "MIN_SYNCHRONOUS", 1)  # as `cpsim fleet` without --fsync
    conn = db.connect(tmp_path / "s.db")
    conn.execute(f"PRAGMA synchronous={level}")
    box = Outbox(conn, FakeClock())
    box.append("StartTransaction", {"connectorId": 1, "idTag": "A"}, tx_ref="t1")
    box.ack(box.entries()[0].id, transaction_id=7)
    box.append("MeterValues", mv(1), tx_ref="t1")
    seen = traced(conn)
    send_one(box)
    pragmas = [s for s in seen if s.startswith("PRAGMA")]
    assert pragmas == ([] if level == 1 else ["PRAGMA synchronous=NORMAL", f"PRAGMA synchronous={level}"] * 2)
    assert int(conn.execute("PRAGMA synchronous").fetchone()[0]) == level
    assert box.depth() == 0 and box.entries() == []


def test_empty_outbox_head_reads_nothing_and_a_new_entry_is_seen(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "s.db")
    box = Outbox(conn, FakeClock())
    seen = traced(conn)
    assert box.head() is None
    assert seen == []
    entry_id = box.append("Heartbeat", {})
    head = box.head()
    assert head is not None and head.id == entry_id
    box.ack(entry_id)
    assert box.head() is None
    # A reopened outbox counts what is on disk: the head is found again.
    box.append("Heartbeat", {})
    again = Outbox(conn, FakeClock())
    assert again.head() is not None


def test_transaction_id_read_once_then_remembered_and_rebinding_wins(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "s.db")
    box = Outbox(conn, FakeClock())
    box.append("StartTransaction", {"connectorId": 1, "idTag": "A"}, tx_ref="t1")
    box.ack(box.entries()[0].id, transaction_id=7)
    for n in range(3):
        box.append("MeterValues", mv(n), tx_ref="t1")
    seen = traced(conn)
    payloads = [box.payload_for_send(e) for e in box.entries()]
    assert [p["transactionId"] for p in payloads] == [7, 7, 7]
    assert sum("outbox_tx" in s for s in seen) == 1
    box.bind_transaction("t1", 8)
    assert box.transaction_id("t1") == 8
    # A bind rolled back leaves the stored id, and so does the memory.
    with pytest.raises(sqlite3.Error), db.transaction(conn):
        box._bind("t1", 9)
        conn.execute("SELECT * FROM no_such_table")
    assert box.transaction_id("t1") == 8
    assert Outbox(conn, FakeClock()).transaction_id("t1") == 8


def test_append_of_a_bound_transaction_skips_the_row_insert_and_a_stop_still_marks_it(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "s.db")
    box = Outbox(conn, FakeClock())
    box.append("StartTransaction", {"connectorId": 1, "idTag": "A"}, tx_ref="t1")
    box.ack(box.entries()[0].id, transaction_id=7)
    assert box.transaction_id("t1") == 7
    seen = traced(conn)
    box.append("MeterValues", mv(1), tx_ref="t1")
    assert not any("INSERT INTO outbox_tx" in s for s in seen)
    box.append("StopTransaction", {"meterStop": 1, "timestamp": "t", "reason": "Local"}, tx_ref="t1")
    assert box.has_stop("t1")
    send_one(box)
    send_one(box)
    assert box.depth() == 0


def test_the_send_path_walks_for_nones_only_when_the_stored_json_has_a_null(tmp_path: Path) -> None:
    from agent.outbox import outbox_payload

    box = Outbox(db.connect(tmp_path / "s.db"), FakeClock())
    box.append("MeterValues", mv(1), tx_ref="t1")
    box.append("MeterValues", {**mv(2), "transactionId": None}, tx_ref="t1")
    box.append("DataTransfer", {"vendorId": "x", "data": "null island"})
    first, second, third = box.entries()
    assert first.may_hold_nulls is False
    assert outbox_payload(first.payload, first.may_hold_nulls) == mv(1)
    assert second.may_hold_nulls is True
    assert outbox_payload(second.payload, second.may_hold_nulls) == mv(2)  # the None left out
    assert third.may_hold_nulls is True  # "null" inside a string: walked, nothing removed
    assert outbox_payload(third.payload, third.may_hold_nulls) == {"vendorId": "x", "data": "null island"}
