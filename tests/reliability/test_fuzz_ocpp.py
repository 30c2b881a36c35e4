"""Fuzzing the agent's OCPP side: hypothesis generates CSMS frames (valid CALLs, mutated ones, wrong types,
huge and deeply nested values, unknown actions, wrong message type ids, garbage text) and feeds them to
the agent's real OcppSession (rpc.py) with the real service handlers (Core + every registered feature) of
a Station on the simulator rig. The connection is an in-memory pair, not a websocket, so that >= 10 000
frames take ~15 s (the websocket layer is exercised by every other OCPP test). Nothing may crash the session,
and every well-formed CALL gets exactly one well-formed CALLRESULT or CALLERROR with its unique id."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import AgentConfig, load
from agent.ocpp.v16.rpc import OcppSession, decode_frame
from agent.ocpp.v16.service import OcppService
from agent.station import Station
from hal.tasks import cancel_and_wait
from simulator.rig import Rig, RigOptions
from tests.reliability.harness import SOAK

BATCH = 25
EXAMPLES = 2000 if SOAK else 420  # x BATCH frames: >= 10 000 in `make test`
ERROR_CODES = {"NotImplemented", "NotSupported", "InternalError", "ProtocolError", "SecurityError",
               "FormationViolation", "PropertyConstraintViolation", "OccurenceConstraintViolation",
               "TypeConstraintViolation", "GenericError"}

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                      st.text(max_size=20))
json_value = st.recursive(json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                          max_size=4), max_leaves=12)
id_tags = st.text(min_size=1, max_size=22)
keys = st.sampled_from(["HeartbeatInterval", "MeterValueSampleInterval", "ConnectionTimeOut", "AuthorizationKey",
                        "WebSocketPingInterval", "LocalPreAuthorize", "SecurityProfile", "NoSuchKey",
                        "MeterValuesSampledData", "StopTransactionOnInvalidId"])
connector_ids = st.integers(-2, 3)

# Valid-looking payloads for actions that act only locally (no downloads, no uploads: the network stays
# on 127.0.0.1 and the disk in tmp).
VALID: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "ChangeConfiguration": st.fixed_dictionaries({"key": keys, "value": st.text(max_size=12)}),
    "GetConfiguration": st.fixed_dictionaries({}, optional={"key": st.lists(keys, max_size=4)}),
    "ChangeAvailability": st.fixed_dictionaries({"connectorId": connector_ids,
                                                 "type": st.sampled_from(["Operative", "Inoperative"])}),
    "ClearCache": st.just({}),
    "DataTransfer": st.fixed_dictionaries({"vendorId": st.text(max_size=10)},
                                          optional={"messageId": st.text(max_size=10), "data": st.text(max_size=30)}),
    "RemoteStartTransaction": st.fixed_dictionaries({"idTag": id_tags}, optional={"connectorId": connector_ids}),
    "RemoteStopTransaction": st.fixed_dictionaries({"transactionId": st.integers(-5, 10)}),
    "UnlockConnector": st.fixed_dictionaries({"connectorId": connector_ids}),
    "TriggerMessage": st.fixed_dictionaries(
        {"requestedMessage": st.sampled_from(["BootNotification", "Heartbeat", "StatusNotification", "MeterValues",
                                              "DiagnosticsStatusNotification", "FirmwareStatusNotification", "X"])},
        optional={"connectorId": connector_ids}),
    "GetLocalListVersion": st.just({}),
    "SendLocalList": st.fixed_dictionaries({"listVersion": st.integers(-1, 5),
                                            "updateType": st.sampled_from(["Full", "Differential"])},
                                           optional={"localAuthorizationList": st.lists(st.fixed_dictionaries(
                                               {"idTag": id_tags}), max_size=3)}),
    "ReserveNow": st.fixed_dictionaries({"connectorId": connector_ids, "expiryDate": st.just("2030-01-01T00:00:00Z"),
                                         "idTag": id_tags, "reservationId": st.integers(0, 9)}),
    "CancelReservation": st.fixed_dictionaries({"reservationId": st.integers(0, 9)}),
    "ClearChargingProfile": st.fixed_dictionaries({}, optional={"id": st.integers(0, 5)}),
    "GetCompositeSchedule": st.fixed_dictionaries({"connectorId": connector_ids, "duration": st.integers(0, 86400)}),
    "GetInstalledCertificateIds": st.fixed_dictionaries(
        {"certificateType": st.sampled_from(["CentralSystemRootCertificate", "ManufacturerRootCertificate"])}),
}


@st.composite
def call_frames(draw: st.DrawFn) -> list[Any]:
    action = draw(st.sampled_from(sorted(VALID)))
    payload = dict(draw(VALID[action]))
    mutation = draw(st.sampled_from(["none", "none", "add", "drop", "retype", "huge", "deep"]))
    if mutation == "add":
        payload[draw(st.text(max_size=10))] = draw(json_value)
    elif mutation == "drop" and payload:
        payload.pop(draw(st.sampled_from(sorted(payload))))
    elif mutation == "retype" and payload:
        payload[draw(st.sampled_from(sorted(payload)))] = draw(json_value)
    elif mutation == "huge":
        payload[draw(st.sampled_from(sorted(payload) or ["x"]))] = "A" * draw(st.integers(1000, 100_000))
    elif mutation == "deep":
        depth = draw(st.integers(10, 3000))
        payload[draw(st.sampled_from(sorted(payload) or ["x"]))] = json.loads("[" * depth + "]" * depth) \
            if depth < 900 else "deep"
    return [2, "id", action, payload]


other_frames = st.one_of(
    st.builds(lambda a, p: [2, "id", a, p], st.text(max_size=30), st.dictionaries(st.text(max_size=5), json_value,
                                                                                   max_size=3)),  # unknown actions
    st.builds(lambda t, p: [t, "id", "Reset", p], st.one_of(st.integers(-3, 9), st.text(max_size=3), st.none()),
              json_value),  # wrong message type ids
    st.lists(json_value, max_size=6),  # arrays of anything
    json_value,
)
raw_texts = st.one_of(
    st.text(max_size=200),
    st.integers(1, 200_000).map(lambda n: "[" * n),  # nesting deeper than any parser stack
    st.integers(1, 5000).map(lambda n: '[2,"deep","DataTransfer",{"vendorId":"v","data":' + "[" * n + "]" * n + "}]"),
    st.binary(max_size=100),
)
frames = st.one_of(call_frames(), call_frames(), other_frames, raw_texts)


class MemoryConnection:
    """The Connection protocol of rpc.py over two in-memory queues."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[str | bytes] = asyncio.Queue()
        self.sent: list[str] = []

    async def recv(self) -> str | bytes:
        return await self.inbox.get()

    async def send(self, message: str) -> None:
        self.sent.append(message)


class Target:
    def __init__(self, directory: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.rig = Rig(RigOptions(directory=directory, csms_url="ws://127.0.0.1:9", charge_point_id="FUZZ"))
        self.loop.run_until_complete(self.rig.start())
        self.loop.run_until_complete(self._build(load(directory / "agent.toml")))
        self.frames = 0
        self.calls = 0
        self.next_id = 0

    async def _build(self, config: AgentConfig) -> None:
        self.station = Station(config)
        self.service = OcppService(self.station, config)
        self.station_task = asyncio.create_task(self.station.run())
        self.connection = MemoryConnection()
        link = self.service.link  # the gated handlers exactly as the Link serves them
        self.session = OcppSession(self.connection, "FUZZ", link._handlers, after=link._after, message_timeout=1)
        self.serving = asyncio.create_task(self.session.serve())

    def close(self) -> None:
        self.loop.run_until_complete(cancel_and_wait(self.serving, self.station_task))
        self.station.close()
        self.loop.run_until_complete(self.rig.stop())
        self.loop.close()


def encode(frame: Any, target: Target) -> tuple[str | bytes, str | None]:
    """The wire text and, for a well-formed CALL, the unique id that must be answered."""
    if isinstance(frame, str | bytes):
        return frame, None
    uid = None
    if isinstance(frame, list) and len(frame) == 4 and frame[0] == 2 and isinstance(frame[2], str) and frame[2] \
            and isinstance(frame[3], dict):
        target.next_id += 1
        uid = f"fz{target.next_id}"
        frame = [2, uid, frame[2], frame[3]]
    return json.dumps(frame), uid


async def exchange(target: Target, batch: list[Any]) -> None:
    conn = target.connection
    first = len(conn.sent)
    expected: list[str] = []
    for frame in batch:
        raw, uid = encode(frame, target)
        if uid is not None:
            expected.append(uid)
        conn.inbox.put_nowait(raw)
    target.frames += len(batch)
    target.calls += len(expected)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    answered: dict[str, int] = {}
    while True:
        answered.clear()
        for text in conn.sent[first:]:
            answer = json.loads(text)  # every answer is JSON ...
            assert isinstance(answer, list) and answer[0] in (3, 4), text
            if answer[0] == 3:
                assert len(answer) == 3 and isinstance(answer[1], str) and isinstance(answer[2], dict), text
            else:
                assert len(answer) == 5 and answer[2] in ERROR_CODES and isinstance(answer[3], str), text
                assert isinstance(answer[4], dict), text
            answered[answer[1]] = answered.get(answer[1], 0) + 1
        if conn.inbox.empty() and all(uid in answered for uid in expected):
            break
        assert loop.time() < deadline, f"unanswered: {[u for u in expected if u not in answered]}"
        assert not target.serving.done(), f"the session's receive loop died: {target.serving}"
        await asyncio.sleep(0.005)
    assert all(answered[uid] == 1 for uid in expected), answered
    assert not target.serving.done() and not target.session.closed


@pytest.mark.timeout(400)  # ~20 s on an idle 2-core machine; CI machines can be several times slower
def test_csms_frames_never_crash_and_every_call_is_answered(tmp_path: Path) -> None:
    target = Target(tmp_path)
    try:
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.large_base_example])
        @given(batch=st.lists(frames, min_size=BATCH, max_size=BATCH))
        def run(batch: list[Any]) -> None:
            target.loop.run_until_complete(exchange(target, batch))

        run()
        print(f"\nOCPP fuzz: {target.frames} frames, {target.calls} well-formed CALLs, {target.session.stats}")
        assert target.frames >= 10_000
    finally:
        target.close()


def test_deeply_nested_frame_is_a_formation_violation_not_a_crash() -> None:
    """Found by the fuzzer: json.loads raises RecursionError (not ValueError) past ~1000 levels, which
    escaped decode_frame and ended the session's receive loop."""
    from agent.ocpp.v16.rpc import FrameError

    with pytest.raises(FrameError) as caught:
        decode_frame('[2,"abc","Reset",' + "[" * 100_000)
    assert caught.value.unique_id == "abc"
