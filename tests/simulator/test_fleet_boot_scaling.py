"""Fleet work that must not grow with N per event (FBOOT3): the boot watch looks only at stations not booted yet,
a plug change refreshes one row of fleet-plants.json, the bundled CSMS makes no wake task per frame when
nobody waits. Pure unit tests: no websocket, no station built."""

from __future__ import annotations

import asyncio
import gc
import json
import resource
from pathlib import Path
from typing import Any

import pytest

from simulator import csms as csms_module
from simulator.fleet.fleet import Fleet, FleetOptions, FleetStation
from simulator.physics import Plant


class CountingStation(FleetStation):
    """A FleetStation whose boot state is set by the test; counts how often the watch asked."""

    def __init__(self, index: int) -> None:
        super().__init__(index, f"CP-{index:06d}", {1: Plant()})
        self.accepted = False
        self.asked = 0

    def booted(self) -> bool:
        self.asked += 1
        return self.accepted


def make_fleet(tmp_path: Path, n: int) -> tuple[Fleet, list[CountingStation]]:
    fleet = Fleet(FleetOptions(csms_url="ws://127.0.0.1:9/", stations=n, directory=tmp_path, quiet=True))
    stations = [CountingStation(i) for i in range(1, n + 1)]
    for fs in stations:  # what _start_station registers
        fleet.stations[fs.id] = fs
        fleet._plant_rows[fs.id] = fleet._plant_row(fs)
        fleet._boot_pending.append(fs)
    return fleet, stations


async def test_boot_watch_asks_only_the_stations_not_booted_yet(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gc, "freeze", lambda: None)  # not this test process's heap
    monkeypatch.setattr(gc, "collect", lambda: 0)
    fleet, stations = make_fleet(tmp_path, 50)
    for fs in stations[:-1]:
        fs.accepted = True
    watch = asyncio.create_task(fleet._boot_watch())
    for _ in range(100):  # the first tick finds 49 booted, the others only ask the last one
        await asyncio.sleep(0.05)
        if stations[-1].asked >= 3:
            break
    assert all(fs.asked == 1 and fs.booted_at is not None for fs in stations[:-1])
    assert stations[-1].asked >= 3 and fleet.all_booted_s is None
    stations[-1].accepted = True
    await asyncio.wait_for(watch, 5.0)  # all booted, no scenario: the watch ends
    assert fleet.all_booted_s is not None and fleet._boot_pending == []
    assert all(fs.asked == 1 for fs in stations[:-1])


def test_a_plug_change_refreshes_only_that_stations_row(tmp_path: Path) -> None:
    fleet, stations = make_fleet(tmp_path, 20)
    for fs in stations:
        fs.plants[1].energy_wh = 1000.0 + fs.index  # moved since the rows were taken
    stations[3].plants[1].plugged = True
    fleet._plants_touched.add(stations[3].id)  # what plants_changed(fs) records
    rows = fleet._plants_snapshot(full=False)
    assert set(rows) == {fs.id for fs in stations}  # every station is in the file
    assert rows[stations[3].id] == {"1": [True, 1004.0, stations[3].plants[1].ev.soc_percent]}
    assert rows[stations[4].id]["1"][1] == 0.0  # not touched: as of the last full write
    assert not fleet._plants_touched
    full = fleet._plants_snapshot()
    assert all(full[fs.id]["1"][1] == 1000.0 + fs.index for fs in stations)
    rows[stations[0].id] = {"1": [True, -1.0, 0.0]}  # a snapshot is a copy: the fleet's rows are not changed
    assert fleet._plant_rows[stations[0].id]["1"][1] == 1001.0
    fleet._write_plants(full)
    assert json.loads(fleet.plants_file.read_text()) == json.loads(json.dumps(full))


async def test_csms_makes_no_wake_task_per_frame_unless_someone_waits() -> None:
    csms = csms_module.Csms()
    frame: list[Any] = [2, "1", "Heartbeat", {}]
    before = len(asyncio.all_tasks())
    for _ in range(100):
        csms._frame_in("CP-1", json.dumps(frame))
    assert len(asyncio.all_tasks()) == before
    assert len(csms.messages("CP-1", "Heartbeat")) == 100
    waiting = asyncio.create_task(csms.wait_for("CP-1", "Heartbeat", count=101, within=5.0))
    await asyncio.sleep(0.01)
    csms._frame_in("CP-1", json.dumps(frame))
    received = await asyncio.wait_for(waiting, 5.0)
    assert received.action == "Heartbeat" and csms._waiters == 0
    with pytest.raises(TimeoutError):  # a waiter whose message never comes still times out and leaves
        await csms.wait_for("CP-1", "Authorize", within=0.05)
    assert csms._waiters == 0


def test_open_files_limit_raised_or_refused_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from simulator.fleet import cli as fleet_cli

    limits = {"soft": 1024, "hard": 20000}
    monkeypatch.setattr(resource, "getrlimit", lambda _: (limits["soft"], limits["hard"]))
    monkeypatch.setattr(resource, "setrlimit", lambda _, pair: limits.update(soft=pair[0]))
    assert fleet_cli.ensure_open_files(900) == 1024  # enough: unchanged
    assert fleet_cli.ensure_open_files(5000) == 5064 and limits["soft"] == 5064  # raised towards the hard limit
    with pytest.raises(ValueError, match=r"30000 stations .* need about 30064 open files .* limit is 5064 "
                                         r"\(hard 20000\).*--shard"):
        fleet_cli.ensure_open_files(30000)
    code = fleet_cli.main(["--csms", "ws://127.0.0.1:9/", "--stations", "30000", "--dir", "/nonexistent"])
    assert code == 2  # refused before anything starts
