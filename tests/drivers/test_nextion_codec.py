"""Nextion codec and screen layout: escaping, bounds, reply decoding, what each screen tells the driver."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.serial import nextion_codec as codec
from drivers.serial.nextion import LINE_CHARS, instructions, layout
from hal import Screen, ScreenState


def test_instruction_encoding() -> None:
    assert codec.encode_instruction("page 2") == b"page 2\xff\xff\xff"
    assert codec.set_text("t1", 'Say "hi" \\ bye', 40) == 't1.txt="Say \\"hi\\" \\\\ bye"'
    assert codec.encode_instruction(codec.set_text("t0", "Zähler €", 24)) == b't0.txt="Z\xe4hler ?"\xff\xff\xff'


def test_text_is_bounded_and_single_line() -> None:
    assert codec.quote("x" * 100, 40) == '"' + "x" * 40 + '"'
    assert codec.quote("two\nlines\x07", 40) == '"two lines"'


@given(st.text(max_size=80))
def test_quote_unquote_round_trip(text: str) -> None:
    literal = codec.quote(text, 60)
    assert codec.TERMINATOR not in codec.encode_instruction(literal)[:-3]
    expected = "".join(ch for ch in " ".join(text.replace("\r", "\n").split("\n")) if ch.isprintable())[:60]
    assert codec.unquote(literal) == expected


def test_reply_decoder_cuts_fixed_replies_by_length() -> None:
    decoder = codec.ReplyDecoder()
    wire = (
        codec.encode_reply(codec.NumberReply(-1))  # FF FF FF FF inside
        + codec.encode_reply(codec.Touch(2, 5, True))
        + codec.encode_reply(codec.Status(codec.OK))
        + codec.encode_reply(codec.Status(codec.INVALID_VARIABLE))
        + codec.encode_reply(codec.StringReply("Charging"))
        + codec.encode_reply(codec.PageReply(4))
    )
    out = []
    for i in range(0, len(wire), 3):
        out += decoder.feed(wire[i : i + 3])
    assert out == [
        codec.NumberReply(-1),
        codec.Touch(2, 5, True),
        codec.Status(codec.OK),
        codec.Status(codec.INVALID_VARIABLE),
        codec.StringReply("Charging"),
        codec.PageReply(4),
    ]
    assert decoder.bad_replies == 0


def test_junk_is_counted_and_skipped() -> None:
    decoder = codec.ReplyDecoder()
    assert decoder.feed(b"\x42\x42\xff\xff\xff" + b"\x65\x01\x02\xff\xff\xff\x01\xff\xff\xff") == [
        codec.Status(codec.OK)
    ]
    assert decoder.bad_replies == 2


@given(st.binary(max_size=100))
def test_reply_decoder_never_raises(data: bytes) -> None:
    codec.ReplyDecoder().feed(data)


CASES = [
    (Screen(1, ScreenState.IDLE, message="Tap card or plug in"), "idle", ["Tap card or plug in"]),
    (Screen(1, ScreenState.AUTHORIZING, message="Plug in your car"), "authorizing", ["Plug in your car"]),
    (
        Screen(1, ScreenState.CHARGING, 7360.0, 3210.0, 754.0, "Charging"),
        "charging",
        ["Power: 7.4 kW", "Energy: 3.21 kWh", "Time: 0:12:34", "Tap your card to stop"],
    ),
    (Screen(1, ScreenState.PAUSED, 0, 3210.0, 60.0), "paused", ["Energy: 3.21 kWh", "Tap your card to stop"]),
    (
        Screen(
            1,
            ScreenState.FINISHED,
            0,
            12500.0,
            3725.0,
            "Charging finished. Unplug your car.",
            extra=(("cost", "EUR 4.37"),),
        ),
        "finished",
        ["Energy: 12.50 kWh", "Duration: 1:02:05", "Cost: EUR 4.37", "Charging finished. Unplug your car."],
    ),
    (
        Screen(
            1,
            ScreenState.FAULT,
            message="Charger too hot. Charging will resume when it cools down.",
            fault_code="OVERTEMP",
            support_contact="+49 800 123",
        ),
        "fault",
        ["Charger too hot. Charging will resume", "when it cools down.", "Code: OVERTEMP", "Support: +49 800 123"],
    ),
    (
        Screen(
            1,
            ScreenState.UNAVAILABLE,
            message="Out of service. Please use another charger.",
            support_contact="+49 800 123",
        ),
        "unavailable",
        ["Support: +49 800 123"],
    ),
]


@pytest.mark.parametrize(("screen", "page", "lines"), CASES, ids=[c[1] for c in CASES])
def test_layout_tells_the_driver_what_to_do(screen: Screen, page: str, lines: list[str]) -> None:
    number, texts = layout(screen)
    assert number == list(ScreenState).index(screen.state)
    bounded = [t[:LINE_CHARS] for t in texts]
    for line in lines:
        assert line in bounded
    assert len(instructions(screen)) == 7


def test_finished_without_duration_uses_the_sessions_last_duration() -> None:
    _, texts = layout(Screen(1, ScreenState.FINISHED, energy_wh=1000.0), last_duration_s=125.0)
    assert "Duration: 0:02:05" in texts and "" in texts  # no cost line without a cost
