"""RDM6300 frame codec and streaming decoder, including property tests on corrupt input."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from drivers.serial.rdm6300_codec import (
    FrameError,
    Rdm6300Decoder,
    TagRead,
    decode_frame,
    encode_frame,
)

# A card as printed in the RDM6300 datasheet example: version 0x62, tag 0xE3086CED, checksum 0x08.
DATASHEET_FRAME = b"\x02" + b"62E3086CED" + b"08" + b"\x03"

uids = st.binary(min_size=5, max_size=5).map(lambda b: b.hex().upper())


def test_known_frame() -> None:
    assert encode_frame("62e3086ced") == DATASHEET_FRAME
    read = decode_frame(DATASHEET_FRAME)
    assert read == TagRead("62E3086CED")
    assert read.version == 0x62 and read.tag == 0xE3086CED


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (DATASHEET_FRAME[:-1], "13 bytes"),
        (b"\x01" + DATASHEET_FRAME[1:], "STX"),
        (DATASHEET_FRAME[:-1] + b"\x04", "ETX"),
        (DATASHEET_FRAME.replace(b"62E3", b"62e3"), "upper-case"),
        (DATASHEET_FRAME.replace(b"08\x03", b"09\x03"), "checksum"),
    ],
)
def test_bad_frames(frame: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        decode_frame(frame)


@pytest.mark.parametrize("uid", ["12345", "GGGGGGGGGG", "0123456789A"])
def test_invalid_uid_cannot_be_encoded(uid: str) -> None:
    with pytest.raises(FrameError):
        encode_frame(uid)


@given(uid=uids, cuts=st.lists(st.integers(min_value=0, max_value=42), max_size=6))
def test_any_chunking_decodes_every_frame(uid: str, cuts: list[int]) -> None:
    stream = encode_frame(uid) * 3
    decoder = Rdm6300Decoder()
    reads = []
    last = 0
    for cut in [*sorted(cuts), len(stream)]:
        reads += decoder.feed(stream[last:cut] if cut >= last else b"")
        last = max(last, cut)
    assert [r.uid for r in reads] == [uid] * 3
    assert decoder.errors == 0 and decoder.frames == 3


@given(noise=st.binary(max_size=200), chunk=st.integers(min_value=1, max_value=20))
def test_random_bytes_never_raise(noise: bytes, chunk: int) -> None:
    decoder = Rdm6300Decoder()
    for i in range(0, len(noise), chunk):
        decoder.feed(noise[i : i + chunk])
    assert decoder.errors >= 0


@given(uid=uids, next_uid=uids, position=st.integers(min_value=0, max_value=13), value=st.integers(0, 255))
def test_mutated_frame_is_counted_and_the_next_frame_decodes(
    uid: str, next_uid: str, position: int, value: int
) -> None:
    frame = bytearray(encode_frame(uid))
    assume(frame[position] != value)
    frame[position] = value
    decoder = Rdm6300Decoder()
    reads = decoder.feed(bytes(frame))
    reads += decoder.feed(encode_frame(next_uid))
    assert [r.uid for r in reads] == [next_uid]
    assert decoder.errors >= 1


@given(uid=uids, next_uid=uids, cut=st.integers(min_value=1, max_value=13))
def test_truncated_frame_does_not_swallow_the_next(uid: str, next_uid: str, cut: int) -> None:
    decoder = Rdm6300Decoder()
    reads = decoder.feed(encode_frame(uid)[:cut] + encode_frame(next_uid))
    assert [r.uid for r in reads] == [next_uid]
    assert decoder.errors == 1


@given(junk=st.binary(max_size=60), uid=uids)
def test_junk_then_valid_frame(junk: bytes, uid: str) -> None:
    decoder = Rdm6300Decoder()
    reads = decoder.feed(junk) + decoder.feed(encode_frame(uid))
    assert uid in [r.uid for r in reads]
    if junk:
        assert decoder.errors >= 1
