"""Latency of durable outbox appends (WAL, synchronous=FULL: one fsync per append) on this disk.

Prints JSON: {"append_p50_ms", "append_p99_ms", "append_max_ms", "n", ...}. Goal: p99 <= 2 ms.

    .venv/bin/python bench/outbox_append.py [n]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from agent import db
from agent.outbox import Outbox
from hal.clock import SystemClock

# A realistic periodic MeterValues payload (4 measurands).
PAYLOAD = {
    "connectorId": 1,
    "transactionId": 123456,
    "meterValue": [
        {
            "timestamp": "2026-01-01T00:00:00Z",
            "sampledValue": [
                {"value": "123456", "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
                {"value": "7360.0", "measurand": "Power.Active.Import", "unit": "W"},
                {"value": "32.0", "measurand": "Current.Import", "unit": "A", "phase": "L1"},
                {"value": "230.1", "measurand": "Voltage", "unit": "V", "phase": "L1-N"},
            ],
        }
    ],
}


def percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    # Next to the repository, i.e. on the same disk the agent's state would use, not a tmpfs.
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent) as tmp:
        conn = db.connect(Path(tmp) / "state.db", durable=True)
        outbox = Outbox(conn, SystemClock())
        for _ in range(50):  # warm-up: file creation, first WAL frames
            outbox.append("MeterValues", PAYLOAD, tx_ref="warm")
        samples: list[float] = []
        for _ in range(n):
            start = time.perf_counter()
            outbox.append("MeterValues", PAYLOAD, tx_ref="bench")
            samples.append((time.perf_counter() - start) * 1000.0)
        conn.close()
    samples.sort()
    print(
        json.dumps(
            {
                "append_p50_ms": round(percentile(samples, 0.50), 3),
                "append_p99_ms": round(percentile(samples, 0.99), 3),
                "append_max_ms": round(samples[-1], 3),
                "n": n,
                "durable": "WAL+synchronous=FULL",
                "goals": {"append_p99_ms": "<= 2"},
            }
        )
    )


if __name__ == "__main__":
    main()
