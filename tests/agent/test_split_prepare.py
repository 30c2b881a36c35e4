"""Which OCPP service the network side of `cpagent run` imports before the go (agent/split.py): the one its
VersionRunner will start with, read from the state database without writing it."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.ocpp.runner import MIGRATIONS, V16, V201, remember
from agent.split import _first_subprotocol


def config(version: str, state_dir: Path) -> Any:
    return SimpleNamespace(ocpp=SimpleNamespace(version=version), state_dir=state_dir)


@pytest.mark.parametrize(("version", "remembered", "first"), [
    ("auto", None, V16), ("auto", V201, V201), ("auto", V16, V16), ("1.6", V201, V16), ("2.0.1", None, V201),
    ("2.0.1", V16, V201),
])
def test_the_first_service_is_the_runners(tmp_path: Path, version: str, remembered: str | None, first: str) -> None:
    if remembered is not None:
        with sqlite3.connect(tmp_path / "state.db") as conn:
            create = MIGRATIONS[0]  # the runner's table, as its migration creates it
            assert isinstance(create, str)
            conn.execute(create)
            remember(conn, remembered)
    assert _first_subprotocol(config(version, tmp_path)) == first


def test_no_database_yet_is_nothing_remembered_and_stays_absent(tmp_path: Path) -> None:
    assert _first_subprotocol(config("auto", tmp_path / "state")) == V16
    assert not (tmp_path / "state").exists() and not (tmp_path / "state.db").exists()
