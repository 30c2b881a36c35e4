"""Durable FIFO of transaction-related OCPP messages (the "outbox").

StartTransaction, StopTransaction, periodic/clock-aligned MeterValues and SecurityEventNotification must
reach the CSMS in order, even across a crash or power loss. Every ``append`` is committed (and fsynced:
WAL + synchronous=FULL) before it returns. Order is the AUTOINCREMENT row id, never a timestamp, so a
wall-clock jump cannot block or reorder the queue; retry deadlines live in memory on the monotonic clock.

A local transaction reference (``tx_ref``) ties a Start to its later MeterValues/Stop. The CSMS
transactionId is unknown until StartTransaction.conf; ``payload_for_send`` fills it in at send time.

Not thread-safe: use it from the event-loop thread that owns the connection.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ocpp.charge_point import remove_nones

from agent.db import Migration, StorageError, migrate, transaction
from hal.clock import Clock

log = logging.getLogger("cpagent.outbox")

COMPONENT = "outbox"

START = "StartTransaction"
STOP = "StopTransaction"
METER_VALUES = "MeterValues"
TRANSACTION_EVENT = "TransactionEvent"  # OCPP 2.0.1: one action for Started / Updated / Ended
# A CSMS transactionId is an OCPP 1.6 "integer": 32 bit (31 bit resolution, 1 sign bit).
MIN_TRANSACTION_ID, MAX_TRANSACTION_ID = -(2**31), 2**31 - 1

# Transaction rows kept after their Stop was delivered, so "never send a Stop twice" holds for a while.
_DELIVERED_TX_KEPT = 1000

MIGRATIONS: list[Migration] = [
    # v1: the queue and per-transaction bookkeeping.
    """
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        action TEXT NOT NULL,
        payload TEXT NOT NULL,
        tx_ref TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_wall REAL NOT NULL
    );
    CREATE TABLE outbox_tx (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        tx_ref TEXT NOT NULL UNIQUE,
        transaction_id INTEGER,
        start_dropped INTEGER NOT NULL DEFAULT 0,
        stop_queued INTEGER NOT NULL DEFAULT 0,
        stop_delivered INTEGER NOT NULL DEFAULT 0
    )
    """,
    # v2: keep a record of what was given up on (dropped or thinned), for diagnostics; index for thinning.
    """
    CREATE TABLE outbox_dropped (
        id INTEGER PRIMARY KEY,
        entry_id INTEGER,
        action TEXT NOT NULL,
        tx_ref TEXT,
        attempts INTEGER NOT NULL,
        reason TEXT NOT NULL,
        dropped_wall REAL NOT NULL
    );
    CREATE INDEX outbox_by_tx ON outbox(tx_ref, action)
    """,
    # v3: OCPP 2.0.1 seqNo: the next sequence number of each transaction, taken in the commit that queues
    # the message (a crash can neither skip nor repeat one).
    """
    ALTER TABLE outbox_tx ADD COLUMN seq_no INTEGER NOT NULL DEFAULT 0
    """,
]


# The lowest PRAGMA synchronous the outbox accepts: 2 (FULL, an fsync per commit: an accepted message survives a
# power cut). Only `cpsim fleet` without --fsync lowers it to 1 (NORMAL: WAL written at each commit, fsynced at
# checkpoints), which loses nothing on kill -9 of the process, as issue 16 asks of a fleet, but may lose the last
# commits on a crash of the machine. A charger never changes it.
MIN_SYNCHRONOUS = 2
_NORMAL = 1  # PRAGMA synchronous=NORMAL
_BOUND_KEPT = 64  # transaction ids remembered in memory (a charger has a few transactions at a time)

class DuplicateStop(ValueError):
    """A StopTransaction for this transaction was already queued (or delivered)."""


class UnboundTransaction(LookupError):
    """The entry refers to a transaction whose CSMS id is not known yet and whose Start was not dropped."""


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    action: str
    payload: dict[str, Any]
    tx_ref: str | None
    attempts: int
    created_wall: float
    # In memory only: do not send before this monotonic time (retry back-off). None = send now.
    not_before_mono: float | None = None
    # False when the stored JSON has no ``null`` anywhere: nothing for the send path to strip (no None walk).
    may_hold_nulls: bool = True


def outbox_payload(payload: Mapping[str, Any], may_hold_nulls: bool = True) -> dict[str, Any]:
    """What goes on the wire for a queued payload (1.6 and 2.0.1): the camelCase JSON object as queued, absent
    (None) fields left out as the library leaves them out of a dataclass. It goes to
    ``OcppSession.request_payload`` as it is: no round trip through the call dataclass (asdict copy, camelCase
    again) per message of a replay. ``may_hold_nulls`` False (the entry's stored JSON has no null, see
    ``OutboxEntry.may_hold_nulls``): nothing to walk."""
    if not may_hold_nulls:
        return dict(payload)
    result: dict[str, Any] = remove_nones(dict(payload))
    return result


def _is_stop_flagged(row: tuple[Any, ...] | None) -> bool:
    return bool(row and (row[0] or row[1]))


def is_stop(action: str, payload: dict[str, Any]) -> bool:
    """The message that ends a transaction: StopTransaction (1.6), TransactionEvent Ended (2.0.1)."""
    return action == STOP or (action == TRANSACTION_EVENT and payload.get("eventType") == "Ended")


class Outbox:
    def __init__(self, conn: sqlite3.Connection, clock: Clock, *, max_messages: int = 100_000) -> None:
        if max_messages < 2:
            raise ValueError("max_messages must be at least 2")
        self._conn = conn
        self._clock = clock
        self.max_messages = max_messages
        self._not_before: dict[int, float] = {}
        # The head as head() last read it: (id, action, tx_ref, ends its transaction). Its ack needs no read
        # back (a replay acks thousands). Ids are never reused and only rewrite() changes a row's message
        # (it clears this); the ack's DELETE still checks that the row is there.
        self._head_seen: tuple[int, str, str | None, bool] | None = None
        # CSMS transaction ids as read back (one SELECT per transaction, not one per MeterValues sent). Only
        # _bind sets the column (it forgets the entry first: a rolled-back bind is read again) and only
        # _prune_delivered deletes rows (it clears this).
        self._bound: dict[str, int] = {}
        # Called once each time the outbox fills up (re-armed when deliveries bring it below 90 %): the
        # service turns it into a MemoryExhaustion security event. Called after the append's transaction,
        # so it may append itself.
        self.on_full: Callable[[str], None] | None = None
        self._full_reported = False
        with self._storage("open the outbox"):
            synchronous = int(conn.execute("PRAGMA synchronous").fetchone()[0])
            journal = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
            if synchronous < MIN_SYNCHRONOUS or journal != "wal":
                raise ValueError(
                    "the outbox needs a durable connection (WAL, synchronous=FULL): "
                    "use agent.db.connect(path, durable=True)"
                )
            self._synchronous = synchronous
            migrate(conn, COMPONENT, MIGRATIONS)
            self._depth = int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    # -- writing -------------------------------------------------------------------------------------

    def append(
        self,
        action: str,
        payload: dict[str, Any],
        *,
        tx_ref: str | None = None,
        seq_field: str | None = None,
        also: Callable[[sqlite3.Connection], object] | None = None,
    ) -> int:
        """Queue a message; durable when this returns. Returns the entry id (its place in the FIFO).

        ``seq_field`` (with ``tx_ref``): the payload gets the transaction's next sequence number under that
        key (OCPP 2.0.1 seqNo: 0, 1, 2 ... per transaction). ``also`` runs in the same SQLite transaction
        (e.g. to persist the state that produced the message), so both commit or neither.

        When the outbox is full, intermediate MeterValues are thinned; if nothing can be thinned, a new
        MeterValues is dropped (recorded, returns -1) while every other action is still accepted."""
        entry_id = self._append(action, payload, tx_ref, seq_field, also)
        if self._depth >= self.max_messages and not self._full_reported:  # after the commit: on_full may append
            self._full_reported = True
            if self.on_full is not None:
                try:
                    self.on_full(f"transaction message queue full ({self._depth} messages): MeterValues thinned")
                except Exception:
                    log.exception("reporting the full outbox failed")
        return entry_id

    def _append(
        self,
        action: str,
        payload: dict[str, Any],
        tx_ref: str | None,
        seq_field: str | None = None,
        also: Callable[[sqlite3.Connection], object] | None = None,
    ) -> int:
        stop = is_stop(action, payload)
        if (action in (START, STOP, TRANSACTION_EVENT) or seq_field is not None) and tx_ref is None:
            raise ValueError(f"{action} needs a tx_ref")
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True)
        with self._storage(f"append {action}"), self._transaction():
            if seq_field is not None:
                self._conn.execute("INSERT INTO outbox_tx(tx_ref) VALUES (?) ON CONFLICT(tx_ref) DO NOTHING", (tx_ref,))
                row = self._conn.execute(
                    "UPDATE outbox_tx SET seq_no = seq_no + 1 WHERE tx_ref = ? RETURNING seq_no - 1", (tx_ref,)
                ).fetchone()
                payload = {**payload, seq_field: int(row[0])}
                body = json.dumps(payload, separators=(",", ":"), sort_keys=True)
            if also is not None:
                also(self._conn)
            if stop:
                row = self._conn.execute(
                    "SELECT stop_queued, stop_delivered FROM outbox_tx WHERE tx_ref = ?", (tx_ref,)
                ).fetchone()
                if _is_stop_flagged(row):
                    raise DuplicateStop(f"StopTransaction for {tx_ref} was already queued")
            thinned = 0
            if self._depth >= self.max_messages:
                thinned = self._thin()
                if thinned == 0 and action == METER_VALUES:
                    # Nothing left to thin: the newest sample is the least valuable one to lose.
                    self._record_dropped(None, action, tx_ref, 0, "outbox full")
                    log.warning("outbox full (%d): dropped new MeterValues for %s", self._depth, tx_ref)
                    return -1
            entry_id = int(
                self._conn.execute(
                    "INSERT INTO outbox(action, payload, tx_ref, created_wall) VALUES (?, ?, ?, ?)",
                    (action, body, tx_ref, self._clock.wall()),
                ).lastrowid
                or 0
            )
            if tx_ref is not None:
                if tx_ref not in self._bound:  # a remembered id was read from its row: the row is there
                    self._conn.execute(
                        "INSERT INTO outbox_tx(tx_ref) VALUES (?) ON CONFLICT(tx_ref) DO NOTHING", (tx_ref,))
                if stop:
                    self._conn.execute("UPDATE outbox_tx SET stop_queued = 1 WHERE tx_ref = ?", (tx_ref,))
        self._depth += 1 - thinned
        return entry_id

    def ack(self, entry_id: int, *, transaction_id: int | None = None) -> None:
        """The CSMS confirmed the entry: delete it. For a StartTransaction pass the CSMS transactionId so
        the binding and the delete commit together (a crash in between cannot lose the id)."""
        # Acks of Start/Stop are fsynced (they bind the transaction id / mark the Stop sent). Other acks and
        # attempt counts may be lost by an OS crash (not by a process crash): the worst case is a resend,
        # which at-least-once delivery allows anyway. Saves two fsyncs per replayed MeterValues.
        if transaction_id is not None and (
            isinstance(transaction_id, bool) or not isinstance(transaction_id, int)
            or not MIN_TRANSACTION_ID <= transaction_id <= MAX_TRANSACTION_ID
        ):
            # Refused before touching the store (SQLite raised OverflowError beyond 64 bits, mid-ack).
            raise ValueError(f"transactionId {str(transaction_id)[:24]} is no OCPP 1.6 integer (32 bit)")
        seen, self._head_seen = self._head_seen, None
        if seen is not None and seen[0] == entry_id:
            _, action, tx_ref, stop = seen
        else:
            with self._storage(f"ack entry {entry_id}"):
                row = self._conn.execute(
                    "SELECT action, tx_ref, payload FROM outbox WHERE id = ?", (entry_id,)
                ).fetchone()
            if row is None:
                return  # already acked or thinned: acking twice is harmless
            action, tx_ref, body = row
            stop = action == STOP or (action == TRANSACTION_EVENT and is_stop(action, json.loads(body)))
        if transaction_id is None and action not in (START, STOP) and not stop:
            # Nothing to bind or mark: one autocommitted DELETE, without fsync.
            with self._storage(f"ack entry {entry_id}"), self._unsynced():
                deleted = self._conn.execute("DELETE FROM outbox WHERE id = ?", (entry_id,)).rowcount
            if deleted:
                self._removed(entry_id)
            return
        # The read above and this transaction run with no await in between, on the one connection that
        # writes the outbox: the row cannot change in between; the DELETE's rowcount still checks it.
        with self._storage(f"ack entry {entry_id}"), self._transaction():
            if self._conn.execute("DELETE FROM outbox WHERE id = ?", (entry_id,)).rowcount == 0:
                return
            if transaction_id is not None:
                if tx_ref is None:
                    raise ValueError(f"entry {entry_id} has no tx_ref to bind a transaction id to")
                self._bind(tx_ref, transaction_id)
            if stop and tx_ref is not None:
                self._conn.execute("UPDATE outbox_tx SET stop_delivered = 1 WHERE tx_ref = ?", (tx_ref,))
                self._prune_delivered()
        self._removed(entry_id)

    def record_attempt(self, entry_id: int) -> int:
        """Count one more send of the entry (call it before each send). Returns the new count."""
        # One statement is its own transaction (autocommit): no BEGIN/COMMIT round trip needed.
        with self._storage(f"record attempt for entry {entry_id}"), self._unsynced():
            row = self._conn.execute(
                "UPDATE outbox SET attempts = attempts + 1 WHERE id = ? RETURNING attempts", (entry_id,)
            ).fetchone()
        if row is None:
            raise KeyError(f"no outbox entry {entry_id}")
        return int(row[0])

    @staticmethod
    def retry_delay(attempts: int, retry_interval_s: float) -> float:
        """OCPP 1.6: wait TransactionMessageRetryInterval * (number of previous sends) before a resend."""
        return max(0.0, retry_interval_s) * max(0, attempts)

    def defer(self, entry_id: int, delay_s: float) -> None:
        """Hold the entry back for ``delay_s`` on the monotonic clock (in memory; a reboot sends at once)."""
        self._not_before[entry_id] = self._clock.monotonic() + max(0.0, delay_s)

    def drop(self, entry_id: int, reason: str) -> None:
        """Give up on an entry (e.g. after TransactionMessageAttempts). Dropping a StartTransaction
        marks its transaction so later messages for it carry transactionId -1."""
        with self._storage(f"drop entry {entry_id}"), self._transaction():
            row = self._conn.execute("SELECT action, tx_ref, attempts FROM outbox WHERE id = ?", (entry_id,)).fetchone()
            if row is None:
                return
            action, tx_ref, attempts = row
            if action == START and tx_ref is not None:
                self._conn.execute("UPDATE outbox_tx SET start_dropped = 1 WHERE tx_ref = ?", (tx_ref,))
            self._record_dropped(entry_id, action, tx_ref, attempts, reason)
            self._conn.execute("DELETE FROM outbox WHERE id = ?", (entry_id,))
        self._removed(entry_id)
        log.warning("outbox: dropped %s #%d (tx %s) after %d attempts: %s", action, entry_id, tx_ref, attempts, reason)

    def rewrite(self, entry_id: int, action: str, payload: dict[str, Any], *, seq_field: str | None = None) -> None:
        """Replace a queued entry's message in place (same place in the FIFO, same transaction): an entry
        queued under one OCPP version is sent in the other's form after a version change. ``seq_field``
        numbers it as ``append`` does."""
        self._head_seen = None
        with self._storage(f"rewrite entry {entry_id}"), self._transaction():
            row = self._conn.execute("SELECT tx_ref FROM outbox WHERE id = ?", (entry_id,)).fetchone()
            if row is None:
                return
            tx_ref = row[0]
            if seq_field is not None and tx_ref is not None:
                self._conn.execute("INSERT INTO outbox_tx(tx_ref) VALUES (?) ON CONFLICT(tx_ref) DO NOTHING", (tx_ref,))
                seq = self._conn.execute(
                    "UPDATE outbox_tx SET seq_no = seq_no + 1 WHERE tx_ref = ? RETURNING seq_no - 1", (tx_ref,)
                ).fetchone()
                payload = {**payload, seq_field: int(seq[0])}
            body = json.dumps(payload, separators=(",", ":"), sort_keys=True)
            self._conn.execute("UPDATE outbox SET action = ?, payload = ? WHERE id = ?", (action, body, entry_id))

    def bind_transaction(self, tx_ref: str, transaction_id: int) -> None:
        """StartTransaction.conf arrived: remember the CSMS id for the local reference."""
        with self._storage(f"bind transaction {tx_ref}"), self._transaction():
            self._bind(tx_ref, transaction_id)

    def start_dropped(self, tx_ref: str) -> None:
        """The Start of this transaction can never be delivered: later messages use transactionId -1."""
        with self._storage(f"mark start dropped for {tx_ref}"), self._transaction():
            self._conn.execute(
                "INSERT INTO outbox_tx(tx_ref, start_dropped) VALUES (?, 1) "
                "ON CONFLICT(tx_ref) DO UPDATE SET start_dropped = 1",
                (tx_ref,),
            )

    # -- reading -------------------------------------------------------------------------------------

    def head(self) -> OutboxEntry | None:
        """The oldest entry not yet delivered (it may still be deferred: see ``not_before_mono``)."""
        if self._depth <= 0:  # known empty (this object is the outbox's one writer): no SELECT after each ack
            return None
        entries = self.entries(1)
        if not entries:
            return None
        head = entries[0]
        self._head_seen = (head.id, head.action, head.tx_ref, is_stop(head.action, head.payload))
        return head

    def entries(self, limit: int = 100) -> list[OutboxEntry]:
        with self._storage("read the outbox"):
            rows = self._conn.execute(
                "SELECT id, action, payload, tx_ref, attempts, created_wall FROM outbox ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            OutboxEntry(
                id=row[0],
                action=row[1],
                payload=json.loads(row[2]),
                tx_ref=row[3],
                attempts=row[4],
                created_wall=row[5],
                not_before_mono=self._not_before.get(row[0]),
                may_hold_nulls="null" in row[2],  # also inside a string or a key: then merely walked
            )
            for row in rows
        ]

    def depth(self) -> int:
        return self._depth

    def oldest_wall(self) -> float | None:
        head = self.head()
        return head.created_wall if head else None

    def transaction_id(self, tx_ref: str) -> int | None:
        known = self._bound.get(tx_ref)
        if known is not None:
            return known
        row = self._tx_row(tx_ref, "transaction_id")
        if row is None or row[0] is None:
            return None
        if self._conn.in_transaction:  # read inside a transaction that may still roll back: not remembered
            return int(row[0])
        if len(self._bound) >= _BOUND_KEPT:
            self._bound.clear()
        self._bound[tx_ref] = int(row[0])
        return int(row[0])

    def is_start_dropped(self, tx_ref: str) -> bool:
        row = self._tx_row(tx_ref, "start_dropped")
        return bool(row and row[0])

    def queued_for(self, tx_ref: str) -> int:
        """How many messages of this transaction wait in the queue (2.0.1 GetTransactionStatus)."""
        with self._storage(f"count messages of {tx_ref}"):
            return int(self._conn.execute("SELECT COUNT(*) FROM outbox WHERE tx_ref = ?", (tx_ref,)).fetchone()[0])

    def has_action(self, action: str) -> bool:
        """Is any message of this action queued (2.0.1 GetTransactionStatus without a transactionId)?"""
        with self._storage(f"look for {action}"):
            return self._conn.execute("SELECT 1 FROM outbox WHERE action = ? LIMIT 1", (action,)).fetchone() is not None

    def next_seq_no(self, tx_ref: str) -> int:
        """The seqNo the transaction's next message gets (0 before its first)."""
        row = self._tx_row(tx_ref, "seq_no")
        return int(row[0]) if row else 0

    def has_stop(self, tx_ref: str) -> bool:
        """A StopTransaction for this transaction was queued or delivered: never queue another."""
        return _is_stop_flagged(self._tx_row(tx_ref, "stop_queued, stop_delivered"))

    def unstopped_transactions(self) -> list[str]:
        """Transactions with messages queued or bound but no Stop yet (for power-loss recovery)."""
        with self._storage("list unstopped transactions"):
            rows = self._conn.execute(
                "SELECT tx_ref FROM outbox_tx WHERE stop_queued = 0 AND stop_delivered = 0 ORDER BY seq"
            ).fetchall()
        return [str(row[0]) for row in rows]

    def payload_for_send(self, entry: OutboxEntry) -> dict[str, Any]:
        """The payload to put on the wire: transactionId filled from the binding (real id, or -1 only if
        the Start was dropped). FIFO order means a message's Start is always sent before it."""
        if entry.tx_ref is None or entry.action in (START, TRANSACTION_EVENT):
            return dict(entry.payload)  # a 2.0.1 transactionId is the station's own, in the payload
        transaction_id = self.transaction_id(entry.tx_ref)
        if transaction_id is None:
            if self.is_start_dropped(entry.tx_ref):
                transaction_id = -1
            elif "transactionId" in entry.payload:
                return dict(entry.payload)  # the caller knew the id when it queued the message
            else:
                raise UnboundTransaction(
                    f"{entry.action} #{entry.id}: CSMS transactionId for {entry.tx_ref} is not known yet"
                )
        return {**entry.payload, "transactionId": transaction_id}

    def dropped(self, limit: int = 100) -> list[tuple[str, str | None, str]]:
        """Recently given-up entries as (action, tx_ref, reason), newest first."""
        with self._storage("read dropped entries"):
            rows = self._conn.execute(
                "SELECT action, tx_ref, reason FROM outbox_dropped ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [(str(a), t, str(r)) for a, t, r in rows]

    # -- internals -----------------------------------------------------------------------------------

    def _bind(self, tx_ref: str, transaction_id: int) -> None:
        self._bound.pop(tx_ref, None)
        self._conn.execute(
            "INSERT INTO outbox_tx(tx_ref, transaction_id) VALUES (?, ?) "
            "ON CONFLICT(tx_ref) DO UPDATE SET transaction_id = excluded.transaction_id",
            (tx_ref, transaction_id),
        )

    def _tx_row(self, tx_ref: str, columns: str) -> tuple[Any, ...] | None:
        with self._storage(f"read transaction {tx_ref}"):
            row: tuple[Any, ...] | None = self._conn.execute(
                f"SELECT {columns} FROM outbox_tx WHERE tx_ref = ?", (tx_ref,)
            ).fetchone()
        return row

    def _thin(self) -> int:
        """Delete every second intermediate MeterValues of the oldest transaction that has some.
        Never a Start/Stop/other message, never a transaction's last MeterValues, never the head
        (it may be in flight). Returns how many were deleted."""
        head_row = self._conn.execute("SELECT MIN(id) FROM outbox").fetchone()
        head_id = head_row[0] if head_row else None
        groups = self._conn.execute(
            "SELECT tx_ref FROM outbox WHERE action = ? GROUP BY tx_ref HAVING COUNT(*) >= 3 ORDER BY MIN(id)",
            (METER_VALUES,),
        ).fetchall()
        for (tx_ref,) in groups:
            ids = [
                row[0]
                for row in self._conn.execute(
                    "SELECT id FROM outbox WHERE action = ? AND tx_ref IS ? ORDER BY id", (METER_VALUES, tx_ref)
                )
            ]
            candidates = [i for i in ids[:-1] if i != head_id]  # the last MeterValues stays
            victims = candidates[1::2]
            if not victims:
                continue
            self._conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in victims])
            self._record_dropped(None, METER_VALUES, tx_ref, 0, f"outbox full: thinned {len(victims)}")
            for victim in victims:
                self._not_before.pop(victim, None)
            log.warning("outbox full (%d): thinned %d MeterValues of %s", self._depth, len(victims), tx_ref)
            return len(victims)
        return 0

    def _removed(self, entry_id: int) -> None:
        """Bookkeeping after an entry left the outbox (delivered or given up)."""
        self._depth -= 1
        if self._depth < self.max_messages * 0.9:  # the CSMS is catching up (thinning does not count)
            self._full_reported = False
        self._not_before.pop(entry_id, None)

    def _record_dropped(
        self, entry_id: int | None, action: str, tx_ref: str | None, attempts: int, reason: str
    ) -> None:
        self._conn.execute(
            "INSERT INTO outbox_dropped(entry_id, action, tx_ref, attempts, reason, dropped_wall) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (entry_id, action, tx_ref, attempts, reason, self._clock.wall()),
        )

    def _prune_delivered(self) -> None:
        self._bound.clear()
        self._conn.execute(
            "DELETE FROM outbox_tx WHERE stop_delivered = 1 AND tx_ref NOT IN "
            "(SELECT tx_ref FROM outbox_tx WHERE stop_delivered = 1 ORDER BY seq DESC LIMIT ?)",
            (_DELIVERED_TX_KEPT,),
        )

    @contextmanager
    def _transaction(self, *, durable: bool = True) -> Iterator[None]:
        """BEGIN IMMEDIATE .. COMMIT; ``durable=False`` commits without fsync (WAL, synchronous=NORMAL):
        safe against a process crash, may be rolled back by an OS crash or power cut."""
        with contextlib.nullcontext() if durable else self._unsynced(), transaction(self._conn):
            yield

    @contextmanager
    def _unsynced(self) -> Iterator[None]:
        """Commits inside go without fsync (synchronous=NORMAL); the durable setting comes back after.
        Nothing to switch when the connection's level is NORMAL already (the fleet's shared files): two
        statements fewer per send and per ack."""
        if self._synchronous <= _NORMAL:
            yield
            return
        self._conn.execute("PRAGMA synchronous=NORMAL")
        try:
            yield
        finally:
            self._conn.execute(f"PRAGMA synchronous={self._synchronous}")

    @staticmethod
    @contextmanager
    def _storage(what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StorageError(f"outbox: cannot {what}: {exc}") from exc
