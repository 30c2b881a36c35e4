"""Pilot board wire codec: CRC, COBS, every message, the spec's worked examples, and a decoder that
survives anything."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.serial.pilot_codec import (
    MAX_ENCODED_LEN,
    CobsError,
    CpStateReport,
    FaultReport,
    FrameDecoder,
    Hello,
    KeepAlive,
    LockReport,
    Message,
    ProximityReport,
    RelayReport,
    Reset,
    Sender,
    SetDuty,
    SetLock,
    SetRelay,
    StatusRequest,
    Telemetry,
    cobs_decode,
    cobs_encode,
    crc16_ccitt_false,
    encode,
    pp_ampacity,
)
from hal.types import CpState, Fault

HOST_MESSAGES: list[Message] = [
    KeepAlive(),
    SetDuty(0),
    SetDuty(1),
    SetDuty(5333),
    SetDuty(10_000),
    SetRelay(close=True),
    SetRelay(close=False),
    SetLock(lock=True),
    SetLock(lock=False),
    Reset(),
    StatusRequest(),
]
BOARD_MESSAGES: list[Message] = [
    Hello(1, 2, 3, 4, 2000, 250),
    *(CpStateReport(state) for state in CpState),
    ProximityReport(220, 32),
    ProximityReport(None, None),
    ProximityReport(50, None),
    RelayReport(closed=True, commanded=False),
    RelayReport(closed=False, commanded=True),
    LockReport(locked=True, commanded=True),
    LockReport(locked=False, commanded=False),
    FaultReport(frozenset()),
    FaultReport(frozenset({Fault.RCD, Fault.DIODE, Fault.LOCK, Fault.WELD})),
    Telemetry(9000, -12000, 253, 2300, 5333, True, 7, 65535),
    Telemetry(-12000, -12000, -400, 0, 0, False, 0, 0),
]


def _crc16_bitwise(data: bytes) -> int:
    """Textbook bit-by-bit CRC-16/CCITT-FALSE, independent of the table-driven one."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


# ---------------------------------------------------------------------------------------- CRC / COBS


def test_crc_check_value_and_empty_input() -> None:
    assert crc16_ccitt_false(b"123456789") == 0x29B1
    assert crc16_ccitt_false(b"") == 0xFFFF
    assert crc16_ccitt_false(bytes([0x01, 0x02, 0x07, 0xD5, 0x14])) == 0x6BC2


@given(st.binary(max_size=80))
def test_crc_table_matches_bitwise_reference(data: bytes) -> None:
    assert crc16_ccitt_false(data) == _crc16_bitwise(data)


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [
        (b"", b"\x01"),
        (b"\x00", b"\x01\x01"),
        (b"\x00\x00", b"\x01\x01\x01"),
        (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
        (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
        (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
        (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255))),
        (bytes(range(0, 255)), b"\x01\xff" + bytes(range(1, 255))),
        (bytes(range(1, 256)), b"\xff" + bytes(range(1, 255)) + b"\x02\xff"),
    ],
)
def test_cobs_reference_vectors(raw: bytes, encoded: bytes) -> None:
    assert cobs_encode(raw) == encoded
    assert cobs_decode(encoded) == raw


@given(st.binary(max_size=600))
def test_cobs_round_trip_has_no_zero(data: bytes) -> None:
    encoded = cobs_encode(data)
    assert 0 not in encoded
    assert cobs_decode(encoded) == data


@pytest.mark.parametrize("bad", [b"\x05\x11\x22", b"\x02\x00\x01", b"\x00"])
def test_cobs_decode_rejects_overruns_and_zero_bytes(bad: bytes) -> None:
    with pytest.raises(CobsError):
        cobs_decode(bad)


# ---------------------------------------------------------------------------------------- messages


def test_worked_examples_from_the_spec() -> None:
    # docs/pilot-board-protocol.md, "Worked examples".
    assert encode(SetDuty(5333), seq=7) == bytes.fromhex("08 01 02 07 D5 14 6B C2 00")
    assert encode(CpStateReport(CpState.A), seq=0) == bytes.fromhex("03 01 81 01 03 FE 1E 00")
    assert encode(KeepAlive(), seq=0x2A) == bytes.fromhex("06 01 01 2A 4D B5 00")


@pytest.mark.parametrize("message", HOST_MESSAGES, ids=lambda m: type(m).__name__)
def test_every_host_message_round_trips(message: Message) -> None:
    decoder = FrameDecoder(Sender.HOST)
    assert decoder.feed(encode(message, seq=200)) == [message]
    assert decoder.counters["frames_ok"] == 1


@pytest.mark.parametrize("message", BOARD_MESSAGES, ids=lambda m: type(m).__name__)
def test_every_board_message_round_trips(message: Message) -> None:
    decoder = FrameDecoder(Sender.BOARD)
    assert decoder.feed(encode(message, seq=255)) == [message]


def test_frames_fit_the_maximum_size() -> None:
    for message in HOST_MESSAGES + BOARD_MESSAGES:
        assert len(encode(message)) <= MAX_ENCODED_LEN + 1


def test_pp_table() -> None:
    assert [pp_ampacity(r) for r in (None, 50, 100, 220, 680, 1500, 2200, 2201, 3000)] == [
        None, None, 63, 32, 20, 13, 13, None, None,
    ]  # fmt: skip
    assert pp_ampacity(149.9) == 63 and pp_ampacity(150) == 32 and pp_ampacity(1000) == 13


def test_invalid_values_are_refused_at_encode_time() -> None:
    with pytest.raises(ValueError):
        SetDuty(10_001)
    with pytest.raises(ValueError):
        encode(FaultReport(frozenset({Fault.METER_SILENT})))


# ---------------------------------------------------------------------------------------- decoder


def test_byte_by_byte_feeding_and_several_frames_per_read() -> None:
    frames = [encode(m, seq=i) for i, m in enumerate(BOARD_MESSAGES)]
    decoder = FrameDecoder(Sender.BOARD)
    out: list[Message] = []
    for byte in b"".join(frames):
        out += decoder.feed(bytes([byte]))
    assert out == BOARD_MESSAGES
    assert decoder.counters["seq_gaps"] == 0
    assert FrameDecoder(Sender.BOARD).feed(b"".join(frames)) == BOARD_MESSAGES


def test_each_error_kind_is_counted_and_the_next_frame_decodes() -> None:
    good = encode(CpStateReport(CpState.C2), seq=1)
    corrupt = bytearray(encode(CpStateReport(CpState.B2), seq=0))
    corrupt[2] ^= 0x40
    raw_v2 = bytes([2, Hello.TYPE, 0]) + Hello(9, 0, 0, 1, 2000, 250).pack()
    wrong_version = cobs_encode(raw_v2 + crc16_ccitt_false(raw_v2).to_bytes(2, "big")) + b"\x00"
    raw_unknown = bytes([1, 0xC0, 0, 1, 2])
    unknown = cobs_encode(raw_unknown + crc16_ccitt_false(raw_unknown).to_bytes(2, "big")) + b"\x00"
    raw_bad_state = bytes([1, CpStateReport.TYPE, 0, 9])
    bad_state = cobs_encode(raw_bad_state + crc16_ccitt_false(raw_bad_state).to_bytes(2, "big")) + b"\x00"
    raw_truncated = bytes([1, RelayReport.TYPE, 0, 1])  # body one byte short
    truncated = cobs_encode(raw_truncated + crc16_ccitt_false(raw_truncated).to_bytes(2, "big")) + b"\x00"
    cases = {
        "crc_errors": bytes(corrupt),
        "short_frames": b"\x03\x01\x02\x00",
        "cobs_errors": b"\x09\x01\x02\x00",
        "oversized_frames": b"\x01" * 300 + b"\x00",
        "version_mismatch": wrong_version,
        "unknown_frames": unknown,
        "malformed_frames": bad_state + truncated,
    }
    for counter, junk in cases.items():
        decoder = FrameDecoder(Sender.BOARD)
        assert decoder.feed(junk + good) == [CpStateReport(CpState.C2)], counter
        assert decoder.counters[counter] >= 1, counter
    decoder = FrameDecoder(Sender.BOARD)
    decoder.feed(wrong_version)
    assert decoder.peer_version == 2
    assert decoder.peer_hello == Hello(9, 0, 0, 1, 2000, 250)


def test_messages_of_the_other_direction_are_unknown() -> None:
    decoder = FrameDecoder(Sender.BOARD)
    assert decoder.feed(encode(SetRelay(close=True))) == []
    assert decoder.counters["unknown_frames"] == 1


def test_empty_frames_are_not_errors() -> None:
    decoder = FrameDecoder(Sender.HOST)
    assert decoder.feed(b"\x00\x00\x00" + encode(KeepAlive()) + b"\x00") == [KeepAlive()]
    assert decoder.bad_frames == 0


def test_oversized_frame_split_over_reads_resyncs_on_the_next_delimiter() -> None:
    decoder = FrameDecoder(Sender.HOST)
    for _ in range(10):
        assert decoder.feed(b"\x07" * 50) == []
    assert decoder.feed(b"\x00" + encode(KeepAlive())) == [KeepAlive()]
    assert decoder.counters["oversized_frames"] == 1


def test_sequence_gaps_are_counted() -> None:
    decoder = FrameDecoder(Sender.HOST)
    decoder.feed(encode(KeepAlive(), seq=254) + encode(KeepAlive(), seq=255) + encode(KeepAlive(), seq=0))
    assert decoder.counters["seq_gaps"] == 0
    decoder.feed(encode(KeepAlive(), seq=5))
    assert decoder.counters["seq_gaps"] == 1


# ---------------------------------------------------------------------------------------- properties

PROPERTY_SETTINGS = settings(
    max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
ERROR_COUNTERS = ("version_mismatch", "unknown_frames")


def _errors(decoder: FrameDecoder) -> int:
    return decoder.bad_frames + sum(decoder.counters[name] for name in ERROR_COUNTERS)


@PROPERTY_SETTINGS
@given(junk=st.binary(min_size=1, max_size=400), message=st.sampled_from(BOARD_MESSAGES))
def test_random_bytes_never_escape_and_the_next_frame_decodes(junk: bytes, message: Message) -> None:
    decoder = FrameDecoder(Sender.BOARD)
    decoder.feed(junk)
    # The sender's resync rule: a delimiter before the frame closes whatever the junk left open.
    assert decoder.feed(b"\x00" + encode(message, seq=3)) == [message]


@PROPERTY_SETTINGS
@given(
    message=st.sampled_from(BOARD_MESSAGES),
    data=st.data(),
)
def test_mutated_frames_are_counted_and_dropped(message: Message, data: st.DataObject) -> None:
    frame = bytearray(encode(message, seq=9))
    position = data.draw(st.integers(0, len(frame) - 2), label="position")  # not the delimiter
    new_value = data.draw(st.integers(0, 255).filter(lambda v: v != frame[position]), label="value")
    frame[position] = new_value
    decoder = FrameDecoder(Sender.BOARD)
    assert decoder.feed(bytes(frame)) == []
    assert _errors(decoder) >= 1
    follow_up = CpStateReport(CpState.D2)
    assert decoder.feed(encode(follow_up, seq=10)) == [follow_up]


@PROPERTY_SETTINGS
@given(
    message=st.sampled_from(HOST_MESSAGES),
    cut=st.integers(1, 6),
)
def test_truncated_frames_are_counted_and_dropped(message: Message, cut: int) -> None:
    frame = encode(message)
    truncated = frame[: max(0, len(frame) - 1 - cut)] + b"\x00"
    decoder = FrameDecoder(Sender.HOST)
    assert decoder.feed(truncated + frame) == [message]
    if len(truncated) > 1:
        assert _errors(decoder) == 1
