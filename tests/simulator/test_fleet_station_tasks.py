"""cpsim fleet: a station's in-process devices run without a task each (hal Device.needs_task = False) and the
station without a task of its own (Station.start_devices / stop_devices)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.events import TokenPresented
from agent.station import Station
from hal.clock import SystemClock
from hal.registry import load_driver
from simulator.fleet import devices as simdev
from simulator.fleet.fleet import Fleet, FleetOptions, base_config
from simulator.physics import Plant


async def test_start_devices_spawns_only_the_token_task_and_stop_devices_ends_everything(tmp_path: Path) -> None:
    options = FleetOptions(csms_url="ws://127.0.0.1:9/ocpp", stations=1, directory=tmp_path)
    base = base_config(options)
    cp_id = "CP-TASKS"
    plant = simdev.PLANTS[f"{cp_id}/1"] = Plant()
    simdev.READERS[cp_id] = simdev.Taps()
    config = Fleet(options)._station_config(base, cp_id, tmp_path / cp_id)
    (tmp_path / cp_id).mkdir()
    devices = {name: load_driver(d.driver)(name, d.settings) for name, d in config.devices.items()}
    assert all(not device.needs_task for device in devices.values())
    station = Station(config, clock=SystemClock(), devices=devices)
    board = devices["board1"]
    before = asyncio.all_tasks()
    try:
        station.start_devices()
        started = asyncio.all_tasks() - before
        assert [t.get_name() for t in started] == ["tokens"]  # no task per device
        assert set(station.supervisor.tasks) == {"tokens"}
        assert board in simdev.TICKER.boards and simdev.TICKER.meters[id(plant)] is devices["meter1"]
        await asyncio.sleep(0)
        assert station.connector_view(1).status.value == "Available"  # the board's first reports arrived
        seen: list[object] = []
        station.subscribe(seen.append)
        plant.plugged = True
        board.changed()  # as Fleet.plug: the ticker-driven board reports on the next loop turn
        simdev.READERS[cp_id].put_nowait("TAG-1")  # the reader's taps still reach the station's token task
        await asyncio.sleep(0.05)
        assert station.connector_view(1).status.value == "Preparing"
        assert any(isinstance(e, TokenPresented) and e.id_tag == "TAG-1" for e in seen)
    finally:
        await station.stop_devices()
        station.close()
        simdev.PLANTS.pop(f"{cp_id}/1", None)
        simdev.READERS.pop(cp_id, None)
    assert asyncio.all_tasks() - before == set()
    assert board not in simdev.TICKER.boards and id(plant) not in simdev.TICKER.meters
    simdev.TICKER.stop()


def test_the_fleet_connections_frame_queue_behaves_as_the_deque_it_replaces() -> None:
    from collections import deque

    from simulator.fleet.metrics import _FrameQueue

    ours, theirs = _FrameQueue(), deque[int]()
    for q in (ours, theirs):
        assert not q
        q.append(1)
        q.append(2)
        q.extendleft(reversed([8, 9]))  # websockets' SimpleQueue.put_back
    assert len(ours) == len(theirs) == 4
    assert [ours.popleft() for _ in range(4)] == [theirs.popleft() for _ in range(4)] == [8, 9, 1, 2]
    assert not ours
