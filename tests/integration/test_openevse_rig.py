"""The real agent Station on the rig with an OpenEVSE board: the agent's IEC controller stacked on the
board's own J1772 logic, every byte over real ptys."""

from __future__ import annotations

from pathlib import Path

from agent.events import ConnectorStatus, SessionStopped, StopReason
from drivers.serial.openevse import OpenEvse
from hal.types import Fault
from tests.integration.conftest import start_bench, stop_bench

TAG = "DEADBEEF01"


async def test_full_session_on_an_openevse_board(tmp_path: Path) -> None:
    bench = await start_bench(tmp_path / "rig", board="openevse")
    try:
        c = bench.station.connectors[1]
        plant = bench.rig.connectors[1].plant
        assert isinstance(c.pilot, OpenEvse) and c.meter is c.pilot and c.lock is None
        bench.ctl(cmd="plug", connector=1)
        await bench.wait_for(lambda: c.status() is ConnectorStatus.PREPARING, 5, "Preparing")
        assert plant.pwm_duty is None  # the agent keeps the board asleep (X1) until authorized
        bench.ctl(cmd="tap", id_tag=TAG)
        await bench.wait_for(lambda: c.controller.relay_feedback_closed is True, 8, "relay closed by the board")
        assert c.status() is ConnectorStatus.CHARGING and plant.relay_closed
        await bench.wait_for(lambda: c.last_sample is not None and c.last_sample.power_w > 5000, 8, "power")
        await bench.wait_for(lambda: c.last_sample is not None and c.last_sample.energy_import_wh >= 5, 8, "energy")
        assert not c.controller.active_faults
        # The same card stops: X1 (sleep), the EV leaves C, the board opens its relay.
        await bench.station.present_token(TAG)
        await bench.wait_for(lambda: c.controller.relay_feedback_closed is False, 8, "relay open after stop")
        assert not plant.relay_closed and plant.pwm_duty is None
        stop = next(e for e in bench.events if isinstance(e, SessionStopped))
        assert stop.reason is StopReason.LOCAL
        assert stop.session.energy_wh is not None and stop.session.energy_wh > 0
        # The session ends at the stop request; the EV ramps down before the board opens. The board's
        # register then agrees with the plant (1 Wh resolution).
        assert stop.session.stop_energy_wh is not None and stop.session.stop_energy_wh <= plant.energy_wh
        await bench.wait_for(
            lambda: c.last_sample is not None and abs(c.last_sample.energy_import_wh - plant.energy_wh) <= 1, 3, "meter"
        )
        assert c.status() is ConnectorStatus.FINISHING
        assert not c.controller.active_faults  # no weld, no pilot error from the stacked logic
        bench.ctl(cmd="unplug", connector=1)
        await bench.wait_for(lambda: c.status() is ConnectorStatus.AVAILABLE, 5, "Available")
    finally:
        await stop_bench(bench)


async def test_openevse_fault_and_silence_reach_the_agent(tmp_path: Path) -> None:
    bench = await start_bench(tmp_path / "rig", board="openevse")
    try:
        c = bench.station.connectors[1]
        bench.ctl(cmd="plug", connector=1)
        bench.ctl(cmd="tap", id_tag=TAG)
        await bench.wait_for(lambda: c.controller.relay_feedback_closed is True, 8, "charging")
        bench.ctl(cmd="fault", connector=1, name="rcd")
        await bench.wait_for(lambda: c.status() is ConnectorStatus.FAULTED, 3, "Faulted")
        assert Fault.RCD in c.controller.active_faults and not bench.rig.connectors[1].plant.relay_closed
        bench.ctl(cmd="clear", connector=1)
        bench.ctl(cmd="fault", connector=1, name="board-silent")
        took = await bench.wait_for(lambda: Fault.BOARD_SILENT in c.faults, 3, "board silent")
        assert took < 2.0
    finally:
        await stop_bench(bench)
