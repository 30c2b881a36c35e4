"""CAN pilot codec: DBC layout, round trips, and the counting decoder, without any bus."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.can import pilot_codec
from drivers.can.pilot_codec import (
    Direction,
    FrameDecoder,
    KeepAlive,
    MalformedFrame,
    TelemetryLevels,
    TelemetryStatus,
    UnknownFrame,
    decode_frame,
    encode_frame,
    load_database,
)
from drivers.serial.pilot_codec import (
    CpStateReport,
    FaultReport,
    Hello,
    LockReport,
    PhaseReport,
    ProximityReport,
    RelayReport,
    Reset,
    SetDuty,
    SetLock,
    SetPhases,
    SetRelay,
    StatusRequest,
)
from hal.device import DeviceError
from hal.types import CpState, Fault

DB = load_database()

MESSAGES = [
    KeepAlive(0),
    KeepAlive(255),
    SetDuty(0),
    SetDuty(5333),
    SetDuty(10000),
    SetRelay(True),
    SetLock(False),
    Reset(),
    StatusRequest(),
    Hello(1, 2, 3, 4, 2000, 250),
    *[CpStateReport(s) for s in CpState],
    ProximityReport(None, None),
    ProximityReport(220, 32),
    RelayReport(closed=True, commanded=False),
    LockReport(locked=True, commanded=True),
    FaultReport(frozenset()),
    FaultReport(frozenset({Fault.RCD, Fault.WELD, Fault.OVERCURRENT, Fault.LOCK})),
    TelemetryLevels(-12000, 9000, -55, 2300),
    TelemetryStatus(10000, True, 3, 65535),
    SetPhases(1),
    PhaseReport(phases=3, commanded=1),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("node", [0, 5, 15])
def test_round_trip(message: object, node: int) -> None:
    arbitration_id, data = encode_frame(DB, message, node)  # type: ignore[arg-type]
    assert arbitration_id & 0xF == node and arbitration_id <= 0x7FF and len(data) <= 8
    assert decode_frame(DB, arbitration_id, data) == (node, message)


def test_ids_and_layout_match_the_document() -> None:
    ids = {m.name: m.frame_id for m in DB.messages}
    assert ids == {
        "Hello": 0x100, "CpState": 0x110, "Proximity": 0x120, "RelayState": 0x130, "LockState": 0x140,
        "FaultFlags": 0x150, "TelemetryLevels": 0x160, "TelemetryStatus": 0x170, "KeepAlive": 0x200,
        "SetDuty": 0x210, "SetRelay": 0x220, "SetLock": 0x230, "Reset": 0x240, "StatusRequest": 0x250,
        "PhaseState": 0x180, "SetPhases": 0x260,
    }  # fmt: skip
    # docs/can-pilot-board.md worked examples
    assert encode_frame(DB, SetDuty(5333), 1) == (0x211, bytes.fromhex("D514"))
    assert encode_frame(DB, CpStateReport(CpState.C2), 2) == (0x112, b"\x04")
    assert encode_frame(DB, FaultReport(frozenset({Fault.RCD, Fault.WELD})), 0) == (0x150, bytes.fromhex("0101"))
    assert encode_frame(DB, KeepAlive(42), 0) == (0x200, b"\x2a")


def test_dbc_scaling_gives_physical_values_to_tools() -> None:
    assert DB.decode_message(0x210, bytes.fromhex("D514")) == {"Duty": 53.33}
    assert str(DB.decode_message(0x110, b"\x04")["CpState"]) == "C2"
    levels = DB.decode_message(0x160, encode_frame(DB, TelemetryLevels(-12000, 6000, 250, 2300), 0)[1])
    assert levels == {"CpHigh": -12.0, "CpLow": 6.0, "Temperature": 25.0, "SupplyVoltage": 230.0}


def test_longer_data_is_accepted_and_bad_data_refused() -> None:
    assert decode_frame(DB, 0x113, b"\x03\xff") == (3, CpStateReport(CpState.C1))
    with pytest.raises(MalformedFrame):
        decode_frame(DB, 0x110, b"\x09")  # CP code beyond F
    with pytest.raises(MalformedFrame):
        decode_frame(DB, 0x160, b"\x00\x00")  # short
    with pytest.raises(MalformedFrame):
        decode_frame(DB, 0x210, (10001).to_bytes(2, "little"))
    with pytest.raises(UnknownFrame):
        decode_frame(DB, 0x300, b"")
    with pytest.raises(UnknownFrame):
        decode_frame(DB, 0x110, b"\x00", is_extended_id=True)


def test_decoder_counts_and_drops() -> None:
    decoder = FrameDecoder(DB, Direction.BOARD_TO_HOST, node_id=1)
    assert decoder.decode(0x111, b"\x01") == CpStateReport(CpState.B1)
    assert decoder.decode(0x112, b"\x01") is None  # another connector's board
    assert decoder.decode(0x211, b"\x01\x00") is None  # a host command: wrong direction
    assert decoder.decode(0x7FF, b"") is None
    assert decoder.decode(0x111, b"\x0c") is None
    assert decoder.decode(0x111, b"") is None
    assert decoder.counters == {
        "frames_ok": 1, "unknown_frames": 1, "malformed_frames": 2, "wrong_direction": 1, "other_nodes": 1,
    }  # fmt: skip


@given(st.integers(0, 0x7FF), st.binary(max_size=8), st.booleans())
def test_decoder_never_raises(arbitration_id: int, data: bytes, extended: bool) -> None:
    FrameDecoder(DB, Direction.BOARD_TO_HOST, 0).decode(arbitration_id, data, extended)
    FrameDecoder(DB, Direction.HOST_TO_BOARD, 0).decode(arbitration_id, data, extended)


def test_missing_cantools_is_a_device_error_naming_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    load_database.cache_clear()
    monkeypatch.setitem(sys.modules, "cantools", None)
    try:
        with pytest.raises(DeviceError, match="'pilot-board-can' needs the Python module 'cantools'"):
            pilot_codec.load_database("pilot-board-can")
    finally:
        load_database.cache_clear()
