"""The CSMS's request budget (agent/ocpp/budget.py): the token bucket and its rules as pure units with fake
clocks, the metering of a real coroutine's CPU time, and an OcppSession over real websockets on 127.0.0.1 in
both dialects: an expensive request over budget waits, then is refused with CALLERROR GenericError, while a
cheap one is answered at once; the config key is validated by name and the counts reach `cpctl status`."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

from agent.config import ConfigError, parse
from agent.ctl import render_status
from agent.ocpp.budget import BudgetStats, RequestBudget, is_expensive
from agent.ocpp.v16.rpc import V16, V201, Dialect, OcppSession
from tests.agent.test_config import MINIMAL

WAIT = 5.0


class FakeTime:
    """monotonic + sleep that advances it; a CPU clock the test sets."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def budget(clock: FakeTime, ms_per_s: float = 100.0, **kw: Any) -> RequestBudget:
    return RequestBudget(ms_per_s, monotonic=clock.monotonic, sleep=clock.sleep, name="CP1", **kw)


def test_which_requests_are_expensive() -> None:
    assert is_expensive("GetCompositeSchedule", {})
    assert is_expensive("GetBaseReport", {"requestId": 1, "reportBase": "FullInventory"})
    assert is_expensive("GetDiagnostics", {"location": "ftp://x"})
    assert is_expensive("SendLocalList", {"listVersion": 2, "updateType": "Full"})
    assert not is_expensive("SendLocalList", {"listVersion": 2, "updateType": "Differential"})
    assert is_expensive("DataTransfer", {"vendorId": "v", "data": "x" * 2000})
    assert not is_expensive("DataTransfer", {"vendorId": "v", "data": "small"})
    for cheap in ("Reset", "RemoteStopTransaction", "RequestStopTransaction", "ChangeAvailability",
                  "TriggerMessage", "UnlockConnector", "SetChargingProfile"):
        assert not is_expensive(cheap, {}), cheap


def test_bucket_refills_at_the_rate_up_to_the_burst() -> None:
    clock = FakeTime()
    b = budget(clock, 100.0, burst_s=5.0)  # 0.1 CPU s per s, 0.5 s capacity
    assert b.tokens == pytest.approx(0.5)
    b.charge(0.8)
    assert b.tokens == pytest.approx(-0.3)
    clock.now += 2.0
    assert b.tokens == pytest.approx(-0.1)
    clock.now += 100.0
    assert b.tokens == pytest.approx(0.5)  # never above the burst
    assert b.stats.charged_s == pytest.approx(0.8)
    with pytest.raises(ValueError, match=r"10\.\.1000 ms/s"):
        RequestBudget(5.0)


async def test_cheap_requests_never_wait_and_expensive_ones_wait_out_the_debt() -> None:
    clock = FakeTime()
    b = budget(clock, 100.0, burst_s=1.0)
    b.charge(0.4)  # 0.3 s in debt: 3 s to pay back at 0.1 s/s
    assert await b.admit("Reset", {}) is None
    assert clock.slept == []
    assert await b.admit("GetCompositeSchedule", {}) is None
    assert clock.slept == [pytest.approx(3.0)]
    assert b.stats.delayed == 1 and b.stats.refused == 0
    assert b.stats.delay_s == pytest.approx(3.0)


async def test_a_debt_beyond_the_longest_delay_is_refused_with_when_to_retry(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeTime()
    b = budget(clock, 100.0, burst_s=1.0, max_delay_s=2.0)
    b.charge(1.1)  # 1.0 s in debt: 10 s
    caplog.set_level(logging.INFO, "cpagent.ocpp.budget")
    for _ in range(3):
        refusal = await b.admit("GetBaseReport", {})
        assert refusal is not None and "retry in 10 s" in refusal and "100 ms/s" in refusal
    assert await b.admit("RequestStopTransaction", {}) is None  # cheap: never refused
    assert clock.slept == []
    assert b.stats.refused == 3 and b.stats.refused_by_action == {"GetBaseReport": 3}
    assert b.stats.bursts == 1 and b.stats.last_refused_wall is not None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "GetBaseReport" in warnings[0].getMessage()  # once per burst
    clock.now += 10.2  # out of debt (0.02 s), but the bucket (0.1 s) is not half full: still the same burst
    assert await b.admit("GetBaseReport", {}) is None
    assert [r for r in caplog.records if r.levelno == logging.INFO] == []
    clock.now += 1.0
    assert await b.admit("GetBaseReport", {}) is None
    recovered = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert recovered == ["CP1: the CSMS's requests are within their budget again (0 delayed, 3 refused meanwhile)"]


async def test_too_many_waiting_expensive_requests_are_refused_at_once() -> None:
    release = asyncio.Event()

    async def sleep(_: float) -> None:
        await release.wait()

    clock = FakeTime()
    b = RequestBudget(100.0, burst_s=1.0, max_waiting=2, monotonic=clock.monotonic, sleep=sleep)
    b.charge(0.12)  # 0.02 s debt: 0.2 s, within MAX_DELAY_S
    waiting = [asyncio.create_task(b.admit("GetCompositeSchedule", {})) for _ in range(2)]
    await asyncio.sleep(0)
    refusal = await b.admit("GetCompositeSchedule", {})
    assert refusal is not None and "2 requests already wait" in refusal
    release.set()
    assert await asyncio.gather(*waiting) == [None, None]


async def test_metering_charges_cpu_steps_not_waits() -> None:
    b = RequestBudget(1000.0, burst_s=10.0)

    async def work() -> str:
        deadline = time.thread_time() + 0.03
        while time.thread_time() < deadline:  # 30 ms of CPU
            pass
        await asyncio.sleep(0.2)  # waiting costs nothing
        return "done"

    assert await b.metered(work()) == "done"
    assert 0.025 <= b.stats.charged_s < 0.12

    async def cancelled() -> None:
        await asyncio.sleep(10)

    task = asyncio.create_task(b.metered(cancelled()))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- over real websockets ------------------------------------------------------------------------------


def burn(seconds: float) -> None:
    deadline = time.thread_time() + seconds
    while time.thread_time() < deadline:
        pass


async def _session_pair(dialect: Dialect, handlers: dict[str, Any],
                        budget: RequestBudget) -> AsyncIterator[tuple[ServerConnection, OcppSession]]:
    accepted: asyncio.Queue[ServerConnection] = asyncio.Queue()
    done = asyncio.Event()

    async def handler(connection: ServerConnection) -> None:
        await accepted.put(connection)
        await done.wait()

    proto = Subprotocol(dialect.subprotocol)
    async with serve(handler, "127.0.0.1", 0, subprotocols=[proto]) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/CP1", subprotocols=[proto]) as client:
            session = OcppSession(client, "CP1", handlers, dialect=dialect, message_timeout=WAIT, budget=budget)
            serving = asyncio.create_task(session.serve())
            csms = await asyncio.wait_for(accepted.get(), WAIT)
            try:
                yield csms, session
            finally:
                done.set()
                serving.cancel()


async def _exchange(csms: ServerConnection, frame: list[Any]) -> tuple[list[Any], float]:
    t0 = time.monotonic()
    await csms.send(json.dumps(frame))
    async with asyncio.timeout(WAIT):
        answer: list[Any] = json.loads(await csms.recv())
    return answer, time.monotonic() - t0


@pytest.mark.parametrize("dialect", [V16, V201], ids=["1.6", "2.0.1"])
async def test_session_delays_then_refuses_expensive_requests_and_answers_cheap_ones(dialect: Dialect) -> None:
    stats = BudgetStats()

    async def on_get_composite_schedule(**_: Any) -> dict[str, Any]:
        burn(0.1)  # 100 ms of CPU against a 100 ms/s budget holding 20 ms: 80 ms in debt = 0.8 s
        return {"status": "Rejected"}

    async def on_reset(**_: Any) -> dict[str, Any]:
        return {"status": "Accepted"}

    b = RequestBudget(100.0, burst_s=0.2, max_delay_s=0.5, stats=stats, name="CP1")
    composite = ({"connectorId": 0, "duration": 60} if dialect is V16 else {"evseId": 0, "duration": 60})
    reset = {"type": "Hard"} if dialect is V16 else {"type": "Immediate"}
    pair = _session_pair(dialect, {"GetCompositeSchedule": on_get_composite_schedule, "Reset": on_reset}, b)
    csms, session = await anext(pair)
    try:
        first, _ = await _exchange(csms, [2, "c1", "GetCompositeSchedule", composite])
        assert first == [3, "c1", {"status": "Rejected"}]
        # ~0.8 s of debt (less what was paid back since): more than the 0.5 s this budget waits -> refused at once
        refused, took = await _exchange(csms, [2, "c2", "GetCompositeSchedule", composite])
        assert refused[:3] == [4, "c2", "GenericError"] and "request budget exceeded" in refused[3], refused
        assert stats.refused == 1 and stats.delayed == 0 and took < 0.5
        cheap, _ = await _exchange(csms, [2, "r1", "Reset", reset])
        assert cheap == [3, "r1", {"status": "Accepted"}] and stats.delayed == 0  # never waits
        await asyncio.sleep(max(0.0, -b.tokens / b.rate - 0.45))  # pays back 100 ms/s: within 0.5 s, it waits
        late, took = await _exchange(csms, [2, "c3", "GetCompositeSchedule", composite])
        assert late == [3, "c3", {"status": "Rejected"}] and took >= 0.02
        assert stats.refused == 1 and stats.delayed == 1 and stats.refused_by_action == {"GetCompositeSchedule": 1}
        assert stats.charged_s >= 0.2
        assert session.stats.call_errors_sent == 1
    finally:
        await pair.aclose()


def test_config_key_is_validated_by_name_and_status_shows_the_counts() -> None:
    assert parse({**MINIMAL, "ocpp": {"request_budget_ms_per_s": 100}}).ocpp.request_budget_ms_per_s == 100.0
    assert parse(MINIMAL).ocpp.request_budget_ms_per_s == 250.0
    for bad in (0, 5000, "fast"):
        with pytest.raises(ConfigError) as error:
            parse({**MINIMAL, "ocpp": {"request_budget_ms_per_s": bad}})
        assert "ocpp.request_budget_ms_per_s" in str(error.value)
    stats = BudgetStats(rate_ms_per_s=250.0, delayed=4, refused=2, last_refused_wall=0.0)
    status = {"station": {"id": "CP1", "version": "x", "uptime_s": 1, "faults": [], "tasks": {},
                          "ocpp": {"version": "2.0.1", "link": "Connected", "request_budget": stats.as_dict()}},
              "connectors": []}
    assert "CSMS requests over budget (250.0 ms/s): 4 delayed, 2 refused" in render_status(status)
