"""Runs long-lived tasks (device transports, connectors, the OCPP link) so that one failing part
never takes the charger down: a crash restarts that task with back-off and raises its fault; a task
that keeps crashing stays down with a clear fault instead of looping hot."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from hal.tasks import cancel_and_wait

log = logging.getLogger("cpagent.supervisor")


@dataclass
class TaskState:
    name: str
    critical: bool
    restarts: int = 0
    alive: bool = False
    gave_up: bool = False
    last_error: str = ""
    crash_times: list[float] = field(default_factory=list)


class Supervisor:
    def __init__(
        self,
        *,
        base_delay_s: float = 0.5,
        max_delay_s: float = 30.0,
        max_crashes: int = 5,
        crash_window_s: float = 300.0,
        on_crash: Callable[[str, BaseException], None] | None = None,
        on_give_up: Callable[[str], None] | None = None,
        on_recover: Callable[[str], None] | None = None,
    ) -> None:
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.max_crashes = max_crashes
        self.crash_window_s = crash_window_s
        self.on_crash = on_crash
        self.on_give_up = on_give_up
        self.on_recover = on_recover
        self.tasks: dict[str, TaskState] = {}
        self._handles: dict[str, asyncio.Task[None]] = {}

    def spawn(self, name: str, factory: Callable[[], Awaitable[None]], *, critical: bool = True) -> None:
        state = TaskState(name, critical)
        self.tasks[name] = state
        self._handles[name] = asyncio.create_task(self._keep(state, factory), name=name)

    async def _keep(self, state: TaskState, factory: Callable[[], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        delay = self.base_delay_s
        while True:
            state.alive = True
            started = loop.time()
            try:
                await factory()
                raise RuntimeError("task returned; long-lived tasks must run until cancelled")
            except asyncio.CancelledError:
                state.alive = False
                raise
            except Exception as exc:
                state.alive = False
                now = loop.time()
                state.restarts += 1
                state.last_error = f"{type(exc).__name__}: {exc}"
                state.crash_times = [t for t in state.crash_times if now - t < self.crash_window_s] + [now]
                log.error("task %s crashed: %s", state.name, state.last_error, exc_info=exc)
                if self.on_crash:
                    self.on_crash(state.name, exc)
                if len(state.crash_times) >= self.max_crashes:
                    state.gave_up = True
                    log.critical("task %s crashed %d times in %.0f s; leaving it down",
                                 state.name, len(state.crash_times), self.crash_window_s)
                    if self.on_give_up:
                        self.on_give_up(state.name)
                    return
                if now - started > self.max_delay_s * 2:
                    delay = self.base_delay_s  # it had been running fine for a while
                await asyncio.sleep(delay)
                delay = min(self.max_delay_s, delay * 2)
                if self.on_recover:
                    self.on_recover(state.name)

    def healthy(self) -> bool:
        return all(s.alive for s in self.tasks.values() if s.critical)

    async def stop(self) -> None:
        await cancel_and_wait(*self._handles.values())
        self._handles.clear()
