"""The station core against the bus-level simulator: sessions, faults and restarts end to end."""

from __future__ import annotations

from pathlib import Path

from agent.events import ConnectorStatus, SessionStarted, SessionStopped, StatusChanged, StopReason
from hal.types import Fault
from tests.integration.conftest import Bench, start_bench, stop_bench

TAG = "DEADBEEF01"


async def test_plug_first_session_energy_is_consistent(bench: Bench) -> None:
    c = bench.station.connectors[1]
    bench.ctl(cmd="plug", connector=1)
    await bench.wait_for(lambda: c.status() is ConnectorStatus.PREPARING, 5, "Preparing")
    bench.ctl(cmd="tap", id_tag=TAG)  # over the RDM6300 pty
    await bench.wait_for(lambda: c.controller.relay_feedback_closed is True, 8, "relay closed")
    await bench.wait_for(lambda: (c.last_sample or 0) and c.last_sample.power_w > 5000, 8, "power flowing")
    assert c.status() is ConnectorStatus.CHARGING
    bench.ctl(cmd="unplug", connector=1)
    await bench.wait_for(lambda: any(isinstance(e, SessionStopped) for e in bench.events), 5, "session stop")
    stop = next(e for e in bench.events if isinstance(e, SessionStopped))
    assert stop.reason is StopReason.EV_DISCONNECTED
    plant_energy = bench.rig.connectors[1].plant.energy_wh
    assert stop.session.energy_wh > 0
    # The meter only integrates while the simulated relay is closed; the session saw the same meter.
    assert abs(stop.session.stop_energy_wh - plant_energy) < 50  # type: ignore[operator]
    assert bench.station.sessions.get(stop.session.ref) is not None
    assert bench.rig.connectors[1].plant.relay_closed is False


async def test_authorize_first_then_plug(bench: Bench) -> None:
    c = bench.station.connectors[1]
    decision = await bench.station.present_token(TAG)
    assert decision.accepted and c.status() is ConnectorStatus.PREPARING
    bench.ctl(cmd="plug", connector=1)
    await bench.wait_for(lambda: any(isinstance(e, SessionStarted) for e in bench.events), 5, "session start")
    await bench.wait_for(lambda: c.controller.relay_feedback_closed is True, 8, "relay closed")


async def test_unknown_card_is_rejected(bench: Bench) -> None:
    bench.ctl(cmd="plug", connector=1)
    decision = await bench.station.present_token("BADBADBAD0")
    assert not decision.accepted
    assert bench.station.connectors[1].session is None


async def test_same_card_stops_and_relay_opens(bench: Bench) -> None:
    c = bench.station.connectors[1]
    bench.ctl(cmd="plug", connector=1)
    await bench.station.present_token(TAG)
    await bench.wait_for(lambda: c.controller.relay_feedback_closed is True, 8, "relay closed")
    await bench.station.present_token(TAG)
    await bench.wait_for(lambda: c.controller.relay_feedback_closed is False, 8, "relay open after stop")
    stop = next(e for e in bench.events if isinstance(e, SessionStopped))
    assert stop.reason is StopReason.LOCAL
    assert c.status() is ConnectorStatus.FINISHING


async def test_board_silent_faults_within_2s_and_recovers(bench: Bench) -> None:
    c = bench.station.connectors[1]
    bench.ctl(cmd="plug", connector=1)
    await bench.station.present_token(TAG)
    await bench.wait_for(lambda: c.controller.relay_feedback_closed is True, 8, "relay closed")
    bench.ctl(cmd="fault", connector=1, name="board-silent")
    took = await bench.wait_for(lambda: c.status() is ConnectorStatus.FAULTED, 3, "Faulted")
    assert took < 2.0
    assert Fault.BOARD_SILENT in c.faults and not c.controller.relay_commanded_closed
    status = [e for e in bench.events if isinstance(e, StatusChanged)][-1]
    assert status.status is ConnectorStatus.FAULTED and Fault.BOARD_SILENT in status.faults
    bench.ctl(cmd="clear", connector=1)
    await bench.wait_for(lambda: Fault.BOARD_SILENT not in c.faults, 4, "board back")


async def test_meter_silent_is_reported_within_3s_and_never_stale(bench: Bench) -> None:
    c = bench.station.connectors[1]
    await bench.wait_for(lambda: c.meter is not None and c.meter.latest is not None, 5, "first meter value")
    bench.ctl(cmd="fault", connector=1, name="meter-silent")
    took = await bench.wait_for(lambda: Fault.METER_SILENT in c.faults, 4, "PowerMeterFailure")
    assert took < 3.0
    assert c.meter is not None and c.meter.latest is None


async def test_rcd_opens_relay_and_latches(bench: Bench) -> None:
    c = bench.station.connectors[1]
    bench.ctl(cmd="plug", connector=1)
    await bench.station.present_token(TAG)
    await bench.wait_for(lambda: c.controller.relay_feedback_closed is True, 8, "relay closed")
    bench.ctl(cmd="fault", connector=1, name="rcd")
    await bench.wait_for(lambda: bench.rig.connectors[1].plant.relay_closed is False, 1, "relay open")
    assert c.status() is ConnectorStatus.FAULTED and Fault.RCD in c.faults
    bench.ctl(cmd="clear", connector=1)
    await bench.wait_for(lambda: Fault.RCD not in c.controller._board_flags, 2, "flag gone")
    assert Fault.RCD in c.faults  # latched until an operator clears it
    assert c.controller.clear_faults()


async def test_restart_with_ev_still_connected_resumes(tmp_path: Path) -> None:
    directory = tmp_path / "rig"
    bench = await start_bench(directory)
    c = bench.station.connectors[1]
    bench.ctl(cmd="plug", connector=1)
    await bench.station.present_token(TAG)
    await bench.wait_for(lambda: c.controller.relay_feedback_closed is True, 8, "relay closed")
    ref = c.session.ref  # type: ignore[union-attr]
    # Agent dies without closing anything; the EV stays plugged in.
    bench.task.cancel()
    bench.station.db.close()
    energy_before = bench.rig.connectors[1].plant.energy_wh
    await bench.rig.stop()
    again = await start_bench(directory)  # the EV is still plugged in: the rig keeps the physical world
    try:
        c2 = again.station.connectors[1]
        await again.wait_for(lambda: c2.controller.relay_feedback_closed is True, 10, "charging resumed")
        assert c2.session is not None and c2.session.ref == ref
        assert again.rig.connectors[1].plant.energy_wh >= energy_before  # meter registers kept
    finally:
        await stop_bench(again)


async def test_restart_after_unplug_closes_with_power_loss(tmp_path: Path) -> None:
    directory = tmp_path / "rig"
    bench = await start_bench(directory)
    c = bench.station.connectors[1]
    bench.ctl(cmd="plug", connector=1)
    await bench.station.present_token(TAG)
    await bench.wait_for(lambda: c.controller.relay_feedback_closed is True, 8, "relay closed")
    ref = c.session.ref  # type: ignore[union-attr]
    bench.task.cancel()
    bench.station.db.close()
    bench.ctl(cmd="unplug", connector=1)  # while the agent is down, the driver leaves
    await bench.rig.stop()
    again = await start_bench(directory)
    try:
        await again.wait_for(lambda: any(isinstance(e, SessionStopped) for e in again.events), 6, "PowerLoss stop")
        stop = next(e for e in again.events if isinstance(e, SessionStopped))
        assert stop.session.ref == ref and stop.reason is StopReason.POWER_LOSS
        assert again.station.sessions.open_session(1) is None
    finally:
        await stop_bench(again)
