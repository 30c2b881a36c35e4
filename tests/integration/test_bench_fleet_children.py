"""bench/fleet.py never leaves its children running (the CSMS and the fleet are started the same way): stopped by
SIGTERM it ends by an exception through its cleanup (exit 143, not -15: the real bench and its real `cpsim csms`
child, signalled as soon as that runs); killed with kill -9 the kernel takes them down with it (PR_SET_PDEATHSIG,
its preexec_fn, on a child that never writes)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")  # a zombie nobody reaps is gone too


def _children(pid: int) -> dict[int, list[str]]:
    """Living child processes of ``pid`` -> their command line."""
    out: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None and fields[1] == str(pid):
            with contextlib.suppress(OSError):
                out[int(entry.name)] = (entry / "cmdline").read_bytes().decode().split("\0")
    return {k: v for k, v in out.items() if _alive(k)}


def _bench_with_csms() -> tuple[subprocess.Popen[bytes], int]:
    """The bench as soon as its CSMS child runs (the test budget allows no wait for the CSMS's start-up)."""
    bench = subprocess.Popen([sys.executable, "bench/fleet.py", "--n", "1", "--window", "1"], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for pid, cmd in _children(bench.pid).items():
            if cmd[1:4] == ["-m", "simulator.cli", "csms"]:
                return bench, pid
        time.sleep(0.01)
    bench.kill()
    raise AssertionError("the bench did not start its CSMS within 30 s")


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_sigterm_ends_the_bench_through_its_cleanup() -> None:
    bench, csms = _bench_with_csms()
    try:
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(timeout=30) == 128 + signal.SIGTERM  # by the handler's exception: the cleanup ran
        assert _gone(csms), "the CSMS outlived the bench's SIGTERM"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(csms, signal.SIGKILL)


# A process that starts a child as bench/fleet.py starts its CSMS and its fleet, prints the child's pid, waits.
STARTER = """
import runpy, subprocess, sys, time
bench = runpy.run_path("bench/fleet.py")
child = subprocess.Popen(["sleep", "60"], preexec_fn=bench["_die_with_the_bench"])
print(child.pid, flush=True)
time.sleep(60)
"""


def test_kill_9_of_the_bench_takes_its_children_down() -> None:
    """Killed early, the real bench's CSMS dies of its own (its URL line hits a closed pipe), so the test uses a
    child that never writes: the bench's preexec_fn alone must take it down."""
    starter = subprocess.Popen([sys.executable, "-c", STARTER], cwd=REPO, stdout=subprocess.PIPE)
    assert starter.stdout is not None
    child = int(starter.stdout.readline())
    try:
        assert _alive(child)
        starter.kill()
        starter.wait(timeout=10)
        assert _gone(child), "the child outlived kill -9 of its parent"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
