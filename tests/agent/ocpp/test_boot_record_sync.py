"""The accepted-boot record is written without an fsync and leaves the connection durable."""

from __future__ import annotations

from pathlib import Path

from agent import db
from agent.ocpp.v16.boot_record import BootRecord


def test_boot_record_commits_unsynced_and_restores_full(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "state.db")
    record = BootRecord(conn)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    record.save(123.5, {"charge_point_model": "M"})
    conn.set_trace_callback(None)
    assert statements.index("PRAGMA synchronous=NORMAL") < next(
        i for i, s in enumerate(statements) if s.startswith("INSERT INTO ocpp16_boot"))
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    conn.close()
    assert BootRecord(db.connect(tmp_path / "state.db")).accepted_for(123.5, {"charge_point_model": "M"})
