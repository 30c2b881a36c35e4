"""A per-connection budget of network-side CPU time for the CSMS's requests, for both OCPP versions.

Every request the CSMS can send has a bounded cost (durations, periods, entries, chunk sizes), but not the
RATE of the expensive ones: a CSMS asking back to back for the largest GetCompositeSchedule, GetBaseReport or
GetChargingProfiles keeps the network side at 100 % of a core, which the control side feels on a 2-core
board. ``RequestBudget`` is a token bucket of CPU seconds, refilled at ``[ocpp] request_budget_ms_per_s``
milliseconds per second up to ``BURST_S`` seconds' worth:

- every incoming CALL is metered: the CPU time (``time.thread_time``) of each step of its handling -- schema
  check, handler, reply, after-hook (the ReportChargingProfiles / NotifyReport chunks it sends) -- is taken
  from the bucket as it is spent, waits for the network or a lock cost nothing;
- an expensive request (``is_expensive``: the reports, composite schedules, full local lists, uploads, big
  DataTransfers) waits for its turn, one at a time per connection, until the bucket is no longer in debt, so
  the CSMS's own one-CALL-at-a-time rule throttles it to the budget; one that would wait more than
  ``MAX_DELAY_S``, or finds ``MAX_WAITING`` others already waiting, is refused at once with CALLERROR
  GenericError (OCPP-J 1.6 section 4.2.3 and 2.0.1 Part 4 section 4.3: "any other error not covered by the more
  specific error codes"), whose description says when to retry;
- cheap requests (Reset, RemoteStop / RequestStopTransaction, ChangeAvailability, TriggerMessage, ...) are
  charged too but never delayed nor refused.

The first delay or refusal of a burst is logged once (WARNING), its end -- an expensive request admitted
with the bucket at least half full again -- with the counts (INFO); the counts since start (``BudgetStats``,
kept by the link across connections) are in `cpctl status`.

    budget = RequestBudget(250.0, stats=link_stats)
    refusal = await budget.admit("GetBaseReport", payload)   # None: go on; else the CALLERROR description
    if refusal is None:
        await budget.metered(answer(call))                   # its CPU time is charged step by step
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from agent.config import REQUEST_BUDGET_MS_PER_S, REQUEST_BUDGET_RANGE

LOG = logging.getLogger("cpagent.ocpp.budget")

# [ocpp] request_budget_ms_per_s, by default a quarter of a core (agent/config.py). A normal CSMS (a
# FullInventory report at boot, a composite schedule a minute) spends a few per cent of that; the bucket holds
# BURST_S seconds' worth so that even a slow board answers a boot's worth of reports back to back at once.
DEFAULT_MS_PER_S = REQUEST_BUDGET_MS_PER_S
MIN_MS_PER_S, MAX_MS_PER_S = REQUEST_BUDGET_RANGE
BURST_S = 8.0
MAX_DELAY_S = 10.0  # well under the CSMS's usual MessageTimeout (30 s)
MAX_WAITING = 4  # expensive requests queued per connection (the CSMS should have one CALL outstanding)
BIG_DATA_CHARS = 1024  # a DataTransfer whose data is longer is expensive (vendor handlers parse it)

# Both versions' names (they do not collide): each answers with reports, uploads or large computed results.
EXPENSIVE_ACTIONS = frozenset({
    "GetCompositeSchedule", "GetChargingProfiles", "GetConfiguration", "GetDiagnostics", "GetLog",
    "GetBaseReport", "GetReport", "GetMonitoringReport", "GetDisplayMessages", "CustomerInformation",
    "GetInstalledCertificateIds",
})


def is_expensive(action: str, payload: Mapping[str, Any]) -> bool:
    """Whether a CSMS request is subject to the budget's delay / refusal (all are charged)."""
    if action in EXPENSIVE_ACTIONS:
        return True
    if action == "SendLocalList":  # Full replaces the whole list; a Differential is bounded and usually small
        return payload.get("updateType") == "Full"
    if action == "DataTransfer":
        data = payload.get("data")
        return data is not None and len(data if isinstance(data, str) else repr(data)) > BIG_DATA_CHARS
    return False


@dataclass
class BudgetStats:
    """Counts since start, over all connections (`cpctl status`)."""

    rate_ms_per_s: float = DEFAULT_MS_PER_S
    charged_s: float = 0.0  # CPU seconds spent on the CSMS's requests
    delayed: int = 0
    delay_s: float = 0.0
    refused: int = 0
    bursts: int = 0
    refused_by_action: dict[str, int] = field(default_factory=dict)
    last_refused_wall: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "rate_ms_per_s": self.rate_ms_per_s,
            "charged_s": round(self.charged_s, 3),
            "delayed": self.delayed,
            "delay_s": round(self.delay_s, 3),
            "refused": self.refused,
            "bursts": self.bursts,
            "refused_by_action": dict(self.refused_by_action),
            "last_refused_wall": self.last_refused_wall,
        }


T = TypeVar("T")


class _Metered:
    """Drives a coroutine and charges the CPU time of each of its steps (its own and what it awaits
    directly; not other tasks') to ``charge``, as it is spent."""

    __slots__ = ("_charge", "_clock", "_coroutine")

    def __init__(self, coroutine: Coroutine[Any, Any, Any], charge: Callable[[float], None],
                 clock: Callable[[], float]) -> None:
        self._coroutine = coroutine
        self._charge = charge
        self._clock = clock

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine, charge, clock = self._coroutine, self._charge, self._clock
        value: Any = None
        error: BaseException | None = None
        while True:
            t0 = clock()
            try:
                yielded = coroutine.throw(error) if error is not None else coroutine.send(value)
            except StopIteration as stop:
                charge(clock() - t0)
                return stop.value
            except BaseException:
                charge(clock() - t0)
                raise
            charge(clock() - t0)
            try:
                value, error = (yield yielded), None
            except BaseException as exc:  # CancelledError, GeneratorExit: into the coroutine
                value, error = None, exc


class RequestBudget:
    """The token bucket of one connection. See the module docstring."""

    def __init__(self, ms_per_s: float = DEFAULT_MS_PER_S, *, burst_s: float = BURST_S,
                 max_delay_s: float = MAX_DELAY_S, max_waiting: int = MAX_WAITING,
                 stats: BudgetStats | None = None, name: str = "",
                 monotonic: Callable[[], float] = time.monotonic,
                 cpu_clock: Callable[[], float] = time.thread_time,
                 sleep: Callable[[float], Coroutine[Any, Any, None]] = asyncio.sleep) -> None:
        if not MIN_MS_PER_S <= ms_per_s <= MAX_MS_PER_S:
            raise ValueError(f"request budget must be {MIN_MS_PER_S:g}..{MAX_MS_PER_S:g} ms/s, got {ms_per_s}")
        self.rate = ms_per_s / 1000.0  # CPU seconds per second
        self.capacity = self.rate * burst_s
        self.max_delay_s = max_delay_s
        self.max_waiting = max_waiting
        self.stats = stats if stats is not None else BudgetStats()
        self.stats.rate_ms_per_s = ms_per_s
        self.name = name
        self._monotonic = monotonic
        self._cpu_clock = cpu_clock
        self._sleep = sleep
        self._tokens = self.capacity
        self._at = monotonic()
        self._turn = asyncio.Lock()
        self._waiting = 0
        self._burst: list[int] | None = None  # [delayed, refused] while over budget

    @property
    def tokens(self) -> float:
        """CPU seconds left (negative: in debt), refilled up to now."""
        now = self._monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now
        return self._tokens

    def charge(self, seconds: float) -> None:
        if seconds > 0.0:
            self._tokens = self.tokens - seconds
            self.stats.charged_s += seconds

    def metered(self, coroutine: Coroutine[Any, Any, T]) -> Coroutine[Any, Any, T]:
        """``coroutine`` with its CPU time charged step by step."""

        async def run() -> T:
            result: T = await _Metered(coroutine, self.charge, self._cpu_clock)
            return result

        return run()

    async def admit(self, action: str, payload: Mapping[str, Any]) -> str | None:
        """Wait until ``action`` may run; None when it may, else why it is refused (the CALLERROR's
        description). Cheap actions always run at once."""
        if not is_expensive(action, payload):
            return None
        if self._waiting >= self.max_waiting:
            return self._refuse(action, f"{self._waiting} requests already wait")
        self._waiting += 1
        started = self._monotonic()
        try:
            async with self._turn:
                debt = -self.tokens
                if debt <= 0.0:
                    if self._tokens >= self.capacity / 2:  # hysteresis: one burst, not one per request
                        self._recovered()
                    return None
                wait = debt / self.rate
                waited = self._monotonic() - started
                if waited + wait > self.max_delay_s:
                    return self._refuse(action, f"retry in {waited + wait:.0f} s")
                self._over(action, delayed=True)
                await self._sleep(wait)
                self.stats.delayed += 1
                self.stats.delay_s += self._monotonic() - started
                return None
        finally:
            self._waiting -= 1

    def _refuse(self, action: str, why: str) -> str:
        self._over(action, delayed=False)
        self.stats.refused += 1
        self.stats.refused_by_action[action] = self.stats.refused_by_action.get(action, 0) + 1
        self.stats.last_refused_wall = time.time()
        return f"request budget exceeded ({self.rate * 1000.0:g} ms/s of CPU): {why}"

    def _over(self, action: str, *, delayed: bool) -> None:
        if self._burst is None:
            self._burst = [0, 0]
            self.stats.bursts += 1
            LOG.warning("%s: the CSMS's requests exceed their budget (%g ms/s of network-side CPU) at %s: "
                        "expensive requests are delayed, or refused beyond %g s", self.name, self.rate * 1000.0,
                        action, self.max_delay_s)
        self._burst[0 if delayed else 1] += 1

    def _recovered(self) -> None:
        if self._burst is not None:
            delayed, refused = self._burst
            self._burst = None
            LOG.info("%s: the CSMS's requests are within their budget again (%d delayed, %d refused meanwhile)",
                     self.name, delayed, refused)
