"""Steady-state footprint of the agent process with 2 and 8 connectors: RSS (VmRSS) after it has booted
and settled, and idle CPU (utime+stime over a 20 s window, no EV plugged, meters polled at 2 Hz each,
websocket to the CSMS open), against the simulator rig and the bundled CSMS on 127.0.0.1.

Prints JSON: {"rss_2_mb", "rss_8_mb", "idle_cpu_2_pct", "idle_cpu_8_pct", "goals"}.
Goals: RSS <= 50 MB with 2 connectors; idle CPU <= 1 % of a core with 2 connectors.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.reliability.harness import CP, close_world, open_world

WINDOW_S = 20.0
TICK = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


async def measure(connectors: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        world = await open_world(Path(tmp) / "rig", connectors=connectors,
                                 keys={"MeterValueSampleInterval": "60", "WebSocketPingInterval": "60"})
        try:
            world.agent.start()
            await world.csms.wait_for(CP, "BootNotification", within=30)
            await asyncio.sleep(5.0)  # settle: statuses sent, meters polled, caches warm
            assert world.agent.proc is not None
            pid = world.agent.proc.pid
            c0, t0 = cpu_s(pid), time.monotonic()
            await asyncio.sleep(WINDOW_S)
            cpu_pct = 100.0 * (cpu_s(pid) - c0) / (time.monotonic() - t0)
            return rss_mb(pid), cpu_pct
        finally:
            await close_world(world)


async def main() -> None:
    rss2, cpu2 = await measure(2)
    rss8, cpu8 = await measure(8)
    print(json.dumps({
        "rss_2_mb": round(rss2, 1),
        "rss_8_mb": round(rss8, 1),
        "idle_cpu_2_pct": round(cpu2, 2),
        "idle_cpu_8_pct": round(cpu8, 2),
        "window_s": WINDOW_S,
        "goals": {"rss_2_mb": "<= 50", "idle_cpu_2_pct": "<= 1"},
    }))


if __name__ == "__main__":
    asyncio.run(main())
