"""Reliability trials: reduced counts in `make test`, full counts with `make soak` (CPAGENT_SOAK=1)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.reliability.harness import SOAK, World, close_world, open_world


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if SOAK:  # full trial counts take minutes per test
        for item in items:
            if "reliability" in item.nodeid:
                item.add_marker(pytest.mark.timeout(3600))


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = await open_world(tmp_path / "rig")
    try:
        yield w
    finally:
        await close_world(w)


@pytest.fixture
async def proxied_world(tmp_path: Path) -> AsyncIterator[World]:
    w = await open_world(tmp_path / "rig", proxy=True)
    try:
        yield w
    finally:
        await close_world(w)
