"""RAPI framing and parsing, without I/O. Checksums come from the examples in the firmware's rapi_proc.h."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.serial.openevse_codec import (
    VFLAG_CHARGING_ON,
    VFLAG_EV_CONNECTED,
    EnergyUsage,
    Line,
    LineDecoder,
    Measurement,
    RapiFormatError,
    StateReport,
    checksum,
    decode_line,
    encode,
    format_state_reply,
    format_state_report,
    parse_async_state,
    parse_energy,
    parse_fault_counters,
    parse_heartbeat,
    parse_measurement,
    parse_reply,
    parse_settings,
    parse_state,
    parse_version,
)

# (line without checksum, checksum printed in rapi_proc.h)
FIRMWARE_EXAMPLES = [
    ("$GS", 0x30),
    ("$GE", 0x26),
    ("$GF", 0x25),
    ("$GG", 0x24),
    ("$GU", 0x36),
    ("$GV", 0x35),
    ("$GC", 0x20),
    ("$G0", 0x53),
    ("$F0 1", 0x43),
    ("$F0 0", 0x42),
    ("$SK 0", 0x2C),
    ("$ST 0 0 0 0", 0x23),
    ("$GM", 0x2E),
    ("$GP", 0x33),
]


@pytest.mark.parametrize(("body", "expected"), FIRMWARE_EXAMPLES)
def test_checksum_matches_firmware_examples(body: str, expected: int) -> None:
    assert checksum(body.encode()) == expected
    token, *args = body[1:].split(" ")
    assert encode(token, *args) == f"{body}^{expected:02X}\r".encode()


def test_sequence_id_is_appended_and_decoded() -> None:
    frame = encode("SC", 16, "V", seq=0x2A)
    assert frame.startswith(b"$SC 16 V :2A^")
    assert decode_line(frame[:-1]) == Line("SC", ("16", "V"), 0x2A)
    with pytest.raises(ValueError):
        encode("GS", seq=0)  # 00 is reserved as "no id"
    with pytest.raises(ValueError):
        encode("GS", seq=256)


def test_reply_with_sequence_id_and_lowercase_checksum() -> None:
    body = b"$OK 03 120 03 0140 :07"
    raw = body + f"^{checksum(body):02x}".encode()
    line = decode_line(raw)
    assert line == Line("OK", ("03", "120", "03", "0140"), 7)
    reply = parse_reply(line)
    assert reply.ok and reply.seq == 7
    report = parse_state(reply.args)
    assert report == StateReport(3, 3, 0x0140, elapsed_s=120)
    assert report.relay_closed and report.ev_connected


def test_async_state_round_trip() -> None:
    report = StateReport(0xFE, 0x02, VFLAG_EV_CONNECTED, current_capacity_a=16)
    frame = encode("AT", *format_state_report(report))
    assert frame.startswith(b"$AT fe 02 16 0100^")
    [line] = LineDecoder().feed(frame)
    assert line.is_async and not line.is_reply
    assert parse_async_state(line) == report
    gs = StateReport(3, 3, VFLAG_CHARGING_ON | VFLAG_EV_CONNECTED, elapsed_s=5)
    assert parse_state(format_state_reply(gs)) == gs


def test_payload_parsers() -> None:
    assert parse_energy(("7200", "15")) == EnergyUsage(7200, 15)
    assert parse_measurement(("-1", "230000")) == Measurement(None, 230000)
    assert parse_version(("8.2.2", "5.2.1")).firmware == "8.2.2"
    assert parse_settings(("32", "0201")).flags == 0x201
    assert parse_fault_counters(("a", "0", "1")).gfi_trips == 10
    assert parse_heartbeat(("100", "6", "0")).interval_s == 100
    for bad in [lambda: parse_energy(("x", "1")), lambda: parse_state(("03",)), lambda: parse_energy(("-5", "1"))]:
        with pytest.raises(RapiFormatError):
            bad()
    with pytest.raises(RapiFormatError):
        parse_async_state(Line("OK"))


def test_decoder_counts_and_resynchronises() -> None:
    decoder = LineDecoder(max_line=40)
    good = encode("OK", "1", seq=3)
    corrupt = bytearray(encode("OK", "2", seq=4))
    corrupt[4] ^= 0x01  # flips a payload bit: checksum no longer matches
    data = b"noise" + bytes(corrupt) + b"$" + b"A" * 60 + b"\r" + b"$OK 1^ZZ\r" + good
    lines = decoder.feed(data)
    assert lines == [Line("OK", ("1",), 3)]
    c = decoder.counters
    assert c["garbage_bytes"] == 5 and c["oversized"] == 1 and c["bad_checksum"] == 2 and c["lines_ok"] == 1
    # Split anywhere: same result.
    split = LineDecoder()
    out = [line for byte in good for line in split.feed(bytes([byte]))]
    assert out == [Line("OK", ("1",), 3)]


def test_line_without_checksum_is_rejected() -> None:
    decoder = LineDecoder()
    assert decoder.feed(b"$OK 1\r") == []
    assert decoder.counters["bad_checksum"] == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_never_raises_and_recovers(noise: bytes) -> None:
    decoder = LineDecoder()
    before = decoder.errors
    lines = decoder.feed(noise)
    for line in lines:  # anything that got through is a well-formed line
        assert isinstance(line, Line) and line.token
    errors_after_noise = decoder.errors
    if noise and not lines and noise.strip(b"\r\n"):
        assert errors_after_noise > before or decoder._in_line  # counted, or still waiting for its end
    # A CR ends whatever half line the noise left; the next valid line is decoded.
    assert decoder.feed(b"\r" + encode("AT", "01", "01", "32", "0000"))[-1] == Line("AT", ("01", "01", "32", "0000"))


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=40), st.integers(min_value=1, max_value=255))
def test_fuzz_corrupted_valid_frame_is_counted(garbage: bytes, seq: int) -> None:
    frame = bytearray(encode("OK", "03", "0", "02", "0100", seq=seq))
    pos = len(garbage) % (len(frame) - 1)
    frame[pos] ^= garbage[0] or 1
    decoder = LineDecoder()
    lines = decoder.feed(bytes(frame) + b"\r")
    if lines:  # a flip can only pass if it produced another well-formed line with a matching checksum
        assert all(isinstance(line, Line) for line in lines)
    else:
        assert decoder.errors > 0
