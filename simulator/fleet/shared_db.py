"""`cpsim fleet`: every station's state database as a *station view* of a SQLite connection shared by stations.

On a charger each store (outbox, sessions, authorization cache, the OCPP services' tables, ...) gets the
``sqlite3.Connection`` of ``agent.db.connect(DIR/state.db)`` and uses plain table names. A connection costs
some 110 kB (pager, page cache, prepared statements, the 32 kB WAL index), which at 1000 stations in one
process was half of the fleet's memory. Here the fleet keeps GROUP_SLOTS stations per file and connection
(``DIR/fleet-state-001.db``, ...) and ``agent.db.CONNECT_HOOK`` gives each station a ``StationView`` of one
instead: the Connection methods the stores use (``execute``, ``executemany``, ``in_transaction``, ``with``,
``close``), every name of the agent's schema (tables, indexes, triggers, views) rewritten to the station's
own (``s000012_outbox``). Which station has which prefix of which file is kept in the file's
``fleet_stations``, so a rerun on the same DIR finds every station's rows again.

Rewriting: the schema's names come from the template the agent's own migrations made (``DIR/.template``), so
a table a later migration adds is covered; a name no template had (a ``CREATE`` at run time) is learned when
the statement is first seen. Per distinct SQL text the rewriter keeps the pieces between which the prefix
goes (a bare identifier, a quoted one, and in statements reading ``sqlite_master`` a string literal naming
a table); each call is then one ``str.join``. The cache is bounded by the distinct texts, never by
stations x texts. A column named like a table would be rewritten too: the schema is checked for that when
the template is read (the fleet refuses to start, naming the column).

Everything runs on the fleet's one event-loop thread and no store holds a transaction across an ``await``
(each is a ``with transaction(conn):`` block in synchronous code), so the stations' BEGIN .. COMMIT never
interleave on a shared connection. Durability: `cpsim fleet` runs them at synchronous=NORMAL (kill -9 of
the fleet loses nothing: each commit is in the WAL before the call returns; a crash of the machine may lose the
last ones), at the charger's synchronous=FULL with ``--fsync`` (SYNCHRONOUS); ``agent.db.unsynced`` and the
stores' own switches set the level for their block and restore it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import shutil
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, cast

from agent import db as agent_db

log = logging.getLogger("cpsim.fleet.db")

GROUP_GLOB = "fleet-state-*.db"
# Stations per file and connection (see SharedStateDb: why not all in one).
GROUP_SLOTS = 50
# Prepared statements per connection: every station's statement is its own text (its prefix), so the cache
# holds the hot statements of a few stations at a time (see README "Fleet": measured).
STATEMENT_CACHE = 64
# Page cache per connection (KiB): a station's working set is a few 1 KiB pages.
PAGE_CACHE_KIB = 256
# Distinct SQL texts kept by the rewriter (a text built with values in it would otherwise grow it forever).
MAX_TEXTS = 4096

# One token of SQL: a string literal, a quoted identifier, a comment, or a bare word.
_TOKEN = re.compile(
    r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\]|--[^\n]*|/\*.*?\*/|[A-Za-z_][A-Za-z0-9_$]*""",
    re.DOTALL,
)
_CREATE = re.compile(
    r"""^\s*CREATE\s+(?:TEMP(?:ORARY)?\s+)?(?:UNIQUE\s+)?(?:TABLE|INDEX|TRIGGER|VIEW)\s+(?:IF\s+NOT\s+EXISTS\s+)?"""
    r"""["`\[]?([A-Za-z_][A-Za-z0-9_$]*)""",
    re.IGNORECASE,
)
_READS_SCHEMA = re.compile(r"\bsqlite_(?:master|schema)\b", re.IGNORECASE)


class SharedDbError(RuntimeError):
    """The shared state database cannot be used for this fleet (old layout, a schema the rewriting cannot serve)."""


def is_schema_name(name: str) -> bool:
    """A name of the agent's schema (SQLite's own sqlite_* objects are shared by all stations)."""
    return not name.lower().startswith("sqlite_")


class SqlRewriter:
    """Per SQL text, the pieces between which a station's prefix goes."""

    def __init__(self, names: Iterable[str], *, max_texts: int = MAX_TEXTS) -> None:
        self.names = {n.lower() for n in names if is_schema_name(n)}
        self.max_texts = max_texts
        self._pieces: dict[str, tuple[str, ...]] = {}

    def __len__(self) -> int:
        return len(self._pieces)

    def rewrite(self, sql: str, prefix: str) -> str:
        pieces = self._pieces.get(sql)
        if pieces is None:
            pieces = self._learn(sql)
        return pieces[0] if len(pieces) == 1 else prefix.join(pieces)

    def pieces(self, sql: str) -> tuple[str, ...]:
        pieces = self._pieces.get(sql)
        return self._learn(sql) if pieces is None else pieces

    def _learn(self, sql: str) -> tuple[str, ...]:
        created = _CREATE.match(sql)
        if created is not None and is_schema_name(created.group(1)) and created.group(1).lower() not in self.names:
            self.names.add(created.group(1).lower())  # a table no template had: every text is split again
            self._pieces.clear()
        pieces = split(sql, self.names)
        if len(self._pieces) >= self.max_texts:
            self._pieces.clear()
        self._pieces[sql] = pieces
        return pieces


def split(sql: str, names: set[str] | frozenset[str]) -> tuple[str, ...]:
    """``sql`` cut before every schema name (bare, quoted, or a string literal in a query of sqlite_master):
    ``prefix.join(pieces)`` is the station's statement."""
    literals = _READS_SCHEMA.search(sql) is not None
    cuts: list[int] = []
    for match in _TOKEN.finditer(sql):
        token = match.group()
        first = token[0]
        if first in "'\"`[":
            if first == "'" and not literals:
                continue
            if token[1:-1].lower() in names:
                cuts.append(match.start() + 1)
        elif first in "-/":
            continue
        elif token.lower() in names:
            cuts.append(match.start())
    if not cuts:
        return (sql,)
    bounds = [0, *cuts, len(sql)]
    return tuple(sql[a:b] for a, b in itertools.pairwise(bounds))


class StationView:
    """What a station's stores see as their ``sqlite3.Connection``: the shared one with the station's names.
    ``close`` ends this view only (later use raises as on a closed connection); the fleet closes the
    connection itself."""

    __slots__ = ("_conn", "_rewriter", "closed", "cp_id", "prefix")

    def __init__(self, conn: sqlite3.Connection, rewriter: SqlRewriter, cp_id: str, prefix: str) -> None:
        self._conn = conn
        self._rewriter = rewriter
        self.cp_id = cp_id
        self.prefix = prefix
        self.closed = False

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        if self.closed:
            raise sqlite3.ProgrammingError(f"{self.cp_id}: cannot operate on a closed database")
        return self._conn.execute(self._rewriter.rewrite(sql, self.prefix), parameters)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:
        if self.closed:
            raise sqlite3.ProgrammingError(f"{self.cp_id}: cannot operate on a closed database")
        return self._conn.executemany(self._rewriter.rewrite(sql, self.prefix), parameters)

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    def __enter__(self) -> StationView:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> Literal[False]:
        """As ``with connection:``: commit, or roll back on an exception. (With the agent's
        isolation_level=None each statement inside already committed on its own; nothing else is open.)"""
        if exc_type is None:
            self._conn.commit()
        else:
            self._conn.rollback()
        return False

    def close(self) -> None:
        self.closed = True


class Template:
    """The agent's schema as its migrations made it: CREATE statements (tables first) and their rows."""

    def __init__(self, statements: Sequence[str], rows: dict[str, list[tuple[Any, ...]]],
                 columns: dict[str, list[str]]) -> None:
        self.statements = list(statements)
        self.rows = rows
        self.columns = columns
        self.names = {_CREATE.match(s).group(1).lower() for s in statements}  # type: ignore[union-attr]

    @classmethod
    def read(cls, conn: sqlite3.Connection) -> Template:
        order = {"table": 0, "index": 1, "view": 2, "trigger": 3}
        objects = [
            (order.get(kind, 9), name, sql)
            for kind, name, sql in conn.execute("SELECT type, name, sql FROM sqlite_master")
            if sql is not None and is_schema_name(name)
        ]
        objects.sort(key=lambda o: (o[0], o[1]))
        statements = [sql for _, _, sql in objects]
        rows: dict[str, list[tuple[Any, ...]]] = {}
        columns: dict[str, list[str]] = {}
        for kind, name, _ in objects:
            if kind != 0:
                continue
            columns[name] = [str(r[1]) for r in conn.execute(f'PRAGMA table_info("{name}")')]
            found = conn.execute(f'SELECT * FROM "{name}"').fetchall()
            if found:
                rows[name] = found
        template = cls(statements, rows, columns)
        template.check()
        return template

    def check(self) -> None:
        """Refuse a schema where a column is named like a table, index, trigger or view (its name would be
        rewritten with the table's)."""
        for table, cols in self.columns.items():
            for col in cols:
                if col.lower() in self.names:
                    raise SharedDbError(f"state template: column {table}.{col} has the name of a schema object; "
                                        "the fleet's shared state database cannot rename it apart")


class StateFile:
    """One ``DIR/fleet-state-NNN.db`` and its connection: ``GROUP_SLOTS`` stations' tables, made by copying
    the group template (``fleet_slots`` lists its prefixes, ``fleet_stations`` which station has which)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = _connect(path)
        taken = dict(self.conn.execute("SELECT cp_id, prefix FROM fleet_stations"))
        self.stations: dict[str, str] = taken
        used = set(taken.values())
        self.free = [str(r[0]) for r in self.conn.execute("SELECT prefix FROM fleet_slots ORDER BY prefix")
                     if r[0] not in used]

    def assign(self, cp_ids: Sequence[str]) -> None:
        """The next free slots to these stations, in one transaction (one fsync)."""
        chosen = list(zip(cp_ids, self.free, strict=False))
        with agent_db.transaction(self.conn):
            self.conn.executemany("INSERT INTO fleet_stations(cp_id, prefix) VALUES (?, ?)", chosen)
        del self.free[:len(chosen)]
        self.stations.update(chosen)

    def close(self) -> None:
        self.conn.close()


# synchronous level of the shared files: FULL as on a charger (an fsync per durable commit), which `cpsim fleet`
# keeps only with --fsync; otherwise it sets NORMAL (with agent.outbox.MIN_SYNCHRONOUS): a commit is written to the
# WAL, not fsynced, so kill -9 of the fleet loses nothing and a crash of the machine may lose the last commits.
# Fsyncs on the fleet's one loop thread were most of its boot at N = 5000 on a real disk (docs/fleet-boot.md).
SYNCHRONOUS = "FULL"


def _connect(path: Path) -> sqlite3.Connection:
    """As a charger's state database (WAL, 0600, synchronous=SYNCHRONOUS), with the fleet's cache sizes."""
    saved = agent_db.STATEMENT_CACHE  # the fleet's setting for its other connections
    agent_db.STATEMENT_CACHE = STATEMENT_CACHE
    try:
        conn = agent_db.connect(path)
    finally:
        agent_db.STATEMENT_CACHE = saved
    conn.execute(f"PRAGMA cache_size=-{int(PAGE_CACHE_KIB)}")
    conn.execute(f"PRAGMA synchronous={'FULL' if SYNCHRONOUS == 'FULL' else 'NORMAL'}")
    return conn


class SharedStateDb:
    """Every station's tables under its own prefix, ``GROUP_SLOTS`` stations per file and connection
    (``DIR/fleet-state-NNN.db``).

    Why groups and not one file: SQLite re-reads its schema table once per CREATE (a full scan), so creating
    a station's 25 tables and indexes costs in proportion to the stations already in the file (1000 stations
    one by one: 400 s). Instead the group template (``DIR/.template/fleet-state.db``, GROUP_SLOTS stations'
    tables made once per run by the agent's schema, ~0.5 s) is copied for each new group: a station's
    provisioning is then one row in ``fleet_stations``."""

    def __init__(self, directory: Path, template: Template, *, slots: int = GROUP_SLOTS) -> None:
        self.directory = directory
        self.template = template
        self.slots = slots
        self.rewriter = SqlRewriter(template.names)
        self.files = [StateFile(p) for p in sorted(directory.glob(GROUP_GLOB))]
        self.where: dict[str, tuple[StateFile, str]] = {
            cp_id: (f, prefix) for f in self.files for cp_id, prefix in f.stations.items()
        }
        self._group_template: Path | None = None
        self._hook_installed = False

    @classmethod
    def open(cls, directory: Path, template_file: Path, *, slots: int = GROUP_SLOTS) -> SharedStateDb:
        refuse_old_layout(directory)
        with contextlib.closing(sqlite3.connect(f"{template_file.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            template = Template.read(conn)
        return cls(directory, template, slots=slots)

    @property
    def prefixes(self) -> dict[str, str]:
        return {cp_id: prefix for cp_id, (_, prefix) in self.where.items()}

    # ----------------------------------------------------------------- stations
    def provision(self, cp_ids: Iterable[str]) -> int:
        """A slot for every station not yet in a file: the free slots of the existing files first, then new
        files. Returns how many stations got one."""
        missing = [cp_id for cp_id in dict.fromkeys(cp_ids) if cp_id not in self.where]
        left = missing
        for f in [*self.files]:
            if not left:
                break
            if f.free:
                taken, left = left[:len(f.free)], left[len(f.free):]
                self._assign(f, taken)
        while left:
            f = self._new_file()
            taken, left = left[:len(f.free)], left[len(f.free):]
            self._assign(f, taken)
        return len(missing)

    def _assign(self, f: StateFile, cp_ids: Sequence[str]) -> None:
        f.assign(cp_ids)
        for cp_id in cp_ids:
            self.where[cp_id] = (f, f.stations[cp_id])

    def _new_file(self) -> StateFile:
        if self._group_template is None:
            self._group_template = self._make_group_template()
        number = 1 + max((int(p.stem.rsplit("-", 1)[1]) for p in self.directory.glob(GROUP_GLOB)), default=0)
        path = self.directory / f"fleet-state-{number:03d}.db"
        tmp = path.with_name(path.name + ".tmp")
        shutil.copyfile(self._group_template, tmp)
        os.chmod(tmp, agent_db.PRIVATE_MODE)
        with open(tmp, "rb+") as out:
            os.fsync(out.fileno())  # the copy on disk before its stations' rows are committed in it
        os.replace(tmp, path)
        f = StateFile(path)
        self.files.append(f)
        return f

    def _make_group_template(self) -> Path:
        """``slots`` stations' tables (the template's statements and rows under s000001_ .. prefixes) in one
        transaction; closed, so the file holds everything (no -wal left)."""
        path = self.directory / ".template" / "fleet-state.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{path}{suffix}")
        conn = agent_db.connect(path)
        try:
            conn.execute("DROP TABLE IF EXISTS schema_version")  # connect's; each station has its own
            conn.execute("CREATE TABLE fleet_slots (prefix TEXT PRIMARY KEY)")
            conn.execute("CREATE TABLE fleet_stations (cp_id TEXT PRIMARY KEY, prefix TEXT NOT NULL UNIQUE)")
            with agent_db.transaction(conn):
                for slot in range(1, self.slots + 1):
                    prefix = f"s{slot:06d}_"
                    for statement in self.template.statements:
                        conn.execute(self.rewriter.rewrite(statement, prefix))
                    for table, rows in self.template.rows.items():
                        marks = ", ".join("?" * len(rows[0]))
                        conn.executemany(f'INSERT INTO "{prefix}{table}" VALUES ({marks})', rows)
                    conn.execute("INSERT INTO fleet_slots(prefix) VALUES (?)", (prefix,))
        finally:
            conn.close()
        return path

    def view(self, cp_id: str) -> StationView:
        if cp_id not in self.where:
            self.provision([cp_id])
        f, prefix = self.where[cp_id]
        return StationView(f.conn, self.rewriter, cp_id, prefix)

    # ----------------------------------------------------------------- agent.db hook
    def connect_hook(self, path: Path | str, durable: bool) -> sqlite3.Connection | None:
        """``DIR/<station id>/state.db`` -> the station's view; any other path is opened as on a charger."""
        p = Path(path)
        if p.name != "state.db" or p.parent.parent != self.directory or p.parent.name.startswith("."):
            return None
        if not durable:
            raise SharedDbError(f"{p}: the fleet's stations share durable connections (asked for a "
                                "non-durable one: give the station the fleet's event log)")
        return cast(sqlite3.Connection, self.view(p.parent.name))

    def install(self) -> None:
        if agent_db.CONNECT_HOOK is not None:
            raise SharedDbError("agent.db.CONNECT_HOOK is already set (another fleet in this process?)")
        agent_db.CONNECT_HOOK = self.connect_hook
        self._hook_installed = True

    def close(self) -> None:
        if self._hook_installed and agent_db.CONNECT_HOOK == self.connect_hook:
            agent_db.CONNECT_HOOK = None
        self._hook_installed = False
        for f in self.files:
            f.close()


def refuse_old_layout(directory: Path) -> None:
    """A DIR of the per-station layout (``DIR/<id>/state.db``) is refused: its stations' outboxes would be
    silently left behind."""
    for old in _old_files(directory):
        raise SharedDbError(
            f"{directory} holds per-station state databases of an older cpsim fleet (e.g. {old}); this fleet keeps "
            f"every station in {directory}/fleet-state-NNN.db: run it on a new --dir (or let the old version deliver "
            "what those outboxes hold first)"
        )


def _old_files(directory: Path) -> Iterator[Path]:
    if not directory.is_dir():
        return
    for child in directory.iterdir():
        if not child.name.startswith(".") and (child / "state.db").exists():
            yield child / "state.db"
