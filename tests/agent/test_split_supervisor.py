"""The supervisor loop of `cpagent run` (agent/split_supervisor.py), one class at a time: what it reads on a
child's health pipe, how it judges a hang and an exit. The whole supervisor with its real sides is exercised by
tests/reliability/test_process_split.py, tests/systemd/test_run.py and tests/integration/test_config_errors.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sdnotify import Notifier
from agent.split_supervisor import CONTROL_RESTART_MIN_S, HANG_AFTER_S, MAX_HEALTH_LINE, RESTART_MIN_S, SplitSupervisor


class Recorder(Notifier):
    def __init__(self) -> None:
        super().__init__("recorder")
        self.sent: list[tuple[str, ...]] = []

    def send(self, *assignments: str) -> bool:
        self.sent.append(assignments)
        return True


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[SplitSupervisor]:
    sup = SplitSupervisor(tmp_path / "agent.toml", notifier=Recorder())
    yield sup
    for child in sup.children.values():
        sup._close_health(child)
        if child.process is not None and child.process.poll() is None:
            child.process.kill()
            child.process.wait()
    sup._selector.close()
    os.close(sup._wake_r)
    os.close(sup._wake_w)


def pipe_to(sup: SplitSupervisor, role: str) -> int:
    """A health pipe for `role` as _spawn makes it; returns the write end (the side's)."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    child = sup.children[role]
    child.health_fd = read_fd
    sup._selector.register(read_fd, 1, child)
    return write_fd


def test_ready_status_and_the_verdict_from_the_health_pipes(supervisor: SplitSupervisor) -> None:
    recorder = supervisor.notifier
    assert isinstance(recorder, Recorder)
    control, network = pipe_to(supervisor, "control"), pipe_to(supervisor, "network")
    os.write(network, b"PREFLIGHT=ok\nREADY=1\n")
    os.write(control, b"READY=1\x1fSTATUS=1: Available\n")
    supervisor._poll(1.0)
    supervisor._poll(0.0)
    assert supervisor.children["network"].preflight == "ok"
    assert supervisor.children["control"].ready and supervisor.children["network"].ready
    # the control side's status goes to systemd, and READY=1 once both sides are ready, with that status
    assert ("STATUS=1: Available",) in recorder.sent
    assert recorder.sent.count(("READY=1", "STATUS=1: Available")) == 1
    os.write(network, b"STATUS=network things\n")
    supervisor._poll(1.0)
    assert ("STATUS=network things",) not in recorder.sent  # only the control side speaks for the station
    os.close(control)
    os.close(network)


def test_a_line_too_long_is_dropped_and_the_next_one_read(supervisor: SplitSupervisor) -> None:
    network = pipe_to(supervisor, "network")
    os.write(network, b"PREFLIGHT=" + b"x" * (MAX_HEALTH_LINE + 10))
    supervisor._poll(1.0)
    assert supervisor.children["network"].preflight is None
    os.write(network, b"y" * 100 + b"\nPREFLIGHT=ok\n")
    supervisor._poll(1.0)
    assert supervisor.children["network"].preflight == "ok"
    os.close(network)


def test_a_side_that_closes_its_pipe_gives_no_verdict(supervisor: SplitSupervisor) -> None:
    network = pipe_to(supervisor, "network")
    os.close(network)
    supervisor._poll(1.0)
    child = supervisor.children["network"]
    assert child.health_fd is None and child.preflight is None


def test_a_silent_ready_side_is_killed(supervisor: SplitSupervisor) -> None:
    child = supervisor.children["network"]
    child.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    child.ready = True
    child.last_report = time.monotonic() - HANG_AFTER_S - 1
    supervisor._tick()
    assert child.process.wait(10) == -9


def test_exits_stop_the_agent_or_restart_the_side_after_its_back_off(supervisor: SplitSupervisor) -> None:
    for role, code, stops in (("network", 1, False), ("control", -9, False), ("network", 75, True)):
        child = supervisor.children[role]
        child.process = subprocess.Popen([sys.executable, "-c", f"raise SystemExit({max(code, 0)})"])
        child.process.wait(10)
        child.started = time.monotonic()
        before = time.monotonic()
        supervisor._exited(child, code)
        assert child.process is None
        if stops:
            assert supervisor._stopping and supervisor.exit_status == 75
        else:
            assert not supervisor._stopping and child.restart_at is not None
            wait = child.restart_at - before
            # the control side waits until the boards' keep-alive has surely opened the relays
            assert wait >= (CONTROL_RESTART_MIN_S if role == "control" else RESTART_MIN_S) - 0.01
