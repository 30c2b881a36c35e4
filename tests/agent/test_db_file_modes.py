"""state.db holds the AuthorizationKey (and its WAL holds it too, before a checkpoint): the database and
every file SQLite keeps beside it are 0600 from the moment they exist, whatever the process umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import db


@pytest.fixture(params=[0o022, 0o027], ids=["umask022", "umask027"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _modes(path: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir() if p.name.startswith(path.name)}


def test_state_db_wal_and_shm_are_0600_right_after_first_open(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "state.db"
    conn = db.connect(path)
    try:
        modes = _modes(path)
        # WAL mode: SQLite has its -wal and -shm open as soon as journal_mode=WAL ran.
        assert set(modes) >= {"state.db", "state.db-wal", "state.db-shm"}, modes
        assert modes == dict.fromkeys(modes, 0o600), modes
        # A second connection (the event log's, without fsync) and a write of a secret change nothing.
        other = db.connect(path, durable=False)
        try:
            other.execute("CREATE TABLE secret(value TEXT)")
            other.execute("INSERT INTO secret VALUES ('Rotated-Secret-0815')")
            assert (path.parent / "state.db-wal").stat().st_size > 0  # the secret is in the WAL now
            modes = _modes(path)
            assert modes == dict.fromkeys(modes, 0o600), modes
        finally:
            other.close()
    finally:
        conn.close()


def test_existing_group_readable_files_are_tightened(tmp_path: Path, umask: int) -> None:
    """An install from before this rule has 0644/0640 files: the next open makes them 0600."""
    path = tmp_path / "state.db"
    conn = db.connect(path)
    conn.execute("CREATE TABLE t(x)")
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        os.chmod(tmp_path / name, 0o644)
    second = db.connect(path)
    try:
        modes = _modes(path)
        assert modes == dict.fromkeys(modes, 0o600), modes
    finally:
        second.close()
        conn.close()
