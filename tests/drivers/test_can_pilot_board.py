"""CanPilotBoard against the CAN board emulator on python-can virtual buses (one process), and across
processes over python-can-remote on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from drivers.can.pilot_board import CanPilotBoard, create
from drivers.can.pilot_codec import KeepAlive, encode_frame, load_database
from drivers.serial.pilot_codec import CpStateReport, RelayReport
from hal.clock import FakeClock
from hal.device import DeviceError
from hal.registry import load_driver
from hal.types import CpState, DeviceFaultChanged, Fault, HalEvent, PilotStateChanged, RelayFeedback
from simulator.can_pilot_board import CanPilotBoardEmulator
from simulator.physics import EvModel, Plant
from tests.drivers.helpers import wait_for

DB = load_database()
REPO_ROOT = str(Path(__file__).resolve().parents[2])


# ---------------------------------------------------------------------------------------- settings


def test_entry_point_and_defaults() -> None:
    assert load_driver("pilot-board-can") is create
    board = create("b", {})
    assert (board.interface, board.channel, board.node_id, board.bitrate) == ("socketcan", "can0", 0, 250_000)
    assert (board.keepalive_interval_s, board.silence_timeout_s) == (0.5, 1.0)


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"node_id": 16}, "node_id"),
        ({"node_id": True}, "node_id"),
        ({"channel": ""}, "channel"),
        ({"interface": 3}, "interface"),
        ({"bitrate": 5}, "bitrate"),
        ({"keepalive_interval_s": 2}, "keepalive_interval_s"),
        ({"silence_timeout_s": 0.1}, "silence_timeout_s"),
        ({"port": "/dev/x"}, "port"),
    ],
)
def test_bad_settings_name_the_key(settings: dict[str, Any], key: str) -> None:
    with pytest.raises(DeviceError, match=rf"^devices\.b\.{key}: "):
        create("b", settings)


def test_events_on_change_and_silence_on_a_fake_clock() -> None:
    clock = FakeClock()
    board = CanPilotBoard("b", node_id=2, clock=clock)
    events: list[HalEvent] = []
    board.subscribe(events.append)
    board._start_silence_watch()
    board.receive(*encode_frame(DB, CpStateReport(CpState.B1), 2))
    board.receive(*encode_frame(DB, CpStateReport(CpState.B1), 2))  # no change, no event
    board.receive(*encode_frame(DB, CpStateReport(CpState.C2), 3))  # another board's id
    board.receive(0x112, b"\x0f")  # corrupt
    assert events == [DeviceFaultChanged(Fault.BOARD_SILENT, False, "board answering"), PilotStateChanged(CpState.B1)]
    clock.advance(0.9)
    board.receive(*encode_frame(DB, RelayReport(closed=False, commanded=False), 2))
    clock.advance(0.9)
    assert not any(isinstance(e, DeviceFaultChanged) and e.active for e in events)
    clock.advance(0.2)
    assert events[-1] == DeviceFaultChanged(Fault.BOARD_SILENT, True, "no valid frame from the board for 1.00 s")
    assert board.cp_state is None and board.feedback_closed is None
    assert board.counters()["other_nodes"] == 1 and board.counters()["malformed_frames"] == 1


# ---------------------------------------------------------------------------------------- back to back


class Pair:
    def __init__(self, node_id: int = 1, interface: str = "virtual", channel: str | None = None) -> None:
        self.channel = channel or f"test-{uuid.uuid4().hex}"
        self.plant = Plant(ev=EvModel(pwm_reaction_s=0.1))
        self.emulator = CanPilotBoardEmulator(self.plant, channel=self.channel, node_id=node_id)
        self.board = CanPilotBoard(
            "board", interface=interface, channel=self.channel, node_id=node_id, keepalive_interval_s=0.2
        )
        self.events: list[HalEvent] = []
        self.board.subscribe(self.events.append)
        self.tasks: list[asyncio.Task[None]] = []


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    p = Pair()
    p.tasks = [asyncio.create_task(p.emulator.run()), asyncio.create_task(p.board.run())]
    try:
        yield p
    finally:
        for t in p.tasks:
            t.cancel()
        await asyncio.gather(*p.tasks, return_exceptions=True)


async def test_charging_handshake_over_the_bus(pair: Pair) -> None:
    board, plant = pair.board, pair.plant
    await wait_for(lambda: board.cp_state is CpState.A, what="state A")
    assert board.board_info is not None and board.board_info.keepalive_timeout_ms == 2000
    plant.plugged = True
    await wait_for(lambda: board.cp_state is CpState.B1, what="B1")
    assert board.proximity is not None and board.proximity.ampacity_a == 32
    board.set_duty(53.33)
    await wait_for(lambda: board.cp_state is CpState.C2, what="C2")
    assert plant.pwm_duty == pytest.approx(53.33)
    board.close_relay()
    await wait_for(lambda: board.feedback_closed is True, what="relay closed")
    board.lock()
    await wait_for(lambda: board.locked is True, what="locked")
    await wait_for(lambda: board.telemetry_status is not None and board.telemetry_status.duty == 5333, 2, "telemetry")
    assert board.telemetry_levels is not None and board.telemetry_levels.cp_low_mv == -12000
    assert board.counters()["malformed_frames"] == 0 and pair.emulator.counters["malformed_frames"] == 0


async def test_safety_path_opens_the_relay_in_the_event_call_chain(pair: Pair) -> None:
    board, plant = pair.board, pair.plant
    plant.plugged = True
    await wait_for(lambda: board.cp_state is CpState.B1, what="B1")
    board.set_duty(50.0)
    await wait_for(lambda: board.cp_state is CpState.C2, what="C2")
    board.close_relay()
    await wait_for(lambda: plant.relay_closed, what="relay closed")

    def on_event(event: HalEvent) -> None:
        if isinstance(event, PilotStateChanged) and not event.state.requests_energy:
            board.open_relay()  # synchronous: the frame is on the bus before this returns

    board.subscribe(on_event)
    plant.ev.mode = plant.ev.mode.PAUSE
    await wait_for(lambda: not plant.relay_commanded_closed, 3, "relay opened by the safety path")
    await wait_for(lambda: RelayFeedback(False) in pair.events, what="open feedback")


async def test_board_silence_is_reported_within_2s_and_recovers(pair: Pair) -> None:
    board = pair.board
    await wait_for(lambda: board.cp_state is not None, what="first report")
    pair.emulator.silent = True
    silent = [DeviceFaultChanged(Fault.BOARD_SILENT, True, "no valid frame from the board for 1.00 s")]
    took = await wait_for(lambda: pair.events[-1:] == silent, 3, "silence")
    assert took < 2.0 and board.cp_state is None
    mark = len(pair.events)
    pair.emulator.silent = False
    await wait_for(lambda: board.cp_state is CpState.A, 2, "recovery")
    assert pair.events[mark] == DeviceFaultChanged(Fault.BOARD_SILENT, False, "board answering")
    assert PilotStateChanged(CpState.A) in pair.events[mark:]  # every state re-emitted after a silence


async def test_keepalive_loss_opens_the_relay_after_2s(pair: Pair) -> None:
    board, plant = pair.board, pair.plant
    plant.plugged = True
    await wait_for(lambda: board.cp_state is CpState.B1, what="B1")
    board.set_duty(50.0)
    board.close_relay()
    await wait_for(lambda: plant.relay_closed, what="relay closed")
    pair.tasks[1].cancel()  # the host dies
    await asyncio.gather(pair.tasks[1], return_exceptions=True)
    start = time.monotonic()
    await wait_for(lambda: not plant.relay_closed, 4, "relay opened by the board's watchdog")
    assert 1.5 < time.monotonic() - start < 3.0
    assert pair.emulator.keepalive_lapsed and plant.pwm_duty == 0.0


async def test_repeated_keepalive_counter_does_not_feed_the_watchdog(pair: Pair) -> None:
    await wait_for(lambda: not pair.emulator.keepalive_lapsed, what="first keep-alive")
    emulator = pair.emulator
    before = emulator.keepalive_repeats
    emulator.feed(*encode_frame(DB, KeepAlive(emulator._last_counter or 0), 1))
    assert emulator.keepalive_repeats == before + 1


async def test_corrupt_and_foreign_frames_are_counted_not_fatal(pair: Pair) -> None:
    board = pair.board
    await wait_for(lambda: board.cp_state is CpState.A, what="state A")
    pair.emulator.send_raw(0x111, b"\x0e")  # bad CP code
    pair.emulator.send_raw(0x161, b"\x01")  # short telemetry
    pair.emulator.send_raw(0x7F0, b"\x00")  # unknown id
    pair.emulator.send_raw(0x112, b"\x03")  # node 2 on the same bus
    pair.emulator.send_raw(0x111, b"\x00", is_extended_id=True)
    await wait_for(lambda: board.counters()["other_nodes"] >= 1 and board.counters()["unknown_frames"] >= 2)
    assert board.counters()["malformed_frames"] == 2
    pair.plant.plugged = True
    await wait_for(lambda: board.cp_state is CpState.B1, what="still working")


async def test_bus_that_cannot_open_is_a_silent_board() -> None:
    board = CanPilotBoard("b", interface="no-such-interface", channel="x")
    events: list[HalEvent] = []
    board.subscribe(events.append)
    task = asyncio.create_task(board.run())
    await wait_for(lambda: events, 2, "fault")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert isinstance(events[0], DeviceFaultChanged) and events[0].active and "cannot open CAN" in events[0].detail
    board.open_relay()  # no bus: dropped and counted, never raises
    assert board.counters()["tx_dropped"] == 1


# ---------------------------------------------------------------------------------------- across processes


@contextlib.contextmanager
def remote_server(channel: str) -> Any:
    server_mod = pytest.importorskip("can_remote.server")
    server = server_mod.RemoteServer("127.0.0.1", 0, interface="virtual", channel=channel)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"ws://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


async def test_emulator_in_another_process_over_python_can_remote() -> None:
    channel = f"remote-{uuid.uuid4().hex}"
    with remote_server(channel) as url:
        env = {**os.environ, "PYTHONPATH": REPO_ROOT}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "simulator.can_pilot_board", "--interface", "remote", "--channel", url,
            "--node", "3", "--plugged", env=env, stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        board = CanPilotBoard("remote", interface="remote", channel=url, node_id=3, keepalive_interval_s=0.2)
        task = asyncio.create_task(board.run())
        try:
            await wait_for(lambda: board.cp_state is CpState.B1, 10, "B1 from the other process")
            board.set_duty(50.0)
            await wait_for(lambda: board.cp_state is CpState.C2, 5, "C2")
            board.close_relay()
            await wait_for(lambda: board.feedback_closed is True, 5, "relay closed in the other process")
            assert board.counters()["malformed_frames"] == 0
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 5)
