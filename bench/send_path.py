"""The agent's OCPP send path alone vs the bare `ocpp` library, one after the other against the same CSMS
process (`cpsim csms`, 127.0.0.1), so that neither competes with the other for the CPU: what
`outbox_replay.py` cannot separate on a loaded machine (there the whole agent, its three processes, the rig
and the bare client share the cores).

Path: N TransactionEvents (2.0.1; MeterValues with ``--ocpp 1.6``) appended to a durable `Outbox` (WAL,
synchronous=FULL, on this disk), drained as the agent drains it: head, attempt recorded (fsync), CALL
through `OcppSession.request_payload` (the agent's RPC: the queued camelCase payload, schema-validated
request and answer), ack. Bare: the same
payloads through the library's ChargePoint (``await cp.call(...)``, nothing persisted). ROUNDS rounds
alternate the two; the figures are the medians.

Prints JSON: {"path_msgs_per_s", "bare_msgs_per_s", "ratio", "path_cpu_us_per_msg", "bare_cpu_us_per_msg", "n",
"rounds", "goals"}: the CPU figures are this process's (every thread) per message, steadier than the rates on a
loaded machine. Goal: ratio >= 0.8.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import websockets
from ocpp.charge_point import remove_nones

import bench.outbox_replay as replay
from agent import db
from agent.ocpp.v16.rpc import V16, V201, OcppSession
from agent.outbox import Outbox
from bench.outbox_replay import meter_value, snake, transaction_event
from hal.clock import SystemClock

ROOT = Path(__file__).resolve().parent.parent

N = 2000
ROUNDS = 3


def payloads(ocpp: str, n: int) -> list[tuple[str, dict[str, Any]]]:
    replay.N = n  # Started, Updated ..., Ended of one transaction of n events
    if ocpp == "2.0.1":
        return [("TransactionEvent", {**transaction_event(i), "seqNo": i}) for i in range(n)]
    return [("MeterValues", meter_value(i, 7)) for i in range(n)]


def library(ocpp: str) -> tuple[Any, Any]:
    if ocpp == "2.0.1":
        from ocpp.v201 import ChargePoint, call
    else:
        from ocpp.v16 import ChargePoint, call  # type: ignore[assignment]
    return ChargePoint, call


async def bare(url: str, ocpp: str, messages: list[tuple[str, dict[str, Any]]]) -> tuple[float, float]:
    """Messages per second and CPU seconds of this process (all threads) per message."""
    charge_point, call = library(ocpp)
    async with websockets.connect(f"{url}/BARE", subprotocols=[f"ocpp{ocpp}"]) as ws:  # type: ignore[list-item]
        cp = charge_point("BARE", ws)
        listener = asyncio.create_task(cp.start())
        begin, cpu = time.perf_counter(), time.process_time()
        for action, payload in messages:
            await cp.call(getattr(call, action)(**snake(payload)))
        elapsed, cpu = time.perf_counter() - begin, time.process_time() - cpu
        listener.cancel()
    return len(messages) / elapsed, cpu / len(messages)


async def path(url: str, ocpp: str, messages: list[tuple[str, dict[str, Any]]], directory: Path) -> tuple[float, float]:
    conn = db.connect(directory / "state.db", durable=True)
    outbox = Outbox(conn, SystemClock())
    outbox.bind_transaction("bench-tx", 7)  # 1.6: as if its StartTransaction.conf had said 7 (outbox_replay.py)
    for action, payload in messages:
        body = {k: v for k, v in payload.items() if k != "seqNo"}
        if action == "TransactionEvent":
            outbox.append(action, body, tx_ref="bench-tx-201", seq_field="seqNo")
        else:
            outbox.append(action, {**body, "transactionId": 0}, tx_ref="bench-tx")  # filled in at send time
    async with websockets.connect(f"{url}/PATH", subprotocols=[f"ocpp{ocpp}"]) as ws:  # type: ignore[list-item]
        session = OcppSession(ws, "PATH", {}, dialect=V201 if ocpp == "2.0.1" else V16)
        serving = asyncio.create_task(session.serve())
        begin, cpu = time.perf_counter(), time.process_time()
        while (entry := outbox.head()) is not None:
            payload = outbox.payload_for_send(entry)
            outbox.record_attempt(entry.id)
            await session.request_payload(entry.action, remove_nones(payload))  # as the agent's deliver does
            outbox.ack(entry.id)
        elapsed, cpu = time.perf_counter() - begin, time.process_time() - cpu
        serving.cancel()
    conn.close()
    return len(messages) / elapsed, cpu / len(messages)


async def main(ocpp: str, n: int) -> None:
    messages = payloads(ocpp, n)
    csms = subprocess.Popen([sys.executable, "-m", "simulator.cli", "csms", "--ocpp", "auto"], cwd=ROOT,  # noqa: ASYNC220
                            stdout=subprocess.PIPE, text=True)
    path_rates: list[float] = []
    bare_rates: list[float] = []
    path_cpu: list[float] = []
    bare_cpu: list[float] = []
    try:
        assert csms.stdout is not None
        url = json.loads(csms.stdout.readline())["url"]
        for _ in range(ROUNDS):
            with tempfile.TemporaryDirectory(dir=ROOT / "bench") as tmp:  # the outbox on a real disk
                rate, cpu = await path(url, ocpp, messages, Path(tmp))
                path_rates.append(rate)
                path_cpu.append(cpu)
            rate, cpu = await bare(url, ocpp, messages)
            bare_rates.append(rate)
            bare_cpu.append(cpu)
    finally:
        csms.terminate()
        csms.wait(10)
    path_rate, bare_rate = statistics.median(path_rates), statistics.median(bare_rates)
    print(json.dumps({
        "path_msgs_per_s": round(path_rate, 1),
        "bare_msgs_per_s": round(bare_rate, 1),
        "ratio": round(path_rate / bare_rate, 3),
        # CPU of this process (every thread) per message: the steadier signal on a loaded machine.
        "path_cpu_us_per_msg": round(1e6 * statistics.median(path_cpu)),
        "bare_cpu_us_per_msg": round(1e6 * statistics.median(bare_cpu)),
        "n": n,
        "rounds": ROUNDS,
        "goals": {"ratio": ">= 0.8"},
    }))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ocpp", choices=["1.6", "2.0.1"], default="2.0.1")
    parser.add_argument("-n", type=int, default=N)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.ocpp, arguments.n))
