"""agent.db's memory settings (cpsim fleet lowers them): page size of new files, page cache per connection."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import db


def test_page_size_applies_to_new_files_and_cache_to_every_connection(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = db.connect(tmp_path / "old.db")
    old.execute("CREATE TABLE t (x)")
    old.close()
    monkeypatch.setattr(db, "PAGE_SIZE", 1024)
    monkeypatch.setattr(db, "PAGE_CACHE_KIB", 64)
    new = db.connect(tmp_path / "new.db")
    new.execute("CREATE TABLE t (x)")
    assert new.execute("PRAGMA page_size").fetchone()[0] == 1024
    assert new.execute("PRAGMA cache_size").fetchone()[0] == -64
    assert new.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again = db.connect(tmp_path / "old.db")  # an existing file keeps its page size
    assert again.execute("PRAGMA page_size").fetchone()[0] == 4096
    assert again.execute("PRAGMA cache_size").fetchone()[0] == -64
    new.close()
    again.close()

