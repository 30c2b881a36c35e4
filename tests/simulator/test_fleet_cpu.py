"""The fleet's CPU settings (simulator/fleet/tuning.py) and what they must leave alone."""

from __future__ import annotations

import pytest

import agent.connector as connector
import agent.ocpp.v16.security as sec16
import agent.ocpp.v16.smart_charging as sc16
import agent.ocpp.v201.external_limits as ext201
import agent.ocpp.v201.security as sec201
import agent.ocpp.v201.smart_charging as sc201
from simulator.fleet import tuning

_PERIODS = [(sc16, "MAX_WAIT_S"), (sc201, "MAX_WAIT_S"), (sec16, "WATCH_STEADY_S"), (sec201, "WATCH_STEADY_S"),
            (ext201, "POLL_S"), (connector, "PROGRESS_PERSIST_S")]


@pytest.fixture
def restore_periods():
    saved = [(module, name, getattr(module, name)) for module, name in _PERIODS]
    yield
    for module, name, value in saved:
        setattr(module, name, value)


def test_fleet_lengthens_the_watchers_periods_and_never_shortens_one(restore_periods: None) -> None:
    sc16.MAX_WAIT_S = sc201.MAX_WAIT_S = 30.0  # the charger's own
    sec16.WATCH_STEADY_S = sec201.WATCH_STEADY_S = ext201.POLL_S = 1.0
    connector.PROGRESS_PERSIST_S = 5.0
    tuning.tune_agent_periods()
    assert sc16.MAX_WAIT_S == sc201.MAX_WAIT_S == tuning.SMART_CHARGING_MAX_WAIT_S
    assert connector.PROGRESS_PERSIST_S == tuning.SESSION_PROGRESS_S
    assert sec16.WATCH_STEADY_S == sec201.WATCH_STEADY_S == tuning.SECURITY_WATCH_S
    assert ext201.POLL_S == tuning.EXTERNAL_LIMITS_POLL_S
    sec201.WATCH_STEADY_S = 900.0  # set longer by someone else: kept
    tuning.tune_agent_periods()
    assert sec201.WATCH_STEADY_S == 900.0


def test_a_settled_board_tick_builds_no_reports_and_a_command_does() -> None:
    from hal.types import CpState, Fault, FaultFlagsChanged, PilotStateChanged
    from simulator.fleet import devices
    from simulator.physics import Plant

    plant = Plant()
    plant.plugged = True
    board = devices.SimBoard("board1", plant, devices.Ticker(period_s=3600.0))
    events: list[object] = []
    board.subscribe(events.append)
    board.tick(0.0, force=True)
    assert PilotStateChanged(CpState.B1) in events
    reports = 0
    report = board._report

    def counting() -> None:
        nonlocal reports
        reports += 1
        report()

    board._report = counting  # type: ignore[method-assign]
    for t in (10.0, 20.0, 30.0):  # plugged, no PWM: nothing moves
        board.tick(t)
    assert reports == 0
    plant.faults.add(Fault.RCD)  # as Fleet.fault: then the board is told (changed -> forced tick)
    events.clear()
    board.tick(40.0, force=True)
    assert reports == 1 and FaultFlagsChanged(frozenset({Fault.RCD})) in events
