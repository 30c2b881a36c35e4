"""The last accepted BootNotification, tied to the control side's run (``StationFacts.started_wall``).

In the two-process agent (agent/split.py) the network side can restart while the station goes on: that is a
reconnect, not a boot of the charge point, so no new BootNotification (a CSMS may take one for a reboot and close
the transactions it knows) and no StartupOfTheDevice security event. A new run of the control side (power-up,
restart of the agent, Reset) has another ``started_wall`` and boots as usual."""

from __future__ import annotations

import json
import sqlite3

from agent.db import Migration, StorageError, migrate

COMPONENT = "ocpp16_boot"

MIGRATIONS: list[Migration] = [
    "CREATE TABLE ocpp16_boot (id INTEGER PRIMARY KEY CHECK (id = 1), control_started REAL NOT NULL, "
    "fields TEXT NOT NULL)",
]


class BootRecord:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        migrate(conn, COMPONENT, MIGRATIONS)

    def accepted_for(self, control_started: float, fields: dict[str, str]) -> bool:
        """This run of the control side was already booted (Accepted) with these fields."""
        row = self._conn.execute("SELECT control_started, fields FROM ocpp16_boot WHERE id = 1").fetchone()
        return row is not None and row[0] == control_started and row[1] == json.dumps(fields, sort_keys=True)

    def save(self, control_started: float, fields: dict[str, str]) -> None:
        """Committed without an fsync (synchronous=NORMAL for this statement): it matters only while the
        control side's run goes on, and an OS crash or power cut that could roll it back ends that run."""
        try:
            level = int(self._conn.execute("PRAGMA synchronous").fetchone()[0])
            self._conn.execute("PRAGMA synchronous=NORMAL")
            try:
                self._conn.execute(
                    "INSERT INTO ocpp16_boot(id, control_started, fields) VALUES (1, ?, ?) ON CONFLICT(id) "
                    "DO UPDATE SET control_started = excluded.control_started, fields = excluded.fields",
                    (control_started, json.dumps(fields, sort_keys=True)),
                )
            finally:
                self._conn.execute(f"PRAGMA synchronous={level}")
        except sqlite3.Error as exc:
            raise StorageError(f"cannot store the accepted boot: {exc}") from exc
