"""The last accepted 2.0.1 BootNotification, tied to the control side's run (as agent/ocpp/v16/boot_record.py
for 1.6; a separate record, because a CSMS of the other version has not seen that boot), and the reason
the next boot gives (RemoteReset after a Reset the CSMS asked for; else PowerUp)."""

from __future__ import annotations

import json
import sqlite3

from agent.db import Migration, StorageError, migrate

COMPONENT = "ocpp201_boot"

MIGRATIONS: list[Migration] = [
    "CREATE TABLE ocpp201_boot (id INTEGER PRIMARY KEY CHECK (id = 1), control_started REAL, "
    "fields TEXT, next_reason TEXT)",
]


class BootRecord:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        migrate(conn, COMPONENT, MIGRATIONS)

    def _row(self) -> tuple[object, object, object] | None:
        row = self._conn.execute(
            "SELECT control_started, fields, next_reason FROM ocpp201_boot WHERE id = 1").fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def accepted_for(self, control_started: float, fields: dict[str, object]) -> bool:
        """This run of the control side was already booted (Accepted) with these fields."""
        row = self._row()
        return row is not None and row[0] == control_started and row[1] == json.dumps(fields, sort_keys=True)

    def save(self, control_started: float, fields: dict[str, object]) -> None:
        """Accepted: record it; the next-boot reason is used up."""
        self._write("control_started = ?, fields = ?, next_reason = NULL",
                    (control_started, json.dumps(fields, sort_keys=True)))

    def next_reason(self) -> str | None:
        row = self._row()
        return None if row is None or row[2] is None else str(row[2])

    def set_next_reason(self, reason: str) -> None:
        self._write("next_reason = ?", (reason,))

    def _write(self, assignments: str, values: tuple[object, ...]) -> None:
        try:
            self._conn.execute("INSERT OR IGNORE INTO ocpp201_boot(id) VALUES (1)")
            self._conn.execute(f"UPDATE ocpp201_boot SET {assignments} WHERE id = 1", values)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot store the boot record: {exc}") from exc
