"""`cpagent run`: the control side and the network side as two processes under a small supervisor.

    cpagent run (supervisor, agent/split_supervisor.py: no hardware, no network, no asyncio; imports little)
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
import gc
import logging
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from agent.sdnotify import Notifier, watchdog_interval
from agent.split_supervisor import (
    CHILD_PET_S,
    GO_FD_ENV,
    HEALTH_FD_ENV,
    NETWORK_NICENESS,
    PREFLIGHT_WORD,
    dump_modules,
)

if TYPE_CHECKING:
    from agent.config import AgentConfig

log = logging.getLogger("cpagent.split")

def prepare(role: str, config: AgentConfig) -> bool:
    """In a side started by the supervisor: import the side's code (the network side then makes the pre-flight
    checks, which need that code anyway, and reports them on the health pipe), then wait for the supervisor's
    go. False: no go (the checks failed, or the supervisor is gone)."""
    if role == "control":
        import agent.ipc.control_server
        import agent.station
        from hal.registry import load_driver

        # The configured drivers' code too (pymodbus, pyserial: ~0.2 s), while the network side still imports
        # and checks, instead of after the go on the way to the BootNotification. A driver that does not load
        # is reported by Station() as it builds the devices.
        for device in config.devices.values():
            with contextlib.suppress(Exception):
                load_driver(device.driver)
    else:
        import agent.diag
        import agent.ipc.station_proxy
        import agent.ocpp.runner
        import agent.ocpp.v16.service

        # The 2.0.1 service too when the network side will start with it (while the control side starts). Not
        # when it starts as 1.6 ("auto" with nothing or 1.6 remembered): ~0.4 s of imports before the go and
        # ~4 MB for a station that may never switch; a switch imports it then (agent/ocpp/runner.py).
        if _first_subprotocol(config) == agent.ocpp.runner.V201:
            import agent.ocpp.v201.service
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
        if role == "network":
            yield_to_control()


def yield_to_control() -> None:
    """The network side runs at NETWORK_NICENESS from the go on. Its first start imports and checks at the
    normal priority (the control side is importing too and drives nothing yet: the sooner the go, the sooner
    the boot); a restart is niced from its exec on (agent/split_supervisor.py), as a session may be running."""
    with contextlib.suppress(OSError):
        now = os.getpriority(os.PRIO_PROCESS, 0)
        if now < NETWORK_NICENESS:
            os.setpriority(os.PRIO_PROCESS, 0, NETWORK_NICENESS)


def _first_subprotocol(config: AgentConfig) -> str:
    """The subprotocol the network side's VersionRunner starts with (agent/ocpp/runner.py), read before the
    go: the one remembered in the state database (read-only here), else 1.6 if offered."""
    import sqlite3

    from agent.ocpp.runner import OFFERS, V16

    offer = OFFERS[config.ocpp.version]
    last = None
    if len(offer) > 1:
        try:
            uri = (config.state_dir / "state.db").resolve().as_uri() + "?mode=ro"
            with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
                row = conn.execute("SELECT subprotocol FROM ocpp_version WHERE id = 1").fetchone()
            last = None if row is None else str(row[0])
        except (sqlite3.Error, OSError, ValueError):  # no database or no table yet: nothing remembered
            last = None
    return last if last in offer else (V16 if V16 in offer else offer[0])


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


def settled() -> None:
    """Once a side has started: what start-up allocated (modules, configuration, drivers) moves out of the
    garbage collector's sight, so the collections of a running side scan only what it allocates since. A full
    collection then takes a fraction of the time: shorter pauses of the control side's loop, less CPU.
    (No collection first: that would pause the side now, on the way to the BootNotification.)
    A little later, the heap that start-up freed (configuration, register maps, schemas) goes back to the
    system (glibc's malloc_trim; elsewhere nothing happens)."""
    gc.freeze()
    with contextlib.suppress(RuntimeError):
        asyncio.get_running_loop().call_later(TRIM_AFTER_S, _trim_heap)


TRIM_AFTER_S = 5.0


def _trim_heap() -> None:
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


SOCKET_POLL_S = 0.01  # the network side waits for the station socket at start: on the way to the boot


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

    def ready() -> None:
        systemd.ready()
        settled()

    task = asyncio.create_task(station.run(ready=ready, serve_diag=False), name="station")
    try:
        await asyncio.wait([task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    finally:
        await systemd.stop()
        await server.stop()
        await cancel_and_wait(task)
        station.close()  # relays open: nothing stays energised when the control side stops
        dump_modules("control")
    if task.done() and not task.cancelled() and task.exception() is not None:
        log.critical("the station ended unexpectedly", exc_info=task.exception())
        return 1
    return 0


async def run_network(config: AgentConfig) -> int:
    """The network side: OCPP and the technician's socket, on a StationProxy of the control side."""
    from agent.diag import DiagServer
    from agent.ipc.station_proxy import StationProxy
    from agent.ocpp.runner import make_runner, run_until_stopped
    from agent.sdnotify import WatchdogFeeder

    stop = _stop_event()
    # The control side creates the state directory and database (and its session tables) before it opens
    # the station socket: wait for the socket, then open the database too.
    path = station_socket(config)
    while not path.exists() and not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SOCKET_POLL_S)
    if stop.is_set():
        return 0
    proxy = StationProxy(path, config.state_dir / "state.db")

    def on_signal() -> None:  # at the signal itself, before the control side's close (same signal) arrives
        proxy.stopping()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, on_signal)
    await proxy.start()
    waiting = asyncio.create_task(proxy.wait_connected(3600))
    await asyncio.wait([waiting, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():
        waiting.cancel()
        await proxy.close()
        return 0
    service = make_runner(proxy, config)  # the OCPP version's service ([ocpp] version)
    diag = DiagServer(proxy, config.diag_socket)
    try:
        await diag.start()
    except OSError as exc:
        log.error("diagnostic socket %s unavailable: %s", config.diag_socket, exc)
    notifier = child_notifier()
    notifier.ready()
    settled()
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
        dump_modules("network")

