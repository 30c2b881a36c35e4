"""cpctl against a running agent on the simulator, through the real diagnostic socket."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from pathlib import Path

from tests.integration.conftest import Bench

TAG = "DEADBEEF01"


async def cpctl(bench: Bench, *args: str) -> tuple[int, str, str]:
    sock = str(bench.station.config.diag_socket)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.ctl", "--socket", sock, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_status_json_and_human(bench: Bench) -> None:
    code, out, _ = await cpctl(bench, "status", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["connectors"][0]["status"] == "Available"
    assert data["station"]["id"] == "CP001" and data["station"]["ocpp"]["link"] == "not configured"
    code, out, _ = await cpctl(bench, "status")
    assert code == 0 and "[1] Available" in out


async def test_socket_is_group_only(bench: Bench) -> None:
    mode = stat.S_IMODE(os.stat(bench.station.config.diag_socket).st_mode)
    assert mode == 0o660


async def test_status_during_session_masks_idtag(bench: Bench) -> None:
    c = bench.station.connectors[1]
    bench.ctl(cmd="plug", connector=1)
    await bench.station.present_token(TAG)
    await bench.wait_for(lambda: c.controller.relay_feedback_closed is True, 8, "charging")
    _, out, _ = await cpctl(bench, "--json", "status")
    conn = json.loads(out)["connectors"][0]
    assert conn["status"] == "Charging" and conn["relay_feedback"] is True
    assert conn["id_tag"] == "******EF01" and TAG not in out


async def test_unreachable_exit_3_names_the_socket(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.ctl", "--socket", str(tmp_path / "nope.sock"), "status",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 3
    assert "nope.sock" in err.decode() and "cpagent" in err.decode()


async def test_usage_exit_2(bench: Bench) -> None:
    code, _, _ = await cpctl(bench, "relay", "1", "sideways")
    assert code == 2
    code, _, err = await cpctl(bench, "meter", "9")
    assert code == 2 and "no connector 9" in err


async def test_faults_explain_and_exit_1(bench: Bench) -> None:
    code, out, _ = await cpctl(bench, "faults")
    assert code == 0 and "no active faults" in out
    bench.ctl(cmd="fault", connector=1, name="rcd")
    c = bench.station.connectors[1]
    await bench.wait_for(lambda: c.faults, 3, "fault")
    code, out, _ = await cpctl(bench, "faults")
    assert code == 1
    assert "GroundFailure" in out and "residual-current" in out and "do:" in out
    code, out, _ = await cpctl(bench, "--json", "status")
    assert code == 1 and json.loads(out)["connectors"][0]["status"] == "Faulted"


async def test_maintenance_relay_and_pwm(bench: Bench) -> None:
    code, _, err = await cpctl(bench, "relay", "1", "close")
    assert code == 1 and "maintenance" in err
    # Opening too: outside maintenance the controller owns the relay, so "open" must not report success.
    code, _, err = await cpctl(bench, "relay", "1", "open")
    assert code == 1 and "maintenance" in err
    code, out, _ = await cpctl(bench, "maintenance", "on", "1")
    assert code == 0 and "Unavailable" in out
    code, out, _ = await cpctl(bench, "relay", "1", "close")
    assert code == 0 and "relay commanded close" in out
    await bench.wait_for(lambda: bench.rig.connectors[1].plant.relay_closed, 3, "relay closed by hand")
    code, out, _ = await cpctl(bench, "--json", "relay", "1", "open")
    assert code == 0 and json.loads(out)["commanded"] == "open"
    await bench.wait_for(lambda: not bench.rig.connectors[1].plant.relay_closed, 3, "relay open")
    code, _, _ = await cpctl(bench, "pwm", "1", "50")
    assert code == 0
    await bench.wait_for(lambda: bench.rig.connectors[1].plant.pwm_duty == 50.0, 3, "PWM 50 %")
    # Never with an EV connected.
    bench.ctl(cmd="plug", connector=1)
    c = bench.station.connectors[1]
    await bench.wait_for(c.controller.ev_connected, 3, "EV seen (through PP; the pilot is at F while unavailable)")
    code, _, err = await cpctl(bench, "relay", "1", "close")
    assert code == 1 and "EV is connected" in err
    assert not bench.rig.connectors[1].plant.relay_closed
    code, _, _ = await cpctl(bench, "maintenance", "off", "1")
    assert code == 0


async def test_selftest_meter_sessions_events(bench: Bench) -> None:
    c = bench.station.connectors[1]
    await bench.wait_for(lambda: c.meter is not None and c.meter.latest is not None, 5, "meter")
    code, out, _ = await cpctl(bench, "selftest")
    assert code == 0 and "PASS" in out and "FAIL" not in out
    code, out, _ = await cpctl(bench, "meter", "1")
    assert code == 0 and "kWh" in out
    bench.ctl(cmd="plug", connector=1)
    await bench.station.present_token(TAG)
    await bench.wait_for(lambda: c.controller.relay_feedback_closed is True, 8, "charging")
    bench.ctl(cmd="unplug", connector=1)
    await bench.wait_for(lambda: c.session is None, 5, "stopped")
    code, out, _ = await cpctl(bench, "--json", "sessions", "--last", "5")
    sessions = json.loads(out)
    assert code == 0 and sessions[0]["reason"] == "EVDisconnected" and sessions[0]["id_tag"] == "******EF01"
    code, out, _ = await cpctl(bench, "events", "--since", "10m")
    assert code == 0 and "session started" in out and "session stopped" in out and TAG not in out
    bench.ctl(cmd="fault", connector=1, name="meter-silent")
    await bench.wait_for(lambda: c.meter is not None and c.meter.latest is None, 4, "meter silent")
    code, out, _ = await cpctl(bench, "selftest")
    assert code == 1 and "FAIL" in out
    code, out, _ = await cpctl(bench, "meter", "1")
    assert code == 1 and "silent" in out


async def test_selftest_detects_weld(bench: Bench) -> None:
    bench.ctl(cmd="fault", connector=1, name="weld")
    c = bench.station.connectors[1]
    await bench.wait_for(lambda: c.controller.relay_feedback_closed is True, 3, "feedback closed")
    code, out, _ = await cpctl(bench, "selftest")
    assert code == 1 and "weld" in out


async def test_events_follow_streams_new_events(bench: Bench) -> None:
    sock = str(bench.station.config.diag_socket)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.ctl", "--socket", sock, "events", "--follow", "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        await asyncio.sleep(1.0)
        bench.ctl(cmd="plug", connector=1)
        assert proc.stdout is not None
        seen = ""
        async with asyncio.timeout(10):
            while "Preparing" not in seen:
                seen += (await proc.stdout.readline()).decode()
    finally:
        proc.terminate()
        await proc.wait()


async def test_ocpp_commands_without_ocpp(bench: Bench) -> None:
    code, _, err = await cpctl(bench, "config", "get")
    assert code == 1 and "OCPP is not configured" in err


async def test_watch_refreshes_and_exits_like_status(bench: Bench) -> None:
    code, out, _ = await cpctl(bench, "watch", "--count", "2", "--interval", "0.2")
    assert code == 0 and out.count("[1] Available") == 2 and out.count("\x1b[2J") == 2
    code, out, _ = await cpctl(bench, "--json", "watch", "--count", "2", "--interval", "0.2")
    frames = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(frames) == 2 and frames[0]["connectors"][0]["status"] == "Available"
    bench.ctl(cmd="fault", connector=1, name="rcd")
    await bench.wait_for(lambda: bench.station.connectors[1].faults, 3, "fault")
    code, out, _ = await cpctl(bench, "watch", "--count", "1")
    assert code == 1 and "FAULTS" in out
