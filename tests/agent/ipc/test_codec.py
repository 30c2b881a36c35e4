"""The IPC codec (agent/ipc/codec.py): every value that crosses StationPort survives a trip through JSON
text unchanged; anything else the peer sends is a CodecError, never another exception."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.authorize import AuthDecision
from agent.events import (
    ConnectorStatus,
    MeterUpdate,
    SessionStarted,
    SessionStopped,
    StatusChanged,
    StopReason,
    TokenPresented,
)
from agent.ipc.codec import (
    MAX_LINE_BYTES,
    REGISTRY,
    STATION_EVENT,
    CodecError,
    FrameTooLong,
    decode,
    decode_line,
    encode,
    encode_line,
)
from agent.sessions import Session
from agent.station_api import (
    ConnectorReservation,
    ConnectorSettings,
    ConnectorView,
    EnergyHold,
    MessagePriority,
    OperatorMessage,
    StationFacts,
    TaskView,
)
from hal.types import (
    CpState,
    DeviceFault,
    DeviceFaultChanged,
    Fault,
    FaultFlagsChanged,
    IdToken,
    LockFeedback,
    MeterSample,
    PilotStateChanged,
    ProximityChanged,
    RelayFeedback,
    Screen,
    ScreenState,
)

SESSION = Session("ab12", 1, "DEADBEEF", 1700000000.5, 1000.0, 1700000100.0, 1500.25, transaction_id=7)
STOPPED = Session("ab12", 1, "DEADBEEF", 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, "Remote", 2**40, "OCMF|{}", None)
SAMPLE = MeterSample(1500.25, 7200.0, (230.1, None, 229.0), (10.0, 10.5, None), 1700000100.0, "sig", 55.5)
RESERVATION = ConnectorReservation(42, "OTHERTAG", "PARENT")
VIEW = ConnectorView(
    id=1, status=ConnectorStatus.CHARGING, faults=frozenset({Fault.METER_SILENT, Fault.RCD}), available=True,
    maintenance=False, session=SESSION, pending_id_tag=None, session_energy_wh=500.25, last_sample=SAMPLE,
    meter_latest=None, has_meter=True, cp_state=CpState.C2, ev_connected=True, charge_state="CHARGING",
    offered_current_a=16.0, duty_percent=26.666, relay_commanded_closed=True, relay_feedback_closed=None,
    energy_holds=frozenset({EnergyHold.RESERVED, EnergyHold.INVALID_ID}), has_lock=True, locked=True,
    lock_held_for="TAG", reservation=RESERVATION, used_reservation=("ab12", ConnectorReservation(1, "X")),
    display_extra=(("price", "0.30/kWh"), ("cost", "1.20")), max_current_a=32.0, phases=3, fixed_cable=False,
    settings=ConnectorSettings(12.5, False, True),
)
FACTS = StationFacts("CP-1", "ACME", "Box", "SN1", "1.2.3", (1, 2), True, frozenset({Fault.READER_SILENT}),
                     1700000000.0, (TaskView("device:board", True, False, ""), TaskView("tokens", False, True, "boom")))

VALUES: list[tuple[Any, Any]] = [
    (VIEW, ConnectorView),
    (FACTS, StationFacts),
    (TaskView("t", True, False, "x"), TaskView),
    (ConnectorSettings(), ConnectorSettings),
    (RESERVATION, ConnectorReservation),
    (ConnectorReservation(1, "A"), ConnectorReservation | None),
    (None, ConnectorReservation | None),
    (OperatorMessage(7, "Free parking", MessagePriority.IN_FRONT, (ScreenState.IDLE, ScreenState.FAULT)),
     OperatorMessage),
    (SESSION, Session),
    (STOPPED, Session | None),
    (SAMPLE, MeterSample),
    (MeterSample(0.0, 0.0), MeterSample),
    (AuthDecision(True), AuthDecision),
    (AuthDecision(False, "Blocked", "GROUP"), AuthDecision),
    (StatusChanged(0, ConnectorStatus.FAULTED, frozenset({Fault.READER_SILENT})), STATION_EVENT),
    (SessionStarted(1, SESSION), STATION_EVENT),
    (SessionStopped(1, STOPPED, StopReason.EV_DISCONNECTED), STATION_EVENT),
    (MeterUpdate(2, SAMPLE, "ab12"), STATION_EVENT),
    (MeterUpdate(2, SAMPLE, None), STATION_EVENT),
    (TokenPresented(None, "CARD", False), STATION_EVENT),
    (PilotStateChanged(CpState.B1), PilotStateChanged),
    (ProximityChanged(1500.0, 20.0), ProximityChanged),
    (ProximityChanged(None, None), ProximityChanged),
    (RelayFeedback(True), RelayFeedback),
    (LockFeedback(False), LockFeedback),
    (FaultFlagsChanged(frozenset({Fault.GROUND, Fault.WELD})), FaultFlagsChanged),
    (DeviceFaultChanged(Fault.BOARD_SILENT, True, "no frame for 2 s"), DeviceFaultChanged),
    (IdToken("04A1B2C3", "ISO14443"), IdToken),
    (DeviceFault(Fault.LOCK), DeviceFault),
    (Screen(1, ScreenState.CHARGING, 7200.0, 500.0, 60.0, "hi", "", "call us", (("a", "b"),)), Screen),
    ({1: VIEW, 2: VIEW}, Mapping[int, ConnectorView]),
    ((1, 2, 3), tuple[int, ...]),
    (frozenset({EnergyHold.UNAVAILABLE}), frozenset[EnergyHold]),
    ([StopReason.REMOTE, StopReason.LOCAL], list[StopReason]),
    (3.5, float | None),
    (None, float | None),
    (True, bool),
    ("x", str | None),
]


@pytest.mark.parametrize(("value", "tp"), VALUES, ids=lambda v: type(v).__name__)
def test_every_type_survives_a_round_trip_through_json_text(value: Any, tp: Any) -> None:
    text = encode_line({"v": encode(value)})
    back = decode(decode_line(text)["v"], tp)
    assert back == value
    assert type(back) is type(value)


def test_every_registered_dataclass_is_in_the_round_trip() -> None:
    covered = {type(v).__name__ for v, _ in VALUES}
    assert set(REGISTRY) <= covered | {"Session"}


def test_non_finite_floats_cross_as_tagged_values() -> None:
    for x in (math.inf, -math.inf):
        assert decode(json.loads(encode_line({"v": encode(x)}))["v"], float) == x
    assert math.isnan(decode(json.loads(encode_line({"v": encode(math.nan)}))["v"], float))
    sample = decode(encode(MeterSample(math.nan, 1.0)), MeterSample)
    assert math.isnan(sample.energy_import_wh)


def test_an_int_is_accepted_where_a_float_is_expected_but_not_the_reverse() -> None:
    assert decode(5, float) == 5.0 and type(decode(5, float)) is float
    with pytest.raises(CodecError, match="expected an integer"):
        decode(5.0, int)
    with pytest.raises(CodecError, match="expected an integer"):
        decode(True, int)  # JSON true is not 1


def test_values_that_may_not_cross_are_refused_when_encoding() -> None:
    class Other:
        pass

    with pytest.raises(TypeError):
        encode(Other())
    with pytest.raises(TypeError):
        encode({1, 2})  # a mutable set has no agreed type


@pytest.mark.parametrize(
    ("data", "tp", "message"),
    [
        ({"$t": "os.system", "command": "rm -rf /"}, STATION_EVENT, "unknown type 'os.system'"),
        ({"$t": "ConnectorView"}, STATION_EVENT, "ConnectorView is not allowed here"),
        ({"$t": "MeterUpdate", "connector_id": 1, "session_ref": None}, STATION_EVENT,
         r"MeterUpdate.sample is missing"),
        ({"$t": "TokenPresented", "connector_id": 1, "id_tag": "X", "accepted": True, "evil": 1}, STATION_EVENT,
         "has no field 'evil'"),
        ({"connector_id": 1}, STATION_EVENT, "without a type name"),
        ({"$t": "StatusChanged", "connector_id": 1, "status": "Exploded", "faults": []}, STATION_EVENT,
         r"\$.status: 'Exploded' is not a ConnectorStatus"),
        ({"$t": "StatusChanged", "connector_id": 1, "status": "Faulted", "faults": ["rcd", "nope"]}, STATION_EVENT,
         r"\$.faults\[1\]"),
        ({"$t": "Session", "ref": "r"}, Session, "Session.connector_id is missing"),
        ([1, 2], tuple[int, int, int], "expected 3 items"),
        ([[1]], Mapping[int, str], "expected a \\[key, value\\] pair"),
        ({"$float": "huge"}, float, "expected a number"),
        ({"$float": [1]}, float, "expected a number"),
        ("1.0", float, "expected a number"),
        (None, int, "expected an integer"),
        (None, ConnectorReservation, "expected an object"),
        (1, ConnectorReservation | None, "expected an object"),
        ({"$t": 5}, Session, "without a type name"),
    ],
)
def test_malformed_values_raise_a_precise_codec_error(data: Any, tp: Any, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode(data, tp)


@pytest.mark.parametrize(
    "line",
    [b"", b"not json\n", b"[1,2]\n", b'"x"\n', b"{\"a\": NaN}\n", b"{\"a\": Infinity}\n", b"\xff\xfe{}\n",
     b"[" * 100_000 + b"]" * 100_000, b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}"],
)
def test_frames_that_are_not_one_json_object_are_codec_errors(line: bytes) -> None:
    try:
        obj = decode_line(line)
    except CodecError:
        return
    # A deep but legal object decodes as plain data; turning it into a value is then refused.
    with pytest.raises(CodecError, match=r"nested too deeply|expected"):
        decode(obj["a"], tuple[int, ...])


def test_the_line_length_limit_is_enforced_both_ways() -> None:
    with pytest.raises(FrameTooLong):
        decode_line(b'{"a":"' + b"x" * MAX_LINE_BYTES + b'"}\n')
    with pytest.raises(FrameTooLong):
        encode_line({"a": "x" * MAX_LINE_BYTES})
    assert decode_line(encode_line({"a": "x" * (MAX_LINE_BYTES - 100)}))["a"].startswith("x")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
    | st.sampled_from([*REGISTRY, "Charging", "rcd", "C2", "$float", "nan"]),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.sampled_from(["$t", "$float", "id", "status", "faults", "session", "sample", "connector_id",
                                       "id_tag", "accepted", "ref", "energy_import_wh", "power_w", "reason"])
                      | st.text(max_size=6), children, max_size=6),
    max_leaves=30,
)
TARGETS = [STATION_EVENT, ConnectorView, StationFacts, Session | None, AuthDecision, Mapping[int, ConnectorView],
           tuple[tuple[str, str], ...], frozenset[Fault], float | None, ConnectorReservation | None]


@settings(max_examples=400, deadline=None)
@given(data=JSON, target=st.sampled_from(TARGETS))
def test_fuzz_decode_of_random_json_raises_only_codec_error(data: Any, target: Any) -> None:
    try:
        value = decode(data, target)
    except CodecError:
        return
    # What decodes is a real value of the type: it encodes again to the same plain data.
    assert decode(encode(value), target) == value or value != value


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200) | JSON.map(lambda d: json.dumps(d).encode()))
def test_fuzz_decode_line_raises_only_codec_error(raw: bytes) -> None:
    try:
        decode_line(raw)
    except CodecError:
        pass
