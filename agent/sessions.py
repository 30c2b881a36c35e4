"""Charging sessions, persisted in the state database so that a restart or power loss never loses
one: start/stop energy and times, the idTag, the stop reason, and the last meter value seen."""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import dataclass

from agent import db

MIGRATIONS: list[db.Migration] = [
    """
    CREATE TABLE sessions (
        ref TEXT PRIMARY KEY,
        connector_id INTEGER NOT NULL,
        id_tag TEXT NOT NULL,
        start_wall REAL NOT NULL,
        start_energy_wh REAL NOT NULL,
        last_wall REAL NOT NULL,
        last_energy_wh REAL NOT NULL,
        stop_wall REAL,
        stop_energy_wh REAL,
        stop_reason TEXT,
        transaction_id INTEGER
    );
    CREATE INDEX sessions_open ON sessions(connector_id) WHERE stop_wall IS NULL
    """,
    # Signed meter readings (OCMF records from a signing meter), kept verbatim for the CSMS.
    """
    ALTER TABLE sessions ADD COLUMN start_signed TEXT;
    ALTER TABLE sessions ADD COLUMN stop_signed TEXT
    """,
    # The idTag that ended the session, when it is not the one that started it (another card of its group).
    """
    ALTER TABLE sessions ADD COLUMN stop_id_tag TEXT
    """,
]


@dataclass(frozen=True)
class Session:
    ref: str
    connector_id: int
    id_tag: str
    start_wall: float
    start_energy_wh: float
    last_wall: float
    last_energy_wh: float
    stop_wall: float | None = None
    stop_energy_wh: float | None = None
    stop_reason: str | None = None
    transaction_id: int | str | None = None  # the CSMS's (1.6, integer) or the station's (2.0.1, string)
    start_signed: str | None = None
    stop_signed: str | None = None
    stop_id_tag: str | None = None  # who ended it, when not id_tag (a card of the same parentIdTag)

    @property
    def energy_wh(self) -> float:
        end = self.stop_energy_wh if self.stop_energy_wh is not None else self.last_energy_wh
        return max(0.0, end - self.start_energy_wh)

    @property
    def open(self) -> bool:
        return self.stop_wall is None


_COLUMNS = (
    "ref, connector_id, id_tag, start_wall, start_energy_wh, last_wall, last_energy_wh, "
    "stop_wall, stop_energy_wh, stop_reason, transaction_id, start_signed, stop_signed, stop_id_tag"
)


class SessionStore:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        db.migrate(conn, "sessions", MIGRATIONS)

    def _one(self, sql: str, args: tuple[object, ...]) -> Session | None:
        row = self._conn.execute(f"SELECT {_COLUMNS} FROM sessions {sql}", args).fetchone()
        return Session(*row) if row else None

    def begin(self, connector_id: int, id_tag: str, wall: float, energy_wh: float) -> Session:
        ref = uuid.uuid4().hex
        try:
            self._conn.execute(
                f"INSERT INTO sessions ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,NULL,NULL,NULL,NULL,NULL,NULL,NULL)",
                (ref, connector_id, id_tag, wall, energy_wh, wall, energy_wh),
            )
        except sqlite3.Error as exc:
            raise db.StorageError(f"cannot record the session start: {exc}") from exc
        session = self.get(ref)
        assert session is not None
        return session

    def progress(self, ref: str, wall: float, energy_wh: float) -> None:
        """Remember the latest meter value, so a power loss can close the session honestly."""
        try:
            self._conn.execute(
                "UPDATE sessions SET last_wall = ?, last_energy_wh = MAX(last_energy_wh, ?) "
                "WHERE ref = ? AND stop_wall IS NULL",
                (wall, energy_wh, ref),
            )
        except sqlite3.Error as exc:
            raise db.StorageError(f"cannot record session progress: {exc}") from exc

    def finish(
        self, ref: str, wall: float, energy_wh: float, reason: str, *, stop_id_tag: str | None = None
    ) -> Session | None:
        """Close an open session once; a second call returns None (a stop is never recorded twice)."""
        try:
            cur = self._conn.execute(
                "UPDATE sessions SET stop_wall = ?, stop_energy_wh = MAX(last_energy_wh, ?), "
                "last_energy_wh = MAX(last_energy_wh, ?), stop_reason = ?, stop_id_tag = ? "
                "WHERE ref = ? AND stop_wall IS NULL",
                (wall, energy_wh, energy_wh, reason, stop_id_tag, ref),
            )
        except sqlite3.Error as exc:
            raise db.StorageError(f"cannot record the session stop: {exc}") from exc
        return self.get(ref) if cur.rowcount == 1 else None

    def set_transaction_id(self, ref: str, transaction_id: int | str) -> None:
        self._conn.execute("UPDATE sessions SET transaction_id = ? WHERE ref = ?", (transaction_id, ref))

    def set_signed(self, ref: str, *, start: str | None = None, stop: str | None = None) -> None:
        """Store a signed reading of the session (start and/or end), verbatim."""
        try:
            if start is not None:
                self._conn.execute("UPDATE sessions SET start_signed = ? WHERE ref = ?", (start, ref))
            if stop is not None:
                self._conn.execute("UPDATE sessions SET stop_signed = ? WHERE ref = ?", (stop, ref))
        except sqlite3.Error as exc:
            raise db.StorageError(f"cannot record a signed meter reading: {exc}") from exc

    def get(self, ref: str) -> Session | None:
        return self._one("WHERE ref = ?", (ref,))

    def open_session(self, connector_id: int) -> Session | None:
        return self._one("WHERE connector_id = ? AND stop_wall IS NULL ORDER BY start_wall DESC", (connector_id,))

    def recent(self, limit: int = 20) -> list[Session]:
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM sessions ORDER BY start_wall DESC LIMIT ?", (limit,)
        ).fetchall()
        return [Session(*row) for row in rows]
