"""A full charging session in cpsim's rig with the pilot board on CAN (python-can virtual bus, in-process)."""

from __future__ import annotations

from pathlib import Path

from agent.events import ConnectorStatus, SessionStopped, StopReason
from simulator.can_pilot_board import CanPilotBoardEmulator
from tests.integration.conftest import start_bench, stop_bench

TAG = "DEADBEEF01"


async def test_session_over_the_can_board(tmp_path: Path) -> None:
    bench = await start_bench(tmp_path / "rig", board="can")
    try:
        assert isinstance(bench.rig.connectors[1].board, CanPilotBoardEmulator)
        assert 'driver = "pilot-board-can"' in (tmp_path / "rig" / "agent.toml").read_text()
        c = bench.station.connectors[1]
        bench.ctl(cmd="plug", connector=1)
        bench.ctl(cmd="tap", id_tag=TAG)
        await bench.wait_for(lambda: c.controller.relay_feedback_closed is True, 8, "relay closed")
        await bench.wait_for(lambda: c.last_sample is not None and c.last_sample.power_w > 5000, 8, "power flowing")
        assert c.status() is ConnectorStatus.CHARGING
        bench.ctl(cmd="unplug", connector=1)
        await bench.wait_for(lambda: any(isinstance(e, SessionStopped) for e in bench.events), 5, "session stop")
        stop = next(e for e in bench.events if isinstance(e, SessionStopped))
        assert stop.reason is StopReason.EV_DISCONNECTED and stop.session.energy_wh > 0
        await bench.wait_for(lambda: not bench.rig.connectors[1].plant.relay_closed, 3, "relay open")
    finally:
        await stop_bench(bench)
