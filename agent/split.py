"""`cpagent run`: the control side and the network side as two processes under a small supervisor.

    cpagent run (supervisor: no hardware, no network; imports little)
      ├── cpagent control   drivers, IEC 61851 controller, connectors, sessions; serves the station socket
      └── cpagent network   OCPP, outbox, diagnostic socket, file transfers; a StationProxy on that socket

Why processes and not a thread: the GIL lets a CPU-bound network thread hold up the control thread for up to
``sys.getswitchinterval()`` per switch, a garbage collection of the network side's large heap stops every
thread, and a crash, a kill -9 or a hang of the network side must not take the relays with it. With two
processes the control side has its own interpreter, heap, GC and scheduler priority (a one-core ARM board
still time-slices them, but the kernel preempts the network process; the GIL does not).

- The network side dies, hangs or is restarted: charging that is allowed goes on (the control side keeps its
  sessions; token decisions fall back to the configured allow-list while nobody answers); the supervisor
  restarts it with back-off, and its outbox delivers what was queued.
- The control side dies: the pilot board's keep-alive opens the relays; the network side loses the station
  socket and reports every connector Faulted to the CSMS; the supervisor restarts the control side.
- Each child reports READY/WATCHDOG/STATUS to the supervisor on a pipe (the sd_notify words). The supervisor
  tells systemd READY=1 once both are ready, forwards the control side's STATUS=, pets the systemd watchdog
  while its own loop runs, and kills (-9) and restarts a child that stops reporting (a hang).
- The children die with the supervisor (PR_SET_PDEATHSIG): kill -9 of `cpagent run` is a power loss of both.
- Exit status: a child's 2 (configuration error) or 75 (OCPP Reset: restart everything) ends the supervisor
  with the same status; SIGTERM stops both children and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.config import AgentConfig
from agent.sdnotify import EXIT_RESTART_REQUESTED, Notifier, watchdog_interval

log = logging.getLogger("cpagent.split")

HEALTH_FD_ENV = "CPAGENT_HEALTH_FD"  # the pipe a side reports READY/WATCHDOG/STATUS on
GO_FD_ENV = "CPAGENT_GO_FD"  # the pipe a side waits on (after importing its code) until the checks passed
PREFLIGHT_WORD = "PREFLIGHT="  # the network side's verdict on the pre-flight checks: "ok" or the error line
PREFLIGHT_TIMEOUT_S = 60.0

CHILD_PET_S = 2.0  # children report this often (WATCHDOG_USEC given to them = 2x this)
HANG_AFTER_S = 10.0  # a child that was ready and has not reported for this long is hung: kill -9, restart
RESTART_MIN_S = 0.5
# A control side that died is restarted only after the pilot boards' keep-alive (2 s) has surely lapsed: the
# boards have then opened their relays, and the new control side starts from that safe state instead of
# taking over a session whose last seconds nobody watched.
CONTROL_RESTART_MIN_S = 3.0
RESTART_MAX_S = 30.0
STABLE_AFTER_S = 60.0  # a child that ran this long restarts with the minimum back-off again
STOP_GRACE_S = 10.0
PR_SET_PDEATHSIG = 1


def prepare(role: str, config: AgentConfig) -> bool:
    """In a side started by the supervisor: import the side's code (the network side then makes the pre-flight
    checks, which need that code anyway, and reports them on the health pipe), then wait for the supervisor's
    go. False: no go (the checks failed, or the supervisor is gone)."""
    if role == "control":
        import agent.ipc.control_server
        import agent.station
    else:
        import agent.diag
        import agent.ipc.station_proxy
        import agent.ocpp.v16.service  # noqa: F401
    fd = os.environ.get(GO_FD_ENV)
    if not fd or not fd.isascii() or not fd.isdigit():
        return True  # started by hand
    if role == "network":
        from agent import preflight
        from agent.config import ConfigError

        try:
            preflight.check(config)
            verdict = "ok"
        except ConfigError as exc:
            verdict = f"cpagent: configuration error: {exc}"
        child_notifier().send(f"{PREFLIGHT_WORD}{verdict}")
    try:
        return os.read(int(fd), 1) == b"g"
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            os.close(int(fd))


def station_socket(config: AgentConfig) -> Path:
    """The station socket between the two sides (in the state directory, 0600 inside a 0750 directory)."""
    return config.state_dir / "station.sock"


class PipeNotifier(Notifier):
    """The sd_notify words, written as one line per message to the supervisor's health pipe."""

    def __init__(self, fd: int) -> None:
        super().__init__("health-pipe")
        self._fd = fd
        os.set_blocking(fd, False)

    def send(self, *assignments: str) -> bool:
        line = ("\x1f".join(a.replace("\n", " ") for a in assignments) + "\n").encode("utf-8", "replace")
        try:
            os.write(self._fd, line[:4096])  # below PIPE_BUF: one line is written whole or not at all
        except (BlockingIOError, BrokenPipeError, OSError):
            return False  # a supervisor that does not read (or is gone) must never block this side
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def _child_tick() -> float | None:
    """A side reporting to the supervisor ticks only as often as it reports (the supervisor judges a hang by
    silence); started by hand under systemd it keeps the feeder's short ticks."""
    return CHILD_PET_S if os.environ.get(HEALTH_FD_ENV) else None


def child_notifier() -> Notifier:
    """What a child reports to: the supervisor's pipe when started by it, else systemd (or nothing)."""
    fd = os.environ.get(HEALTH_FD_ENV)
    if fd and fd.isascii() and fd.isdigit():
        return PipeNotifier(int(fd))
    return Notifier.from_env()


NETWORK_NICENESS = 5  # the network side yields the CPU to the control side when both want it


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _network_child() -> None:
    _die_with_parent()
    with contextlib.suppress(OSError):
        os.nice(NETWORK_NICENESS)


@dataclass
class Child:
    role: str  # "control" or "network"
    argv: list[str]
    process: asyncio.subprocess.Process | None = None
    ready: bool = False
    last_report: float = 0.0
    started: float = 0.0
    status: str = ""
    restarts: int = 0
    go_fd: int | None = None  # the write end of the side's go pipe until the go is given
    preflight: str | None = None  # the network side's verdict on the pre-flight checks
    verdict: asyncio.Event = field(default_factory=asyncio.Event, repr=False)  # set with it (or when it died)
    backoff_s: float = RESTART_MIN_S
    reader: asyncio.Task[None] | None = field(default=None, repr=False)


class ProcessSupervisor:
    def __init__(self, config_path: Path, *, notifier: Notifier | None = None) -> None:
        self.config_path = config_path
        self.notifier = notifier or Notifier.from_env()
        self.systemd_watchdog_s = watchdog_interval()
        python = [sys.executable, "-m", "agent.cli"]
        self.children = {role: Child(role, [*python, role, "--config", str(config_path)])
                         for role in ("control", "network")}
        self._announced_ready = False
        self._stopping = asyncio.Event()
        self.exit_status = 0

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        # The sides import their code; the network side then makes the pre-flight checks (OCPP key presets,
        # TLS files, state_dir) and reports them. Both start only on the go; a failed check prints its one
        # line here and nothing else has run.
        for child in self.children.values():
            await self._spawn(child, go=False)
        network = self.children["network"]
        waits = [asyncio.create_task(network.verdict.wait()), asyncio.create_task(self._stopping.wait())]
        await asyncio.wait(waits, timeout=PREFLIGHT_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        for waiting in waits:
            waiting.cancel()
        if network.preflight != "ok":
            for child in self.children.values():
                if child.process is not None and child.process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        child.process.kill()
                    await child.process.wait()
            if self._stopping.is_set():
                return 0
            sys.stderr.write((network.preflight or "cpagent: the network side did not start") + "\n")
            sys.stderr.flush()
            return 2
        for child in self.children.values():
            self._go(child)
            assert child.process is not None
            log.info("%s side started (pid %d)", child.role, child.process.pid)
        try:
            while not self._stopping.is_set():
                await self._tick()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), CHILD_PET_S / 2)
        finally:
            self.notifier.stopping()
            await self._stop_all()
        return self.exit_status

    def _go(self, child: Child) -> None:
        if child.go_fd is not None:
            with contextlib.suppress(OSError):
                os.write(child.go_fd, b"g")
                os.close(child.go_fd)
            child.go_fd = None

    async def _spawn(self, child: Child, *, go: bool = True) -> None:
        read_fd, write_fd = os.pipe()
        go_read, child.go_fd = os.pipe()
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC")}
        env[HEALTH_FD_ENV] = str(write_fd)
        env[GO_FD_ENV] = str(go_read)
        env["WATCHDOG_USEC"] = str(int(CHILD_PET_S * 2 * 1e6))  # children report every CHILD_PET_S
        before_exec = _network_child if child.role == "network" else _die_with_parent
        try:
            child.process = await asyncio.create_subprocess_exec(
                *child.argv, env=env, pass_fds=(write_fd, go_read), preexec_fn=before_exec,
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            os.close(write_fd)
            os.close(go_read)
        child.ready = False
        child.started = child.last_report = time.monotonic()
        child.reader = asyncio.create_task(self._read_health(child, read_fd), name=f"health-{child.role}")
        if go:
            self._go(child)
            log.info("%s side started (pid %d)", child.role, child.process.pid)

    async def _read_health(self, child: Child, fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=8192)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                    os.fdopen(fd, "rb", buffering=0))
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # over the limit: not our child's words
                    continue
                if not line:
                    return
                child.last_report = time.monotonic()
                for word in line.decode("utf-8", "replace").strip().split("\x1f"):
                    if word == "READY=1":
                        child.ready = True
                    elif word.startswith(PREFLIGHT_WORD):
                        child.preflight = word[len(PREFLIGHT_WORD):]
                        child.verdict.set()
                    elif word.startswith("STATUS="):
                        child.status = word[len("STATUS="):]
                        if child.role == "control":
                            self.notifier.status(child.status)
        finally:
            child.verdict.set()  # a side that went away gives no verdict
            transport.close()

    async def _tick(self) -> None:
        now = time.monotonic()
        for child in self.children.values():
            process = child.process
            if process is None:
                continue
            if process.returncode is not None:
                await self._exited(child, process.returncode)
            elif child.ready and now - child.last_report > HANG_AFTER_S:
                log.error("%s side stopped reporting for %.0f s: killing it", child.role, now - child.last_report)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        if not self._announced_ready and all(c.ready for c in self.children.values()):
            self._announced_ready = True
            self.notifier.ready(self.children["control"].status or None)
            log.info("both sides ready")
        if self.systemd_watchdog_s is not None:
            self.notifier.watchdog()  # this loop runs; the children's health is handled above

    async def _exited(self, child: Child, code: int) -> None:
        if child.reader is not None:
            await asyncio.wait({child.reader}, timeout=1)
        child.process = None
        if code in (2, EXIT_RESTART_REQUESTED):
            log.warning("%s side exited with %d: stopping the agent with it", child.role, code)
            self.exit_status = code
            self._stopping.set()
            return
        ran = time.monotonic() - child.started
        if ran >= STABLE_AFTER_S:
            child.backoff_s = RESTART_MIN_S
        delay = max(child.backoff_s, CONTROL_RESTART_MIN_S) if child.role == "control" else child.backoff_s
        log.error("%s side exited (%s) after %.1f s; restarting it in %.1f s", child.role, _describe(code), ran, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)
        if self._stopping.is_set():
            return
        child.backoff_s = min(RESTART_MAX_S, child.backoff_s * 2)
        child.restarts += 1
        await self._spawn(child)

    async def _stop_all(self) -> None:
        # The network side first (its last words still find the station), then the control side, which
        # opens the relays as it stops.
        for role in ("network", "control"):
            child = self.children[role]
            process = child.process
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), STOP_GRACE_S)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
            if child.reader is not None:
                await asyncio.wait({child.reader}, timeout=1)


def _describe(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"status {code}"


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def run_control(config: AgentConfig) -> int:
    """The control side: the station and its hardware, served to the network side on the station socket."""
    from agent.ipc.control_server import ControlServer
    from agent.sdnotify import SystemdIntegration
    from agent.station import Station
    from hal.tasks import cancel_and_wait

    station = Station(config)
    stop = _stop_event()
    server = ControlServer(station, station_socket(config))
    await server.start()
    systemd = SystemdIntegration(station, notifier=child_notifier(), feeder_tick_s=_child_tick())
    task = asyncio.create_task(station.run(ready=systemd.ready, serve_diag=False), name="station")
    try:
        await asyncio.wait([task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    finally:
        await systemd.stop()
        await server.stop()
        await cancel_and_wait(task)
        station.close()  # relays open: nothing stays energised when the control side stops
    if task.done() and not task.cancelled() and task.exception() is not None:
        log.critical("the station ended unexpectedly", exc_info=task.exception())
        return 1
    return 0


async def run_network(config: AgentConfig) -> int:
    """The network side: OCPP and the technician's socket, on a StationProxy of the control side."""
    from agent.diag import DiagServer
    from agent.ipc.station_proxy import StationProxy
    from agent.ocpp.v16.service import OcppService, run_until_stopped
    from agent.sdnotify import WatchdogFeeder

    stop = _stop_event()
    # The control side creates the state directory and database (and its session tables) before it opens
    # the station socket: wait for the socket, then open the database too.
    path = station_socket(config)
    while not path.exists() and not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)
    if stop.is_set():
        return 0
    proxy = StationProxy(path, config.state_dir / "state.db")
    await proxy.start()
    waiting = asyncio.create_task(proxy.wait_connected(3600))
    await asyncio.wait([waiting, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():
        waiting.cancel()
        await proxy.close()
        return 0
    service = OcppService(proxy, config) if config.ocpp.endpoint else None
    diag = DiagServer(proxy, config.diag_socket)
    try:
        await diag.start()
    except OSError as exc:
        log.error("diagnostic socket %s unavailable: %s", config.diag_socket, exc)
    notifier = child_notifier()
    notifier.ready()
    interval = watchdog_interval()
    feeder = None if interval is None else asyncio.create_task(
        WatchdogFeeder(notifier, interval, problem=lambda: None, tick_s=_child_tick()).run(), name="watchdog")
    try:
        return await run_until_stopped(proxy, config, stop, service)
    finally:
        if feeder is not None:
            feeder.cancel()
        await diag.stop()
        await proxy.close()


async def run_supervised(config_path: Path) -> int:
    return await ProcessSupervisor(config_path).run()
