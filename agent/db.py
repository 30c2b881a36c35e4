"""The agent's SQLite state database (``state.db``).

Each component owns its tables and declares an ordered list of migrations; ``migrate`` applies the
missing ones and records the component's version in ``schema_version``. Never edit a released
migration: append a new one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

Migration = str | Callable[[sqlite3.Connection], None]


class StorageError(Exception):
    """The state database cannot be read or written (disk full, corruption, permissions)."""


def connect(path: Path | str, *, durable: bool = True) -> sqlite3.Connection:
    """Open the database in WAL mode. ``durable`` makes every commit fsync (synchronous=FULL),
    which is what transaction messages need to survive power loss."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=5.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
    )
    return conn


def schema_version(conn: sqlite3.Connection, component: str) -> int:
    row = conn.execute("SELECT version FROM schema_version WHERE component = ?", (component,)).fetchone()
    return int(row[0]) if row else 0


def migrate(conn: sqlite3.Connection, component: str, migrations: Sequence[Migration]) -> int:
    """Bring ``component`` to ``len(migrations)``; each step runs in its own transaction."""
    current = schema_version(conn, component)
    if current > len(migrations):
        raise StorageError(
            f"state database has {component} schema v{current}, newer than this agent (v{len(migrations)})"
        )
    for version in range(current + 1, len(migrations) + 1):
        step = migrations[version - 1]
        conn.execute("BEGIN IMMEDIATE")
        try:
            if isinstance(step, str):
                for statement in step.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            else:
                step(conn)
            conn.execute(
                "INSERT INTO schema_version(component, version) VALUES (?, ?) "
                "ON CONFLICT(component) DO UPDATE SET version = excluded.version",
                (component, version),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(migrations)
