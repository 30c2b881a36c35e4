"""The persisted event log a technician reads with `cpctl events`: status changes, sessions, faults,
tokens (masked), link changes. Bounded: old rows are trimmed."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from agent import db


def _add_station_column(conn: sqlite3.Connection) -> None:
    """Idempotent: in the split agent both sides open the event log at start and may both run this step."""
    if "station" not in {row[1] for row in conn.execute("PRAGMA table_info(events)")}:
        conn.execute("ALTER TABLE events ADD COLUMN station TEXT NOT NULL DEFAULT ''")


MIGRATIONS: list[db.Migration] = [
    """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        wall REAL NOT NULL,
        level TEXT NOT NULL,
        source TEXT NOT NULL,
        text TEXT NOT NULL,
        data TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX events_wall ON events(wall)
    """,
    # The station a row belongs to: '' on a charger, which logs only its own events; `cpsim fleet` keeps
    # all its stations' events in one fleet-wide log (one SQLite connection instead of one per station).
    _add_station_column,
]

MAX_EVENTS = 50_000


@dataclass(frozen=True)
class Event:
    id: int
    wall: float
    level: str
    source: str
    text: str
    data: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "wall": self.wall, "level": self.level, "source": self.source,
                "text": self.text, "data": self.data}


class EventLog:
    """The events of one station. ``station`` names it in a log shared by several stations (cpsim fleet):
    it writes and reads only its own rows; trimming keeps the newest MAX_EVENTS rows of the whole log."""

    def __init__(self, conn: sqlite3.Connection, *, station: str = "") -> None:
        self._conn = conn
        self._station = station
        db.migrate(conn, "eventlog", MIGRATIONS)
        self._since_trim = 0

    def add(self, wall: float, level: str, source: str, text: str, data: dict[str, Any] | None = None) -> None:
        try:
            self._conn.execute(
                "INSERT INTO events(wall, level, source, text, data, station) VALUES (?,?,?,?,?,?)",
                (wall, level, source, text, json.dumps(data or {}, default=str), self._station),
            )
            self._since_trim += 1
            if self._since_trim >= 1000:
                self._since_trim = 0
                self._conn.execute(
                    "DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?", (MAX_EVENTS,)
                )
        except sqlite3.Error:
            pass  # the event log is a convenience; never let it break charging

    def query(self, *, since_wall: float | None = None, after_id: int = 0, limit: int = 200) -> list[Event]:
        sql = "SELECT id, wall, level, source, text, data FROM events WHERE station = ? AND id > ?"
        args: list[Any] = [self._station, after_id]
        if since_wall is not None:
            sql += " AND wall >= ?"
            args.append(since_wall)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        rows = self._conn.execute(sql, args).fetchall()
        return [Event(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in reversed(rows)]
