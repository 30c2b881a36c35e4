"""Persisted authorization data for offline decisions: the Authorization Cache and the Local
Authorization List (OCPP 1.6 sections 3.5.1 / 3.5.2).

The cache learns the idTagInfo of every Authorize.conf / StartTransaction.conf, is bounded and evicts
the least recently used entry (use order is a counter, not the wall clock). The local list is what the
CSMS sends with SendLocalList, with its version. Local-list ids are never cached. idTags are
CiString20, so lookups ignore case. Expiry is a wall-clock instant: an entry past its expiryDate reads
as status "Expired".
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

from agent.db import Migration, StorageError, migrate, transaction, unsynced
from hal.clock import Clock

COMPONENT = "authcache"

MIGRATIONS: list[Migration] = [
    """
    CREATE TABLE auth_cache (
        id_tag TEXT PRIMARY KEY COLLATE NOCASE,
        status TEXT NOT NULL,
        expiry_wall REAL,
        parent_id_tag TEXT,
        last_used INTEGER NOT NULL
    );
    CREATE INDEX auth_cache_lru ON auth_cache(last_used);
    CREATE TABLE local_auth_list (
        id_tag TEXT PRIMARY KEY COLLATE NOCASE,
        status TEXT NOT NULL,
        expiry_wall REAL,
        parent_id_tag TEXT
    );
    CREATE TABLE local_auth_list_version (only_row INTEGER PRIMARY KEY CHECK (only_row = 1), version INTEGER NOT NULL);
    INSERT INTO local_auth_list_version VALUES (1, 0)
    """,
]

UpdateStatus = Literal["Accepted", "Failed", "VersionMismatch"]
AUTHORIZATION_STATUSES = frozenset({"Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx"})
ID_TAG_MAX_LENGTH = 20  # IdToken: CiString20Type


@dataclass(frozen=True)
class IdTagInfo:
    status: str  # Accepted, Blocked, Expired, Invalid, ConcurrentTx
    expiry_wall: float | None = None
    parent_id_tag: str | None = None

    @classmethod
    def from_ocpp(cls, info: Mapping[str, Any]) -> IdTagInfo:
        """From an OCPP idTagInfo object, the one way every caller builds one: the wire / local-list form
        (``parentIdTag``, ``expiryDate``) and the ``ocpp`` library's call_result form (``parent_id_tag``,
        ``expiry_date``) alike. ``expiryDate`` is ISO 8601; no zone means UTC. ValueError names the
        unreadable field."""
        if not isinstance(info, Mapping):
            raise ValueError(f"idTagInfo is not an object: {type(info).__name__}")
        status = info.get("status")
        if status not in AUTHORIZATION_STATUSES:
            raise ValueError(f"idTagInfo status {status!r} is not an AuthorizationStatus")
        expiry = _field(info, "expiryDate", "expiry_date")
        parent = _field(info, "parentIdTag", "parent_id_tag")
        if parent is not None and not (isinstance(parent, str) and len(parent) <= ID_TAG_MAX_LENGTH):
            raise ValueError(f"idTagInfo parentIdTag is not an idTag (string of <= {ID_TAG_MAX_LENGTH}): {parent!r}")
        if expiry is None:
            return cls(status, None, parent)
        if not isinstance(expiry, str):
            raise ValueError(f"idTagInfo expiryDate is not a date-time string: {expiry!r}")
        try:
            return cls(status, _parse_time(expiry), parent)
        except (ValueError, OverflowError) as exc:
            raise ValueError(f"idTagInfo expiryDate {expiry[:40]!r} unreadable: {exc}") from None

    def to_ocpp(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        if self.expiry_wall is not None:
            stamp = datetime.fromtimestamp(self.expiry_wall, UTC).isoformat(timespec="seconds")
            out["expiryDate"] = stamp.replace("+00:00", "Z")
        if self.parent_id_tag is not None:
            out["parentIdTag"] = self.parent_id_tag
        return out

    @property
    def accepted(self) -> bool:
        return self.status == "Accepted"


def _field(info: Mapping[str, Any], wire: str, library: str) -> Any:
    value = info.get(wire)
    return info.get(library) if value is None else value


def _parse_time(text: str) -> float:
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    parsed.astimezone(UTC)  # ValueError/OverflowError when the instant is outside years 1..9999 UTC
    return parsed.timestamp()


def _with_expiry(info: IdTagInfo, now_wall: float) -> IdTagInfo:
    if info.accepted and info.expiry_wall is not None and info.expiry_wall <= now_wall:
        return replace(info, status="Expired")
    return info


@contextmanager
def _storage(what: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise StorageError(f"authorization store: cannot {what}: {exc}") from exc


class _Tables:
    def __init__(self, conn: sqlite3.Connection, clock: Clock) -> None:
        self._conn = conn
        self._clock = clock
        with _storage("open"):
            migrate(conn, COMPONENT, MIGRATIONS)

    @contextmanager
    def _transaction(self, what: str, *, durable: bool = True) -> Iterator[None]:
        """BEGIN IMMEDIATE .. COMMIT. ``durable=False`` (the cache, which only saves asking the CSMS again)
        commits without an fsync: safe against a process crash, may be rolled back by an OS crash or power
        cut. The connection's own level comes back after."""
        with _storage(what), nullcontext() if durable else unsynced(self._conn), transaction(self._conn):
            yield


class _ListTooLong(Exception):
    pass


class LocalAuthList(_Tables):
    """The Local Authorization List with its version (GetLocalListVersion / SendLocalList)."""

    def __init__(self, conn: sqlite3.Connection, clock: Clock, *, max_length: int = 1000) -> None:
        super().__init__(conn, clock)
        self.max_length = max_length

    def version(self) -> int:
        with _storage("read the local list version"):
            return int(self._conn.execute("SELECT version FROM local_auth_list_version").fetchone()[0])

    def __len__(self) -> int:
        with _storage("count the local list"):
            return int(self._conn.execute("SELECT COUNT(*) FROM local_auth_list").fetchone()[0])

    def __contains__(self, id_tag: object) -> bool:
        return isinstance(id_tag, str) and self._row(id_tag) is not None

    def lookup(self, id_tag: str) -> IdTagInfo | None:
        """The entry for ``id_tag`` (status Expired once past its expiry), or None if not listed."""
        row = self._row(id_tag)
        return None if row is None else _with_expiry(IdTagInfo(*row), self._clock.wall())

    def replace_all(self, version: int, entries: Mapping[str, IdTagInfo]) -> UpdateStatus:
        """SendLocalList updateType Full: the list becomes exactly ``entries``."""
        if len(entries) > self.max_length:
            return "Failed"
        with self._transaction("replace the local list"):
            self._conn.execute("DELETE FROM local_auth_list")
            self._upsert(entries)
            self._set_version(version)
        return "Accepted"

    def apply_differential(self, version: int, updates: Mapping[str, IdTagInfo | None]) -> UpdateStatus:
        """SendLocalList updateType Differential: add/replace entries; ``None`` removes the idTag.
        A version not newer than the current one is a VersionMismatch."""
        if version <= self.version():
            return "VersionMismatch"
        try:
            with self._transaction("update the local list"):
                removed = [(tag,) for tag, info in updates.items() if info is None]
                self._conn.executemany("DELETE FROM local_auth_list WHERE id_tag = ?", removed)
                self._upsert({tag: info for tag, info in updates.items() if info is not None})
                size = int(self._conn.execute("SELECT COUNT(*) FROM local_auth_list").fetchone()[0])
                if size > self.max_length:
                    raise _ListTooLong
                self._set_version(version)
        except _ListTooLong:
            return "Failed"  # rolled back: list and version unchanged
        return "Accepted"

    def update(self, version: int, entries: Mapping[str, IdTagInfo | None], *, full: bool) -> UpdateStatus:
        """SendLocalList of either updateType: Full replaces the list with the entries that have an info
        (``replace_all``), Differential applies them (``apply_differential``)."""
        if full:
            return self.replace_all(version, {tag: info for tag, info in entries.items() if info is not None})
        return self.apply_differential(version, entries)

    def _row(self, id_tag: str) -> tuple[Any, ...] | None:
        with _storage("read the local list"):
            row: tuple[Any, ...] | None = self._conn.execute(
                "SELECT status, expiry_wall, parent_id_tag FROM local_auth_list WHERE id_tag = ?", (id_tag,)
            ).fetchone()
        return row

    def _upsert(self, entries: Mapping[str, IdTagInfo]) -> None:
        self._conn.executemany(
            "INSERT INTO local_auth_list(id_tag, status, expiry_wall, parent_id_tag) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(id_tag) DO UPDATE SET status = excluded.status, "
            "expiry_wall = excluded.expiry_wall, parent_id_tag = excluded.parent_id_tag",
            [(tag, i.status, i.expiry_wall, i.parent_id_tag) for tag, i in entries.items()],
        )
        # Local-list ids are never cached: the list is the authority for them.
        self._conn.executemany("DELETE FROM auth_cache WHERE id_tag = ?", [(tag,) for tag in entries])

    def _set_version(self, version: int) -> None:
        self._conn.execute("UPDATE local_auth_list_version SET version = ?", (version,))


class AuthorizationCache(_Tables):
    """idTag -> last idTagInfo from the CSMS, bounded, least recently used evicted first."""

    def __init__(
        self, conn: sqlite3.Connection, clock: Clock, local_list: LocalAuthList, *, max_entries: int = 1000
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        super().__init__(conn, clock)
        self._local_list = local_list
        self.max_entries = max_entries

    def update(self, id_tag: str, info: IdTagInfo) -> None:
        """Learn from an Authorize / StartTransaction / StopTransaction.conf idTagInfo (ignored for local-list
        ids). Status and expiry are the latest answer's; a known parentIdTag stays unless a new one is given."""
        if id_tag in self._local_list:
            return
        with self._transaction("update the cache", durable=not self._loses_nothing(id_tag, info)):
            self._conn.execute(
                "INSERT INTO auth_cache(id_tag, status, expiry_wall, parent_id_tag, last_used) "
                "VALUES (?, ?, ?, ?, (SELECT COALESCE(MAX(last_used), 0) + 1 FROM auth_cache)) "
                "ON CONFLICT(id_tag) DO UPDATE SET status = excluded.status, expiry_wall = excluded.expiry_wall,"
                # parentIdTag is optional: an answer without it keeps the parent an earlier one gave
                " parent_id_tag = COALESCE(excluded.parent_id_tag, auth_cache.parent_id_tag),"
                " last_used = excluded.last_used",
                (id_tag, info.status, info.expiry_wall, info.parent_id_tag),
            )
            self._conn.execute(
                "DELETE FROM auth_cache WHERE id_tag IN "
                "(SELECT id_tag FROM auth_cache ORDER BY last_used DESC LIMIT -1 OFFSET ?)",
                (self.max_entries,),
            )

    def _loses_nothing(self, id_tag: str, info: IdTagInfo) -> bool:
        """Whether this answer may be learnt without an fsync: if an OS crash or power cut rolls it back, the
        cache must not be looser than the CSMS said. True for an Accepted that does not shorten the expiry of
        a stored Accepted (rolled back: no entry, an earlier rejection, or the same Accepted); a rejection
        (Blocked, Expired, Invalid, ...) or a shorter expiry is written durably."""
        if info.status != "Accepted":
            return False
        with _storage("read the cache"):
            row = self._conn.execute(
                "SELECT status, expiry_wall FROM auth_cache WHERE id_tag = ?", (id_tag,)
            ).fetchone()
        if row is None or row[0] != "Accepted":
            return True
        old, new = row[1], info.expiry_wall
        if old is None:  # stored without expiry: only the same may go unsynced
            return new is None
        return new is None or new >= old

    def lookup(self, id_tag: str) -> IdTagInfo | None:
        """The cached idTagInfo (status Expired once past its expiry), or None. A hit counts as a use."""
        with self._transaction("read the cache", durable=False):
            row = self._conn.execute(
                "SELECT status, expiry_wall, parent_id_tag FROM auth_cache WHERE id_tag = ?", (id_tag,)
            ).fetchone()
            if row is None:
                return None
            self._conn.execute(
                "UPDATE auth_cache SET last_used = (SELECT MAX(last_used) + 1 FROM auth_cache) WHERE id_tag = ?",
                (id_tag,),
            )
        return _with_expiry(IdTagInfo(*row), self._clock.wall())

    def is_valid(self, id_tag: str) -> bool:
        info = self.lookup(id_tag)
        return info is not None and info.accepted

    def clear(self) -> None:
        """ClearCache.req."""
        with self._transaction("clear the cache"):
            self._conn.execute("DELETE FROM auth_cache")

    def __len__(self) -> int:
        with _storage("count the cache"):
            return int(self._conn.execute("SELECT COUNT(*) FROM auth_cache").fetchone()[0])
