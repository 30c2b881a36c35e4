"""The supervisor of `cpagent run` (agent/split.py explains the two sides): a small selectors loop that
starts the control side and the network side, reads their health pipes, restarts a side that died or hung,
and speaks sd_notify for both.

It imports almost nothing on purpose (no asyncio and with it no ssl, no sqlite3, no configuration parser, no
hal/: tests/test_imports_split.py checks): it is a third Python process for the whole life of the agent,
and each module it does not import is memory it does not hold (~15 MB resident instead of ~24 MB with an
asyncio loop). It never parses the configuration: each side does, and the network side reports a
configuration error (or a failed pre-flight check) as its verdict, which is printed here once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

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
NETWORK_NICENESS = 5  # the network side yields the CPU to the control side when both want it
MAX_HEALTH_LINE = 8192  # longer is not our child's words: dropped

TICK_S = CHILD_PET_S / 2  # the loop's idle wake-up: hang checks, restarts that are due, systemd pets
# A directory: each process of the agent writes the names of the modules it imported to `<dir>/<role>.modules`
# as it stops (tests/test_imports_split.py: the supervisor stays small, the control side never carries the
# OCPP/network stack, the network side no drivers).
DUMP_MODULES_ENV = "CPAGENT_DUMP_MODULES"


def dump_modules(role: str) -> None:
    where = os.environ.get(DUMP_MODULES_ENV)
    if where:
        with contextlib.suppress(OSError):
            Path(where, f"{role}.modules").write_text("\n".join(sorted(sys.modules)) + "\n")


def started_by_supervisor() -> bool:
    fd = os.environ.get(GO_FD_ENV)
    return bool(fd and fd.isascii() and fd.isdigit())


def side_config_error(role: str, line: str) -> bool:
    """In a side started by the supervisor, a configuration that does not parse: the network side reports
    the line as its verdict (the supervisor prints it once), the control side leaves it to the network side.
    False when started by hand (the caller prints the line)."""
    fd = os.environ.get(HEALTH_FD_ENV)
    if not started_by_supervisor() or not fd or not fd.isascii() or not fd.isdigit():
        return False
    if role == "network":
        with contextlib.suppress(OSError):
            os.write(int(fd), f"{PREFLIGHT_WORD}{' '.join(line.split())}\n".encode("utf-8", "replace")[:4096])
    return True


def _die_with_parent() -> None:  # runs in the child between fork and exec
    import ctypes  # imported in the forked child: the supervisor itself never loads it

    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _network_child() -> None:
    _die_with_parent()
    with contextlib.suppress(OSError):
        os.nice(NETWORK_NICENESS)


def _describe(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"status {code}"


class Child:
    def __init__(self, role: str, argv: list[str]) -> None:
        self.role = role  # "control" or "network"
        self.argv = argv
        self.process: subprocess.Popen[bytes] | None = None
        self.ready = False
        self.last_report = 0.0
        self.started = 0.0
        self.status = ""
        self.restarts = 0
        self.go_fd: int | None = None  # the write end of the side's go pipe until the go is given
        self.preflight: str | None = None  # the network side's verdict on the pre-flight checks
        self.health_fd: int | None = None  # the read end of its health pipe while it is open
        self.buffer = b""
        self.backoff_s = RESTART_MIN_S
        self.restart_at: float | None = None  # when a side that exited starts again


class SplitSupervisor:
    def __init__(self, config_path: Path | None, *, notifier: Notifier | None = None) -> None:
        self.notifier = notifier or Notifier.from_env()
        self.systemd_watchdog_s = watchdog_interval()
        python = [sys.executable, "-m", "agent.cli"]
        tail = [] if config_path is None else ["--config", str(config_path)]
        self.children = {role: Child(role, [*python, role, *tail]) for role in ("control", "network")}
        self.exit_status = 0
        self._announced_ready = False
        self._stopping = False
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._last_pet = float("-inf")

    # ---------------------------------------------------------------- the loop
    def run(self) -> int:
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        restore = self._install_signals()
        try:
            return self._run()
        finally:
            dump_modules("supervisor")
            restore()
            self._selector.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _run(self) -> int:
        # The sides import their code; the network side then makes the pre-flight checks (OCPP key presets,
        # TLS files, state_dir) and reports them. Both start only on the go; a failed check prints its one
        # line here and nothing else has run.
        for role in ("network", "control"):  # the network side's imports and checks are the longer way
            self._spawn(self.children[role], go=False)
        network = self.children["network"]
        deadline = time.monotonic() + PREFLIGHT_TIMEOUT_S
        while not self._stopping and network.preflight is None and network.health_fd is not None:
            if time.monotonic() > deadline:
                break
            self._poll(min(TICK_S, max(0.0, deadline - time.monotonic())))
        if network.preflight != "ok":
            for child in self.children.values():
                if child.process is not None and child.process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        child.process.kill()
                    child.process.wait()
            if self._stopping:
                return 0
            sys.stderr.write((network.preflight or "cpagent: the network side did not start") + "\n")
            sys.stderr.flush()
            return 2
        for child in self.children.values():
            self._go(child)
            assert child.process is not None
            log.info("%s side started (pid %d)", child.role, child.process.pid)
        try:
            while not self._stopping:
                self._tick()
                if not self._stopping:
                    self._poll(self._timeout())
        finally:
            self.notifier.stopping()
            self._stop_all()
        return self.exit_status

    def _timeout(self) -> float:
        timeout = TICK_S
        if self.systemd_watchdog_s is not None:
            timeout = min(timeout, self.systemd_watchdog_s)
        now = time.monotonic()
        for child in self.children.values():
            if child.restart_at is not None:
                timeout = min(timeout, max(0.0, child.restart_at - now))
        return timeout

    def _poll(self, timeout: float) -> None:
        """Wait up to `timeout` for a health line, a signal or a child's exit (SIGCHLD), and handle them."""
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                with contextlib.suppress(OSError):
                    while os.read(self._wake_r, 512):
                        pass
            else:
                self._read_health(key.data)

    def _install_signals(self) -> Callable[[], None]:
        def stop(signum: int, frame: object) -> None:
            self._stopping = True

        try:
            previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
            previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, lambda signum, frame: None)
            old_fd = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        except ValueError:  # not the main thread (an embedding test): the loop's tick notices exits
            return lambda: None

        def restore() -> None:
            signal.set_wakeup_fd(old_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    # ---------------------------------------------------------------- children
    def _go(self, child: Child) -> None:
        if child.go_fd is not None:
            with contextlib.suppress(OSError):
                os.write(child.go_fd, b"g")
            with contextlib.suppress(OSError):
                os.close(child.go_fd)
            child.go_fd = None

    def _spawn(self, child: Child, *, go: bool = True) -> None:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        go_read, child.go_fd = os.pipe2(os.O_CLOEXEC)
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC")}
        env[HEALTH_FD_ENV] = str(write_fd)
        env[GO_FD_ENV] = str(go_read)
        env["WATCHDOG_USEC"] = str(int(CHILD_PET_S * 2 * 1e6))  # children report every CHILD_PET_S
        # The network side's first start imports at the normal priority and nices itself at the go (agent/split.py
        # yield_to_control); a restart, perhaps in the middle of a session, is niced from its exec on.
        niced = child.role == "network" and child.restarts > 0
        before_exec = _network_child if niced else _die_with_parent
        try:
            child.process = subprocess.Popen(child.argv, env=env, pass_fds=(write_fd, go_read),
                                             preexec_fn=before_exec, stdin=subprocess.DEVNULL)
        except BaseException:
            os.close(read_fd)
            os.close(child.go_fd)
            child.go_fd = None
            raise
        finally:
            os.close(write_fd)
            os.close(go_read)
        os.set_blocking(read_fd, False)
        child.health_fd = read_fd
        child.buffer = b""
        self._selector.register(read_fd, selectors.EVENT_READ, child)
        child.ready = False
        child.restart_at = None
        child.started = child.last_report = time.monotonic()
        if go:
            self._go(child)
            log.info("%s side started (pid %d)", child.role, child.process.pid)

    def _close_health(self, child: Child) -> None:
        if child.health_fd is not None:
            self._selector.unregister(child.health_fd)
            os.close(child.health_fd)
            child.health_fd = None
            child.buffer = b""

    def _read_health(self, child: Child) -> None:
        fd = child.health_fd
        if fd is None:
            return
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:  # the side went away: it gives no verdict
                self._close_health(child)
                return
            child.last_report = time.monotonic()
            *lines, child.buffer = (child.buffer + chunk).split(b"\n")
            if len(child.buffer) > MAX_HEALTH_LINE:  # not our child's words
                child.buffer = b""
            for line in lines:
                if len(line) <= MAX_HEALTH_LINE:
                    self._words(child, line.decode("utf-8", "replace").strip().split("\x1f"))

    def _words(self, child: Child, words: list[str]) -> None:
        for word in words:
            if word == "READY=1":
                child.ready = True
            elif word.startswith(PREFLIGHT_WORD):
                child.preflight = word[len(PREFLIGHT_WORD):]
            elif word.startswith("STATUS="):
                child.status = word[len("STATUS="):]
                if child.role == "control":
                    self.notifier.status(child.status)
        if not self._announced_ready and all(c.ready for c in self.children.values()):
            self._announced_ready = True
            self.notifier.ready(self.children["control"].status or None)
            log.info("both sides ready")

    def _tick(self) -> None:
        now = time.monotonic()
        for child in self.children.values():
            process = child.process
            if process is None:
                if child.restart_at is not None and now >= child.restart_at:
                    child.backoff_s = min(RESTART_MAX_S, child.backoff_s * 2)
                    child.restarts += 1
                    self._spawn(child)
                continue
            code = process.poll()
            if code is not None:
                self._exited(child, code)
            elif child.ready and now - child.last_report > HANG_AFTER_S:
                log.error("%s side stopped reporting for %.0f s: killing it", child.role, now - child.last_report)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                child.last_report = now  # one kill per silence; its exit is handled on the next tick
        if self.systemd_watchdog_s is not None and now - self._last_pet >= self.systemd_watchdog_s * 0.9:
            self.notifier.watchdog()  # this loop runs; the children's health is handled above
            self._last_pet = now

    def _exited(self, child: Child, code: int) -> None:
        self._read_health(child)  # its last words (a STATUS=, a verdict) before it is gone
        self._close_health(child)
        child.process = None
        child.ready = False
        if code in (2, EXIT_RESTART_REQUESTED):
            log.warning("%s side exited with %d: stopping the agent with it", child.role, code)
            self.exit_status = code
            self._stopping = True
            return
        ran = time.monotonic() - child.started
        if ran >= STABLE_AFTER_S:
            child.backoff_s = RESTART_MIN_S
        delay = max(child.backoff_s, CONTROL_RESTART_MIN_S) if child.role == "control" else child.backoff_s
        log.error("%s side exited (%s) after %.1f s; restarting it in %.1f s", child.role, _describe(code), ran, delay)
        child.restart_at = time.monotonic() + delay

    def _stop_all(self) -> None:
        # The network side first (its last words still find the station), then the control side, which
        # opens the relays as it stops.
        for role in ("network", "control"):
            child = self.children[role]
            process = child.process
            if process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                try:
                    process.wait(STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    process.wait()
            if child.go_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(child.go_fd)
                child.go_fd = None
            self._close_health(child)


def _log_levels(config_path: Path | None) -> dict[str, str]:
    """The [logging] table, for this process's few lines; anything wrong with the file is left to the
    sides, which parse and check it (the network side reports the error)."""
    import tomllib

    from agent.paths import DEFAULT_CONFIG_PATH

    try:
        with open(config_path or DEFAULT_CONFIG_PATH, "rb") as f:
            table = tomllib.load(f).get("logging", {})
    except (OSError, ValueError):
        return {}
    if not isinstance(table, dict):
        return {}
    return {k: v for k, v in table.items() if isinstance(k, str) and isinstance(v, str)}


def run_supervised(config_path: Path | None, *, verbose: bool = False) -> int:
    from agent.logsetup import setup_logging

    try:
        setup_logging(_log_levels(config_path), verbose=verbose)
    except ValueError:  # a level name the sides will reject (and report) as a configuration error
        setup_logging(verbose=verbose)
    return SplitSupervisor(config_path).run()
