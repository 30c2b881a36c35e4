"""Operator availability per connector (ChangeAvailability), persisted so Unavailable survives a reboot.
Connector 0 stands for the whole station."""

from __future__ import annotations

import sqlite3

from agent.db import Migration, StorageError, migrate

COMPONENT = "ocpp16_availability"

MIGRATIONS: list[Migration] = [
    "CREATE TABLE ocpp16_availability (connector_id INTEGER PRIMARY KEY, operative INTEGER NOT NULL)",
]


class AvailabilityStore:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        migrate(conn, COMPONENT, MIGRATIONS)

    def operative(self, connector_id: int) -> bool:
        row = self._conn.execute(
            "SELECT operative FROM ocpp16_availability WHERE connector_id = ?", (connector_id,)
        ).fetchone()
        return True if row is None else bool(row[0])

    def set(self, connector_id: int, operative: bool) -> None:
        try:
            self._conn.execute(
                "INSERT INTO ocpp16_availability(connector_id, operative) VALUES (?, ?) "
                "ON CONFLICT(connector_id) DO UPDATE SET operative = excluded.operative",
                (connector_id, int(operative)),
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot store the availability of connector {connector_id}: {exc}") from exc
