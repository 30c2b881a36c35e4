"""Small helpers shared by the driver tests that run a driver against its emulator over a real pty."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def wait_for(predicate: Callable[[], object], limit_s: float = 5.0, what: str = "condition") -> float:
    """Poll until ``predicate()`` is true; the seconds it took. Fails after ``limit_s``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > limit_s:
            raise AssertionError(f"timed out after {limit_s} s waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start
