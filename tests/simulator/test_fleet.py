"""`cpsim fleet`: the shard rule, the scenario file's errors, and 50 real stations against the bundled CSMS
(its own process): every station boots and runs one transaction; kill -9 of the fleet process mid-run and a
rerun on the same --dir lose nothing and start nothing twice; SIGTERM stops every session with a reason."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from simulator.fleet.fleet import parse_shard, station_ids
from simulator.fleet.metrics import percentile
from simulator.fleet.scenario import ScenarioError, load_scenario, parse_scenario

REPO = Path(__file__).resolve().parents[2]
N = 50


def test_station_ids_are_deterministic_and_shards_partition_the_fleet() -> None:
    assert station_ids("CP-", 3, (0, 1)) == [(1, "CP-000001"), (2, "CP-000002"), (3, "CP-000003")]
    shards = [station_ids("CP-", 20, (i, 8)) for i in range(8)]
    assert sorted(cp for shard in shards for _, cp in shard) == [f"CP-{i:06d}" for i in range(1, 21)]
    assert [index for index, _ in shards[3]] == [3, 11, 19]  # index % K == I
    assert parse_shard("3/8") == (3, 8)
    for bad in ("8/8", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)


def test_scenario_files_and_their_errors(tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text('plug_in_per_hour = 4\nsession_minutes = [1, 2]\ntags = ["A"]\np_fault = 0.5\n'
                    'faults = ["rcd"]\n')
    scenario = load_scenario(toml)
    assert (scenario.plug_in_per_hour, scenario.session_minutes, scenario.tags) == (4.0, (1.0, 2.0), ("A",))
    js = tmp_path / "s.json"
    js.write_text(json.dumps({"p_invalid_tag": 0.25, "invalid_tags": ["NOPE"]}))
    assert load_scenario(js).p_invalid_tag == 0.25
    for data, key in (({"p_fault": 2}, "p_fault"), ({"session_minutes": [5, 1]}, "session_minutes"),
                      ({"faults": ["melt"]}, "faults"), ({"plug_rate": 1}, "plug_rate"), ({"tags": []}, "tags")):
        with pytest.raises(ScenarioError, match=key):
            parse_scenario(data)
    (tmp_path / "bad.toml").write_text("x = [")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(tmp_path / "bad.toml")


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (50.0, 99.0, 100.0)
    assert percentile([], 50) is None


async def _control(sock: Path, request: dict[str, Any]) -> dict[str, Any]:
    reader, writer = await asyncio.open_unix_connection(str(sock))
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        reply: dict[str, Any] = json.loads(await asyncio.wait_for(reader.readline(), 10))
        return reply
    finally:
        writer.close()


async def _until(sock: Path, check: Any, within: float) -> dict[str, Any]:
    deadline = time.monotonic() + within
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            state = (await _control(sock, {"cmd": "state"}))["state"]
            if check(state):
                return state
        except (OSError, ValueError, KeyError, TimeoutError):
            pass
        await asyncio.sleep(0.3)
    raise AssertionError(f"not reached within {within} s: {json.dumps(state)[:2000]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


async def _fleet(url: str, directory: Path, *more: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulator.cli", "fleet", "--csms", url, "--stations", str(N), "--dir", str(directory),
        "--start-sessions", "--ramp", "500", "--progress", "1", "--tag", "FLEET-TAG", *more,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, cwd=REPO,
    )


@pytest.mark.timeout(90)
async def test_fifty_stations_kill_9_and_rerun_lose_nothing_and_start_nothing_twice(tmp_path: Path) -> None:
    log = tmp_path / "csms.jsonl"
    csms = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulator.cli", "csms", "--port", "0", "--interval", "60", "--accept", "FLEET-TAG",
        "--log", str(log), stdout=asyncio.subprocess.PIPE, cwd=REPO,
    )
    directory = Path(tempfile.mkdtemp(prefix="fleet", dir="/tmp"))  # unix socket paths must stay short
    sock = directory / "ctl.sock"
    fleet = None
    try:
        assert csms.stdout is not None
        url = json.loads(await asyncio.wait_for(csms.stdout.readline(), 20))["url"]
        fleet = await _fleet(url, directory, "--loop", "uvloop")  # the dev extra installs it
        # Mid-run: every station booted, some sessions started, others not yet (they start 1-10 s after boot).
        state = await _until(sock, lambda s: s["sessions_started"] >= 10, 30)
        assert state["booted"] == N
        fleet.kill()  # kill -9
        await fleet.wait()
        assert fleet.returncode == -signal.SIGKILL

        port = _free_port()
        # The rerun on asyncio's own loop: the same stations and state files on either loop.
        fleet = await _fleet(url, directory, "--metrics-port", str(port), "--loop", "asyncio")
        await _until(sock, lambda s: s["sessions_active"] == N and s["queued_messages"] == 0, 40)
        # The control API addresses one station; Prometheus text from prometheus_client on --metrics-port.
        one = await _control(sock, {"cmd": "state", "station": "CP-000007"})
        assert one["ok"] and one["state"]["connectors"]["1"]["plugged"] is True
        assert (await _control(sock, {"cmd": "plug", "station": "CP-999999"}))["ok"] is False
        text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
        assert f"cpsim_fleet_booted {float(N)}" in text
        assert 'cpsim_fleet_ocpp_call_latency_seconds_count{action="StartTransaction"}' in text
        fleet.send_signal(signal.SIGTERM)
        assert fleet.stdout is not None
        out, _ = await asyncio.wait_for(fleet.communicate(), 40)
        assert fleet.returncode == 0
        report = json.loads(out.decode().strip().splitlines()[-1])
        assert report["queued_messages"] == 0 and report["call_errors"] == {}
        assert report["fleet"]["stations"] == N and report["stopped_sessions_at_exit"] == N
        assert report["fleet"]["loop"] == "asyncio"
    finally:
        for process in (fleet, csms):
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()
        shutil.rmtree(directory, ignore_errors=True)

    starts: dict[str, list[str]] = defaultdict(list)  # station -> Start payloads (as sent)
    start_ids: dict[str, str] = {}  # unique id of each Start CALL -> station
    tx_of: dict[str, list[int]] = defaultdict(list)  # station -> transactionIds the CSMS gave
    stops: dict[str, list[dict[str, Any]]] = defaultdict(list)
    booted: set[str] = set()
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        frame, cp = entry["frame"], entry["cp"]
        if entry["dir"] == "in" and frame[0] == 2:
            if frame[2] == "BootNotification":
                booted.add(cp)
            elif frame[2] == "StartTransaction":
                starts[cp].append(json.dumps(frame[3], sort_keys=True))
                start_ids[frame[1]] = cp
            elif frame[2] == "StopTransaction":
                stops[cp].append(frame[3])
        elif entry["dir"] == "out" and frame[0] == 3 and frame[1] in start_ids:
            tx_of[start_ids[frame[1]]].append(frame[2]["transactionId"])
    ids = {f"CP-{i:06d}" for i in range(1, N + 1)}
    assert booted == ids
    assert set(starts) == ids
    for cp in sorted(ids):
        # One session per station; a Start resent after kill -9 is byte-identical (never a second session).
        assert len(set(starts[cp])) == 1, (cp, starts[cp])
        assert len(stops[cp]) == 1, (cp, stops[cp])
        (stop,) = stops[cp]
        assert stop["reason"] == "Local" and stop["transactionId"] == tx_of[cp][-1]
        assert stop["meterStop"] >= json.loads(starts[cp][0])["meterStart"]
    # Energy flowed (a session begun in the last second before SIGTERM may not have drawn any yet).
    charged = [cp for cp in ids if stops[cp][0]["meterStop"] > json.loads(starts[cp][0])["meterStart"]]
    assert len(charged) >= N // 2


async def test_in_process_board_and_meter_follow_the_plant_and_report_changes_once() -> None:
    from hal.device import DeviceError
    from hal.registry import load_driver
    from hal.types import CpState, MeterSample, PilotStateChanged, RelayFeedback
    from simulator.fleet import devices
    from simulator.physics import Plant

    plant = Plant()
    devices.PLANTS["T-1/1"] = plant
    ticker = devices.Ticker(period_s=3600.0, meter_period_s=5.0)
    board = devices.SimBoard("board1", plant, ticker)
    meter = devices.SimMeter("meter1", plant, ticker)
    assert isinstance(load_driver("sim-board")("b", {"plant": "T-1/1"}), devices.SimBoard)
    with pytest.raises(DeviceError, match="plant = 'T-9/1'"):
        load_driver("sim-meter")("m", {"plant": "T-9/1"})
    events: list[Any] = []
    board.subscribe(events.append)
    meter.subscribe(events.append)
    tasks = [asyncio.create_task(board.run()), asyncio.create_task(meter.run())]
    await asyncio.sleep(0)
    assert PilotStateChanged(CpState.A) in events
    events.clear()
    plant.plugged = True
    board.changed()
    board.changed()  # one report for both
    await asyncio.sleep(0)
    assert [e for e in events if isinstance(e, PilotStateChanged)] == [PilotStateChanged(CpState.B1)]
    board.set_duty(53.3)  # 32 A
    board.close_relay()
    assert plant.pwm_duty == 53.3 and plant.relay_commanded_closed
    await asyncio.sleep(0)
    assert RelayFeedback(True) in events
    now = asyncio.get_running_loop().time()
    for step in range(1, 12):  # the EV closes S2 after 1 s and ramps up; energy flows
        board.tick(now + step)
    assert plant.cp_state() is CpState.C2 and board.cp_state is CpState.C2
    sample = meter.latest
    assert sample is not None and sample.energy_import_wh > 0 and sample.current_a[0] == pytest.approx(31.98)
    assert any(isinstance(e, MeterSample) for e in events)  # pushed while charging
    meter.set_silent(True)
    assert meter.latest is None
    await cancel_tasks(tasks)


async def cancel_tasks(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
