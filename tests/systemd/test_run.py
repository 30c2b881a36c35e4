"""`cpagent run` as systemd runs it: a child process with $NOTIFY_SOCKET, $WATCHDOG_USEC and
$JOURNAL_STREAM, against the simulated hardware (real ptys and Modbus TCP on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config import load
from agent.sdnotify import Notifier, SystemdIntegration
from agent.station import Station
from simulator.rig import Rig, RigOptions


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    async def wait_for(self, predicate: Callable[[str], bool], within: float = 10.0) -> str:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                message = self.sock.recv(4096).decode()
            except BlockingIOError:
                await asyncio.sleep(0.01)
                continue
            self.messages.append(message)
            if predicate(message):
                return message
        raise AssertionError(f"nothing matching within {within} s; got {self.messages}")


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    with tempfile.TemporaryDirectory(prefix="cpsd") as directory:  # short: AF_UNIX path limit
        rig = Rig(RigOptions(directory=Path(directory) / "rig"))
        await rig.start()
        try:
            yield rig
        finally:
            await rig.stop()


async def test_cpagent_run_under_systemd(rig: Rig) -> None:
    notify = NotifySocket(rig.dir / "notify")
    # stderr is a pipe we made, so JOURNAL_STREAM can name it exactly as systemd would name the journal's.
    read_end, write_end = os.pipe()
    st = os.fstat(write_end)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000",
           "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    env.pop("WATCHDOG_PID", None)
    stderr: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr.extend(iter(lambda: os.read(read_end, 65536), b"")))
    reader.start()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.cli", "run", "--config", str(rig.dir / "agent.toml"),
        stderr=write_end, env=env)
    os.close(write_end)
    try:
        ready = await notify.wait_for(lambda m: "READY=1" in m, within=20)
        assert ready == "READY=1\nSTATUS=1: Available"
        for _ in range(2):
            await notify.wait_for(lambda m: m == "WATCHDOG=1", within=5)
        proc.send_signal(signal.SIGTERM)
        await notify.wait_for(lambda m: m == "STOPPING=1", within=10)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await asyncio.to_thread(reader.join, 10)
        os.close(read_end)
    lines = [line for line in b"".join(stderr).decode().splitlines() if line]
    assert lines, "the agent logged nothing"
    # journald gets a priority prefix on every line and no timestamps of our own.
    assert all(re.match(r"<[0-7]>", line) for line in lines), lines
    assert not any(re.search(r"\d\d:\d\d:\d\d,\d{3}", line) for line in lines), lines


async def test_status_line_follows_the_connectors(rig: Rig) -> None:
    notify = NotifySocket(rig.dir / "notify")
    station = Station(load(rig.dir / "agent.toml"))
    systemd = SystemdIntegration(station, Notifier(str(notify.path)), watchdog_s=0.1, status_refresh_s=0.05)
    task = asyncio.create_task(station.run(ready=systemd.ready))
    try:
        assert await notify.wait_for(lambda m: m.startswith("READY=1")) == "READY=1\nSTATUS=1: Available"
        await notify.wait_for(lambda m: m == "WATCHDOG=1")
        rig.control({"cmd": "plug", "connector": 1})
        await notify.wait_for(lambda m: m == "STATUS=1: Preparing")
        assert systemd.feeder is not None and systemd.feeder.withheld == 0
    finally:
        await systemd.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        station.close()
    await notify.wait_for(lambda m: m == "STOPPING=1")
    assert notify.messages.count("STATUS=1: Available") == 0  # READY=1 carried it; no repeat


async def test_driver_left_down_keeps_the_watchdog_fed(rig: Rig) -> None:
    # A driver that keeps crashing stays down with a fault on its connector; systemd must not restart the
    # whole agent for it (that would end every other connector's session, over and over).
    notify = NotifySocket(rig.dir / "notify")
    station = Station(load(rig.dir / "agent.toml"))
    station.supervisor.base_delay_s = station.supervisor.max_delay_s = 0.02
    systemd = SystemdIntegration(station, Notifier(str(notify.path)), watchdog_s=0.1, status_refresh_s=0.05)
    task = asyncio.create_task(station.run(ready=systemd.ready))
    try:
        await notify.wait_for(lambda m: m == "WATCHDOG=1")
        board: Any = station.devices["board1"]

        async def always_crash() -> None:
            raise RuntimeError("injected persistent bug")

        board._serve = always_crash
        board._lose_port("test")
        deadline = time.monotonic() + 10
        while not station.supervisor.tasks["device:board1"].gave_up:
            assert time.monotonic() < deadline, "the supervisor never gave up"
            await asyncio.sleep(0.02)
        assert station.connectors[1].status().value == "Faulted"
        notify.messages.clear()
        for _ in range(3):
            await notify.wait_for(lambda m: m == "WATCHDOG=1", within=2)
        assert systemd.feeder is not None and systemd.feeder.withheld_reason is None
    finally:
        await systemd.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        station.close()
