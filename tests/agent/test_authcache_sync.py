"""Which authorization-cache writes go without an fsync: only those whose loss (OS crash, power cut) leaves the
cache no looser than the CSMS said."""

from __future__ import annotations

from pathlib import Path

from agent import db
from agent.authcache import AuthorizationCache, IdTagInfo, LocalAuthList
from hal.clock import FakeClock


def test_only_answers_whose_loss_loosens_nothing_skip_the_fsync(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "state.db")
    clock = FakeClock()
    cache = AuthorizationCache(conn, clock, LocalAuthList(conn, clock))
    statements: list[str] = []
    conn.set_trace_callback(statements.append)

    def unsynced(tag: str, info: IdTagInfo) -> bool:
        statements.clear()
        cache.update(tag, info)
        skipped = "PRAGMA synchronous=NORMAL" in statements
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again for the next writer
        assert cache.lookup(tag) is not None
        return skipped

    assert unsynced("A", IdTagInfo("Accepted", expiry_wall=1000.0))  # lost: no entry, as before
    assert unsynced("A", IdTagInfo("Accepted", expiry_wall=2000.0))  # lost: the shorter expiry stays
    assert not unsynced("A", IdTagInfo("Accepted", expiry_wall=500.0))  # lost: a longer expiry would stay
    assert unsynced("A", IdTagInfo("Accepted"))  # no expiry: lost, the expiring one stays
    assert unsynced("A", IdTagInfo("Accepted"))  # the same again
    assert not unsynced("A", IdTagInfo("Accepted", expiry_wall=3000.0))  # lost: no expiry would stay
    assert not unsynced("A", IdTagInfo("Blocked"))  # lost: Accepted would stay
    assert unsynced("A", IdTagInfo("Accepted", expiry_wall=100.0))  # lost: Blocked stays (stricter)
    assert not unsynced("B", IdTagInfo("Invalid"))
    statements.clear()
    cache.clear()  # ClearCache was answered Accepted: durable
    assert "PRAGMA synchronous=NORMAL" not in statements
    assert len(cache) == 0
