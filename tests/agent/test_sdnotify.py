"""sd_notify client and watchdog feeder against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent import sdnotify
from agent.sdnotify import ConnectorLine, Notifier, WatchdogFeeder, status_line, supervisor_problem, watchdog_interval
from agent.supervisor import Supervisor


class Systemd:
    """The receiving end of $NOTIFY_SOCKET."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        """Everything received so far, without waiting."""
        got = []
        while True:
            try:
                got.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                break
        self.messages += got
        return got

    async def wait_for(self, predicate: Callable[[str], bool], within: float = 5.0) -> str:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for message in self.drain():
                if predicate(message):
                    return message
            await asyncio.sleep(0.01)
        raise AssertionError(f"nothing matching arrived within {within} s; got {self.messages}")


@pytest.fixture
def systemd() -> Iterator[Systemd]:
    # A short directory of our own: AF_UNIX paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="sdn") as directory:
        path = str(Path(directory) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        try:
            yield Systemd(sock, path)
        finally:
            sock.close()


def test_messages_arrive_as_sd_notify_assignments(systemd: Systemd) -> None:
    n = Notifier(systemd.address)
    assert n.ready("1: Available")
    assert n.status("1: Charging\n7.2 kW")
    assert n.watchdog()
    assert n.stopping()
    n.close()
    assert systemd.drain() == ["READY=1\nSTATUS=1: Available", "STATUS=1: Charging 7.2 kW", "WATCHDOG=1",
                               "STOPPING=1"]


def test_abstract_namespace_address() -> None:
    name = f"cpagent-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        n = Notifier("@" + name)
        assert n.watchdog()
        n.close()
        assert sock.recv(100) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_module_functions_follow_notify_socket(systemd: Systemd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sdnotify.notify_ready()
    assert not sdnotify.notify_watchdog()
    assert systemd.drain() == []
    monkeypatch.setenv("NOTIFY_SOCKET", systemd.address)
    assert sdnotify.notify_ready()
    assert sdnotify.notify_status("ok")
    assert sdnotify.notify_watchdog()
    assert sdnotify.notify_stopping()
    assert systemd.drain() == ["READY=1", "STATUS=ok", "WATCHDOG=1", "STOPPING=1"]


def test_gone_systemd_is_logged_once_and_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier(str(tmp_path / "absent"))
    with caplog.at_level(logging.WARNING, "cpagent.systemd"):
        assert not n.watchdog()
        assert not n.watchdog()
    assert len([r for r in caplog.records if "cannot notify systemd" in r.getMessage()]) == 1


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "10000000"}) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}) is None  # meant for another pid
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


def test_status_line() -> None:
    assert status_line([ConnectorLine(2, "Available"), ConnectorLine(1, "Charging", 7210.0)]) == (
        "1: Charging 7.2 kW | 2: Available")
    assert status_line([ConnectorLine(1, "Faulted", 0.0, "board_silent")]) == "1: Faulted (board_silent)"
    assert status_line([ConnectorLine(1, "Preparing", 0.0)]) == "1: Preparing"
    assert status_line([]) == "no connectors"


async def _start(feeder: WatchdogFeeder) -> asyncio.Task[None]:
    return asyncio.create_task(feeder.run())


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_feeder_pets_at_half_the_watchdog_period(systemd: Systemd) -> None:
    feeder = WatchdogFeeder(Notifier(systemd.address), 0.1, lambda: None)
    task = await _start(feeder)
    try:
        start = time.monotonic()
        for _ in range(4):
            await systemd.wait_for(lambda m: m == "WATCHDOG=1")
        elapsed = time.monotonic() - start
    finally:
        await _stop(task)
    assert elapsed >= 0.3  # paced by the interval, not a busy loop
    assert feeder.withheld == 0


async def test_blocked_event_loop_withholds_the_ping(systemd: Systemd, caplog: pytest.LogCaptureFixture) -> None:
    feeder = WatchdogFeeder(Notifier(systemd.address), 0.1, lambda: None, lag_window_s=1.2)
    task = await _start(feeder)
    try:
        await systemd.wait_for(lambda m: m == "WATCHDOG=1")
        with caplog.at_level(logging.WARNING, "cpagent.systemd"):
            time.sleep(1.5)  # noqa: ASYNC251 - the point: a coroutine hogging the loop
            systemd.drain()
            # The 1.5 s overshoot stays in the 1.2 s lag window: every due ping in the next 0.6 s is withheld.
            await asyncio.sleep(0.6)
            assert "WATCHDOG=1" not in systemd.drain()
            assert feeder.withheld >= 2
            assert feeder.withheld_reason is not None and "event loop lagged" in feeder.withheld_reason
            # Once the loop has kept time for the whole window, pings resume.
            await systemd.wait_for(lambda m: m == "WATCHDOG=1", within=5.0)
    finally:
        await _stop(task)
    withholding = [r for r in caplog.records if "withholding" in r.getMessage()]
    assert len(withholding) == 1 and withholding[0].levelno == logging.ERROR
    assert any("resumed" in r.getMessage() for r in caplog.records)


async def test_dead_critical_task_withholds_the_ping(systemd: Systemd, caplog: pytest.LogCaptureFixture) -> None:
    crash = asyncio.Event()

    async def device() -> None:
        await crash.wait()
        raise OSError("port vanished")

    async def optional() -> None:
        raise OSError("reader unplugged")

    supervisor = Supervisor(base_delay_s=60.0)  # stays down (in back-off) for the whole test
    supervisor.spawn("device:board1", device)
    supervisor.spawn("tokens", optional, critical=False)
    feeder = WatchdogFeeder(Notifier(systemd.address), 0.1, lambda: supervisor_problem(supervisor))
    task = await _start(feeder)
    try:
        # A non-critical task being down does not matter.
        await systemd.wait_for(lambda m: m == "WATCHDOG=1")
        await systemd.wait_for(lambda m: m == "WATCHDOG=1")
        with caplog.at_level(logging.ERROR, "cpagent.systemd"):
            crash.set()
            deadline = time.monotonic() + 5
            while supervisor.healthy():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            systemd.drain()
            await asyncio.sleep(0.6)
            assert "WATCHDOG=1" not in systemd.drain()
    finally:
        await _stop(task)
        await supervisor.stop()
    assert feeder.withheld >= 3
    assert feeder.withheld_reason == "critical task(s) down: device:board1"
    assert len([r for r in caplog.records if "withholding" in r.getMessage()]) == 1


async def test_broken_health_check_withholds_the_ping(systemd: Systemd) -> None:
    def broken() -> str | None:
        raise KeyError("tasks")

    feeder = WatchdogFeeder(Notifier(systemd.address), 0.05, broken)
    task = await _start(feeder)
    try:
        deadline = time.monotonic() + 5
        while feeder.withheld < 3:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
    finally:
        await _stop(task)
    assert feeder.pets == 0
    assert "WATCHDOG=1" not in systemd.drain()
    assert feeder.withheld_reason is not None and feeder.withheld_reason.startswith("health check failed: KeyError")
