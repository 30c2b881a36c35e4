"""One combined fuzz run over every bus codec the agent decodes outside bytes with: the serial pilot board
(COBS+CRC), RDM6300, PN532, Nextion replies, OpenEVSE RAPI lines, the CAN pilot frames and the Modbus
register decoding of every meter map. >= 10 000 (codec, bytes) cases in `make test`; decoders are fed the
bytes in random chunks and may only return messages or count errors, never raise; a valid frame after the
noise must still decode (they resynchronise)."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.can.pilot_codec import Direction, load_database
from drivers.can.pilot_codec import FrameDecoder as CanDecoder
from drivers.modbus.codec import available_maps, decode_batch, load_map, plan_reads
from drivers.serial import nextion_codec, openevse_codec, pn532_codec, rdm6300_codec
from drivers.serial import pilot_codec as serial_pilot
from tests.reliability.harness import SOAK

BATCH = 10
EXAMPLES = 5000 if SOAK else 1100  # x BATCH cases
CAN_DB = load_database()
READS = [read for model in available_maps() for read in plan_reads(load_map(model))]


def serial_pilot_case(data: bytes, cuts: list[int]) -> None:
    decoder = serial_pilot.FrameDecoder(serial_pilot.Sender.BOARD)
    for chunk in _chunks(data, cuts):
        decoder.feed(chunk)
    host = serial_pilot.FrameDecoder(serial_pilot.Sender.HOST)  # the board's side decodes host frames
    host.feed(data)
    # After any noise, a delimiter and one good frame decode again.
    assert host.feed(b"\x00" + serial_pilot.encode(serial_pilot.StatusRequest(), seq=1)) != []


def rdm6300_case(data: bytes, cuts: list[int]) -> None:
    decoder = rdm6300_codec.Rdm6300Decoder()
    for chunk in _chunks(data, cuts):
        decoder.feed(chunk)
    assert [t.uid for t in decoder.feed(rdm6300_codec.encode_frame("0A00ABCDEF"))] in ([], ["0A00ABCDEF"])


def pn532_case(data: bytes, cuts: list[int]) -> None:
    decoder = pn532_codec.Pn532Decoder()
    for chunk in _chunks(data, cuts):
        decoder.feed(chunk)


def nextion_case(data: bytes, cuts: list[int]) -> None:
    replies = nextion_codec.ReplyDecoder()
    instructions = nextion_codec.InstructionDecoder()
    for chunk in _chunks(data, cuts):
        replies.feed(chunk)
        instructions.feed(chunk)


def openevse_case(data: bytes, cuts: list[int]) -> None:
    decoder = openevse_codec.LineDecoder()
    for chunk in _chunks(data, cuts):
        for line in decoder.feed(chunk):
            for parse in (openevse_codec.parse_reply, openevse_codec.parse_async_state):
                try:
                    parse(line)
                except openevse_codec.RapiFormatError:
                    pass  # a clear, typed rejection is the expected outcome for garbage


def can_case(data: bytes, cuts: list[int]) -> None:
    arbitration_id = int.from_bytes(data[:2] or b"\x00", "little") & 0x7FF
    payload = data[2:10]
    for direction in (Direction.BOARD_TO_HOST, Direction.HOST_TO_BOARD):
        CanDecoder(CAN_DB, direction, 1).decode(arbitration_id, payload, bool(cuts and cuts[0] % 2))


def modbus_case(data: bytes, cuts: list[int]) -> None:
    read = READS[(cuts[0] if cuts else 0) % len(READS)]
    raw = (data * (read.count * 2 // max(1, len(data)) + 1))[: read.count * 2] if data else bytes(read.count * 2)
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    values = decode_batch(read, words)
    assert all(v is None or isinstance(v, float) for v in values.values())


CODECS: dict[str, Callable[[bytes, list[int]], None]] = {
    "serial-pilot": serial_pilot_case, "rdm6300": rdm6300_case, "pn532": pn532_case, "nextion": nextion_case,
    "openevse": openevse_case, "can": can_case, "modbus": modbus_case,
}


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


# Noise biased towards the codecs' own framing bytes, so that half-frames and false starts are common.
noise = st.one_of(
    st.binary(max_size=120),
    st.lists(st.sampled_from([0x00, 0x02, 0x03, 0x0D, 0x24, 0x5E, 0xFF, 0xD5, 0x01, 0x20]), max_size=80).map(bytes),
    st.text(alphabet="$OKNGATEST 0123456789^abcdef\r", max_size=60).map(str.encode),
)
case = st.tuples(st.sampled_from(sorted(CODECS)), noise, st.lists(st.integers(0, 200), max_size=5))


def test_every_codec_survives_noise() -> None:
    counts: Counter[str] = Counter()

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(case, min_size=BATCH, max_size=BATCH))
    def run(cases: list[tuple[str, bytes, list[int]]]) -> None:
        for name, data, cuts in cases:
            CODECS[name](data, cuts)
            counts[name] += 1

    run()
    total = sum(counts.values())
    print(f"\ncodec fuzz: {total} cases {dict(counts)}")
    assert total >= 10_000
    assert set(counts) == set(CODECS)
