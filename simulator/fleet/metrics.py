"""What a fleet measures: OCPP messages per type and direction, CALL -> CALLRESULT latency, CALLERRORs,
reconnects, queued (outbox) messages, sessions; a compact progress line, a final JSON, and optionally the
same in Prometheus text format (``prometheus_client``, its own registry, served on --metrics-port).

The frames are observed on the websocket itself: the fleet dials through ``ObservedConnection`` (a
``websockets`` ClientConnection subclass given as ``create_connection``), so the agent's OCPP code is
unchanged and every frame the CSMS sees is counted exactly once.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from websockets.asyncio.client import ClientConnection

log = logging.getLogger("cpsim.fleet.metrics")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# What the fleet's refresh reports (``set_gauges``; the JSON report's keys): levels are Prometheus gauges
# ``cpsim_fleet_<name>``, running totals counters ``cpsim_fleet_<name>_total``.
GAUGES = (
    ("stations", "stations in this process"),
    ("booted", "stations whose BootNotification was accepted"),
    ("connected", "stations connected to the CSMS"),
    ("queued_messages", "transaction messages waiting in the stations' outboxes"),
    ("sessions_active", "sessions running now"),
)
TOTALS = (
    ("reconnects", "connections beyond the first, summed over stations"),
    ("sessions_started", "sessions started by this process"),
    ("sessions_stopped", "sessions stopped by this process"),
)


def percentile(values: array[float] | list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


class FleetMetrics:
    def __init__(self, *, prometheus: bool = False) -> None:
        self.sent: Counter[str] = Counter()  # CALLs the stations sent, by action
        self.received: Counter[str] = Counter()  # CALLs the CSMS sent, by action
        self.call_errors: Counter[str] = Counter()  # CALLERRORs answering our CALLs, by action
        self.latencies = array("d")  # seconds, every answered CALL
        self.by_action: dict[str, array[float]] = {}
        self.max_latency = 0.0
        self.slow_calls = 0  # answered later than 1 s
        self.unanswered = 0  # connections that closed with a CALL outstanding
        self.gauges: dict[str, float] = {}
        self.registry: CollectorRegistry | None = None
        if prometheus:
            self.registry = CollectorRegistry()
            self._p_messages = PromCounter("cpsim_fleet_ocpp_calls", "OCPP CALLs by action and direction",
                                           ["action", "direction"], registry=self.registry)
            self._p_errors = PromCounter("cpsim_fleet_ocpp_call_errors", "CALLERRORs answering station CALLs",
                                         ["action"], registry=self.registry)
            self._p_latency = Histogram("cpsim_fleet_ocpp_call_latency_seconds", "CALL -> CALLRESULT/CALLERROR",
                                        ["action"], buckets=LATENCY_BUCKETS, registry=self.registry)
            self._p_gauges = {name: Gauge(f"cpsim_fleet_{name}", help_, registry=self.registry)
                              for name, help_ in GAUGES}
            self.registry.register(_Totals(self))

    # -- frames
    def call_sent(self, action: str) -> None:
        self.sent[action] += 1
        if self.registry is not None:
            self._p_messages.labels(action, "out").inc()

    def call_received(self, action: str) -> None:
        self.received[action] += 1
        if self.registry is not None:
            self._p_messages.labels(action, "in").inc()

    def answered(self, action: str, seconds: float, error: bool) -> None:
        self.latencies.append(seconds)
        self.by_action.setdefault(action, array("d")).append(seconds)
        self.max_latency = max(self.max_latency, seconds)
        if seconds > 1.0:
            self.slow_calls += 1
        if error:
            self.call_errors[action] += 1
        if self.registry is not None:
            self._p_latency.labels(action).observe(seconds)
            if error:
                self._p_errors.labels(action).inc()

    def set_gauges(self, values: dict[str, float]) -> None:
        self.gauges = dict(values)
        if self.registry is not None:
            for name, value in values.items():
                gauge = self._p_gauges.get(name)
                if gauge is not None:
                    gauge.set(value)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        assert self.registry is not None
        start_http_server(port, addr=host, registry=self.registry)

    # -- reports
    def latency_summary(self, values: array[float] | list[float]) -> dict[str, float | None]:
        def ms(v: float | None) -> float | None:
            return None if v is None else round(v * 1000.0, 2)

        return {"p50_ms": ms(percentile(values, 50)), "p99_ms": ms(percentile(values, 99)),
                "max_ms": ms(max(values) if values else None)}

    def snapshot(self) -> dict[str, Any]:
        return {
            "calls_sent": dict(sorted(self.sent.items())),
            "calls_received": dict(sorted(self.received.items())),
            "call_errors": dict(sorted(self.call_errors.items())),
            "latency": {"all": self.latency_summary(self.latencies),
                        **{a: self.latency_summary(v) for a, v in sorted(self.by_action.items())}},
            "answered": len(self.latencies),
            "answered_later_than_1s": self.slow_calls,
            "unanswered_at_close": self.unanswered,
            **{k: v for k, v in self.gauges.items()},
        }

    def progress_line(self, elapsed_s: float) -> str:
        g = self.gauges
        lat = self.latency_summary(self.latencies)
        return (f"[fleet {elapsed_s:7.1f}s] booted {int(g.get('booted', 0))}/{int(g.get('stations', 0))} "
                f"conn {int(g.get('connected', 0))} sess {int(g.get('sessions_active', 0))} "
                f"(+{int(g.get('sessions_started', 0))}/-{int(g.get('sessions_stopped', 0))}) "
                f"queued {int(g.get('queued_messages', 0))} calls {sum(self.sent.values())} "
                f"err {sum(self.call_errors.values())} p50 {_ms(lat['p50_ms'])} p99 {_ms(lat['p99_ms'])} "
                f"max {_ms(lat['max_ms'])} reconn {int(g.get('reconnects', 0))}")


class _Totals(Collector):
    """The running totals the fleet counts itself (summed over its stations at every refresh) as Prometheus
    counters: a scrape reads the last refresh's sums."""

    def __init__(self, metrics: FleetMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for name, help_ in TOTALS:
            yield CounterMetricFamily(f"cpsim_fleet_{name}", help_, value=self._metrics.gauges.get(name, 0.0))


def _ms(value: float | None) -> str:
    """A latency of the progress line: "-" before any answer (not "Nonems")."""
    return "-" if value is None else f"{value}ms"


METRICS: FleetMetrics | None = None  # the process's metrics; ObservedConnection reports here
# cpsim fleet's scripted cases (simulator/fleet/cases.py) see every frame here when set:
# (connection, "out" (station -> CSMS) | "in", the parsed frame)
FRAME_OBSERVER: Callable[[ClientConnection, str, list[Any]], None] | None = None


class _FrameQueue:
    """The deque operations websockets' SimpleQueue uses (append, popleft, extendleft, len) over a list."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: list[Any] = []

    def __len__(self) -> int:
        return len(self._items)

    def append(self, item: Any) -> None:
        self._items.append(item)

    def popleft(self) -> Any:
        return self._items.pop(0)

    def extendleft(self, items: Iterable[Any]) -> None:
        for item in items:  # as deque.extendleft: each item goes to the front in turn
            self._items.insert(0, item)


class ObservedConnection(ClientConnection):
    """A client connection that reports every OCPP frame it carries to ``METRICS``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._calls: dict[str, tuple[str, float]] = {}  # unique id -> (action, monotonic sent)
        # websockets only appends, iterates and removes its drain waiters (none unless the socket's buffer is
        # full): a list, not an empty 760-byte deque per station.
        self.drain_waiters = []  # type: ignore[assignment]

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # makes recv_messages
        frames: Any = getattr(getattr(self, "recv_messages", None), "frames", None)
        queue = getattr(frames, "queue", None)
        if isinstance(queue, deque) and not queue:  # (websockets 15-17 layout)
            frames.queue = _FrameQueue()  # its incoming frames: a list (one or two at a time), not a 760 B deque

    async def send(self, message: Any, text: bool | None = None) -> None:
        if METRICS is not None and isinstance(message, str):
            frame = _head(message)
            if frame is not None and frame[0] == 2 and len(frame) >= 3:
                self._calls[str(frame[1])] = (str(frame[2]), time.monotonic())
                METRICS.call_sent(str(frame[2]))
        await super().send(message, text=text)
        if FRAME_OBSERVER is not None and isinstance(message, str):
            sent = _frame(message)
            if sent is not None:
                FRAME_OBSERVER(self, "out", sent)  # on the wire (a failed send raised above)

    async def recv(self, decode: bool | None = None) -> Any:
        try:
            raw = await super().recv(decode)
        except BaseException:
            if METRICS is not None and self._calls:
                METRICS.unanswered += len(self._calls)
                self._calls.clear()
            raise
        if METRICS is not None:
            frame = _frame(raw) if FRAME_OBSERVER is not None else _head(raw)
            if frame is not None and len(frame) >= 2:
                if frame[0] == 2 and len(frame) >= 3:
                    METRICS.call_received(str(frame[2]))
                elif frame[0] in (3, 4):
                    pending = self._calls.pop(str(frame[1]), None)
                    if pending is not None:
                        METRICS.answered(pending[0], time.monotonic() - pending[1], frame[0] == 4)
                if FRAME_OBSERVER is not None:
                    FRAME_OBSERVER(self, "in", frame)
        return raw


# The head of an OCPP-J frame: [MessageTypeId, "UniqueId"(, "Action" | "ErrorCode")...; ids and actions without
# escapes (a frame whose head does not match is parsed in full).
_HEAD = re.compile(r'\s*\[\s*([2-4])\s*,\s*"([^"\\]*)"\s*(?:,\s*"([^"\\]*)")?')


def _head(raw: str | bytes) -> list[Any] | None:
    """What the metrics need of a frame (type, unique id, action) without decoding its payload: the JSON
    decoding of every frame both ways was ~10 % of a steady fleet's CPU. A frame that is not complete JSON
    still counts if its head is well-formed (the stations' own frames always are; the CSMS's answers are
    decoded again by the agent, which rejects a bad one)."""
    if isinstance(raw, str):
        m = _HEAD.match(raw)
        if m is not None and raw.rstrip().endswith("]"):
            kind, unique_id, action = m.groups()
            return [int(kind), unique_id] if action is None else [int(kind), unique_id, action]
    return _frame(raw)


def _frame(raw: str | bytes) -> list[Any] | None:
    try:
        frame = json.loads(raw)
    except ValueError:
        return None
    return frame if isinstance(frame, list) and frame else None
