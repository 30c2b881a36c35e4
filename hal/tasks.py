"""Cancelling tasks so that they really end.

On Python 3.11 ``asyncio.wait_for`` swallows a cancellation that arrives just as the awaited future
completes (fixed in 3.12). Libraries we depend on (pymodbus) use it inside their request paths, so a
single ``task.cancel()`` can be lost and a ``gather`` on that task then waits forever. The task itself
still knows: ``Task.cancelling()`` stays above zero.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("cpagent.tasks")


def raise_if_cancelling() -> None:
    """Call at the top of a long-lived loop: re-raise a cancellation a library swallowed."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_and_wait(*tasks: asyncio.Future[Any], retry_s: float = 1.0) -> None:
    """Cancel ``tasks`` and wait until every one has finished, cancelling again any that ignored it."""
    pending = {t for t in tasks if not t.done()}
    warned = False
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=retry_s)
        if pending and not warned:
            warned = True
            log.warning("tasks still running %.1f s after cancel, cancelling again: %s", retry_s,
                        ", ".join(sorted(t.get_name() if isinstance(t, asyncio.Task) else repr(t)
                                         for t in pending)))
    for task in tasks:  # retrieve outcomes so asyncio does not log them as never retrieved
        if task.done() and not task.cancelled():
            task.exception()
