"""PN532 HSU framing: worked examples from the user manual, checksums, and the resyncing decoder."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.serial import pn532_codec as codec


def test_command_frames_match_the_manual() -> None:
    assert codec.get_firmware_version() == bytes.fromhex("0000FF02FED4022A00")
    assert codec.sam_configuration() == bytes.fromhex("0000FF05FBD4140114010200")
    assert codec.in_list_passive_target() == bytes.fromhex("0000FF04FCD44A0100E100")


def test_checksums_hold_for_every_frame() -> None:
    for frame in (codec.sam_configuration(), codec.limit_passive_retries(), codec.response(0x02, b"\x32\x01\x06\x07")):
        length, lcs = frame[3], frame[4]
        assert (length + lcs) & 0xFF == 0
        assert sum(frame[5 : 5 + length + 1]) & 0xFF == 0 and frame[-1] == 0


def test_decoder_yields_ack_and_frames_across_chunks() -> None:
    decoder = codec.Pn532Decoder()
    wire = codec.WAKEUP + codec.ACK + codec.response(0x02, b"\x32\x01\x06\x07")
    out = []
    for i in range(len(wire)):
        out += decoder.feed(wire[i : i + 1])
    assert out == [codec.Ack(), codec.Frame(0xD5, b"\x03\x32\x01\x06\x07")]
    assert codec.parse_firmware_version(out[1]) == codec.FirmwareVersion(0x32, 1, 6, 7)
    assert decoder.feed(codec.NACK) == [codec.Nack()]


def test_bad_lcs_and_dcs_are_counted_and_the_decoder_resyncs() -> None:
    decoder = codec.Pn532Decoder()
    good = codec.response(0x4A, b"\x00")
    bad_lcs = bytearray(good)
    bad_lcs[4] ^= 0x01
    bad_dcs = bytearray(good)
    bad_dcs[-2] ^= 0x01
    assert decoder.feed(bytes(bad_lcs) + bytes(bad_dcs) + b"\x00\xff\x00\x00" + good) == [
        codec.Frame(0xD5, b"\x4b\x00")
    ]
    assert decoder.counters["bad_lcs"] == 2 and decoder.counters["bad_dcs"] == 1 and decoder.counters["frames"] == 1


@pytest.mark.parametrize("uid", ["DEADBEEF", "04A1B2C3D4E5F6"])
def test_targets_round_trip(uid: str) -> None:
    target = codec.TypeATarget(1, 0x0044, 0x00, bytes.fromhex(uid))
    frame = codec.Frame(0xD5, b"\x4b" + codec.encode_targets([target]))
    assert codec.parse_targets(frame) == [target] and target.uid_hex == uid
    assert codec.parse_targets(codec.Frame(0xD5, b"\x4b\x00")) == []


def test_iso14443_4_card_ats_is_skipped() -> None:
    data = b"\x4b\x02" + b"\x01\x00\x04\x20\x04\x01\x02\x03\x04" + b"\x03\x75\x77" + b"\x02\x00\x44\x00\x07" + bytes(7)
    assert [t.uid_hex for t in codec.parse_targets(codec.Frame(0xD5, data))] == ["01020304", "00000000000000"]


@pytest.mark.parametrize("data", [b"\x4b", b"\x4b\x01\x01\x00", b"\x4b\x01\x01\x00\x04\x00\x03\x01\x02\x03", b"\x03"])
def test_malformed_target_lists_raise(data: bytes) -> None:
    with pytest.raises(codec.MalformedResponse):
        codec.parse_targets(codec.Frame(0xD5, data))


@given(st.binary(max_size=200))
def test_decoder_never_raises_and_still_finds_a_good_frame(noise: bytes) -> None:
    decoder = codec.Pn532Decoder()
    decoder.feed(noise)
    # A burst of zeros flushes any half frame the noise started; then a good frame decodes.
    assert codec.Frame(0xD5, b"\x03\x32\x01\x06\x07") in decoder.feed(
        bytes(260) + codec.response(0x02, b"\x32\x01\x06\x07")
    )
