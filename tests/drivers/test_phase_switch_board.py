"""1p/3p phase switching on the pilot board: the SetPhases / PhaseState codec (serial and CAN), and the
PhaseSwitch role of the serial driver against the board emulator over a real pty (refused under load)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from drivers.can.pilot_codec import decode_frame, encode_frame, load_database
from drivers.serial.pilot_board import PilotBoard, create
from drivers.serial.pilot_codec import (
    FrameDecoder,
    PhaseReport,
    Sender,
    SetPhases,
    cobs_decode,
    cobs_encode,
    crc16_ccitt_false,
    encode,
)
from hal import Role
from hal.roles import PhaseSwitch
from simulator.physics import EvModel, Plant
from simulator.pilot_board import PilotBoardEmulator
from tests.drivers.helpers import wait_for


def test_serial_frames_of_the_phase_messages() -> None:
    frame = encode(SetPhases(1), seq=9)
    assert cobs_decode(frame[:-1])[:4] == bytes([1, 0x07, 9, 1])
    assert FrameDecoder(Sender.HOST).feed(frame) == [SetPhases(1)]
    report = PhaseReport(phases=1, commanded=3)
    assert FrameDecoder(Sender.BOARD).feed(encode(report)) == [report]


def test_phases_other_than_1_or_3_are_malformed() -> None:
    with pytest.raises(ValueError, match="1 or 3"):
        SetPhases(2)
    decoder = FrameDecoder(Sender.BOARD)
    good = encode(PhaseReport(3, 3))
    raw = bytearray(cobs_decode(good[:-1]))
    raw[3] = 2  # two phases: no such contactor position
    body = bytes(raw[:-2])
    bad = cobs_encode(body + crc16_ccitt_false(body).to_bytes(2, "big")) + b"\x00"
    assert decoder.feed(bad + good) == [PhaseReport(3, 3)]
    assert decoder.counters["malformed_frames"] == 1


def test_can_frames_of_the_phase_messages() -> None:
    db = load_database()
    assert encode_frame(db, SetPhases(3), 2) == (0x262, b"\x03")
    assert encode_frame(db, PhaseReport(1, 3), 0) == (0x180, b"\x31")
    assert decode_frame(db, 0x185, b"\x13") == (5, PhaseReport(3, 1))


@contextlib.asynccontextmanager
async def board_on_pty(
    plant: Plant, *, phase_switching: bool = True
) -> AsyncIterator[tuple[PilotBoardEmulator, PilotBoard]]:
    emulator = PilotBoardEmulator(plant, phase_switching=phase_switching)
    board = create("pilot", {"port": emulator.port_path, "keepalive_interval_s": 0.2})
    tasks = [asyncio.create_task(emulator.run()), asyncio.create_task(board.run())]
    try:
        await wait_for(lambda: board.cp_state is not None, what="first report")
        yield emulator, board
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        emulator.close()


async def test_driver_switches_phases_only_with_the_relay_open() -> None:
    plant = Plant(ev=EvModel(pwm_reaction_s=0.05))
    async with board_on_pty(plant) as (emulator, board):
        switch = board.role(Role.PHASE_SWITCH)
        assert isinstance(switch, PhaseSwitch)
        await wait_for(switch.supports_phase_switching, what="PhaseState")
        assert switch.phases() == 3
        switch.set_phases(1)
        await wait_for(lambda: switch.phases() == 1, what="1 phase")
        assert plant.supply_phases == 1
        board.close_relay()
        await wait_for(lambda: board.feedback_closed is True, what="relay closed")
        switch.set_phases(3)  # under load: the board refuses, the report stays
        await wait_for(lambda: emulator.phase_commands_refused == 1, what="refusal")
        await asyncio.sleep(0.3)
        assert switch.phases() == 1 and plant.supply_phases == 1 and plant.phase_switches_under_load == 0
        with pytest.raises(ValueError, match="1 or 3"):
            switch.set_phases(2)


async def test_a_board_without_phase_contactor_says_so() -> None:
    async with board_on_pty(Plant(), phase_switching=False) as (emulator, board):
        await asyncio.sleep(0.3)  # a full status has come and gone
        assert not board.supports_phase_switching() and board.phases() is None
        board.set_phases(1)
        await wait_for(lambda: emulator.decoder.counters["unknown_frames"] == 1, what="ignored as unknown")
        assert emulator.plant.supply_phases == 3


async def test_can_board_switches_phases_over_the_bus() -> None:
    from tests.drivers.test_can_pilot_board import Pair

    pair = Pair()
    tasks = [asyncio.create_task(pair.emulator.run()), asyncio.create_task(pair.board.run())]
    try:
        board, plant = pair.board, pair.plant
        await wait_for(board.supports_phase_switching, what="PhaseState over CAN")
        board.set_phases(1)
        await wait_for(lambda: board.phases() == 1 and plant.supply_phases == 1, what="1 phase")
        board.close_relay()
        await wait_for(lambda: board.feedback_closed is True, what="relay closed")
        board.set_phases(3)
        await wait_for(lambda: pair.emulator.phase_commands_refused == 1, what="refused under load")
        assert board.phases() == 1 and plant.phase_switches_under_load == 0
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
