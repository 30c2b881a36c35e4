"""PilotBoard driver: settings, event logic on a FakeClock, and back-to-back with the emulator over a
real pty."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from drivers.serial.pilot_board import PilotBoard, create
from drivers.serial.pilot_codec import (
    CpStateReport,
    FaultReport,
    FrameDecoder,
    Hello,
    KeepAlive,
    LockReport,
    RelayReport,
    Sender,
    encode,
)
from hal.clock import FakeClock
from hal.device import DeviceError
from hal.registry import load_driver
from hal.types import (
    CpState,
    DeviceFaultChanged,
    Fault,
    FaultFlagsChanged,
    HalEvent,
    LockFeedback,
    PilotStateChanged,
    ProximityChanged,
    RelayFeedback,
)
from simulator.physics import EvModel, Plant
from simulator.pilot_board import PilotBoardEmulator

# ---------------------------------------------------------------------------------------- settings


def test_entry_point_resolves_to_the_factory() -> None:
    assert load_driver("pilot-board-serial") is create


def test_factory_defaults() -> None:
    board = create("pilot", {"port": "/dev/ttyS1"})
    assert (board.port, board.baudrate) == ("/dev/ttyS1", 115200)
    assert (board.keepalive_interval_s, board.silence_timeout_s) == (0.5, 1.0)


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({}, "port"),
        ({"port": ""}, "port"),
        ({"port": 5}, "port"),
        ({"port": "/dev/x", "baudrate": "fast"}, "baudrate"),
        ({"port": "/dev/x", "baudrate": True}, "baudrate"),
        ({"port": "/dev/x", "baudrate": 0}, "baudrate"),
        ({"port": "/dev/x", "keepalive_interval_s": 2.5}, "keepalive_interval_s"),
        ({"port": "/dev/x", "silence_timeout_s": 3}, "silence_timeout_s"),
        ({"port": "/dev/x", "silence_timeout_s": 0.1}, "silence_timeout_s"),
        ({"port": "/dev/x", "prot": "/dev/y"}, "prot"),
    ],
)
def test_bad_settings_name_the_key(settings: dict[str, Any], key: str) -> None:
    with pytest.raises(DeviceError, match=rf"^devices\.pilot\.{key}: expected|^devices\.pilot\.{key}: unknown"):
        create("pilot", settings)


def test_duty_outside_pwm_range_is_refused() -> None:
    board = create("pilot", {"port": "/dev/x"})
    for bad in (0.0, 100.0, -5.0, float("nan")):
        with pytest.raises(ValueError):
            board.set_duty(bad)


# ---------------------------------------------------------------------------------------- logic (FakeClock)


def _unit_board() -> tuple[PilotBoard, FakeClock, list[HalEvent]]:
    clock = FakeClock()
    board = PilotBoard("pilot", "/dev/null", silence_timeout_s=1.0, clock=clock)
    events: list[HalEvent] = []
    board.subscribe(events.append)
    board._start_silence_watch()  # what run() does once the loop is up
    return board, clock, events


def test_events_only_on_change_and_silence_clears_state() -> None:
    board, clock, events = _unit_board()
    board.receive(encode(CpStateReport(CpState.A)) + encode(RelayReport(False, False)))
    board.receive(encode(CpStateReport(CpState.A)) + encode(RelayReport(False, False)))
    assert events == [
        DeviceFaultChanged(Fault.BOARD_SILENT, active=False, detail="board answering"),
        PilotStateChanged(CpState.A),
        RelayFeedback(False),
    ]
    events.clear()
    clock.advance(0.9)
    board.receive(encode(CpStateReport(CpState.B1)))
    clock.advance(0.9)  # 0.9 s since the last frame: still fine
    assert events == [PilotStateChanged(CpState.B1)]
    clock.advance(0.2)
    assert [e for e in events if isinstance(e, DeviceFaultChanged)] == [
        DeviceFaultChanged(Fault.BOARD_SILENT, active=True, detail="no valid frame from the board for 1.00 s")
    ]
    assert (board.cp_state, board.feedback_closed, board.locked) == (None, None, None)
    events.clear()
    clock.advance(10.0)
    assert events == []  # reported once, not repeatedly
    board.receive(encode(CpStateReport(CpState.B1)))
    assert events == [
        DeviceFaultChanged(Fault.BOARD_SILENT, active=False, detail="board answering"),
        PilotStateChanged(CpState.B1),  # re-emitted: the agent forgot the state on silence
    ]


def test_board_that_never_answers_is_silent_after_the_timeout() -> None:
    _, clock, events = _unit_board()
    clock.advance(0.99)
    assert events == []
    clock.advance(0.02)
    assert events[0] == DeviceFaultChanged(
        Fault.BOARD_SILENT, active=True, detail="no valid frame from the board for 1.00 s"
    )


def test_protocol_version_mismatch_is_explained_in_the_silence_detail() -> None:
    board, clock, events = _unit_board()
    board.receive(encode(Hello(2, 0, 0, 1, 2000, 250), version=2) + encode(CpStateReport(CpState.A), version=2))
    clock.advance(1.1)
    assert board.counters()["version_mismatch"] == 2
    assert len(events) == 1 and isinstance(events[0], DeviceFaultChanged)
    assert "board speaks protocol version 2" in events[0].detail


def test_a_failing_listener_does_not_stop_the_other_events() -> None:
    board, _, events = _unit_board()

    def broken(event: HalEvent) -> None:
        raise RuntimeError("listener bug")

    board._listeners.insert(0, broken)
    board.receive(encode(LockReport(True, True)) + encode(FaultReport(frozenset({Fault.RCD}))))
    assert LockFeedback(True) in events and FaultFlagsChanged(frozenset({Fault.RCD})) in events


def test_commands_without_a_port_are_counted_not_raised() -> None:
    board, _, _ = _unit_board()
    board.open_relay()
    board.set_x1()
    assert board.counters()["tx_dropped"] == 2


# ---------------------------------------------------------------------------------------- back to back


async def wait_for(condition: Callable[[], bool], limit_s: float = 3.0, what: str = "condition") -> float:
    """Poll until ``condition`` holds; returns the seconds it took."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > limit_s:
            raise AssertionError(f"timed out after {limit_s} s waiting for {what}")
        await asyncio.sleep(0.005)
    return time.monotonic() - start


class Rig:
    def __init__(self, plant: Plant, emulator: PilotBoardEmulator, board: PilotBoard) -> None:
        self.plant = plant
        self.emulator = emulator
        self.board = board
        self.events: list[HalEvent] = []
        self.stamps: list[tuple[float, HalEvent]] = []
        board.subscribe(self._record)
        self.tasks: list[asyncio.Task[None]] = []

    def _record(self, event: HalEvent) -> None:
        self.events.append(event)
        self.stamps.append((time.perf_counter(), event))

    def silent_events(self) -> list[bool]:
        return [e.active for e in self.events if isinstance(e, DeviceFaultChanged)]


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    plant = Plant(ev=EvModel(pwm_reaction_s=0.05))
    emulator = PilotBoardEmulator(plant)
    board = create("pilot", {"port": emulator.port_path, "keepalive_interval_s": 0.2})
    r = Rig(plant, emulator, board)
    r.tasks = [asyncio.create_task(emulator.run()), asyncio.create_task(board.run())]
    await wait_for(lambda: board.cp_state is CpState.A, what="first CP state")
    yield r
    await _stop(r.tasks)
    emulator.close()


async def test_cp_state_changes_arrive_as_events(rig: Rig) -> None:
    rig.plant.plugged = True
    await wait_for(lambda: PilotStateChanged(CpState.B1) in rig.events, what="B1")
    assert ProximityChanged(220.0, 32.0) in rig.events
    rig.board.keep_alive()
    rig.board.set_duty(16.0)
    await wait_for(lambda: PilotStateChanged(CpState.B2) in rig.events, what="B2")
    await wait_for(lambda: rig.board.cp_state is CpState.C2, what="C2 (EV closes S2)")
    assert rig.plant.pwm_duty == pytest.approx(16.0)
    rig.board.set_f()
    await wait_for(lambda: rig.board.cp_state is CpState.F, what="F")
    assert rig.board.counters()["frames_bad"] == 0
    assert rig.board.board_info is not None and rig.board.board_info.keepalive_timeout_ms == 2000


async def test_relay_and_lock_feedback_follow_commands_and_weld_stays_closed(rig: Rig) -> None:
    rig.plant.plugged = True
    rig.board.lock()
    rig.board.close_relay()
    await wait_for(lambda: rig.board.feedback_closed is True, what="relay closed")
    await wait_for(lambda: rig.board.locked is True, what="locked")
    rig.board.open_relay()
    await wait_for(lambda: rig.board.feedback_closed is False, what="relay open")
    assert [e for e in rig.events if isinstance(e, RelayFeedback)] == [
        RelayFeedback(False), RelayFeedback(True), RelayFeedback(False),
    ]  # fmt: skip
    rig.board.close_relay()
    await wait_for(lambda: rig.board.feedback_closed is True, what="relay closed again")
    rig.plant.relay_welded = True
    rig.board.open_relay()
    await wait_for(lambda: not rig.plant.relay_commanded_closed, what="board drops the coil")
    await asyncio.sleep(0.3)  # more than one full status period
    assert rig.board.feedback_closed is True
    rig.plant.lock_jammed = True
    await wait_for(lambda: rig.board.locked is False, what="jammed lock reported open")
    await wait_for(lambda: Fault.LOCK in (rig.board.active_faults or ()), what="LOCK fault flag")


async def test_fault_flags_including_diode_only_with_pwm(rig: Rig) -> None:
    rig.plant.plugged = True
    rig.plant.faults.add(Fault.DIODE)
    rig.plant.faults.add(Fault.OVERTEMP)
    await wait_for(lambda: FaultFlagsChanged(frozenset({Fault.OVERTEMP})) in rig.events, what="overtemp")
    rig.board.set_duty(50.0)
    await wait_for(lambda: rig.board.active_faults == {Fault.OVERTEMP, Fault.DIODE}, what="diode fault")
    await wait_for(lambda: rig.board.telemetry is not None and rig.board.telemetry.duty == 5000, what="telemetry")
    telemetry = rig.board.telemetry
    assert telemetry is not None
    # No diode: the negative half of the PWM mirrors the positive one instead of sitting at -12 V.
    assert telemetry.cp_low_mv == -telemetry.cp_high_mv and telemetry.temperature_dc > 600
    rig.board.set_x1()
    await wait_for(lambda: rig.board.active_faults == {Fault.OVERTEMP}, what="diode flag gone with PWM off")


async def test_silent_board_is_detected_within_two_seconds_and_recovers(rig: Rig) -> None:
    rig.emulator.silent = True
    took = await wait_for(lambda: rig.silent_events()[-1:] == [True], limit_s=2.0, what="BOARD_SILENT")
    assert took < 2.0
    assert rig.board.cp_state is None and rig.board.feedback_closed is None
    rig.emulator.silent = False
    await wait_for(lambda: rig.silent_events()[-1:] == [False], limit_s=1.0, what="recovery")
    assert rig.board.cp_state is CpState.A


async def test_a_restarted_board_gets_its_relay_command_back(rig: Rig) -> None:
    rig.plant.plugged = True
    rig.board.close_relay()
    await wait_for(lambda: rig.board.feedback_closed is True, what="relay closed")
    rig.emulator._boot()  # a brown-out: relay open, lapsed until the next KeepAlive, then Hello
    await wait_for(lambda: rig.plant.relay_commanded_closed and rig.board.feedback_closed is True,
                   limit_s=1.0, what="relay closed again after the board restarted")
    assert not rig.emulator.keepalive_lapsed


async def test_keepalive_loss_makes_the_board_open_the_relay() -> None:
    plant = Plant(plugged=True)
    emulator = PilotBoardEmulator(plant)
    board = create("pilot", {"port": emulator.port_path})  # default 0.5 s keep-alives
    emulator_task = asyncio.create_task(emulator.run())
    board_task = asyncio.create_task(board.run())
    try:
        await wait_for(lambda: board.cp_state is CpState.B1, what="B1")
        board.close_relay()
        await wait_for(lambda: board.feedback_closed is True, what="relay closed")
        await asyncio.sleep(2.3)  # longer than the board's watchdog: keep-alives must be flowing
        assert plant.relay_commanded_closed and not emulator.keepalive_lapsed
        await _stop([board_task])  # the host dies
        took = await wait_for(lambda: not plant.relay_commanded_closed, limit_s=4.0, what="relay opened")
        assert 1.3 <= took <= 3.0  # 2 s after the last keep-alive, sent up to 0.5 s before; slack for load
        assert emulator.keepalive_lapsed and plant.cp_state() is CpState.F
    finally:
        await _stop([emulator_task, board_task])
        emulator.close()


async def test_corrupt_bursts_are_counted_and_survived(rig: Rig) -> None:
    # An oversized run, a COBS overrun, and a frame cut short: three bad frames, nothing decodable.
    noise = b"\x00" + bytes(range(1, 256)) + b"\x00\x05\x01\x02\x00" + encode(CpStateReport(CpState.C1))[:-3]
    noise += b"\x00"
    rig.emulator.write_raw(noise)
    await wait_for(lambda: rig.board.counters()["frames_bad"] >= 3, what="bad frames counted")
    rig.plant.plugged = True
    await wait_for(lambda: rig.board.cp_state is CpState.B1, what="state after the burst")
    assert PilotStateChanged(CpState.C1) not in rig.events
    assert rig.silent_events() == [False]
    # The other direction: garbage written onto the board's line is counted there, commands still work.
    fd = os.open(rig.emulator.port_path, os.O_WRONLY | os.O_NOCTTY)
    try:
        os.write(fd, b"\x01\x02\x03\x00" + b"\xaa" * 200 + b"\x00")
    finally:
        os.close(fd)
    await wait_for(lambda: rig.emulator.decoder.bad_frames >= 2, what="board counts bad frames")
    rig.board.close_relay()
    await wait_for(lambda: rig.board.feedback_closed is True, what="relay closed after noise")
    await wait_for(
        lambda: rig.board.telemetry is not None and rig.board.telemetry.rx_bad_frames >= 2,
        what="telemetry reports the board's rx errors",
    )


async def test_port_loss_is_reported_and_the_driver_reopens(tmp_path: Path) -> None:
    link = tmp_path / "ttyPILOT"
    board = create("pilot", {"port": str(link), "keepalive_interval_s": 0.2})
    events: list[HalEvent] = []
    board.subscribe(events.append)
    board_task = asyncio.create_task(board.run())
    emulators: list[PilotBoardEmulator] = []
    tasks: list[asyncio.Task[None]] = []

    def silent_flags() -> list[bool]:
        return [e.active for e in events if isinstance(e, DeviceFaultChanged)]

    async def plug_in_new_emulator() -> None:
        emulator = PilotBoardEmulator(Plant())
        emulators.append(emulator)
        tasks.append(asyncio.create_task(emulator.run()))
        tmp_link = tmp_path / "next"
        tmp_link.symlink_to(emulator.port_path)
        tmp_link.replace(link)

    try:
        await wait_for(lambda: silent_flags() == [True], what="silent while the port is missing")
        await asyncio.sleep(0.3)
        assert board.counters()["port_opens"] >= 2  # it keeps trying
        await plug_in_new_emulator()
        await wait_for(lambda: silent_flags() == [True, False], what="connected")
        await wait_for(lambda: board.cp_state is CpState.A, what="state")
        emulators[0].close()  # the port goes away under the driver
        await wait_for(lambda: silent_flags() == [True, False, True], what="port loss reported")
        assert board.cp_state is None and not board_task.done()
        await plug_in_new_emulator()
        await wait_for(lambda: silent_flags()[-1] is False, limit_s=4.0, what="reconnected")
        await wait_for(lambda: board.cp_state is CpState.A, what="state after reconnect")
    finally:
        await _stop([board_task, *tasks])
        for emulator in emulators:
            emulator.close()


async def test_one_way_latency_emulator_to_event(rig: Rig) -> None:
    samples: list[float] = []
    for i in range(20):
        state = CpState.D1 if i % 2 else CpState.E
        before = len(rig.stamps)
        sent = time.perf_counter()
        rig.emulator.write_raw(encode(CpStateReport(state), seq=0))
        await wait_for(
            lambda s=state, n=before: any(e == PilotStateChanged(s) for _, e in rig.stamps[n:]),  # type: ignore[misc]
            what=f"{state}",
        )
        arrived = next(t for t, e in rig.stamps[before:] if e == PilotStateChanged(state))
        samples.append(arrived - sent)
    median = statistics.median(samples)
    print(f"\none-way latency emulator write -> driver event: median {median * 1000:.2f} ms, "
          f"max {max(samples) * 1000:.2f} ms")  # fmt: skip
    assert median < 0.05


def test_emulator_answers_a_foreign_protocol_version_with_hello_once_per_second() -> None:
    emulator = PilotBoardEmulator(Plant())
    try:
        emulator.tick(100.0)
        host_side = FrameDecoder(Sender.BOARD)
        os.set_blocking(emulator._slave, False)
        os.read(emulator._slave, 4096)  # drop the status burst
        emulator.feed(encode(KeepAlive(), version=2) + encode(KeepAlive(), version=2))
        emulator.tick(100.5)
        emulator.feed(encode(KeepAlive(), version=2))
        replies: list[object] = []
        deadline = time.monotonic() + 2.0
        while not any(isinstance(m, Hello) for m in replies) and time.monotonic() < deadline:
            try:  # the pty hands bytes over asynchronously: on a loaded machine they may lag a little
                replies += host_side.feed(os.read(emulator._slave, 4096))
            except BlockingIOError:
                time.sleep(0.01)
        time.sleep(0.05)
        with contextlib.suppress(BlockingIOError):
            replies += host_side.feed(os.read(emulator._slave, 4096))
        assert [m for m in replies if isinstance(m, Hello)] == [Hello(1, 0, 0, 1, 2000, 250)]
        assert emulator.counters["version_mismatch"] == 3
        assert emulator.keepalive_lapsed  # a foreign KeepAlive does not feed the watchdog
    finally:
        emulator.close()
