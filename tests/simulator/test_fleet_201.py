"""`cpsim fleet --ocpp 2.0.1`: 10 real stations against the bundled CSMS (2.0.1, its own process), one
transaction each, kill -9 of the fleet process once every station has started it, a rerun on the same --dir,
SIGTERM: at the CSMS every transaction Started once (a Started resent after kill -9 is the same message, byte
for byte) and Ended once with stoppedReason Local, its seqNo gap-free from 0, the outboxes empty."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.simulator.test_fleet import _control, _until

REPO = Path(__file__).resolve().parents[2]
N = 10
# Each station plugs an EV, taps the card and keeps charging (a scripted case that never ends by itself).
HOLD = ('[[case]]\nname = "hold"\nsteps = [{plug = 1}, {wait = 0.5}, {tap = "{tag}"}, '
        '{expect = "TransactionEvent", payload = {eventType = "Started"}, within = 20}, {wait = 3600}]\n')


async def _fleet(url: str, directory: Path, *more: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulator.cli", "fleet", "--csms", url, "--stations", str(N), "--ocpp", "2.0.1",
        "--dir", str(directory), "--ramp", "500", "--progress", "1", *more,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, cwd=REPO,
    )


@pytest.mark.timeout(90)
async def test_201_fleet_kill_9_and_rerun_lose_nothing_and_start_nothing_twice(tmp_path: Path) -> None:
    log = tmp_path / "csms.jsonl"
    csms = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulator.cli", "csms", "--ocpp", "2.0.1", "--port", "0", "--interval", "60",
        "--accept", "FLEET-TAG", "--log", str(log), stdout=asyncio.subprocess.PIPE, cwd=REPO,
    )
    directory = Path(tempfile.mkdtemp(prefix="fleet201", dir="/tmp"))  # unix socket paths must stay short
    sock = directory / "ctl.sock"
    (tmp_path / "hold.toml").write_text(HOLD)
    fleet = None
    try:
        assert csms.stdout is not None
        url = json.loads(await asyncio.wait_for(csms.stdout.readline(), 20))["url"]
        fleet = await _fleet(url, directory, "--scenario", str(tmp_path / "hold.toml"))
        await _until(sock, lambda s: s["sessions_started"] == N, 30)
        await asyncio.sleep(0.3)  # the EVs' world is written within 0.2 s of a plug
        fleet.kill()  # kill -9, some transaction events possibly not yet delivered
        await fleet.wait()
        assert fleet.returncode == -signal.SIGKILL

        fleet = await _fleet(url, directory)
        await _until(sock, lambda s: s["booted"] == N and s["sessions_active"] == N and s["queued_messages"] == 0, 40)
        one = await _control(sock, {"cmd": "state", "station": "CP-000003"})
        assert one["state"]["connectors"]["1"]["session"] is not None
        fleet.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(fleet.communicate(), 40)
        assert fleet.returncode == 0
        report = json.loads(out.decode().strip().splitlines()[-1])
        assert report["queued_messages"] == 0 and report["call_errors"] == {}
        assert report["fleet"]["ocpp"] == "2.0.1" and report["stopped_sessions_at_exit"] == N
    finally:
        for process in (fleet, csms):
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()
        shutil.rmtree(directory, ignore_errors=True)

    events: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        frame = entry["frame"]
        if entry["dir"] == "in" and frame[0] == 2 and frame[2] == "TransactionEvent":
            events[entry["cp"]][frame[3]["transactionInfo"]["transactionId"]].append(frame[3])
    assert set(events) == {f"CP-{i:06d}" for i in range(1, N + 1)}
    for cp, transactions in sorted(events.items()):
        assert len(transactions) == 1, (cp, list(transactions))  # the session went on across kill -9
        (tx,) = transactions.values()
        distinct = {json.dumps(e, sort_keys=True): e for e in tx}.values()  # a resend is the same message
        started = [e for e in distinct if e["eventType"] == "Started"]
        ended = [e for e in distinct if e["eventType"] == "Ended"]
        assert len(started) == 1 and len(ended) == 1, (cp, tx)
        assert ended[0]["transactionInfo"]["stoppedReason"] == "Local"
        seq = sorted(e["seqNo"] for e in distinct)
        assert seq == list(range(len(seq))), (cp, seq)  # gap-free, none twice
        assert max(distinct, key=lambda e: e["seqNo"])["eventType"] == "Ended"
