"""The limit loop both smart-charging features (1.6 and 2.0.1) run: apply the composite limit of every
connector / EVSE now, then sleep until the next period boundary (what ``apply`` returns) or until something
changed (``changed`` set: a profile installed or cleared, a transaction started or stopped).

What differs between the versions -- which profiles count, how the situation is built, the remote-start hold
of 2.0.1 -- stays in the version's ``apply``; this module keeps the loop and the push to the station.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

from agent.station_api import StationPort
from hal.flag import Flag

if TYPE_CHECKING:
    from agent.smart_charging import CompositePeriod

MAX_WAIT_S = 30.0  # re-evaluate at least this often (voltage, wall clock steps, learnt transaction ids)
MIN_WAIT_S = 0.05
MEMO_KEYS = 16  # composite memos kept (one per connector / EVSE situation)


class CompositeMemos:
    """GetCompositeSchedule's remembered limits (``agent.smart_charging.composite``'s ``memo``), one memo per
    situation of the installed profile set: a CSMS asking again and again for the largest composite schedule
    makes the agent evaluate each change time once, not once per request.

    What invalidates a memo: the profile set changing (installed, cleared, a TxProfile removed at the end of
    its transaction: the owner calls ``clear`` where it stores the set); a session starting or stopping, its
    transaction id learnt, the voltage or the sharing connectors changing (all in the key, the
    ``Situation``: another key, another memo). Time needs nothing: a memo holds the limits at absolute change
    times (the next schedule period, validFrom/validTo, the next recurrence: each its own time), never the
    limit at the request's own start, and none at all with a Relative profile. At most ``keys`` memos, the
    least recently used dropped; each holds at most ``agent.smart_charging.MEMO_ENTRIES`` times."""

    def __init__(self, keys: int = MEMO_KEYS) -> None:
        self._keys = keys
        self._memos: dict[Hashable, dict[float, CompositePeriod]] = {}

    def get(self, key: Hashable) -> dict[float, CompositePeriod]:
        """The memo for ``key`` (a new, empty one the first time)."""
        memo = self._memos.pop(key, None)
        if memo is None:
            memo = {}
            if len(self._memos) >= self._keys:
                del self._memos[next(iter(self._memos))]  # the least recently used
        self._memos[key] = memo
        return memo

    def clear(self) -> None:
        """The profile set changed: nothing remembered holds any more."""
        self._memos.clear()

    def __len__(self) -> int:
        return len(self._memos)


def controller_limit(amps: float, max_current_a: float) -> float | None:
    """The limit given to a controller for a composite limit of ``amps``: None when it does not limit the
    connector (at or above its rating), else rounded to 0.1 A."""
    return None if amps >= max_current_a else round(amps, 1)


def push_limit(
    station: StationPort, applied: dict[int, float | None], cid: int, amps: float, max_current_a: float,
    what: str, log: logging.Logger,
) -> None:
    """Give connector / EVSE ``cid`` its limit unless ``applied`` says it has it already (logged once a change)."""
    limit = controller_limit(amps, max_current_a)
    if cid not in applied or applied[cid] != limit:
        applied[cid] = limit
        log.info("%s %d: charging limit %s", what, cid, "none" if limit is None else f"{limit} A")
        station.set_current_limit(cid, limit)


async def keep_limits(
    apply: Callable[[], float], changed: Flag, log: logging.Logger, error_wait_s: float = MAX_WAIT_S
) -> None:
    """Run ``apply`` now and again after the seconds it returns (``error_wait_s`` after it raised), or sooner
    when ``changed`` is set; forever."""
    while True:
        changed.clear()
        try:
            wait = apply()
        except Exception:  # a bad profile must not end the loop that keeps the limits
            log.exception("applying charging profiles failed")
            wait = error_wait_s
        await changed.wait_for(wait)  # one future and a timer: no Timeout per wait (cpsim fleet: per station)
