"""Steady-state footprint of `cpagent run` with 2 and 8 connectors: RSS (VmRSS) of every process of the
agent (the supervisor and its two sides) after it has booted and settled, their PSS (shared pages counted
once, from smaps_rollup), and idle CPU (utime+stime over a 20 s window, no EV plugged, meters polled at 2 Hz
each, websocket to the CSMS open), against the simulator rig and the bundled CSMS on 127.0.0.1.

Prints JSON: per process and totals ({"rss_2_control_mb", "rss_2_network_mb", "rss_2_supervisor_mb",
"rss_2_sides_mb" (control + network), "rss_2_mb" (all three), "pss_2_<role>_mb", "pss_2_sides_mb", "pss_2_mb",
"idle_cpu_2_pct", "idle_cpu_2_control_pct", ...}, the same for 8 connectors, "goals").
Goals (issue 12): total RSS of both sides (control + network) <= 60 MB with 2 connectors; idle CPU of the
agent together <= 1 % of a core with 2 connectors. RSS counts every page a process maps, shared ones (the
interpreter, libssl, libcrypto) in each process again; PSS divides a shared page among its sharers.

``--ocpp 2.0.1``: the agent speaking OCPP 2.0.1 to the bundled CSMS (device model defaults: TxUpdatedInterval
60 s, WebSocketPingInterval 60 s, HeartbeatInterval from the CSMS); same figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.reliability.harness import CP, agent_processes, close_world, open_world

WINDOW_S = 20.0
TICK = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


def pss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


async def measure(connectors: int, ocpp: str = "1.6") -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        world = await open_world(Path(tmp) / "rig", connectors=connectors,
                                 keys={"MeterValueSampleInterval": "60", "WebSocketPingInterval": "60"},
                                 ocpp_version=ocpp)
        try:
            world.agent.start()
            await world.csms.wait_for(CP, "BootNotification", within=30)
            await asyncio.sleep(5.0)  # settle: statuses sent, meters polled, caches warm
            assert world.agent.proc is not None
            pids = agent_processes(world.agent.proc.pid)
            c0, t0 = {r: cpu_s(p) for r, p in pids.items()}, time.monotonic()
            await asyncio.sleep(WINDOW_S)
            elapsed = time.monotonic() - t0
            n = connectors
            out: dict[str, float] = {}
            sides = [pids[role] for role in ("control", "network")]
            for role, pid in pids.items():
                out[f"rss_{n}_{role}_mb"] = round(rss_mb(pid), 1)
                out[f"pss_{n}_{role}_mb"] = round(pss_mb(pid), 1)
                out[f"idle_cpu_{n}_{role}_pct"] = round(100.0 * (cpu_s(pid) - c0[role]) / elapsed, 2)
            out[f"rss_{n}_sides_mb"] = round(sum(rss_mb(p) for p in sides), 1)
            out[f"rss_{n}_mb"] = round(sum(rss_mb(p) for p in pids.values()), 1)
            out[f"pss_{n}_sides_mb"] = round(sum(pss_mb(p) for p in sides), 1)
            out[f"pss_{n}_mb"] = round(sum(pss_mb(p) for p in pids.values()), 1)
            out[f"idle_cpu_{n}_pct"] = round(sum(out[f"idle_cpu_{n}_{r}_pct"] for r in pids), 2)
            out[f"processes_{n}"] = len(pids)
            return out
        finally:
            await close_world(world)


async def main(ocpp: str = "1.6") -> None:
    figures = {**await measure(2, ocpp), **await measure(8, ocpp)}
    print(json.dumps({
        **figures,
        "window_s": WINDOW_S,
        "goals": {"rss_2_sides_mb": "<= 60", "idle_cpu_2_pct": "<= 1"},
    }))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ocpp", choices=["1.6", "2.0.1"], default="1.6")
    asyncio.run(main(parser.parse_args().ocpp))
