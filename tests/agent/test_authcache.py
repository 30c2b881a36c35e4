"""Authorization cache (LRU, expiry, persisted) and local authorization list (versioned updates)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from agent import db
from agent.authcache import AuthorizationCache, IdTagInfo, LocalAuthList
from hal.clock import FakeClock

FIXTURES = Path(__file__).parent / "fixtures"
ACCEPTED = IdTagInfo("Accepted")


def make(
    path: Path, clock: FakeClock, *, max_entries: int = 1000, max_length: int = 1000
) -> tuple[AuthorizationCache, LocalAuthList]:
    conn = db.connect(path)
    local = LocalAuthList(conn, clock, max_length=max_length)
    return AuthorizationCache(conn, clock, local, max_entries=max_entries), local


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_id_tag_info_ocpp_round_trip() -> None:
    info = IdTagInfo.from_ocpp({"status": "Accepted", "expiryDate": "2026-01-01T00:00:00Z", "parentIdTag": "P"})
    assert info == IdTagInfo("Accepted", 1_767_225_600.0, "P")
    assert info.to_ocpp() == {"status": "Accepted", "expiryDate": "2026-01-01T00:00:00Z", "parentIdTag": "P"}
    assert IdTagInfo.from_ocpp({"status": "Blocked"}).to_ocpp() == {"status": "Blocked"}
    # a timestamp without a zone is taken as UTC; an offset is honoured
    assert IdTagInfo.from_ocpp({"status": "Accepted", "expiryDate": "2026-01-01T00:00:00"}).expiry_wall == 1_767_225_600
    assert IdTagInfo.from_ocpp({"status": "Accepted", "expiryDate": "2026-01-01T01:00:00+01:00"}).expiry_wall == (
        1_767_225_600
    )


def test_id_tag_info_from_library_snake_case() -> None:
    """A library call_result hands idTagInfo over with snake_case keys; the wire/local list uses camelCase.
    Both forms give the same IdTagInfo (issue 11 item 4: parent and expiry used to be dropped)."""
    wire = {"status": "Accepted", "expiryDate": "2026-01-01T00:00:00Z", "parentIdTag": "P"}
    library = {"status": "Accepted", "expiry_date": "2026-01-01T00:00:00Z", "parent_id_tag": "P"}
    assert IdTagInfo.from_ocpp(library) == IdTagInfo.from_ocpp(wire) == IdTagInfo("Accepted", 1_767_225_600.0, "P")
    assert IdTagInfo.from_ocpp({"status": "Blocked", "expiry_date": None, "parent_id_tag": None}) == (
        IdTagInfo("Blocked")
    )


@pytest.mark.parametrize(
    ("info", "message"),
    [
        ({}, "status"),
        ({"status": "Maybe"}, "status"),
        ({"status": 1}, "status"),
        ({"status": "Accepted", "expiryDate": "tomorrow"}, "expiryDate"),
        ({"status": "Accepted", "expiry_date": 5}, "expiryDate"),
        ({"status": "Accepted", "expiryDate": "9999-12-31T23:59:59-12:00"}, "expiryDate"),  # after year 9999 UTC
        ({"status": "Accepted", "parent_id_tag": 7}, "parentIdTag"),
        ({"status": "Accepted", "parentIdTag": "P" * 21}, "parentIdTag"),
        ("Accepted", "object"),
    ],
)
def test_id_tag_info_unreadable_is_a_precise_value_error(info: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IdTagInfo.from_ocpp(info)  # type: ignore[arg-type]


def test_cache_merges_parent_and_persists_expiry(tmp_path: Path, clock: FakeClock) -> None:
    """A later answer without parentIdTag keeps the known parent; status and expiry follow the latest answer;
    both survive a restart."""
    cache, _ = make(tmp_path / "state.db", clock)
    cache.update("TAG1", IdTagInfo("Accepted", clock.wall() + 100, "FLEET"))
    cache.update("TAG1", IdTagInfo("Blocked", clock.wall() + 50))
    cache._conn.close()
    cache, _ = make(tmp_path / "state.db", clock)
    assert cache.lookup("TAG1") == IdTagInfo("Blocked", clock.wall() + 50, "FLEET")
    cache.update("TAG1", IdTagInfo("Accepted", None, "FLEET2"))  # a new parent replaces the old one
    assert cache.lookup("TAG1") == IdTagInfo("Accepted", None, "FLEET2")


def test_cache_learns_updates_and_persists(tmp_path: Path, clock: FakeClock) -> None:
    cache, _ = make(tmp_path / "state.db", clock)
    assert cache.lookup("TAG1") is None
    cache.update("TAG1", ACCEPTED)
    cache.update("TAG2", IdTagInfo("Accepted", parent_id_tag="FLEET"))
    cache.update("TAG1", IdTagInfo("Blocked"))  # a later answer replaces the earlier one
    cache._conn.close()
    cache, _ = make(tmp_path / "state.db", clock)
    assert cache.lookup("tag1") == IdTagInfo("Blocked")  # idTag is CiString: case-insensitive
    assert not cache.is_valid("TAG1")
    assert cache.lookup("TAG2") == IdTagInfo("Accepted", parent_id_tag="FLEET")
    assert cache.is_valid("TAG2") and len(cache) == 2


def test_expired_entries_are_not_valid(tmp_path: Path, clock: FakeClock) -> None:
    cache, _ = make(tmp_path / "state.db", clock)
    cache.update("TAG", IdTagInfo("Accepted", expiry_wall=clock.wall() + 60))
    assert cache.is_valid("TAG")
    clock.advance(61)
    info = cache.lookup("TAG")
    assert info is not None and info.status == "Expired" and not cache.is_valid("TAG")
    cache.update("BLOCKED", IdTagInfo("Blocked", expiry_wall=clock.wall() - 1))
    assert cache.lookup("BLOCKED") == IdTagInfo("Blocked", clock.wall() - 1)  # not Accepted stays as is


def test_bounded_with_least_recently_used_eviction(tmp_path: Path, clock: FakeClock) -> None:
    cache, _ = make(tmp_path / "state.db", clock, max_entries=3)
    for tag in ("A", "B", "C"):
        cache.update(tag, ACCEPTED)
    clock.jump_wall(-10_000)  # recency is a counter, not the wall clock
    assert cache.lookup("A") is not None  # A is now the most recently used
    cache.update("D", ACCEPTED)  # evicts B, the least recently used
    assert cache.lookup("B") is None
    assert all(cache.lookup(t) is not None for t in ("A", "C", "D"))
    cache.update("C", IdTagInfo("Blocked"))  # refresh counts as use too
    cache.update("E", ACCEPTED)
    assert cache.lookup("A") is None and len(cache) == 3


def test_clear_cache(tmp_path: Path, clock: FakeClock) -> None:
    cache, _ = make(tmp_path / "state.db", clock)
    cache.update("A", ACCEPTED)
    cache.clear()
    assert cache.lookup("A") is None and len(cache) == 0


def test_local_list_full_and_differential_updates(tmp_path: Path, clock: FakeClock) -> None:
    _, local = make(tmp_path / "state.db", clock, max_length=3)
    assert local.version() == 0 and len(local) == 0
    assert local.replace_all(5, {"A": ACCEPTED, "B": IdTagInfo("Blocked")}) == "Accepted"
    assert local.version() == 5 and local.lookup("a") == ACCEPTED and "B" in local
    assert local.apply_differential(5, {"C": ACCEPTED}) == "VersionMismatch"
    assert local.apply_differential(4, {"C": ACCEPTED}) == "VersionMismatch"
    assert local.apply_differential(6, {"C": ACCEPTED, "B": None, "A": IdTagInfo("Invalid")}) == "Accepted"
    assert local.version() == 6 and "B" not in local and local.lookup("A") == IdTagInfo("Invalid")
    assert local.apply_differential(7, {"D": ACCEPTED, "E": ACCEPTED}) == "Failed"  # 4 > max 3
    assert local.version() == 6 and "D" not in local and len(local) == 2  # rolled back
    assert local.replace_all(8, {t: ACCEPTED for t in "WXYZ"}) == "Failed"
    assert local.version() == 6
    assert local.replace_all(9, {}) == "Accepted"
    assert len(local) == 0 and local.version() == 9
    local._conn.close()
    _, local = make(tmp_path / "state.db", clock)
    assert local.version() == 9


def test_local_list_expiry(tmp_path: Path, clock: FakeClock) -> None:
    _, local = make(tmp_path / "state.db", clock)
    local.replace_all(1, {"A": IdTagInfo("Accepted", expiry_wall=clock.wall() + 10)})
    clock.advance(10)
    info = local.lookup("A")
    assert info is not None and info.status == "Expired"


def test_local_list_ids_are_never_cached(tmp_path: Path, clock: FakeClock) -> None:
    cache, local = make(tmp_path / "state.db", clock)
    cache.update("SHARED", ACCEPTED)
    local.replace_all(1, {"shared": IdTagInfo("Blocked")})
    assert cache.lookup("SHARED") is None  # removed from the cache when listed
    cache.update("SHARED", ACCEPTED)  # a later Authorize.conf does not cache it either
    assert cache.lookup("SHARED") is None
    local.apply_differential(2, {"OTHER": ACCEPTED})
    cache.update("OTHER", ACCEPTED)
    assert cache.lookup("OTHER") is None


def test_storage_errors_raise_storage_error(tmp_path: Path, clock: FakeClock) -> None:
    cache, local = make(tmp_path / "state.db", clock)
    cache._conn.execute("PRAGMA query_only = ON")
    with pytest.raises(db.StorageError, match="cache"):
        cache.update("A", ACCEPTED)
    with pytest.raises(db.StorageError, match="local list"):
        local.replace_all(1, {"A": ACCEPTED})
    assert not cache._conn.in_transaction


def test_migrates_v1_fixture_database(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "state.db"
    shutil.copy(FIXTURES / "state_v1.db", path)
    cache, local = make(path, clock)
    assert cache.lookup("CACHED1") == ACCEPTED
    assert cache.lookup("CACHED2") == IdTagInfo("Blocked", 1_767_225_600.0 + 3600, "PARENT")
    assert local.version() == 3 and local.lookup("LOCAL1") == ACCEPTED
    from agent import authcache

    fresh = db.connect(tmp_path / "fresh.db")
    db.migrate(fresh, authcache.COMPONENT, authcache.MIGRATIONS[:1])
    sql = "SELECT name, sql FROM sqlite_master WHERE tbl_name LIKE '%auth%' ORDER BY name"
    fixture = sqlite3.connect(FIXTURES / "state_v1.db")
    assert fresh.execute(sql).fetchall() == fixture.execute(sql).fetchall()
    fixture.close()
