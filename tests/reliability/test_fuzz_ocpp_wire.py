"""Fuzzing the agent from a hostile central system over a real websocket on 127.0.0.1.

The in-memory fuzzer (test_fuzz_ocpp.py) throws many frames at the session; this one plays the whole
conversation the way a hostile CSMS would: its CALLs carry non-finite and overflowing numbers, absurd
timestamps, smart-charging profiles and schedule requests of maximal cost, maximal local lists and pricing
messages; its *replies* to the agent's own CALLs are fuzzed too (Heartbeat/BootNotification currentTime in
year 9999, transactionId 2**70, idTagInfo of every shape, CALLERRORs, wrong types), and stray CALLRESULTs and
CALLERRORs for ids never sent (up to 60 kB each, under the 64 KiB frame cap) arrive in between. A session is
charging underneath, so the durable outbox is exercised by the fuzzed replies.

Budgets checked after every batch: every CSMS CALL answered exactly once; the agent's event-loop lag; the
agent thread's CPU time per frame; RSS growth; bytes logged.

The event-loop lag counted is the part the agent's process caused, not the part the machine's scheduler
caused (``StallMeter``): in a full `make test` (2 xdist workers, the agents other tests start, on 2 cores)
the loop thread was seen late by up to 1.2 s (1.55 s once) of which all but ~0.1 s it spent runnable in the
kernel's run queue, waiting for a CPU (its /proc schedstat), with ~0.1 s on a CPU: starvation of the whole
process, which no agent code can prevent, and it made the test fail now and then. So a late wake-up counts
its wall time minus the loop thread's run-queue wait (and, of the time the loop thread was blocked, minus
the longest run-queue wait of another thread of the process: a starved GIL holder blocks the loop). What
is left is time on a CPU running callbacks plus time blocked in a syscall (an fsync, a disk read, a lock):
a blocking call of ours on the loop shows as either, and is still caught with the same 1.0 s bound (checked
by injecting a 1.2 s time.sleep and a 1.2 s busy loop into the loop under load: 1.19 / 1.20 s counted out
of 1.3 / 9.4 s wall). Where /proc has no schedstat the whole wall lag counts. Intervals that began while
the loop was not running at all (between two batches, while hypothesis draws the next one) are not the
agent's lag and do not count. After the fuzzing the CSMS turns honest and the
agent must show that nothing was wedged or killed: its clock is re-synced, the heartbeat task beats at a new
interval, status timestamps are sane, and the outbox drains to empty."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import os
import threading
import time
from collections import deque
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.protocol import State

from agent.config import load
from agent.ocpp.v16.link import Backoff
from agent.ocpp.v16.service import OcppService
from agent.station import Station
from hal.tasks import cancel_and_wait
from simulator.rig import Rig, RigOptions
from tests.reliability.harness import SOAK
from tests.reliability.test_fuzz_ocpp import ERROR_CODES, VALID, json_value

BATCH = 12
EXAMPLES = 1000 if SOAK else 150  # x BATCH CSMS frames, plus the fuzzed replies and strays
CP = "FUZZWIRE"
TAG = "DEADBEEF01"
SECRET = "0123456789abcdef0123"  # an AuthorizationKey the CSMS sets in many spellings: never logged

# Budgets. Generous for a loaded 2-core CI machine, yet each defect of issue 11 blows one of them by far
# (an 11 s composite schedule, a 100 MB log, RSS +100 MB, an unanswered CALL, a dead heartbeat).
MAX_LOOP_LAG_S = 1.0
MAX_CPU_PER_FRAME_S = 0.25  # average agent-thread CPU per CSMS frame in one batch
MAX_RSS_GROWTH_MB = 80.0
MAX_LOG_BYTES = 200_000  # at INFO and above (the production level); DEBUG frames are on but not counted
ANSWER_WITHIN_S = 20.0

finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6)
hostile_number = st.one_of(
    st.integers(-10, 100), st.integers(-(2**80), 2**80), finite,
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 1e-320, 2**63, 2**64, 10**30]),
)
hostile_time = st.one_of(
    st.just("now"),
    st.sampled_from(["9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00", "2099-01-01T00:00:00Z",
                     "1970-01-01T00:00:00Z", "2024-02-30T00:00:00Z", "not a time", "", "+275760-09-13T00:00:00Z"]),
    st.integers(-(2**40), 2**40), st.none(),
)
id_tag_info = st.one_of(
    st.fixed_dictionaries({"status": st.sampled_from(["Accepted", "Blocked", "Expired", "Invalid",
                                                      "ConcurrentTx", "Bogus"])},
                          optional={"parentIdTag": st.text(max_size=25), "expiryDate": hostile_time}),
    json_value,
)


def _limits() -> st.SearchStrategy[list[dict[str, Any]]]:
    period = st.fixed_dictionaries({"startPeriod": st.one_of(st.integers(0, 86400), hostile_number),
                                    "limit": hostile_number},
                                   optional={"numberPhases": hostile_number})
    return st.one_of(st.lists(period, min_size=1, max_size=30),
                     # the most expensive valid shape: a daily recurring profile with 24 hourly periods
                     st.just([{"startPeriod": h * 3600, "limit": 6.0 + h % 10} for h in range(24)]))


charging_profile = st.fixed_dictionaries({
    "chargingProfileId": st.one_of(st.integers(1, 20), hostile_number),
    "stackLevel": st.one_of(st.integers(0, 5), hostile_number),
    "chargingProfilePurpose": st.sampled_from(["TxDefaultProfile", "ChargePointMaxProfile", "TxProfile"]),
    "chargingProfileKind": st.sampled_from(["Absolute", "Recurring", "Relative"]),
    "chargingSchedule": st.fixed_dictionaries(
        {"chargingRateUnit": st.sampled_from(["A", "W"]), "chargingSchedulePeriod": _limits()},
        optional={"duration": st.one_of(st.integers(0, 10**9), hostile_number),
                  "startSchedule": hostile_time, "minChargingRate": hostile_number}),
}, optional={"recurrencyKind": st.sampled_from(["Daily", "Weekly"]), "validFrom": hostile_time,
             "validTo": hostile_time, "transactionId": hostile_number})

HOSTILE: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    **VALID,
    "SetChargingProfile": st.fixed_dictionaries({"connectorId": st.integers(0, 2),
                                                 "csChargingProfiles": charging_profile}),
    "RemoteStartTransaction": st.fixed_dictionaries({"idTag": st.just(TAG)},
                                                    optional={"connectorId": st.integers(0, 2),
                                                              "chargingProfile": charging_profile}),
    "GetCompositeSchedule": st.fixed_dictionaries(
        {"connectorId": st.integers(0, 2), "duration": st.one_of(st.integers(0, 10**10), hostile_number)},
        optional={"chargingRateUnit": st.sampled_from(["A", "W"])}),
    "SendLocalList": st.fixed_dictionaries({
        "listVersion": st.one_of(st.integers(-1, 5), hostile_number),
        "updateType": st.sampled_from(["Full", "Differential"]),
    }, optional={"localAuthorizationList": st.one_of(
        st.lists(st.fixed_dictionaries({"idTag": st.text(min_size=1, max_size=20)},
                                       optional={"idTagInfo": id_tag_info}), max_size=4),
        st.integers(1, 300).map(lambda n: [{"idTag": f"T{i:07d}", "idTagInfo": {"status": "Accepted"}}
                                            for i in range(n)]))}),
    "DataTransfer": st.fixed_dictionaries({"vendorId": st.just("org.openchargealliance.costmsg"),
                                           "messageId": st.sampled_from(["SetUserPrice", "RunningCost", "FinalCost",
                                                                         "Other"])},
                                          optional={"data": st.one_of(
                                              json_value.map(json.dumps), st.text(max_size=40),
                                              st.sampled_from(['{"transactionId":1,"cost":"1E+999999"}',
                                                               '{"transactionId":1,"cost":1e400}',
                                                               '{"transactionId":1,"cost":NaN}',
                                                               '{"transactionId":99999999999999999999,"cost":1}']),
                                              st.integers(10, 3000).map(lambda n: "[" * n + "]" * n))}),
    "ChangeConfiguration": st.one_of(
        st.fixed_dictionaries({
            "key": st.sampled_from(["MinimumStatusDuration", "HeartbeatInterval", "MeterValueSampleInterval",
                                    "ClockAlignedDataInterval", "TransactionMessageAttempts",
                                    "TransactionMessageRetryInterval", "ConnectionTimeOut"]),
            "value": st.one_of(st.sampled_from(["0", "1", "10", "1000000000000000000", "-1", "٣٦٠٠",
                                                "1e3"]), st.text(max_size=12))}),
        st.fixed_dictionaries({"key": st.sampled_from(["AuthorizationKey", "authorizationkey", "AUTHORIZATIONKEY"]),
                               "value": st.just(SECRET)})),
}


@st.composite
def csms_calls(draw: st.DrawFn) -> list[Any]:
    action = draw(st.sampled_from(sorted(HOSTILE)))
    return [2, "id", action, dict(draw(HOSTILE[action]))]


def stray(kind: str, size: int) -> list[Any]:
    if kind == "result":
        return [3, f"never-sent-{size}", {"pad": "x" * size}]
    return [4, f"never-sent-{size}", "GenericError", "y" * min(size, 1000), {"pad": "z" * size}]


strays = st.builds(stray, st.sampled_from(["result", "error"]),
                   st.one_of(st.integers(0, 100), st.integers(1000, 60_000)))  # under MAX_FRAME_BYTES
frames = st.one_of(csms_calls(), csms_calls(), csms_calls(), strays)


def good_reply(action: str) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    if action == "BootNotification":
        return {"status": "Accepted", "currentTime": now, "interval": 300}
    if action == "Heartbeat":
        return {"currentTime": now}
    if action in ("Authorize", "StopTransaction"):
        return {"idTagInfo": {"status": "Accepted"}}
    if action == "StartTransaction":
        return {"transactionId": 7, "idTagInfo": {"status": "Accepted"}}
    if action == "DataTransfer":
        return {"status": "Accepted"}
    return {}


@st.composite
def replies(draw: st.DrawFn) -> Any:
    """How the hostile CSMS answers one of the agent's CALLs: a function of the action."""
    kind = draw(st.sampled_from(["good", "mutated", "mutated", "mutated", "error", "wrong-type", "junk"]))
    fields = {"currentTime": draw(hostile_time), "interval": draw(hostile_number),
              "transactionId": draw(hostile_number), "idTagInfo": draw(id_tag_info),
              "status": draw(st.sampled_from(["Accepted", "Rejected", "Pending", "Bogus"])),
              "extra": draw(json_value)}
    code = draw(st.sampled_from([*sorted(ERROR_CODES), "NoSuchCode"]))
    chosen = draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=3, unique=True))

    def reply(action: str, uid: str) -> list[Any]:
        if kind == "good":
            return [3, uid, good_reply(action)]
        if kind == "error":
            return [4, uid, code, "hostile", {}]
        if kind == "wrong-type":
            return [3, uid, [fields["extra"]]]
        if kind == "junk":
            return [3, uid, fields["extra"] if isinstance(fields["extra"], dict) else {"x": fields["extra"]}]
        payload = good_reply(action)
        for name in chosen:
            value = fields[name]
            if name == "currentTime" and value == "now":
                continue
            if action == "BootNotification" and name == "status":
                continue  # a Rejected boot silences the agent by design (1.6 §4.2): not a defect to look for
            payload[name] = value
        return [3, uid, payload]

    return reply


class HostileCsms:
    """A websocket server on 127.0.0.1 in its own thread and event loop, scripted by the test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0
        self.connections = 0
        self.ws: Any = None
        self.reply_plan: deque[Any] = deque()
        self.honest = False
        self.agent_calls: list[tuple[float, str, dict[str, Any]]] = []  # (time, action, payload)
        self.answers: dict[str, int] = {}  # unique id of our CALL -> answers seen
        self.answer_payloads: dict[str, Any] = {}
        self.bad_answers: list[str] = []
        self._stop: asyncio.Future[None] | None = None

    def start(self) -> None:
        self.thread.start()
        assert self.ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = self.loop.create_future()
        async with websockets.serve(self._handle, "127.0.0.1", 0, subprotocols=["ocpp1.6"], max_size=None,
                                    compression=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            self.ready.set()
            await self._stop

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(lambda: self._stop and not self._stop.done() and self._stop.set_result(None))
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()

    async def _handle(self, ws: Any) -> None:
        self.connections += 1
        self.ws = ws
        try:
            async for raw in ws:
                self._received(ws, raw)
        except websockets.ConnectionClosed:
            pass

    def _received(self, ws: Any, raw: str | bytes) -> None:
        frame = json.loads(raw)  # the agent never sends anything but JSON
        if frame[0] == 2:
            _, uid, action, payload = frame
            self.agent_calls.append((time.time(), action, payload))
            if self.honest or (action == "BootNotification" and not any(
                    a == "BootNotification" for _, a, _ in self.agent_calls[:-1])):
                answer = [3, uid, good_reply(action)]
            elif self.reply_plan:
                answer = self.reply_plan.popleft()(action, uid)
            else:
                answer = [3, uid, good_reply(action)]
            self.loop.create_task(ws.send(json.dumps(answer)))
        elif frame[0] in (3, 4):
            uid = frame[1]
            self.answers[uid] = self.answers.get(uid, 0) + 1
            if frame[0] == 3 and len(frame) == 3:
                self.answer_payloads[uid] = frame[2]
            if frame[0] == 4 and (len(frame) != 5 or frame[2] not in ERROR_CODES):
                self.bad_answers.append(raw if isinstance(raw, str) else raw.decode(errors="replace"))
            if frame[0] == 3 and (len(frame) != 3 or not isinstance(frame[2], dict)):
                self.bad_answers.append(str(raw))

    def send(self, texts: list[str]) -> None:
        async def go() -> None:
            for text in texts:
                await self.ws.send(text)
        asyncio.run_coroutine_threadsafe(go(), self.loop).result(30)


class ByteCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.bytes = 0
        self.text: list[str] = []
        self.recent: deque[str] = deque(maxlen=40)  # what the agent said last, for a failure's message

    def emit(self, record: logging.LogRecord) -> None:
        message = self.format(record)
        if record.levelno >= logging.INFO:
            self.bytes += len(message)
        if record.levelno >= logging.INFO or record.name.startswith("cpagent.ocpp"):
            self.recent.append(f"{record.name} {record.levelname} {message[:200]}")
        if SECRET[:12] in message:
            self.text.append(message[:300])


class StallMeter:
    """Where the loop thread's time went between two probes: (on a CPU, waiting in the run queue) of the
    calling thread, and the run-queue wait of every other thread of the process (the kernel's
    /proc/self/task/<tid>/schedstat: ns on a CPU, ns runnable but waiting, timeslices)."""

    def __init__(self) -> None:
        self.own = threading.get_native_id()
        self._fds: dict[int, int] = {}
        self.available = self._fd(self.own) is not None

    def _fd(self, tid: int) -> int | None:
        if tid not in self._fds:
            try:
                self._fds[tid] = os.open(f"/proc/self/task/{tid}/schedstat", os.O_RDONLY)
            except OSError:
                return None
        return self._fds[tid]

    def sample(self) -> tuple[float, float, dict[int, float]]:
        """(own seconds on a CPU, own seconds waiting for one, {other thread: seconds waiting for one})."""
        if not self.available:
            return 0.0, 0.0, {}
        for name in os.listdir("/proc/self/task"):
            self._fd(int(name))
        waits: dict[int, float] = {}
        on_cpu = 0.0
        for tid, fd in list(self._fds.items()):
            try:
                fields = os.pread(fd, 128, 0).split()
            except OSError:  # the thread ended
                os.close(self._fds.pop(tid))
                continue
            if tid == self.own:
                on_cpu = int(fields[0]) / 1e9
            waits[tid] = int(fields[1]) / 1e9
        return on_cpu, waits.pop(self.own, 0.0), waits

    @staticmethod
    def ours(lag: float, before: tuple[float, float, dict[int, float]],
             after: tuple[float, float, dict[int, float]]) -> float:
        """The part of ``lag`` (wall) that was not the loop thread waiting for a CPU, nor blocked while
        another thread of the process (a GIL holder, say) waited for one: of the time the loop thread was
        blocked, the longest run-queue wait of one other thread does not count."""
        on_cpu, waiting = after[0] - before[0], after[1] - before[1]
        blocked = max(0.0, lag - on_cpu - waiting)
        others = max((after[2][tid] - before[2][tid] for tid in after[2] if tid in before[2]), default=0.0)
        return max(0.0, lag - waiting - min(blocked, others))

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


class Target:
    def __init__(self, directory: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.csms = HostileCsms()
        self.csms.start()
        self.rig = Rig(RigOptions(directory=directory, csms_url=f"ws://127.0.0.1:{self.csms.port}",
                                  charge_point_id=CP))
        self.loop.run_until_complete(self.rig.start())
        self.counter = ByteCounter()
        self.watched = [logging.getLogger(name) for name in ("", "cpagent", "websockets", "ocpp")]
        for logger in self.watched[1:]:
            logger.setLevel(logging.DEBUG)  # debug frames on: where a secret would leak
        logging.getLogger().addHandler(self.counter)
        self.max_lag = 0.0  # the agent's part of the worst lag since lag_from (StallMeter.ours)
        self.max_wall_lag = 0.0
        self.lag_parts = ""  # how the worst lag splits, for a failure's message
        self.lag_from = 0.0  # loop time: intervals that began earlier (loop not running) do not count
        self.stalls = StallMeter()
        self.frames = 0
        self.calls = 0
        self.next_id = 0
        self.key_changes = 0
        self.loop.run_until_complete(self._start())

    async def _start(self) -> None:
        config = load(self.rig.dir / "agent.toml")
        keys = {"MeterValueSampleInterval": "1", "TransactionMessageAttempts": "3",
                "TransactionMessageRetryInterval": "1", "MessageTimeout": "5", "WebSocketPingInterval": "0"}
        config = dataclasses.replace(config, ocpp=dataclasses.replace(config.ocpp, keys=keys))
        self.station = Station(config)
        self.service = OcppService(self.station, config, backoff=Backoff(base=0.05, cap=0.3, jitter=0.0))
        self.tasks = [asyncio.create_task(self.station.run()), asyncio.create_task(self.service.run()),
                      asyncio.create_task(self._lag_probe())]
        await self._until(lambda: any(a == "StatusNotification" for _, a, _ in self.csms.agent_calls), 15, "boot")
        # A session charges underneath, so its transaction messages meet the fuzzed replies.
        self.rig.control({"cmd": "plug", "connector": 1})
        await asyncio.sleep(0.5)
        await self.station.present_token(TAG, 1)
        self.rss0 = rss_mb()

    async def _lag_probe(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before, sched = loop.time(), self.stalls.sample()
            await asyncio.sleep(0.01)
            lag = loop.time() - before - 0.01
            if before < self.lag_from:
                continue
            self.max_wall_lag = max(self.max_wall_lag, lag)
            if lag <= self.max_lag:
                continue  # ours <= lag: cannot be a new worst
            after = self.stalls.sample()
            ours = StallMeter.ours(lag, sched, after) if self.stalls.available else lag
            if ours > self.max_lag:
                self.max_lag = ours
                self.lag_parts = (f"wall {lag:.2f} s, on a CPU {after[0] - sched[0]:.2f} s, waiting for a CPU "
                                  f"{after[1] - sched[1]:.2f} s")

    async def _until(self, predicate: Any, within: float, what: str) -> None:
        deadline = time.monotonic() + within
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.02)

    def encode(self, frame: list[Any]) -> tuple[str, str | None]:
        if frame[0] == 2:
            self.next_id += 1
            uid = f"hz{self.next_id}"
            return json.dumps([2, uid, frame[2], frame[3]]), uid
        return json.dumps(frame), None

    async def exchange(self, batch: list[list[Any]], plan: list[Any]) -> None:
        # A new AuthorizationKey makes the agent redial with it right after its answer (1.6 security
        # whitepaper): one such change per batch, sent last, so that no CALL of the batch meets the redial.
        relinks = [f for f in batch if f[0] == 2 and f[2] == "ChangeConfiguration" and f[3].get("value") == SECRET]
        batch = [f for f in batch if not any(f is r for r in relinks)]
        if relinks:  # each time a new key (a different one makes the agent redial): still secret, never logged
            self.key_changes += 1
            suffix = str(self.key_changes)
            batch.append([2, "id", "ChangeConfiguration", {**relinks[0][3], "value": SECRET[:-len(suffix)] + suffix}])
        connections = self.csms.connections
        await self._until(lambda: self.csms.ws is not None and self.csms.ws.state is State.OPEN, 20,
                          "the agent's connection")
        self.csms.reply_plan.extend(plan)
        texts, expected = [], []
        for frame in batch:
            text, uid = self.encode(frame)
            texts.append(text)
            if uid:
                expected.append(uid)
        self.frames += len(batch)
        self.calls += len(expected)
        cpu0 = time.thread_time()
        self.max_lag = 0.0
        self.lag_from = asyncio.get_running_loop().time()
        await asyncio.get_running_loop().run_in_executor(None, self.csms.send, texts)
        answers = self.csms.answers
        try:
            await self._until(lambda: all(uid in answers for uid in expected), ANSWER_WITHIN_S, "answers")
        except AssertionError:
            missing = [(u, t[:200]) for u, t in zip(expected, [t for t in texts if t.startswith("[2")], strict=True)
                       if u not in answers]
            recent = "\n".join(self.counter.recent)
            raise AssertionError(f"unanswered CALLs: {missing}; {self.csms.connections} connections; "
                                 f"the agent's last log lines:\n{recent}") from None
        cpu = time.thread_time() - cpu0
        assert all(answers[uid] == 1 for uid in expected), {u: answers[u] for u in expected}
        assert not self.csms.bad_answers, self.csms.bad_answers[:3]
        assert cpu / len(batch) <= MAX_CPU_PER_FRAME_S, f"agent CPU {cpu:.2f} s for {len(batch)} frames"
        assert self.max_lag <= MAX_LOOP_LAG_S, f"event loop lag {self.max_lag:.2f} s ({self.lag_parts})"
        growth = rss_mb() - self.rss0
        assert growth <= MAX_RSS_GROWTH_MB, f"RSS grew {growth:.0f} MB"
        assert self.counter.bytes <= MAX_LOG_BYTES, f"{self.counter.bytes} bytes logged at INFO and above"
        assert not self.counter.text, f"secret in the log: {self.counter.text[0]}"
        for task in self.tasks:
            assert not task.done(), f"agent task ended: {task}"
        if relinks and self.csms.answer_payloads.get(expected[-1]) == {"status": "Accepted"}:
            await self._until(lambda: self.csms.connections > connections, 20, "the redial with the new key")

    async def honest_again(self) -> None:
        """The CSMS turns honest: the agent must show that nothing was wedged or killed."""
        csms = self.csms
        csms.honest = True
        csms.reply_plan.clear()
        mark = time.time()
        # The clock re-syncs from a good Heartbeat.conf ...
        self.next_id += 1
        csms.send([json.dumps([2, f"hz{self.next_id}", "TriggerMessage", {"requestedMessage": "Heartbeat"}])])
        await self._until(lambda: any(t > mark and a == "Heartbeat" for t, a, _ in csms.agent_calls), 20,
                          "a triggered Heartbeat")
        await asyncio.sleep(0.5)
        # ... and the heartbeat task still runs: it beats at a new interval set over the websocket.
        mark = time.time()
        for text in ([2, "hb-interval", "ChangeConfiguration", {"key": "HeartbeatInterval", "value": "1"}],
                     [2, "mv-interval", "ChangeConfiguration", {"key": "MinimumStatusDuration", "value": "0"}],
                     [2, "status", "TriggerMessage", {"requestedMessage": "StatusNotification", "connectorId": 1}]):
            csms.send([json.dumps(text)])
        await self._until(lambda: sum(t > mark and a == "Heartbeat" for t, a, _ in csms.agent_calls) >= 2, 30,
                          "two periodic Heartbeats at the new 1 s interval")
        statuses = [p for t, a, p in csms.agent_calls if t > mark and a == "StatusNotification"]
        assert statuses, "no StatusNotification after the trigger"
        for payload in statuses:
            stamp = datetime.fromisoformat(payload["timestamp"].replace("Z", "+00:00"))
            assert abs(stamp - datetime.now(UTC)) < timedelta(minutes=5), f"clock not re-synced: {payload}"
        # The outbox is not wedged: every queued transaction message is delivered or dropped by its rules.
        await self._until(lambda: self.service.outbox.depth() == 0, 60, "an empty outbox")

    def close(self) -> None:
        self.loop.run_until_complete(cancel_and_wait(*self.tasks))
        self.loop.run_until_complete(asyncio.wait_for(self.service.stop(), 10))
        self.station.close()
        self.stalls.close()
        self.loop.run_until_complete(self.rig.stop())
        self.loop.close()
        self.csms.stop()
        logging.getLogger().removeHandler(self.counter)
        for logger in self.watched[1:]:
            logger.setLevel(logging.NOTSET)


@pytest.mark.timeout(600)
def test_hostile_csms_over_a_websocket_within_budgets(tmp_path: Path) -> None:
    target = Target(tmp_path)
    try:
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.large_base_example])
        @given(batch=st.lists(frames, min_size=BATCH, max_size=BATCH), plan=st.lists(replies(), max_size=6))
        def run(batch: list[list[Any]], plan: list[Any]) -> None:
            target.loop.run_until_complete(target.exchange(batch, plan))

        run()
        target.loop.run_until_complete(target.honest_again())
        print(f"\nOCPP wire fuzz: {target.frames} frames, {target.calls} CALLs answered, "
              f"{len(target.csms.agent_calls)} agent CALLs with fuzzed replies, {target.csms.connections} connections, "
              f"log (INFO+) {target.counter.bytes} B, RSS +{rss_mb() - target.rss0:.0f} MB")
    finally:
        target.close()


def test_stall_meter_counts_the_agents_part_of_a_lag() -> None:
    ours = StallMeter.ours
    zero: tuple[float, float, dict[int, float]] = (0.0, 0.0, {7: 0.0, 8: 0.0})
    # starved: 1.5 s late, 1.4 s of it waiting for a CPU -> 0.1 s is ours
    assert ours(1.5, zero, (0.1, 1.4, {7: 0.0, 8: 0.0})) == pytest.approx(0.1)
    # a busy callback: 1.2 s on a CPU, late by that plus 0.3 s of waiting -> 1.2 s
    assert ours(1.5, zero, (1.2, 0.3, {7: 0.0, 8: 0.0})) == pytest.approx(1.2)
    # blocked 1.2 s (an fsync, a sleep) while no other thread waited for a CPU -> all of it
    assert ours(1.2, zero, (0.0, 0.0, {7: 0.05, 8: 0.0})) == pytest.approx(1.15)
    # blocked while a GIL holder waited 0.9 s for a CPU: that much is not ours; a second starved thread
    # does not add up (one holds the GIL at a time), a thread that appeared meanwhile does not count
    assert ours(1.2, zero, (0.0, 0.0, {7: 0.9, 8: 0.8, 9: 5.0})) == pytest.approx(0.3)
    # others' waiting never takes away time on a CPU or more than the blocked time
    assert ours(1.2, zero, (1.0, 0.0, {7: 5.0, 8: 0.0})) == pytest.approx(1.0)


def test_stall_meter_reads_this_threads_cpu_time() -> None:
    meter = StallMeter()
    try:
        if not meter.available:
            pytest.skip("no /proc/self/task/<tid>/schedstat here: the lag probe counts the whole wall lag")
        before = meter.sample()
        end = time.thread_time() + 0.05
        while time.thread_time() < end:
            pass
        after = meter.sample()
        assert after[0] - before[0] >= 0.04 and after[1] >= before[1]
    finally:
        meter.close()
