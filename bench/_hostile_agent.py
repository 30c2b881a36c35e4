"""Agent side of `bench/safety_latency.py --hostile`: what bench/_latency_agent.py runs (the real Station,
the driver who keeps tapping a card, the technician who clears latched faults) plus the OCPP 1.6J service
as `cpagent run` starts it (logging set up the same way, to stderr, which the bench discards), connected
to the hostile CSMS. It also samples its own event-loop lag (a 10 ms sleep's overshoot) and, on SIGTERM,
writes the lag figures (and the CPU seconds each side used) as JSON to the file named by its third argument."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from agent.charge_control import ChargeState
from agent.config import load
from agent.events import ConnectorStatus
from agent.ipc.control_server import ControlServer
from agent.logsetup import setup_logging
from agent.ocpp.v16.service import OcppService
from agent.split import station_socket
from agent.station import Station

LAG_TICK_S = 0.010


async def sample_lag(lags: list[float]) -> None:
    while True:
        t0 = time.perf_counter()
        await asyncio.sleep(LAG_TICK_S)
        lags.append((time.perf_counter() - t0 - LAG_TICK_S) * 1000.0)


def lag_figures(lags: list[float]) -> dict[str, object]:
    if not lags:
        return {}
    ordered = sorted(lags)
    return {"agent_loop_lag_p50_ms": round(statistics.median(ordered), 3),
            "agent_loop_lag_p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 3),
            "agent_loop_lag_max_ms": round(ordered[-1], 3),
            "agent_loop_lag_over_20ms": sum(1 for v in ordered if v > 20.0),
            "agent_loop_lag_samples": len(ordered)}


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)
    except (OSError, ValueError, IndexError):
        return None


async def main(config_path: Path, tag: str, split: bool) -> dict[str, object]:
    """``split``: as `cpagent run` runs it, the OCPP side in its own process (`cpagent network`) on the
    station socket this process serves; else both in this process and event loop (`--single-process`)."""
    config = load(config_path)
    setup_logging(config.log_levels)
    station = Station(config)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    lags: list[float] = []
    tasks = [asyncio.create_task(station.run()), asyncio.create_task(sample_lag(lags))]
    network: subprocess.Popen[bytes] | None = None
    if split:
        server = ControlServer(station, station_socket(config))
        await server.start()
        network = subprocess.Popen(  # noqa: ASYNC220 - started once, before the measured events
            [sys.executable, "-m", "agent.cli", "network", "--config", str(config_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        tasks.append(asyncio.create_task(OcppService(station, config).run()))
    while not stop.is_set() and not any(t.done() for t in tasks):
        for c in station.connectors.values():
            if c.session is None and c.status() is ConnectorStatus.PREPARING and c.pending_id_tag is None:
                await station.present_token(tag, c.id)
            elif c.controller.state is ChargeState.FAULT:
                c.controller.clear_faults()
        await asyncio.sleep(0.05)
    network_cpu = None if network is None else cpu_seconds(network.pid)
    if network is not None:
        network.terminate()
        network.wait(10)
    figures = lag_figures(lags)
    figures["control_cpu_s"] = round(time.process_time(), 2)
    if network_cpu is not None:
        figures["network_cpu_s"] = network_cpu
    figures["agent_processes"] = 2 if split else 1
    for t in tasks:
        if t.done() and not t.cancelled() and t.exception() is not None:
            figures["agent_task_died"] = repr(t.exception())
    return figures


if __name__ == "__main__":
    single = "--single-process" in sys.argv[4:]
    Path(sys.argv[3]).write_text(json.dumps(asyncio.run(main(Path(sys.argv[1]), sys.argv[2], not single))))
