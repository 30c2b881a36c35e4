"""The command-line contract, each tool as its own process: cpsim up / cpsim ctl / cpagent run / cpctl,
and `cpagent sim` (what `make demo` runs)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

PY = sys.executable


def _wait(predicate: Callable[[], object], limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", *args], capture_output=True, text=True, timeout=60)


def test_cpsim_cpagent_cpctl_as_processes(tmp_path: Path) -> None:
    rig_dir = tmp_path / "rig"
    sim = subprocess.Popen([PY, "-m", "simulator.cli", "up", "--dir", str(rig_dir), "--connectors", "2",
                            "--no-csms", "--meter", "rtu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    agent = None
    try:
        _wait(lambda: (rig_dir / "agent.toml").exists(), 20, "agent.toml")
        state = json.loads(_run("simulator.cli", "ctl", "--dir", str(rig_dir), "state").stdout)
        assert set(state["state"]["connectors"]) == {"1", "2"}
        agent = subprocess.Popen([PY, "-m", "agent.cli", "run", "--config", str(rig_dir / "agent.toml")],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        sock = str(rig_dir / "diag.sock")

        def status() -> dict[str, object]:
            out = _run("agent.ctl", "--socket", sock, "--json", "status")
            return json.loads(out.stdout) if out.returncode in (0, 1) and out.stdout else {}

        _wait(lambda: status().get("connectors"), 20, "the agent's diagnostic socket")
        assert _run("simulator.cli", "ctl", "--dir", str(rig_dir), "plug", "2").returncode == 0
        assert _run("simulator.cli", "ctl", "--dir", str(rig_dir), "tap", "DEADBEEF01").returncode == 0

        def charging() -> bool:
            conns = status().get("connectors") or []
            return any(c["connector"] == 2 and c["status"] == "Charging" for c in conns)  # type: ignore[index,union-attr]

        _wait(charging, 20, "connector 2 charging")
        fault = _run("simulator.cli", "ctl", "--dir", str(rig_dir), "fault", "2", "overtemp")
        assert fault.returncode == 0
        _wait(lambda: _run("agent.ctl", "--socket", sock, "faults").returncode == 1, 10, "fault visible in cpctl")
        assert "HighTemperature" in _run("agent.ctl", "--socket", sock, "faults").stdout
        bad = _run("simulator.cli", "ctl", "--dir", str(rig_dir), "fault", "2", "gremlins")
        assert bad.returncode == 2
    finally:
        if agent is not None:
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(timeout=15) == 0
        sim.send_signal(signal.SIGTERM)
        assert sim.wait(timeout=15) == 0
    # Restart on the same DIR keeps the meter registers.
    saved = json.loads((rig_dir / "sim-state.json").read_text())
    assert saved["energy_wh"]["2"] > 0


def test_cpagent_sim_demo_completes_a_session() -> None:
    result = subprocess.run([PY, "-m", "agent.cli", "sim", "--charge-seconds", "4"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "session summary" in result.stdout and "relay=closed" in result.stdout
    summary = json.loads(result.stdout.split("session summary:", 1)[1])
    assert summary["energy_wh"] > 0 and summary["stop_reason"] == "EVDisconnected"
    # The OCPP exchange is in the timeline and the CSMS's transaction id in the summary.
    assert "OCPP agent -> CSMS: StartTransaction" in result.stdout and "StopTransaction" in result.stdout
    assert isinstance(summary["transaction_id"], int) and summary["transaction_id"] > 0
