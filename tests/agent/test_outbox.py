"""Outbox: durable FIFO of transaction messages (SQLite, WAL, synchronous=FULL)."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agent import db
from agent.outbox import DuplicateStop, Outbox, UnboundTransaction
from hal.clock import FakeClock

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[2]


def open_outbox(path: Path, clock: FakeClock | None = None, **kwargs: int) -> tuple[sqlite3.Connection, Outbox]:
    conn = db.connect(path)
    return conn, Outbox(conn, clock or FakeClock(), **kwargs)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def outbox(tmp_path: Path, clock: FakeClock) -> Outbox:
    return open_outbox(tmp_path / "state.db", clock)[1]


def mv(n: int) -> dict[str, object]:
    return {"connectorId": 1, "meterValue": [{"timestamp": f"t{n}", "sampledValue": [{"value": str(n)}]}]}


def actions(box: Outbox) -> list[tuple[str, str | None]]:
    return [(e.action, e.tx_ref) for e in box.entries(10_000)]


def test_append_head_ack_is_fifo(outbox: Outbox) -> None:
    a = outbox.append("StartTransaction", {"connectorId": 1, "idTag": "A"}, tx_ref="t1")
    b = outbox.append("MeterValues", mv(1), tx_ref="t1")
    c = outbox.append("SecurityEventNotification", {"type": "StartupOfTheDevice"})
    assert a < b < c
    assert outbox.depth() == 3
    head = outbox.head()
    assert head is not None and head.id == a and head.payload == {"connectorId": 1, "idTag": "A"}
    outbox.ack(a, transaction_id=77)
    assert [e.id for e in outbox.entries(10)] == [b, c]
    outbox.ack(b)
    outbox.ack(b)  # twice is harmless
    outbox.ack(c)
    assert outbox.head() is None and outbox.depth() == 0 and outbox.oldest_wall() is None


def test_order_ignores_wall_clock_jumps(outbox: Outbox, clock: FakeClock) -> None:
    first = outbox.append("MeterValues", mv(1))
    clock.jump_wall(-86_400 * 365)  # clock set back a year
    second = outbox.append("MeterValues", mv(2))
    clock.jump_wall(+86_400 * 730)
    third = outbox.append("MeterValues", mv(3))
    assert [e.id for e in outbox.entries(10)] == [first, second, third]
    assert outbox.oldest_wall() == pytest.approx(FakeClock().wall())


def test_survives_reopen_without_ack(tmp_path: Path) -> None:
    conn, box = open_outbox(tmp_path / "state.db")
    ids = [box.append("MeterValues", mv(i), tx_ref="t") for i in range(50)]
    box.record_attempt(ids[0])
    del box
    conn.close()  # no ack, no clean shutdown of the queue
    conn2, box2 = open_outbox(tmp_path / "state.db")
    entries = box2.entries(100)
    assert [e.id for e in entries] == ids
    assert [e.payload for e in entries] == [mv(i) for i in range(50)]
    assert entries[0].attempts == 1 and box2.depth() == 50
    # ids keep growing after reopen even when everything was delivered (AUTOINCREMENT, no reuse)
    for e in entries:
        box2.ack(e.id)
    assert box2.append("MeterValues", mv(99)) > ids[-1]
    conn2.close()


def test_refuses_non_durable_connection(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "state.db", durable=False)
    with pytest.raises(ValueError, match="durable"):
        Outbox(conn, FakeClock())


def test_retry_bookkeeping(outbox: Outbox, clock: FakeClock) -> None:
    entry_id = outbox.append("StopTransaction", {"meterStop": 10}, tx_ref="t1")
    assert outbox.record_attempt(entry_id) == 1
    assert outbox.record_attempt(entry_id) == 2
    assert outbox.retry_delay(0, 30) == 0
    assert outbox.retry_delay(1, 30) == 30
    assert outbox.retry_delay(2, 30) == 60
    outbox.defer(entry_id, outbox.retry_delay(2, 30))
    head = outbox.head()
    assert head is not None and head.attempts == 2
    assert head.not_before_mono == clock.monotonic() + 60
    with pytest.raises(KeyError):
        outbox.record_attempt(12345)


def test_binding_fills_transaction_id_at_send_time(outbox: Outbox) -> None:
    start = outbox.append("StartTransaction", {"connectorId": 1}, tx_ref="t1")
    meter = outbox.append("MeterValues", mv(1), tx_ref="t1")
    stop = outbox.append("StopTransaction", {"meterStop": 5, "transactionId": 0}, tx_ref="t1")
    entries = {e.id: e for e in outbox.entries(10)}
    assert outbox.payload_for_send(entries[start]) == {"connectorId": 1}
    with pytest.raises(UnboundTransaction):
        outbox.payload_for_send(entries[meter])
    outbox.ack(start, transaction_id=4711)
    assert outbox.transaction_id("t1") == 4711
    assert outbox.payload_for_send(entries[meter])["transactionId"] == 4711
    assert outbox.payload_for_send(entries[stop]) == {"meterStop": 5, "transactionId": 4711}
    assert outbox.transaction_id("unknown") is None


def test_known_id_in_payload_is_kept_when_unbound(outbox: Outbox) -> None:
    entry_id = outbox.append("MeterValues", {**mv(1), "transactionId": 9}, tx_ref="online")
    entry = outbox.entries(1)[0]
    assert entry.id == entry_id and outbox.payload_for_send(entry)["transactionId"] == 9


def test_dropped_start_makes_later_messages_use_minus_one(outbox: Outbox) -> None:
    start = outbox.append("StartTransaction", {"connectorId": 1}, tx_ref="t1")
    outbox.append("MeterValues", mv(1), tx_ref="t1")
    outbox.append("StopTransaction", {"meterStop": 5}, tx_ref="t1")
    for _ in range(3):
        outbox.record_attempt(start)
    outbox.drop(start, "CALLERROR InternalError after 3 attempts")
    assert outbox.is_start_dropped("t1")
    sent = [outbox.payload_for_send(e)["transactionId"] for e in outbox.entries(10)]
    assert sent == [-1, -1]
    assert outbox.dropped()[0] == ("StartTransaction", "t1", "CALLERROR InternalError after 3 attempts")
    assert outbox.depth() == 2


def test_explicit_start_dropped(outbox: Outbox) -> None:
    outbox.append("MeterValues", mv(1), tx_ref="lost")
    outbox.start_dropped("lost")
    assert outbox.payload_for_send(outbox.entries(1)[0])["transactionId"] == -1
    outbox.bind_transaction("other", 3)
    assert outbox.transaction_id("other") == 3 and not outbox.is_start_dropped("other")


def test_never_queue_a_stop_twice_even_after_delivery_and_reopen(tmp_path: Path) -> None:
    conn, box = open_outbox(tmp_path / "state.db")
    box.append("StartTransaction", {"connectorId": 1}, tx_ref="t1")
    box.append("StartTransaction", {"connectorId": 2}, tx_ref="t2")
    assert box.unstopped_transactions() == ["t1", "t2"]
    stop = box.append("StopTransaction", {"meterStop": 1}, tx_ref="t1")
    assert box.has_stop("t1") and not box.has_stop("t2")
    with pytest.raises(DuplicateStop):
        box.append("StopTransaction", {"meterStop": 1}, tx_ref="t1")
    box.ack(stop)
    conn.close()
    conn, box = open_outbox(tmp_path / "state.db")
    assert box.has_stop("t1")
    assert box.unstopped_transactions() == ["t2"]  # power-loss recovery: only t2 still needs a Stop
    with pytest.raises(DuplicateStop):
        box.append("StopTransaction", {"meterStop": 1}, tx_ref="t1")
    assert box.depth() == 2
    conn.close()


def test_start_and_stop_need_tx_ref(outbox: Outbox) -> None:
    with pytest.raises(ValueError):
        outbox.append("StartTransaction", {})
    assert outbox.depth() == 0


def test_full_outbox_thins_every_second_meter_value_of_oldest_transaction(outbox: Outbox) -> None:
    box = Outbox(outbox._conn, FakeClock(), max_messages=12)
    start = box.append("StartTransaction", {}, tx_ref="a")
    a_mv = [box.append("MeterValues", mv(i), tx_ref="a") for i in range(6)]
    a_stop = box.append("StopTransaction", {}, tx_ref="a")
    box.append("StartTransaction", {}, tx_ref="b")
    b_mv = [box.append("MeterValues", mv(i), tx_ref="b") for i in range(3)]
    assert box.depth() == 12
    new = box.append("MeterValues", mv(9), tx_ref="b")
    ids = [e.id for e in box.entries(100)]
    # a's MeterValues 1 and 3 went; 0, 2, 4 and the last one before the Stop (5) stay
    assert [i for i in a_mv if i in ids] == [a_mv[0], a_mv[2], a_mv[4], a_mv[5]]
    assert start in ids and a_stop in ids and all(i in ids for i in b_mv) and new in ids
    assert box.depth() == len(ids) == 11
    assert "thinned 2" in box.dropped()[0][2]


def test_thinning_never_touches_the_head(outbox: Outbox) -> None:
    box = Outbox(outbox._conn, FakeClock(), max_messages=4)
    first = [box.append("MeterValues", mv(i)) for i in range(4)]
    box.append("StartTransaction", {}, tx_ref="x")
    ids = [e.id for e in box.entries(10)]
    assert ids[0] == first[0] and first[2] not in ids and first[3] in ids


def test_full_outbox_without_thinnable_values_still_accepts_start_and_stop(outbox: Outbox) -> None:
    box = Outbox(outbox._conn, FakeClock(), max_messages=3)
    box.append("StartTransaction", {}, tx_ref="a")
    box.append("MeterValues", mv(1), tx_ref="a")
    box.append("StopTransaction", {}, tx_ref="a")
    assert box.append("MeterValues", mv(2), tx_ref="b") == -1  # nothing to thin: new sample refused
    start = box.append("StartTransaction", {}, tx_ref="c")
    stop = box.append("StopTransaction", {}, tx_ref="c")
    sec = box.append("SecurityEventNotification", {"type": "MemoryExhaustion"})
    assert [e.id for e in box.entries(10)][-3:] == [start, stop, sec]
    assert box.depth() == 6
    assert box.dropped()[0] == ("MeterValues", "b", "outbox full")


def test_a_full_outbox_is_reported_once_per_episode_and_may_append_from_the_report(outbox: Outbox) -> None:
    box = Outbox(outbox._conn, FakeClock(), max_messages=10)
    reports: list[str] = []

    def report(detail: str) -> None:  # what the service does: a MemoryExhaustion event through the outbox
        reports.append(detail)
        box.append("SecurityEventNotification", {"type": "MemoryExhaustion", "techInfo": detail})

    box.on_full = report
    ids = [box.append("MeterValues", mv(i), tx_ref="t") for i in range(9)]
    assert reports == []
    ids += [box.append("MeterValues", mv(i), tx_ref="t") for i in range(9, 15)]
    assert len(reports) == 1 and "full" in reports[0]
    assert [e.action for e in box.entries(100)].count("SecurityEventNotification") == 1
    for entry in box.entries(100):  # the CSMS catches up: below 90 % the report re-arms
        box.ack(entry.id)
    assert box.depth() == 0
    for i in range(12):
        box.append("MeterValues", mv(i), tx_ref="u")
    assert len(reports) == 2


def test_storage_errors_raise_storage_error_and_keep_state(outbox: Outbox) -> None:
    kept = outbox.append("MeterValues", mv(1))
    outbox._conn.execute("PRAGMA query_only = ON")  # behaves like a read-only file system
    with pytest.raises(db.StorageError, match="outbox: cannot append MeterValues"):
        outbox.append("MeterValues", mv(2))
    with pytest.raises(db.StorageError, match="ack"):
        outbox.ack(kept)
    outbox._conn.execute("PRAGMA query_only = OFF")
    assert outbox.depth() == 1 and [e.id for e in outbox.entries(5)] == [kept]
    assert not outbox._conn.in_transaction


def test_disk_full_raises_storage_error(outbox: Outbox) -> None:
    conn = outbox._conn
    pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
    conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    big = {"blob": "x" * 4000}
    with pytest.raises(db.StorageError, match="full"):
        for _ in range(100):
            outbox.append("MeterValues", big)
    assert outbox.depth() == int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
    assert not conn.in_transaction


CHILD = textwrap.dedent(
    """
    import sys
    from agent import db
    from hal.clock import SystemClock
    from agent.outbox import Outbox
    box = Outbox(db.connect(sys.argv[1]), SystemClock())
    n = 0
    while True:
        entry_id = box.append("MeterValues", {"n": n}, tx_ref="t")
        sys.stdout.write(f"{entry_id} {n}\\n")
        sys.stdout.flush()
        n += 1
    """
)


def test_every_returned_append_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, cwd=REPO, text=True)
    assert child.stdout is not None
    acknowledged: list[tuple[int, int]] = []
    deadline = time.monotonic() + 20
    while len(acknowledged) < 300 and time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        entry_id, n = line.split()
        acknowledged.append((int(entry_id), int(n)))
    os.kill(child.pid, signal.SIGKILL)  # mid-stream: the child is appending right now
    child.wait(timeout=10)
    acknowledged += [(int(a), int(b)) for a, b in (ln.split() for ln in child.stdout.read().splitlines())]
    assert child.returncode == -signal.SIGKILL
    assert len(acknowledged) >= 300
    conn, box = open_outbox(path)
    stored = [(e.id, e.payload["n"]) for e in box.entries(1_000_000)]
    assert stored[: len(acknowledged)] == acknowledged  # all there, in order (maybe one more in flight)
    assert len(stored) - len(acknowledged) <= 1
    conn.close()


def test_migrates_v1_fixture_database(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    shutil.copy(FIXTURES / "state_v1.db", path)
    conn, box = open_outbox(path)
    assert db.schema_version(conn, "outbox") == 3
    entries = box.entries(10)
    assert [(e.action, e.tx_ref, e.attempts) for e in entries] == [
        ("StartTransaction", "tx-1", 2),
        ("MeterValues", "tx-1", 0),
        ("StopTransaction", "tx-1", 0),
    ]
    assert box.transaction_id("tx-0") == 41 and box.has_stop("tx-0") and box.has_stop("tx-1")
    box.ack(entries[0].id, transaction_id=42)
    assert box.payload_for_send(entries[2])["transactionId"] == 42
    box.drop(entries[1].id, "test")
    assert box.dropped() == [("MeterValues", "tx-1", "test")]  # v2 table works on an upgraded db
    assert box.append("MeterValues", mv(1)) > entries[-1].id
    conn.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "state.db")
    conn.execute("INSERT INTO schema_version VALUES ('outbox', 99)")
    with pytest.raises(db.StorageError, match="newer"):
        Outbox(conn, FakeClock())


def schema_of(conn: sqlite3.Connection, names: tuple[str, ...]) -> list[tuple[str, str]]:
    marks = ",".join("?" * len(names))
    return conn.execute(
        f"SELECT name, sql FROM sqlite_master WHERE tbl_name IN ({marks}) ORDER BY name", names
    ).fetchall()


def test_released_v1_migration_is_unchanged(tmp_path: Path) -> None:
    from agent import outbox as module

    fresh = db.connect(tmp_path / "fresh.db")
    db.migrate(fresh, module.COMPONENT, module.MIGRATIONS[:1])
    fixture = sqlite3.connect(FIXTURES / "state_v1.db")
    tables = ("outbox", "outbox_tx")
    assert schema_of(fresh, tables) == schema_of(fixture, tables)
    fixture.close()
