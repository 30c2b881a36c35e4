"""Storage faults and clock jumps around the durable outbox (agent/outbox.py) on a real SQLite file.

Disk full is simulated with SQLite's max_page_count (no root mounts needed), a read-only store with
PRAGMA query_only: the append raises a clear StorageError, nothing already queued is lost or reordered,
and appends work again once space returns. Clock jumps of +-1 day (FakeClock) neither block nor reorder
the queue, and retry back-off runs on the monotonic clock."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent import db
from agent.db import StorageError
from agent.outbox import Outbox
from hal.clock import FakeClock

DAY = 86400.0


def payload(i: int) -> dict[str, object]:
    return {"connectorId": 1, "transactionId": 5, "meterValue": [{"timestamp": f"t{i}", "sampledValue": [
        {"value": str(i) * 50}]}]}


def open_outbox(path: Path, clock: FakeClock) -> tuple[sqlite3.Connection, Outbox]:
    conn = db.connect(path, durable=True)
    return conn, Outbox(conn, clock)


def test_disk_full_is_a_clear_fault_loses_nothing_and_recovers(tmp_path: Path) -> None:
    clock = FakeClock()
    conn, outbox = open_outbox(tmp_path / "state.db", clock)
    outbox.append("StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": "t"}, tx_ref="a")
    pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
    conn.execute(f"PRAGMA max_page_count = {pages + 1}")  # the disk is (almost) full
    accepted, refused = 0, 0
    for i in range(200):
        try:
            outbox.append("MeterValues", payload(i), tx_ref="a")
            accepted += 1
        except StorageError as exc:
            assert "outbox: cannot append MeterValues" in str(exc) and "full" in str(exc)
            refused += 1
    assert refused > 0  # a clear fault, not a silent drop
    assert outbox.depth() == 1 + accepted == len(outbox.entries(1000))
    conn.execute("PRAGMA max_page_count = 1073741823")  # space returns
    outbox.append("StopTransaction", {"meterStop": 9, "timestamp": "t", "transactionId": 5}, tx_ref="a")
    actions = [e.action for e in outbox.entries(1000)]
    assert actions[0] == "StartTransaction" and actions[-1] == "StopTransaction"
    conn.close()
    conn, reopened = open_outbox(tmp_path / "state.db", clock)  # and it all survived
    assert reopened.depth() == accepted + 2
    conn.close()


def test_read_only_store_refuses_appends_and_acks_without_losing_the_queue(tmp_path: Path) -> None:
    clock = FakeClock()
    conn, outbox = open_outbox(tmp_path / "state.db", clock)
    first = outbox.append("MeterValues", payload(1), tx_ref="a")
    conn.execute("PRAGMA query_only = ON")
    with pytest.raises(StorageError):
        outbox.append("MeterValues", payload(2), tx_ref="a")
    with pytest.raises(StorageError):
        outbox.ack(first)
    with pytest.raises(StorageError):
        outbox.record_attempt(first)
    conn.execute("PRAGMA query_only = OFF")
    assert int(conn.execute("PRAGMA synchronous").fetchone()[0]) >= 2
    assert [e.id for e in outbox.entries()] == [first]
    outbox.ack(first)
    assert outbox.depth() == 0


def test_relaxed_commits_restore_full_durability(tmp_path: Path) -> None:
    conn, outbox = open_outbox(tmp_path / "state.db", FakeClock())
    entry = outbox.append("MeterValues", payload(1))
    outbox.record_attempt(entry)
    outbox.ack(entry)
    assert int(conn.execute("PRAGMA synchronous").fetchone()[0]) >= 2


@pytest.mark.parametrize("jump", [DAY, -DAY])
def test_clock_jump_of_a_day_neither_blocks_nor_reorders_the_queue(tmp_path: Path, jump: float) -> None:
    clock = FakeClock()
    _, outbox = open_outbox(tmp_path / "state.db", clock)
    before = [outbox.append("MeterValues", payload(i), tx_ref="a") for i in range(3)]
    clock.jump_wall(jump)  # NTP correction / RTC battery flat / CSMS sets the time
    after = [outbox.append("MeterValues", payload(i), tx_ref="a") for i in range(3, 6)]
    assert [e.id for e in outbox.entries()] == before + after  # FIFO by row id, never by timestamp
    head = outbox.head()
    assert head is not None and head.not_before_mono is None  # sendable now, whatever the wall clock says
    outbox.defer(head.id, 5.0)
    clock.jump_wall(-jump)  # jumping back does not shorten or stretch the back-off
    deferred = outbox.head()
    assert deferred is not None and deferred.not_before_mono == pytest.approx(clock.monotonic() + 5.0)
    for entry_id in before + after:
        outbox.ack(entry_id)
    assert outbox.depth() == 0
