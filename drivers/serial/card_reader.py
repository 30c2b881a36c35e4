"""What the card readers (drivers/serial/pn532.py, drivers/serial/rdm6300.py) share: the TokenReader role, a
card held still reported once per ``repeat_suppress_s`` (counted in ``repeats_suppressed``), and every new
presentation put to each ``tokens()`` iterator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import ClassVar

from hal import Device, IdToken, Role, TokenReader


class CardReader(Device, TokenReader):
    token_kind: ClassVar[str]  # IdToken.kind of this reader's cards

    def __init__(self, name: str, *, repeat_suppress_s: float) -> None:
        super().__init__(name)
        self.repeat_suppress_s = repeat_suppress_s
        self._queues: list[asyncio.Queue[IdToken]] = []
        self._last_uid: str | None = None
        self._last_seen = 0.0
        self._counters = {"tokens": 0, "repeats_suppressed": 0}  # subclasses add theirs

    @property
    def roles(self) -> frozenset[Role]:
        return frozenset({Role.TOKEN_READER})

    async def tokens(self) -> AsyncIterator[IdToken]:
        queue: asyncio.Queue[IdToken] = asyncio.Queue()
        self._queues.append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._queues.remove(queue)

    def _card_seen(self, uid: str, now: float) -> IdToken | None:
        """A card read at ``now`` (monotonic): its token if newly presented (published), None if held still."""
        held = uid == self._last_uid and now - self._last_seen < self.repeat_suppress_s
        self._last_uid, self._last_seen = uid, now
        if held:
            self._counters["repeats_suppressed"] += 1
            return None
        token = IdToken(uid=uid, kind=self.token_kind)
        self._counters["tokens"] += 1
        for queue in self._queues:
            queue.put_nowait(token)
        return token
