"""Hostile OCPP 2.0.1 central system of `bench/safety_latency.py --hostile --ocpp 2.0.1` (issue 14), in a
process of its own like bench/_hostile_csms.py (whose connection handling it reuses). It fills the agent
with the most the agent allows and then asks, in parallel lanes with one CALL outstanding each, for the
most expensive reports of functional blocks K and B, back to back:

- setup: GetVariables SmartChargingCtrlr.PeriodsPerSchedule / ProfileStackLevel; a Daily recurring
  ChargingStationMaxProfile with PeriodsPerSchedule periods on EVSE 0, then TxDefaultProfiles with as
  many periods on every EVSE (0 and each EVSE seen in a StatusNotification) and every stack level until
  the agent refuses one (its Entries.ChargingProfiles maximum); limits never below 16 A so that the board
  player's sessions keep charging;
- composite: GetCompositeSchedule with duration 2^31-1 s round EVSE 0..n (the agent clips to its own cap);
- profiles: GetChargingProfiles for every installed profile, timed until the last ReportChargingProfiles
  (tbc false) has arrived;
- base_report: GetBaseReport FullInventory, timed until the last NotifyReport (tbc false) has arrived.

Each time is from sending the CALL to the answer (composite) or to the last report: the network side's
work plus two loopback hops, plus the wait the agent's request budget imposes ([ocpp] request_budget_ms_per_s,
agent/ocpp/budget.py: expensive requests wait, one at a time, while the CSMS is over budget, so the lanes'
rates show the budget; a refusal is a CALLERROR GenericError, counted in ``callerrors``).
HOSTILE_LANES=composite,profiles,... runs only those lanes.
Prints {"port": P} when listening; on SIGTERM the figures as one JSON line. Usage: python
bench/_hostile_csms201.py TAG WORKDIR
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from websockets.asyncio.server import serve
from websockets.typing import Subprotocol

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _hostile_csms as base  # the 1.6 hostile CSMS next to this file

ALL_LANES = ("composite", "profiles", "base_report")
LANES = [lane for lane in os.environ.get("HOSTILE_LANES", ",".join(ALL_LANES)).split(",") if lane]
COMPOSITE_DURATION = 2**31 - 1
REPORT_TIMEOUT_S = 60.0
REPORTS = {"ReportChargingProfiles": "profiles", "NotifyReport": "base_report"}


class HostileCsms201(base.HostileCsms):
    def __init__(self, tag: str, workdir: Path) -> None:
        super().__init__(tag, workdir)
        self.times: dict[str, list[float]] = {lane: [] for lane in ALL_LANES}
        self.waiting: dict[int, asyncio.Future[None]] = {}  # requestId -> its last report arrived
        self.report_sizes: dict[str, list[tuple[int, int, int]]] = {"profiles": [], "base_report": []}
        self._current: dict[int, list[int]] = {}  # requestId -> [messages, items, bytes] so far
        self.request_ids = itertools.count(1)
        self.installed = 0
        self.refused_with = ""

    def answer(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        self.counters["in_" + action] += 1
        if action == "BootNotification":
            self.booted.set()
            return {"status": "Accepted", "currentTime": base.now_iso(), "interval": 300}
        if action == "Heartbeat":
            return {"currentTime": base.now_iso()}
        if action == "Authorize":
            return {"idTokenInfo": {"status": "Accepted"}}
        if action == "TransactionEvent":
            return {"idTokenInfo": {"status": "Accepted"}} if "idToken" in payload else {}
        if action == "StatusNotification":
            if isinstance(payload.get("evseId"), int) and payload["evseId"] > 0:
                self.connector_ids.add(payload["evseId"])
            return {}
        if action in REPORTS and isinstance(payload.get("requestId"), int):
            rid = payload["requestId"]
            items = payload.get("chargingProfile" if action == "ReportChargingProfiles" else "reportData", [])
            size = len(json.dumps(payload, separators=(",", ":")))
            sofar = self._current.setdefault(rid, [0, 0, 0])
            sofar[0] += 1
            sofar[1] += len(items) if isinstance(items, list) else 0
            sofar[2] += size
            if not payload.get("tbc", False):
                self.report_sizes[REPORTS[action]].append(tuple(self._current.pop(rid)))  # type: ignore[arg-type]
                future = self.waiting.get(rid)
                if future is not None and not future.done():
                    future.set_result(None)
            return {}
        return {}  # MeterValues, NotifyEvent, SecurityEventNotification, ...: empty answers are valid

    # -- setup: the most the agent allows ---------------------------------------------------------

    async def variables(self) -> dict[str, int]:
        answer = await self.call("GetVariables", {"getVariableData": [
            {"component": {"name": "SmartChargingCtrlr"}, "variable": {"name": name}}
            for name in ("PeriodsPerSchedule", "ProfileStackLevel")]})
        out: dict[str, int] = {}
        for result in (answer or {}).get("getVariableResult", []):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                out[result["variable"]["name"]] = int(result["attributeValue"])
        return out

    async def setup(self) -> None:
        await self.booted.wait()
        await asyncio.sleep(2.0)  # the StatusNotifications name the EVSEs
        limits = await self.variables()
        periods = limits.get("PeriodsPerSchedule", 24)
        stack_levels = limits.get("ProfileStackLevel", 10)
        self.connector_ids = self.connector_ids or {1}
        midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        start = midnight.isoformat().replace("+00:00", "Z")
        ids = itertools.count(1)

        def profile(purpose: str, stack: int, values: tuple[float, ...], shift: int) -> dict[str, Any]:
            pid = next(ids)
            step = 86400 // periods
            return {"id": pid, "stackLevel": stack, "chargingProfilePurpose": purpose,
                    "chargingProfileKind": "Recurring", "recurrencyKind": "Daily",
                    "chargingSchedule": [{"id": pid, "startSchedule": start, "chargingRateUnit": "A",
                                          "duration": 86400, "chargingSchedulePeriod": [
                                              {"startPeriod": 0 if i == 0 else i * step - shift,
                                               "limit": values[i % len(values)]} for i in range(periods)]}]}

        async def install(evse: int, body: dict[str, Any]) -> bool:
            answer = await self.call("SetChargingProfile", {"evseId": evse, "chargingProfile": body})
            if answer is not None and answer.get("status") == "Accepted":
                self.installed += 1
                return True
            self.refused_with = json.dumps(answer)[:200]
            return False

        await install(0, profile("ChargingStationMaxProfile", 0, (500.0, 480.0), 7))
        for stack in range(stack_levels + 1):
            for evse in [0, *sorted(self.connector_ids)]:
                if not await install(evse, profile("TxDefaultProfile", stack, (32.0, 24.0, 20.0, 16.0), stack)):
                    self.counters["schedule_periods"] = periods
                    self.load_started = time.monotonic()
                    return
        self.counters["schedule_periods"] = periods
        self.load_started = time.monotonic()

    # -- lanes -------------------------------------------------------------------------------------

    async def composite_lane(self) -> None:
        for evse in itertools.cycle([0, *sorted(self.connector_ids)]):
            t0 = time.perf_counter()
            answer = await self.call("GetCompositeSchedule", {
                "duration": COMPOSITE_DURATION, "evseId": evse, "chargingRateUnit": "A"})
            if answer and answer.get("status") == "Accepted":
                self.times["composite"].append((time.perf_counter() - t0) * 1000.0)
                periods = len(answer.get("schedule", {}).get("chargingSchedulePeriod", []))
                self.counters["composite_periods_max"] = max(self.counters["composite_periods_max"], periods)
            elif answer is not None:
                self.counters["composite_not_accepted"] += 1

    async def report_lane(self, lane: str, action: str, payload: dict[str, Any]) -> None:
        while True:
            rid = next(self.request_ids)
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.waiting[rid] = future
            t0 = time.perf_counter()
            try:
                answer = await self.call(action, {"requestId": rid, **payload})
                if answer is None or answer.get("status") != "Accepted":
                    self.counters[f"{lane}_not_accepted"] += 1
                    await asyncio.sleep(0.5)
                    continue
                try:
                    async with asyncio.timeout(REPORT_TIMEOUT_S):
                        await future
                except TimeoutError:
                    self.counters[f"{lane}_incomplete"] += 1
                    continue
                self.times[lane].append((time.perf_counter() - t0) * 1000.0)
            finally:
                self.waiting.pop(rid, None)

    # -- run ---------------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with serve(self.handler, "127.0.0.1", 0, subprotocols=[Subprotocol("ocpp2.0.1")],
                         compression=None, max_size=None, ping_interval=None) as server:
            print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
            lanes: list[asyncio.Task[None]] = []

            async def start_lanes() -> None:
                await self.setup()
                coroutines: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
                    "composite": self.composite_lane,
                    "profiles": lambda: self.report_lane("profiles", "GetChargingProfiles", {"chargingProfile": {}}),
                    "base_report": lambda: self.report_lane("base_report", "GetBaseReport",
                                                            {"reportBase": "FullInventory"})}
                lanes.extend(asyncio.create_task(coroutines[lane]()) for lane in LANES)

            starter = asyncio.create_task(start_lanes())
            await stop.wait()
            stopped = time.monotonic()
            for task in (starter, *lanes):
                task.cancel()
            await asyncio.gather(starter, *lanes, return_exceptions=True)
        return self.figures(stopped)

    def figures(self, stopped: float) -> dict[str, Any]:
        c = self.counters
        window = stopped - self.load_started if self.load_started is not None else 0.0
        out: dict[str, Any] = {
            **({} if LANES == list(ALL_LANES) else {"lanes": ",".join(LANES) or "none"}),
            "ocpp": "2.0.1",
            "load_window_s": round(window, 1),
            "profiles_installed": self.installed,
            "profile_refused_with": self.refused_with,
            "schedule_periods": c["schedule_periods"],
            "composite_periods_max": c["composite_periods_max"],
        }
        for lane in ALL_LANES:
            values = sorted(self.times[lane])
            out[f"{lane}_n"] = len(values)
            if values:
                out[f"{lane}_p50_ms"] = round(statistics.median(values), 2)
                out[f"{lane}_p99_ms"] = round(values[min(len(values) - 1, int(0.99 * len(values)))], 2)
                out[f"{lane}_max_ms"] = round(values[-1], 2)
                out[f"{lane}_per_s"] = round(len(values) / window, 1) if window > 0 else 0.0
        for lane, sizes in self.report_sizes.items():
            if sizes:
                messages, items, size = sizes[-1]
                out[f"{lane}_messages"] = messages
                out[f"{lane}_items"] = items
                out[f"{lane}_bytes"] = size
        out.update({
            "reconnects": max(0, c["connections"] - 1),
            "transaction_events_received": c["in_TransactionEvent"],
            "calls_lost": sum(v for k, v in c.items() if k.startswith("calls_lost_")),
            "calls_timed_out": sum(v for k, v in c.items() if k.startswith("calls_timed_out_")),
            "callerrors": sum(v for k, v in c.items() if k.startswith("callerror ")),
            "not_accepted": {k: v for k, v in c.items() if k.endswith(("_not_accepted", "_incomplete"))},
        })
        return out


def main() -> None:
    tag, workdir = sys.argv[1], Path(sys.argv[2])
    print(json.dumps(asyncio.run(HostileCsms201(tag, workdir).run())), flush=True)


if __name__ == "__main__":
    main()
