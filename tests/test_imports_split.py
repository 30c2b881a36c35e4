"""What each process of `cpagent run` imports (issue 12, footprint): the real agent against the simulator rig and
the bundled CSMS, each process writing its sys.modules as it stops (CPAGENT_DUMP_MODULES, agent/split_supervisor.py).

- the supervisor: no asyncio (nor ssl, which asyncio pulls in), no SQLite, no configuration parser, no hal/;
- the control side: nothing of the network side (OCPP, websockets, jsonschema, cryptography, the diagnostic
  socket, file transfers) and no simulator;
- the network side, idle over 1.6: no drivers, no simulator, no cryptography (certificates are handled on use),
  no OCPP 2.0.1 library.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.split_supervisor import DUMP_MODULES_ENV
from tests.reliability.harness import CP, close_world, open_world

ROOT = Path(__file__).resolve().parent.parent

SUPERVISOR_NEVER = ("asyncio", "ssl", "_ssl", "sqlite3", "agent.config", "agent.split", "hal", "dataclasses",
                    "ctypes", "json")
CONTROL_NEVER = ("agent.ocpp", "ocpp", "websockets", "jsonschema", "cryptography", "agent.diag", "agent.outbox",
                 "agent.certificates", "agent.preflight", "simulator", "ftplib", "http.client", "urllib.request")
NETWORK_NEVER = ("drivers", "pymodbus", "serial", "simulator", "cryptography", "ocpp.v201", "transitions")


def offenders(modules: list[str], never: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == n or m.startswith(n + ".") for n in never)]


def test_offenders_matches_packages_not_prefixes() -> None:
    assert offenders(["ocpp", "ocpp.v16", "ocppish", "agent.ocpp.v16.rpc", "agent"], ("ocpp", "agent.ocpp")) == [
        "ocpp", "ocpp.v16", "agent.ocpp.v16.rpc"]


def test_the_command_line_of_cpagent_run_imports_little() -> None:
    """What `cpagent run` has loaded when it hands over to the supervisor loop (before any configuration)."""
    code = ("import sys; import agent.cli, agent.split_supervisor, agent.logsetup, agent.paths, tomllib; "
            "print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert offenders(out.stdout.split(), SUPERVISOR_NEVER) == []


async def test_each_process_of_cpagent_run_imports_only_its_side(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    dumps = tmp_path / "modules"
    dumps.mkdir()
    monkeypatch.setenv(DUMP_MODULES_ENV, str(dumps))
    world = await open_world(tmp_path / "rig")
    try:
        world.agent.start()
        await world.csms.wait_for(CP, "BootNotification", within=30)
        await world.csms.wait_for(CP, "StatusNotification", within=30)
        # SIGTERM: each process writes its modules as it stops. Waited for off the event loop, so that the
        # rig and the CSMS in it keep answering while the agent says goodbye.
        assert world.agent.proc is not None
        world.agent.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(world.agent.proc.wait, 30) == 0
        world.agent.proc = None
    finally:
        await close_world(world)
    modules = {role: (dumps / f"{role}.modules").read_text().split() for role in ("supervisor", "control", "network")}
    assert "agent.station" in modules["control"] and "agent.ocpp.v16.service" in modules["network"]
    assert offenders(modules["supervisor"], SUPERVISOR_NEVER) == []
    assert offenders(modules["control"], CONTROL_NEVER) == []
    assert offenders(modules["network"], NETWORK_NEVER) == []
