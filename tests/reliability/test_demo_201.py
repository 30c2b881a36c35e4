"""`cpagent sim --ocpp 2.0.1` end to end (the simulator and the agent as `make demo` runs them, in 2.0.1
messages). It takes 5-8 s, so it runs in `make soak` (CPAGENT_SOAK=1); its verdict logic is unit-tested in
tests/simulator/test_demo201.py on every `make test`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.reliability.harness import SOAK


@pytest.mark.skipif(not SOAK, reason="5-8 s end to end: make soak")
def test_cpagent_sim_ocpp_201_completes_a_transaction() -> None:
    result = subprocess.run([sys.executable, "-m", "agent.cli", "sim", "--ocpp", "2.0.1", "--charge-seconds", "2"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout.split("session summary (OCPP 2.0.1):", 1)[1])
    assert summary["energy_wh"] > 0 and summary["stopped_reason"] == "EVDisconnected"
    assert summary["events"][0].startswith("Started#0") and summary["events"][-1].startswith("Ended#")
    assert "OCPP agent -> CSMS: TransactionEvent" in result.stdout and "relay=closed" in result.stdout
    assert "DEADBEEF01" not in result.stdout  # idTokens masked in the timeline
