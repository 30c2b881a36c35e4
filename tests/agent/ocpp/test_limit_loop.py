"""The shared smart-charging limit push (agent/ocpp/limit_loop.py), pure parts."""

from __future__ import annotations

import logging

import pytest

from agent.ocpp.limit_loop import controller_limit, push_limit


def test_controller_limit_is_none_at_or_above_the_rating_else_rounded() -> None:
    assert controller_limit(32.0, 32.0) is None
    assert controller_limit(40.0, 32.0) is None
    assert controller_limit(16.04, 32.0) == 16.0
    assert controller_limit(0.0, 32.0) == 0.0


class _Station:
    def __init__(self) -> None:
        self.calls: list[tuple[int, float | None]] = []

    def set_current_limit(self, cid: int, limit: float | None) -> None:
        self.calls.append((cid, limit))


def test_push_limit_pushes_and_logs_only_changes(caplog: pytest.LogCaptureFixture) -> None:
    station, log = _Station(), logging.getLogger("cpagent.test.limit_loop")
    applied: dict[int, float | None] = {}
    caplog.set_level(logging.INFO, logger=log.name)
    for amps in (10.0, 10.02, 40.0, 40.0, 6.0):
        push_limit(station, applied, 2, amps, 32.0, "EVSE", log)  # type: ignore[arg-type]
    assert station.calls == [(2, 10.0), (2, None), (2, 6.0)]
    assert applied == {2: 6.0}
    assert [r.getMessage() for r in caplog.records] == [
        "EVSE 2: charging limit 10.0 A", "EVSE 2: charging limit none", "EVSE 2: charging limit 6.0 A"]
