"""Waiting for a condition in async tests (the OCTT harnesses of both versions and the reliability trials)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


async def eventually(predicate: Callable[[], Any], within: float = 8.0, what: str = "condition") -> Any:
    """The first true value of ``predicate()``, polled every 20 ms; AssertionError after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.02)
