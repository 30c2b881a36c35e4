"""The 2.0.1 websocket link: agent/ocpp/v16/link.Link offering ``ocpp2.0.1`` (and ``ocpp1.6`` when the
version is "auto"), with the reconnect back-off OCPP 2.0.1 prescribes (OCPPCommCtrlr RetryBackOff*):
the first redial after RetryBackOffWaitMinimum + random(0, RetryBackOffRandomRange) seconds, each next
one doubling the wait, RetryBackOffRepeatTimes times (not beyond [ocpp] reconnect_cap_s), then staying there."""

from __future__ import annotations

import random
from dataclasses import dataclass

from agent.ocpp.v16.link import Backoff, Link
from agent.ocpp.v201.rpc import SUBPROTOCOL

__all__ = ["SUBPROTOCOL", "Link", "RetryBackOff"]


@dataclass(frozen=True)
class RetryBackOff(Backoff):
    wait_minimum: float = 3.0
    random_range: float = 10.0
    repeat_times: int = 5

    def _doubled(self, attempt: int) -> float:
        """The wait before the random part; the doubling stops at ``cap`` ([ocpp] reconnect_cap_s) so that a
        large RepeatTimes cannot make the station wait for days (never below WaitMinimum)."""
        doubled = self.wait_minimum * 2 ** min(max(attempt, 0), max(self.repeat_times, 0), 64)
        return float(min(doubled, max(self.cap, self.wait_minimum)))

    def ceiling(self, attempt: int) -> float:
        return self._doubled(attempt) + max(self.random_range, 0.0)

    def delay(self, attempt: int, rng: random.Random) -> float:
        return self._doubled(attempt) + rng.uniform(0.0, max(self.random_range, 0.0))
