"""Operator availability (ChangeAvailability) of the station, each EVSE and each connector, persisted so
Inoperative survives a reboot. Keys: (0, 0) the station, (evse, 0) an EVSE, (evse, connector) a connector.
A connector is operative when it, its EVSE and the station are."""

from __future__ import annotations

import sqlite3

from agent.db import Migration, StorageError, migrate

COMPONENT = "ocpp201_availability"

MIGRATIONS: list[Migration] = [
    "CREATE TABLE ocpp201_availability (evse INTEGER NOT NULL, connector INTEGER NOT NULL, "
    "operative INTEGER NOT NULL, PRIMARY KEY (evse, connector))",
]


class AvailabilityStore:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        migrate(conn, COMPONENT, MIGRATIONS)

    def own(self, evse: int, connector: int = 0) -> bool:
        """The state set on this level itself (default Operative)."""
        row = self._conn.execute(
            "SELECT operative FROM ocpp201_availability WHERE evse = ? AND connector = ?", (evse, connector)
        ).fetchone()
        return True if row is None else bool(row[0])

    def operative(self, evse: int, connector: int = 1) -> bool:
        """Effective: the station, the EVSE and the connector are all Operative."""
        return self.own(0, 0) and self.own(evse, 0) and self.own(evse, connector)

    def set(self, evse: int, connector: int, operative: bool) -> None:
        try:
            self._conn.execute(
                "INSERT INTO ocpp201_availability(evse, connector, operative) VALUES (?, ?, ?) "
                "ON CONFLICT(evse, connector) DO UPDATE SET operative = excluded.operative",
                (evse, connector, int(operative)),
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot store the availability of {evse}/{connector}: {exc}") from exc
