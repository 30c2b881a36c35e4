"""Talking to systemd without a dependency: sd_notify datagrams, a watchdog feeder that only pets while
the agent is really working, and a one-line STATUS= of the connectors.

Everything is a no-op when $NOTIFY_SOCKET is unset (a developer's shell, the simulator, tests).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, NamedTuple

# No asyncio or dataclasses at import: `cpagent run`'s supervisor (agent/split_supervisor.py) uses Notifier
# and stays small; the asyncio parts import it where they run (it is loaded by then anyway).
if TYPE_CHECKING:
    import asyncio

    from agent.station import Station
    from agent.supervisor import Supervisor

log = logging.getLogger("cpagent.systemd")

# `cpagent run` exits with this when a restart was asked for (e.g. OCPP Reset); the unit lists it in
# SuccessExitStatus= and RestartForceExitStatus= so systemd restarts it without calling it a failure.
EXIT_RESTART_REQUESTED = 75

MAX_LOOP_LAG_S = 1.0
STATUS_REFRESH_S = 5.0


class Notifier:
    """Sends sd_notify messages to one socket address; address None means "not under systemd"."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        self._failed_once = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send KEY=VALUE lines as one datagram. Never raises: systemd being away must not stop charging."""
        if self.address is None:
            return False
        # A leading '@' names a socket in the abstract namespace, which the kernel spells with a NUL byte.
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(assignments).encode("utf-8", "replace"), target)
        except OSError as exc:
            if not self._failed_once:
                self._failed_once = True
                log.warning("cannot notify systemd at %s: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _send_once(send: Callable[[Notifier], bool]) -> bool:
    # Read $NOTIFY_SOCKET at each call: one-off messages are rare and a cached socket would go stale.
    notifier = Notifier.from_env()
    try:
        return send(notifier)
    finally:
        notifier.close()


def notify_ready(status: str | None = None) -> bool:
    return _send_once(lambda n: n.ready(status))


def notify_status(text: str) -> bool:
    return _send_once(lambda n: n.status(text))


def notify_watchdog() -> bool:
    return _send_once(Notifier.watchdog)


def notify_stopping() -> bool:
    return _send_once(Notifier.stopping)


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between pets (half of WATCHDOG_USEC), or None when systemd does not watch this process."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 1e6 / 2


# ----------------------------------------------------------------- watchdog feeder
def supervisor_problem(supervisor: Supervisor) -> str | None:
    """Why the supervisor is not healthy (the critical tasks that are down), or None when it is.

    A task the supervisor deliberately left down because it kept crashing is not counted: it is a
    reported fault of its connector (`cpctl faults`), not a hang. Withholding the ping for it would have
    systemd restart the whole agent, stopping the other connectors' sessions, again and again."""
    down = sorted(s.name for s in supervisor.tasks.values() if s.critical and not s.alive and not s.gave_up)
    return "critical task(s) down: " + ", ".join(down) if down else None


class WatchdogFeeder:
    """Pets the systemd watchdog every `interval_s`, but only while the event loop keeps time (no tick
    overshot its sleep by MAX_LOOP_LAG_S within the last `lag_window_s`) and `problem()` reports none.
    A withheld pet is logged once per episode with its reason; systemd then kills and restarts us if
    it lasts a whole WatchdogSec."""

    def __init__(
        self,
        notifier: Notifier,
        interval_s: float,
        problem: Callable[[], str | None],
        *,
        max_lag_s: float = MAX_LOOP_LAG_S,
        lag_window_s: float = 2.0,
        tick_s: float | None = None,
    ) -> None:
        self.notifier = notifier
        self.interval_s = interval_s
        self.problem = problem
        self.max_lag_s = max_lag_s
        self.lag_window_s = lag_window_s
        # Short ticks so that the lag of a blocked loop shows up however the block lines up with a pet
        # (a side of the two-process agent may tick slower: its supervisor judges a hang by silence).
        self.tick_s = tick_s if tick_s is not None else min(0.25, interval_s / 2)
        self.pets = 0
        self.withheld = 0
        self.withheld_reason: str | None = None
        self._lags: collections.deque[tuple[float, float]] = collections.deque()

    def recent_lag(self, now: float) -> float:
        while self._lags and now - self._lags[0][0] > self.lag_window_s:
            self._lags.popleft()
        return max((lag for _, lag in self._lags), default=0.0)

    def why_not(self, now: float) -> str | None:
        lag = self.recent_lag(now)
        if lag >= self.max_lag_s:
            return f"event loop lagged {lag:.2f} s (limit {self.max_lag_s:g} s)"
        try:
            return self.problem()
        except Exception as exc:  # a broken health check is itself a reason not to vouch for the agent
            return f"health check failed: {type(exc).__name__}: {exc}"

    async def run(self) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        last_pet = float("-inf")
        while True:
            scheduled = loop.time() + self.tick_s
            await asyncio.sleep(self.tick_s)
            now = loop.time()
            self._lags.append((now, max(0.0, now - scheduled)))
            if now - last_pet < self.interval_s:
                continue
            reason = self.why_not(now)
            if reason is None:
                if self.withheld_reason is not None:
                    log.warning("watchdog pings resumed")
                    self.withheld_reason = None
                self.notifier.watchdog()
                self.pets += 1
                last_pet = now
                continue
            self.withheld += 1
            if self.withheld_reason is None:
                log.error("withholding the systemd watchdog ping: %s", reason)
            self.withheld_reason = reason


# ----------------------------------------------------------------- STATUS= line
class ConnectorLine(NamedTuple):
    id: int
    status: str
    power_w: float | None = None
    fault: str | None = None


def status_line(connectors: Iterable[ConnectorLine]) -> str:
    """'1: Charging 7.2 kW | 2: Available' — what `systemctl status cpagent` shows at a glance."""
    parts = []
    for c in sorted(connectors, key=lambda c: c.id):
        text = f"{c.id}: {c.status}"
        if c.status == "Charging" and c.power_w is not None:
            text += f" {c.power_w / 1000:.1f} kW"
        if c.fault:
            text += f" ({c.fault})"
        parts.append(text)
    return " | ".join(parts) or "no connectors"


def station_status_line(station: Station) -> str:
    lines = []
    for connector in station.connectors.values():
        sample = connector.last_sample
        faults = sorted(connector.faults)
        lines.append(ConnectorLine(
            connector.id,
            connector.status().value,
            sample.power_w if sample is not None else None,
            faults[0].value if faults else None,
        ))
    return status_line(lines)


# ----------------------------------------------------------------- wiring for `cpagent run`
class SystemdIntegration:
    """READY=1 when the station says it is up, then the watchdog feeder and the STATUS= refresher."""

    def __init__(
        self,
        station: Station,
        notifier: Notifier | None = None,
        *,
        watchdog_s: float | None = None,
        status_refresh_s: float = STATUS_REFRESH_S,
        feeder_tick_s: float | None = None,
    ) -> None:
        self.station = station
        self.feeder_tick_s = feeder_tick_s
        self.notifier = notifier or Notifier.from_env()
        self.watchdog_s = watchdog_interval() if watchdog_s is None else watchdog_s
        self.status_refresh_s = status_refresh_s
        self.feeder: WatchdogFeeder | None = None
        self._last_status = ""
        self._tasks: list[asyncio.Task[None]] = []

    def ready(self) -> None:
        """Pass as Station.run(ready=...): runs in the event loop once hardware and outbox are up."""
        import asyncio

        self._last_status = self._status()
        self.notifier.ready(self._last_status)
        if self.watchdog_s:
            self.feeder = WatchdogFeeder(self.notifier, self.watchdog_s,
                                         lambda: supervisor_problem(self.station.supervisor),
                                         tick_s=self.feeder_tick_s)
            self._tasks.append(asyncio.create_task(self.feeder.run(), name="systemd-watchdog"))
        if self.notifier.enabled:
            self._tasks.append(asyncio.create_task(self._refresh_status(), name="systemd-status"))

    def _status(self) -> str:
        try:
            return station_status_line(self.station)
        except Exception:
            log.exception("cannot summarise connector status")
            return "running"

    async def _refresh_status(self) -> None:
        import asyncio

        while True:
            await asyncio.sleep(self.status_refresh_s)
            text = self._status()
            if text != self._last_status:
                self.notifier.status(text)
                self._last_status = text

    async def stop(self) -> None:
        import asyncio

        self.notifier.stopping()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self.notifier.close()
