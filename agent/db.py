"""The agent's SQLite state database (``state.db``).

Each component owns its tables and declares an ordered list of migrations; ``migrate`` applies the
missing ones and records the component's version in ``schema_version``. Never edit a released
migration: append a new one.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

Migration = str | Callable[[sqlite3.Connection], None]


class StorageError(Exception):
    """The state database cannot be read or written (disk full, corruption, permissions)."""


PRIVATE_MODE = 0o600  # the database holds the AuthorizationKey; its WAL holds it too until a checkpoint
# Files SQLite keeps beside the database in WAL mode: created here, so they never exist with another mode.
_CREATED_SUFFIXES = ("", "-wal", "-shm")
_TIGHTENED_SUFFIXES = ("-journal",)  # only if present (an old rollback journal); never created here


def _private_files(path: Path | str) -> None:
    """Create the database, its -wal and -shm as 0600 before SQLite opens them, and tighten any that exist.

    O_CREAT's mode is cut by the process umask, so each file is fchmod'ed (no umask change: that would be
    process-wide, not thread-safe). SQLite creates any later journal with the database file's mode."""
    name = str(path)
    if name in ("", ":memory:") or name.startswith("file:"):
        return
    for suffix in _CREATED_SUFFIXES:
        try:
            fd = os.open(name + suffix, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_MODE)
        except FileExistsError:
            # Never open and close an existing one: closing any descriptor of a file drops every POSIX lock
            # this process holds on it, SQLite's too. A second connection in a process that had one open
            # dropped its lock on the -shm; the other side's process then took the -shm for its own,
            # truncated it, and the first connection's next access to its mapping was a SIGBUS (the control
            # side died at start, 2 of 13 starts in the contract audit).
            with contextlib.suppress(FileNotFoundError):
                os.chmod(name + suffix, PRIVATE_MODE)
            continue
        try:
            os.fchmod(fd, PRIVATE_MODE)
        finally:
            os.close(fd)
    for suffix in _TIGHTENED_SUFFIXES:
        try:
            os.chmod(name + suffix, PRIVATE_MODE)
        except FileNotFoundError:
            pass


# Prepared statements sqlite3 keeps per connection (its default): cpsim fleet, which opens a connection per
# simulated station, lowers it (each cached statement costs a few kB).
STATEMENT_CACHE = 128
# Page cache per connection in KiB (None: SQLite's default, 2 MB). Whatever it is, SQLite allocates 20 pages at
# once at the connection's first read; cpsim fleet lowers both (a station's working set is a few pages).
PAGE_CACHE_KIB: int | None = None
# Page size of a database this process creates (None: SQLite's default, 4096; existing files keep theirs).
PAGE_SIZE: int | None = None
# None on a charger. cpsim fleet sets it: called first by ``connect`` with (path, durable), it returns the
# connection to use (the fleet's stations get a view of one shared connection, simulator/fleet/shared_db.py)
# or None for ``connect``'s own.
CONNECT_HOOK: Callable[[Path | str, bool], sqlite3.Connection | None] | None = None


def connect(path: Path | str, *, durable: bool = True) -> sqlite3.Connection:
    """Open the database in WAL mode; the database and its -wal/-shm are 0600 from the start.
    ``durable`` makes every commit fsync (synchronous=FULL), which is what transaction messages need
    to survive power loss."""
    if CONNECT_HOOK is not None:
        hooked = CONNECT_HOOK(path, durable)
        if hooked is not None:
            return hooked
    _private_files(path)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=5.0,
                           cached_statements=STATEMENT_CACHE)
    if PAGE_SIZE is not None:
        conn.execute(f"PRAGMA page_size={int(PAGE_SIZE)}")  # a no-op once the file has its first page
    if PAGE_CACHE_KIB is not None:
        conn.execute(f"PRAGMA cache_size=-{int(PAGE_CACHE_KIB)}")
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


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE .. COMMIT; any exception inside rolls the transaction back and goes on. The commit is
    as durable as the connection's synchronous level (see ``unsynced``)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def unsynced(conn: sqlite3.Connection) -> Iterator[None]:
    """Commits inside go without an fsync (WAL, synchronous=NORMAL): safe against a process crash, may be
    rolled back by an OS crash or power cut. The connection's own level comes back after."""
    level = int(conn.execute("PRAGMA synchronous").fetchone()[0])
    conn.execute("PRAGMA synchronous=NORMAL")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA synchronous={level}")


def migrate(conn: sqlite3.Connection, component: str, migrations: Sequence[Migration]) -> int:
    """Bring ``component`` to ``len(migrations)``; each step runs in its own transaction."""
    current = schema_version(conn, component)
    if current > len(migrations):
        raise StorageError(
            f"state database has {component} schema v{current}, newer than this agent (v{len(migrations)})"
        )
    for version in range(current + 1, len(migrations) + 1):
        step = migrations[version - 1]
        with transaction(conn):
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
    return len(migrations)
