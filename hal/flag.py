"""Flag: asyncio.Event's set / clear / is_set / wait at a fraction of its memory.

asyncio.Event makes a collections.deque for its waiters when it is built (760 bytes; 860 with the Event),
though most of an agent's events are waited on by at most one task. A Flag keeps its waiters in a list made
when a wait first blocks (an unwaited Flag is 56 bytes), which counts where one process runs many agents
(cpsim fleet: some ten events per station). Same semantics as asyncio.Event: set() wakes every waiter and
the flag stays set until clear(); a waiter cancelled before it wakes is removed. ``wait_for(seconds)`` is
``wait()`` under ``asyncio.timeout`` with the TimeoutError caught, at less memory: one future and one timer
for the whole wait, no Timeout, no context manager and no cancellation of the waiting task when it expires.
"""

from __future__ import annotations

import asyncio
from typing import Literal


class Flag:
    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
        self._value = False
        self._waiters: list[asyncio.Future[bool]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if self._value:
            return
        self._value = True
        waiters, self._waiters = self._waiters, None
        for fut in waiters or ():
            if not fut.done():
                fut.set_result(True)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> Literal[True]:
        if self._value:
            return True
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        waiters = self._waiters
        waiters.append(fut)
        try:
            await fut
            return True
        finally:
            if fut in waiters:  # cancelled: set() has not taken the list (it takes it whole)
                waiters.remove(fut)
            if not waiters and self._waiters is waiters:
                self._waiters = None

    async def wait_for(self, seconds: float | None) -> bool:
        """Wait until the flag is set, at most ``seconds`` (None: no bound; <= 0: until the loop's next
        turn, as asyncio.timeout). True when set (at once if it already is), False when the time ran out."""
        if self._value:
            return True
        if seconds is None:
            return await self.wait()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        if self._waiters is None:
            self._waiters = []
        waiters = self._waiters
        waiters.append(fut)
        timer = loop.call_at(loop.time() + seconds, _expire, fut)
        try:
            return await fut
        finally:
            timer.cancel()
            if fut in waiters:  # timed out or cancelled: set() has not taken the list
                waiters.remove(fut)
            if not waiters and self._waiters is waiters:
                self._waiters = None

    def __repr__(self) -> str:
        waiting = len(self._waiters) if self._waiters else 0
        return f"<Flag {'set' if self._value else 'unset'} waiters={waiting}>"


async def first_set(*flags: Flag) -> None:
    """Wait until any of ``flags`` is set: one future in every flag's waiters instead of a task per flag
    (asyncio.wait over their wait()s would make one each)."""
    if any(flag.is_set() for flag in flags):
        return
    fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    for flag in flags:
        if flag._waiters is None:
            flag._waiters = []
        flag._waiters.append(fut)
    try:
        await fut
    finally:
        for flag in flags:
            waiters = flag._waiters
            if waiters is not None and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    flag._waiters = None


def _expire(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)
