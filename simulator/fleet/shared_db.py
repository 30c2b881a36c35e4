"""`cpsim fleet`: every station's state database as a *station view* of one SQLite connection per fleet process.

On a charger each store (outbox, sessions, authorization cache, the OCPP services' tables, ...) gets the
``sqlite3.Connection`` of ``agent.db.connect(DIR/state.db)`` and uses plain table names. A connection costs
some 110 kB (pager, page cache, prepared statements, the 32 kB WAL index), which at 1000 stations in one
process was half of the fleet's memory. Here the fleet opens ONE connection to ``DIR/fleet-state.db`` and
``agent.db.CONNECT_HOOK`` gives each station a ``StationView`` of it instead: the Connection methods the stores
use (``execute``, ``executemany``, ``in_transaction``, ``with``, ``close``), every name of the agent's schema (tables,
indexes, triggers, views) rewritten to the station's own (``s000123_outbox``). The prefix of a station id is
kept in ``fleet_stations`` so a rerun on the same DIR finds every station's rows again.

Rewriting: the schema's names come from the template the agent's own migrations made (``DIR/.template``), so
a table a later migration adds is covered; a name no template had (a ``CREATE`` at run time) is learned when
the statement is first seen. Per distinct SQL text the rewriter keeps the pieces between which the prefix
goes (a bare identifier, a quoted one, and in statements reading ``sqlite_master`` a string literal naming
a table); each call is then one ``str.join``. The cache is bounded by the distinct texts, never by
stations x texts. A column named like a table would be rewritten too: the schema is checked for that when
the template is read (the fleet refuses to start, naming the column).

Everything runs on the fleet's one event-loop thread and no store holds a transaction across an ``await``
(each is a ``with transaction(conn):`` block in synchronous code), so the stations' BEGIN .. COMMIT never
interleave on the shared connection. Durability is the charger's: the connection is synchronous=FULL (WAL),
``agent.db.unsynced`` and the stores' own switches set the level for their block and restore it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, cast

from agent import db as agent_db

log = logging.getLogger("cpsim.fleet.db")

FILE = "fleet-state.db"
# Prepared statements of the shared connection: every station's statement is its own text (its prefix), so
# the cache holds the hot statements of a few stations at a time (see README "Fleet": measured).
STATEMENT_CACHE = 256
# Page cache of the shared connection (KiB): a station's working set is a few 1 KiB pages.
PAGE_CACHE_KIB = 2048
# New stations created per transaction (one fsync) before the ramp.
PROVISION_BATCH = 100
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


class SharedStateDb:
    """``DIR/fleet-state.db``: one connection, every station's tables under its own prefix."""

    def __init__(self, directory: Path, template: Template) -> None:
        self.directory = directory
        self.path = directory / FILE
        self.template = template
        self.rewriter = SqlRewriter(template.names)
        saved = agent_db.STATEMENT_CACHE  # the fleet's setting for its other connections
        agent_db.STATEMENT_CACHE = STATEMENT_CACHE
        try:
            self.conn = agent_db.connect(self.path)  # durable: synchronous=FULL, WAL, 0600
        finally:
            agent_db.STATEMENT_CACHE = saved
        self.conn.execute(f"PRAGMA cache_size=-{int(PAGE_CACHE_KIB)}")
        self.conn.execute("DROP TABLE IF EXISTS schema_version")  # connect's; each station has its own
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS fleet_stations (cp_id TEXT PRIMARY KEY, prefix TEXT NOT NULL UNIQUE)"
        )
        self.prefixes: dict[str, str] = dict(self.conn.execute("SELECT cp_id, prefix FROM fleet_stations"))
        self._next = 1 + int(self.conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM fleet_stations").fetchone()[0])
        self._hook_installed = False

    @classmethod
    def open(cls, directory: Path, template_file: Path) -> SharedStateDb:
        refuse_old_layout(directory)
        with contextlib.closing(sqlite3.connect(f"{template_file.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            template = Template.read(conn)
        return cls(directory, template)

    # ----------------------------------------------------------------- stations
    def provision(self, cp_ids: Iterable[str], *, batch: int = PROVISION_BATCH) -> int:
        """Create the tables (and the template's rows: schema_version, ...) of every station not yet in the
        file, ``batch`` stations per transaction. Returns how many were created."""
        missing = [cp_id for cp_id in cp_ids if cp_id not in self.prefixes]
        for start in range(0, len(missing), batch):
            with agent_db.transaction(self.conn):
                for cp_id in missing[start:start + batch]:
                    self._create(cp_id)
        return len(missing)

    def _create(self, cp_id: str) -> None:
        prefix = f"s{self._next:06d}_"
        execute = self.conn.execute
        for statement in self.template.statements:
            execute(self.rewriter.rewrite(statement, prefix))
        for table, rows in self.template.rows.items():
            marks = ", ".join("?" * len(rows[0]))
            self.conn.executemany(f'INSERT INTO "{prefix}{table}" VALUES ({marks})', rows)
        execute("INSERT INTO fleet_stations(rowid, cp_id, prefix) VALUES (?, ?, ?)", (self._next, cp_id, prefix))
        self._next += 1
        self.prefixes[cp_id] = prefix

    def view(self, cp_id: str) -> StationView:
        if cp_id not in self.prefixes:
            self.provision([cp_id])
        return StationView(self.conn, self.rewriter, cp_id, self.prefixes[cp_id])

    # ----------------------------------------------------------------- agent.db hook
    def connect_hook(self, path: Path | str, durable: bool) -> sqlite3.Connection | None:
        """``DIR/<station id>/state.db`` -> the station's view; any other path is opened as on a charger."""
        p = Path(path)
        if p.name != "state.db" or p.parent.parent != self.directory or p.parent.name.startswith("."):
            return None
        if not durable:
            raise SharedDbError(f"{p}: the fleet's stations share one durable connection (asked for a "
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
        self.conn.close()


def refuse_old_layout(directory: Path) -> None:
    """A DIR of the per-station layout (``DIR/<id>/state.db``) is refused: its stations' outboxes would be
    silently left behind."""
    for old in _old_files(directory):
        raise SharedDbError(
            f"{directory} holds per-station state databases of an older cpsim fleet (e.g. {old}); this fleet keeps "
            f"every station in {directory / FILE}: run it on a new --dir (or let the old version deliver "
            "what those outboxes hold first)"
        )


def _old_files(directory: Path) -> Iterator[Path]:
    if not directory.is_dir():
        return
    for child in directory.iterdir():
        if not child.name.startswith(".") and (child / "state.db").exists():
            yield child / "state.db"
