"""OcppSession over real websockets on 127.0.0.1: a raw websockets server plays the CSMS and sends
hand-made frames, so every CALLERROR code and every crossing is seen on the wire."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from ocpp.exceptions import FormatViolationError
from ocpp.v16 import call, call_result
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

from agent.ocpp.v16.rpc import (
    CallErrorReceived,
    CallTimeout,
    ConnectionLost,
    InvalidPayload,
    OcppSession,
)

WAIT = 5.0


@dataclass
class Service:
    """Handlers as the charge-point service would register them."""

    availability_calls: list[dict[str, Any]] = field(default_factory=list)
    profile_calls: list[dict[str, Any]] = field(default_factory=list)
    session: OcppSession | None = None

    async def on_change_availability(self, connector_id: int, type: str) -> call_result.ChangeAvailability:
        self.availability_calls.append({"connector_id": connector_id, "type": type})
        return call_result.ChangeAvailability(status="Accepted")

    async def on_clear_cache(self) -> call_result.ClearCache:
        return call_result.ClearCache(status="Accepted")

    async def on_unlock_connector(self, connector_id: int) -> call_result.UnlockConnector:
        raise RuntimeError("relay board on fire")

    async def on_get_local_list_version(self) -> call_result.GetLocalListVersion:
        raise FormatViolationError(description="deliberate")

    async def on_reset(self, type: str) -> dict[str, Any]:
        return {"status": "Maybe"}  # not in the enum: our bug, must not go out as is

    async def on_trigger_message(self, requested_message: str, **_: Any) -> call_result.TriggerMessage:
        return call_result.TriggerMessage(status="Accepted")

    async def on_set_charging_profile(self, **kwargs: Any) -> call_result.SetChargingProfile:
        self.profile_calls.append(kwargs)
        return call_result.SetChargingProfile(status="Accepted")

    async def on_remote_start_transaction(self, **kwargs: Any) -> call_result.RemoteStartTransaction:
        self.profile_calls.append(kwargs)
        return call_result.RemoteStartTransaction(status="Accepted")

    async def after_trigger_message(self, requested_message: str, **_: Any) -> None:
        assert self.session is not None
        await self.session.request(call.StatusNotification(connector_id=0, error_code="NoError",
                                                           status="Available"))


@dataclass
class Wire:
    csms: ServerConnection
    client: ClientConnection
    session: OcppSession
    service: Service

    async def send(self, frame: Any) -> None:
        await self.csms.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def next_frame(self) -> list[Any]:
        async with asyncio.timeout(WAIT):
            frame: list[Any] = json.loads(await self.csms.recv())
            return frame

    async def exchange(self, frame: Any) -> list[Any]:
        await self.send(frame)
        return await self.next_frame()


@pytest.fixture
async def wire() -> AsyncIterator[Wire]:
    accepted: asyncio.Queue[ServerConnection] = asyncio.Queue()
    done = asyncio.Event()

    async def handler(connection: ServerConnection) -> None:
        await accepted.put(connection)
        await done.wait()

    async with serve(handler, "127.0.0.1", 0, subprotocols=[Subprotocol("ocpp1.6")]) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/CP1", subprotocols=[Subprotocol("ocpp1.6")]) as client:
            service = Service()
            handlers = {
                "ChangeAvailability": service.on_change_availability,
                "ClearCache": service.on_clear_cache,
                "UnlockConnector": service.on_unlock_connector,
                "GetLocalListVersion": service.on_get_local_list_version,
                "Reset": service.on_reset,
                "TriggerMessage": service.on_trigger_message,
                "SetChargingProfile": service.on_set_charging_profile,
                "RemoteStartTransaction": service.on_remote_start_transaction,
            }
            session = OcppSession(client, "CP1", handlers, after={"TriggerMessage": service.after_trigger_message},
                                  message_timeout=WAIT)
            service.session = session
            serving = asyncio.create_task(session.serve())
            csms = await asyncio.wait_for(accepted.get(), WAIT)
            yield Wire(csms, client, session, service)
            done.set()
            serving.cancel()


def assert_call_error(frame: list[Any], unique_id: str, code: str) -> None:
    assert frame[:3] == [4, unique_id, code], frame
    assert isinstance(frame[3], str) and isinstance(frame[4], dict)


async def test_unknown_action_is_not_implemented(wire: Wire) -> None:
    assert_call_error(await wire.exchange([2, "u1", "FlyToTheMoon", {}]), "u1", "NotImplemented")


async def test_known_action_without_handler_is_not_supported(wire: Wire) -> None:
    assert_call_error(await wire.exchange([2, "u2", "ReserveNow", {}]), "u2", "NotSupported")


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"connectorId": 1, "type": "Sideways"}, "PropertyConstraintViolation"),
        ({"connectorId": "1", "type": "Inoperative"}, "TypeConstraintViolation"),
        ({"type": "Inoperative"}, "OccurenceConstraintViolation"),
        ({"connectorId": 1, "type": "Inoperative", "why": "x"}, "FormationViolation"),
    ],
)
async def test_schema_violations_are_answered_with_16_codes(wire: Wire, payload: dict[str, Any], code: str) -> None:
    assert_call_error(await wire.exchange([2, "s1", "ChangeAvailability", payload]), "s1", code)
    assert wire.service.availability_calls == []  # the handler never saw the bad payload


async def test_valid_call_reaches_handler_with_snake_case_arguments(wire: Wire) -> None:
    reply = await wire.exchange([2, "ok1", "ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}])
    assert reply == [3, "ok1", {"status": "Accepted"}]
    assert wire.service.availability_calls == [{"connector_id": 1, "type": "Inoperative"}]


async def test_garbage_json_with_recoverable_id_gets_formation_violation(wire: Wire) -> None:
    assert_call_error(await wire.exchange('[2,"g1","ClearCache",{"oops'), "g1", "FormationViolation")


async def test_bad_frames_without_id_are_dropped_and_the_link_lives_on(wire: Wire) -> None:
    await wire.send("complete garbage")
    await wire.send("[7]")
    await wire.send('[3,"nobody-asked",{}]')
    # The next frame on the wire is the answer to this CALL: nothing was sent for the garbage.
    assert await wire.exchange([2, "after", "ClearCache", {}]) == [3, "after", {"status": "Accepted"}]
    assert wire.session.stats.bad_frames == 2


async def test_handler_exception_is_internal_error_and_connection_survives(wire: Wire) -> None:
    assert_call_error(await wire.exchange([2, "h1", "UnlockConnector", {"connectorId": 1}]), "h1", "InternalError")
    assert await wire.exchange([2, "h2", "ClearCache", {}]) == [3, "h2", {"status": "Accepted"}]
    assert wire.session.stats.handler_failures == 1


async def test_deliberate_ocpp_error_from_handler_uses_16_spelling(wire: Wire) -> None:
    frame = await wire.exchange([2, "d1", "GetLocalListVersion", {}])
    assert_call_error(frame, "d1", "FormationViolation")


async def test_invalid_reply_from_handler_becomes_internal_error(wire: Wire) -> None:
    assert_call_error(await wire.exchange([2, "r1", "Reset", {"type": "Soft"}]), "r1", "InternalError")


async def test_csms_call_is_answered_while_our_call_is_pending(wire: Wire) -> None:
    pending = asyncio.create_task(wire.session.request(call.Heartbeat()))
    heartbeat = await wire.next_frame()
    assert heartbeat[0] == 2 and heartbeat[2] == "Heartbeat"
    # Cross it: the CSMS asks something before answering our Heartbeat, and gets its answer.
    assert await wire.exchange([2, "x1", "ClearCache", {}]) == [3, "x1", {"status": "Accepted"}]
    assert not pending.done()
    await wire.send([3, heartbeat[1], {"currentTime": "2026-01-01T00:00:00Z"}])
    result = await asyncio.wait_for(pending, WAIT)
    assert isinstance(result, call_result.Heartbeat) and result.current_time == "2026-01-01T00:00:00Z"


async def test_trigger_conf_goes_out_before_the_triggered_message(wire: Wire) -> None:
    conf = await wire.exchange([2, "t1", "TriggerMessage", {"requestedMessage": "StatusNotification"}])
    assert conf == [3, "t1", {"status": "Accepted"}]
    triggered = await wire.next_frame()
    assert triggered[2] == "StatusNotification" and triggered[3]["connectorId"] == 0
    await wire.send([3, triggered[1], {}])


async def test_only_one_outgoing_call_at_a_time(wire: Wire) -> None:
    first = asyncio.create_task(wire.session.request(call.Heartbeat()))
    second = asyncio.create_task(wire.session.request(call.Heartbeat()))
    frame_1 = await wire.next_frame()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await wire.csms.recv()  # the second CALL must wait for the first answer
    await wire.send([3, frame_1[1], {"currentTime": "2026-01-01T00:00:00Z"}])
    frame_2 = await wire.next_frame()
    assert frame_2[2] == "Heartbeat" and frame_2[1] != frame_1[1]
    await wire.send([3, frame_2[1], {"currentTime": "2026-01-01T00:00:01Z"}])
    await asyncio.wait_for(asyncio.gather(first, second), WAIT)


async def test_call_error_raises_typed_exception(wire: Wire) -> None:
    pending = asyncio.create_task(wire.session.request(call.Authorize(id_tag="TAG")))
    frame = await wire.next_frame()
    await wire.send([4, frame[1], "FormationViolation", "your payload", {"hint": 1}])
    with pytest.raises(CallErrorReceived) as caught:
        await asyncio.wait_for(pending, WAIT)
    assert (caught.value.action, caught.value.code, caught.value.details) == ("Authorize", "FormationViolation",
                                                                               {"hint": 1})


async def test_unknown_call_error_code_still_raises_typed_exception(wire: Wire) -> None:
    pending = asyncio.create_task(wire.session.request(call.Heartbeat()))
    frame = await wire.next_frame()
    await wire.send([4, frame[1], "Teapot", "short and stout", {}])
    with pytest.raises(CallErrorReceived) as caught:
        await asyncio.wait_for(pending, WAIT)
    assert caught.value.code == "Teapot"


async def test_invalid_response_payload_raises_invalid_payload(wire: Wire) -> None:
    pending = asyncio.create_task(wire.session.request(call.Heartbeat()))
    frame = await wire.next_frame()
    await wire.send([3, frame[1], {"currentTime": 12}])
    with pytest.raises(InvalidPayload):
        await asyncio.wait_for(pending, WAIT)


async def test_timeout_is_configurable_and_typed(wire: Wire) -> None:
    with pytest.raises(CallTimeout):
        await wire.session.request(call.Heartbeat(), response_timeout=0.2)
    await wire.next_frame()  # it was sent


async def test_the_answer_timer_goes_with_the_call_and_a_late_answer_is_a_stray(wire: Wire) -> None:
    # One call_later per CALL fails the answer (no asyncio.timeout); answered, cancelled or expired, the
    # timer is cancelled and the session serves the next CALL.
    loop = asyncio.get_running_loop()
    timers: list[asyncio.TimerHandle] = []
    real_call_later = loop.call_later

    def spy(delay: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
        handle = real_call_later(delay, callback, *args)
        timers.append(handle)
        return handle

    loop.call_later = spy  # type: ignore[method-assign]
    try:
        pending = asyncio.create_task(wire.session.request(call.Heartbeat()))
        frame = await wire.next_frame()
        await wire.send([3, frame[1], {"currentTime": "2026-12-04T10:00:00Z"}])
        assert (await asyncio.wait_for(pending, WAIT)).current_time == "2026-12-04T10:00:00Z"
        assert timers and all(t.cancelled() for t in timers)

        timers.clear()
        pending = asyncio.create_task(wire.session.request(call.Heartbeat()))
        await wire.next_frame()
        pending.cancel()  # e.g. the sender task stopped mid-CALL
        with pytest.raises(asyncio.CancelledError):
            await pending
        assert timers and all(t.cancelled() for t in timers)

        timers.clear()
        with pytest.raises(CallTimeout, match=r"Heartbeat: no answer within 0\.1s"):
            await wire.session.request(call.Heartbeat(), response_timeout=0.1)
        late = await wire.next_frame()
        await wire.send([3, late[1], {"currentTime": "2026-12-04T10:00:00Z"}])
        await asyncio.sleep(0.1)
        assert wire.session.stats.stray_results == 1
    finally:
        del loop.call_later  # type: ignore[method-assign]
    pending = asyncio.create_task(wire.session.request(call.Heartbeat()))
    frame = await wire.next_frame()
    await wire.send([3, frame[1], {"currentTime": "2026-12-04T10:00:01Z"}])
    assert (await asyncio.wait_for(pending, WAIT)).current_time == "2026-12-04T10:00:01Z"


async def test_connection_loss_fails_the_pending_call_fast(wire: Wire) -> None:
    pending = asyncio.create_task(wire.session.request(call.Heartbeat()))
    await wire.next_frame()
    await wire.csms.close()
    with pytest.raises(ConnectionLost):
        await asyncio.wait_for(pending, WAIT)
    with pytest.raises(ConnectionLost):
        await wire.session.request(call.Heartbeat())


# -- issue 11 item 12: every CALL gets exactly one answer ------------------------------------------------

def _profile(limit: str, start_period: str = "0") -> str:
    """A SetChargingProfile payload as raw JSON text, so literals Python's json would not write get through."""
    return ('{"connectorId": 1, "csChargingProfiles": {"chargingProfileId": 1, "stackLevel": 0, '
            '"chargingProfilePurpose": "TxDefaultProfile", "chargingProfileKind": "Absolute", '
            '"chargingSchedule": {"chargingRateUnit": "A", "startSchedule": "2026-01-01T00:00:00Z", '
            f'"chargingSchedulePeriod": [{{"startPeriod": {start_period}, "limit": {limit}}}]}}}}}}')


async def _only_answer(wire: Wire, unique_id: str, text: str) -> list[Any]:
    """Send one CALL (raw text); return its answer and check nothing else comes for it."""
    answer = await wire.exchange(text)
    assert answer[1] == unique_id, answer
    # Exactly one answer: the next frame on the wire answers the next CALL.
    assert await wire.exchange([2, unique_id + "-next", "ClearCache", {}]) == [3, unique_id + "-next",
                                                                               {"status": "Accepted"}]
    return answer


@pytest.mark.parametrize(
    ("limit", "code"),
    [
        # RFC 8259 section 6: "Numeric values that cannot be represented in the grammar below (such as
        # Infinity and NaN) are not permitted": not JSON, so the frame is malformed.
        ("NaN", "FormationViolation"),
        ("Infinity", "FormationViolation"),
        ("-Infinity", "FormationViolation"),
        # Valid JSON numbers out of any usable range: the payload is well formed, a value is not.
        ("1e400", "PropertyConstraintViolation"),
        ("1e308", "PropertyConstraintViolation"),
    ],
)
async def test_unusable_numbers_get_exactly_one_call_error(wire: Wire, limit: str, code: str) -> None:
    text = f'[2, "n1", "SetChargingProfile", {_profile(limit)}]'
    assert_call_error(await _only_answer(wire, "n1", text), "n1", code)
    remote = ('[2, "n2", "RemoteStartTransaction", {"idTag": "T", "chargingProfile": '
              + _profile(limit).split('"csChargingProfiles": ', 1)[1][:-1] + "}]")
    assert_call_error(await _only_answer(wire, "n2", remote), "n2", code)
    assert wire.service.profile_calls == []  # no handler saw the value


async def test_integer_beyond_32_bits_is_a_property_constraint_violation(wire: Wire) -> None:
    # OCPP 1.6 field type "integer" is 32 bit (31 bit resolution, 1 sign bit).
    text = f'[2, "i1", "SetChargingProfile", {_profile("16", start_period="1" + "0" * 400)}]'
    assert_call_error(await _only_answer(wire, "i1", text), "i1", "PropertyConstraintViolation")
    text = '[2, "i2", "ChangeAvailability", {"connectorId": 2147483648, "type": "Inoperative"}]'
    assert_call_error(await _only_answer(wire, "i2", text), "i2", "PropertyConstraintViolation")
    assert wire.service.profile_calls == [] and wire.service.availability_calls == []
    ok = '[2, "i3", "ChangeAvailability", {"connectorId": 2147483647, "type": "Inoperative"}]'
    assert (await wire.exchange(ok)) == [3, "i3", {"status": "Accepted"}]


async def test_any_failure_while_dispatching_is_a_short_internal_error_logged_once(
    wire: Wire, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import agent.ocpp.v16.rpc as rpc

    def broken(*_: Any, **__: Any) -> None:
        raise ZeroDivisionError("validator exploded")

    monkeypatch.setattr(rpc, "schema_violation", broken)  # fails outside the handler, inside _dispatch
    with caplog.at_level("ERROR", logger="cpagent.ocpp.v16.rpc"):
        answer = await wire.exchange([2, "x1", "ClearCache", {}])
    assert_call_error(answer, "x1", "InternalError")
    assert "Traceback" not in answer[3] and "exploded" not in answer[3] and len(answer[3]) <= 100
    monkeypatch.undo()
    assert await wire.exchange([2, "x2", "ClearCache", {}]) == [3, "x2", {"status": "Accepted"}]
    failures = [r for r in caplog.records if "x1" in r.getMessage() or "ClearCache" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in caplog.records]


# -- issue 11 item 13: CALLRESULTs nobody asked for --------------------------------------------------------

async def test_stray_call_results_are_dropped_at_once_and_logged_briefly(
    wire: Wire, caplog: pytest.LogCaptureFixture
) -> None:
    big = "x" * 50_000
    with caplog.at_level("DEBUG", logger="cpagent.ocpp.v16.rpc"):
        for n in range(3000):
            await wire.send([3, f"stray-{n}", {"currentTime": "2026-01-01T00:00:00Z", "junk": big if n < 20 else ""}])
        await wire.send([4, "stray-error", "GenericError", "nobody asked", {}])
        # The next CALL of ours is answered normally (it used to hit RecursionError behind 3000 strays).
        pending = asyncio.create_task(wire.session.request(call.Heartbeat()))
        frame = await wire.next_frame()
        assert frame[2] == "Heartbeat"
        await wire.send([3, frame[1], {"currentTime": "2026-01-01T00:00:00Z"}])
        result = await asyncio.wait_for(pending, WAIT)
    assert isinstance(result, call_result.Heartbeat)
    assert wire.session._answer_future is None  # nothing kept waiting
    assert wire.session.stats.stray_results == 3001
    logged = [r for r in caplog.records if r.levelno >= logging.INFO and "stray" in r.getMessage().lower()]
    assert 1 <= len(logged) <= 2, [r.getMessage()[:120] for r in logged]
    assert all(len(r.getMessage()) < 200 for r in logged)  # never the frame body


async def test_late_and_duplicate_answers_do_not_reach_the_next_call(wire: Wire) -> None:
    with pytest.raises(CallTimeout):
        await wire.session.request(call.Heartbeat(), response_timeout=0.2)
    late = await wire.next_frame()
    await wire.send([3, late[1], {"currentTime": "2000-01-01T00:00:00Z"}])  # too late: dropped
    pending = asyncio.create_task(wire.session.request(call.Heartbeat()))
    frame = await wire.next_frame()
    await wire.send([3, frame[1], {"currentTime": "2026-01-01T00:00:00Z"}])
    await wire.send([3, frame[1], {"currentTime": "2001-01-01T00:00:00Z"}])  # duplicate: dropped
    result = await asyncio.wait_for(pending, WAIT)
    assert result.current_time == "2026-01-01T00:00:00Z"
    third = asyncio.create_task(wire.session.request(call.Heartbeat()))
    frame = await wire.next_frame()
    await wire.send([3, frame[1], {"currentTime": "2027-01-01T00:00:00Z"}])
    assert (await asyncio.wait_for(third, WAIT)).current_time == "2027-01-01T00:00:00Z"


# -- issue 11 item 14: an answer we cannot use fails the request like an invalid one --------------------------

async def test_answer_with_an_integer_beyond_32_bits_is_an_invalid_payload(wire: Wire) -> None:
    # OCPP 1.6 field type "integer" is 32 bit; SQLite, where the transactionId goes, takes 64 at most.
    pending = asyncio.create_task(wire.session.request(call.StartTransaction(
        connector_id=1, id_tag="T", meter_start=0, timestamp="2026-01-01T00:00:00Z")))
    frame = await wire.next_frame()
    await wire.send([3, frame[1], {"transactionId": 2**70, "idTagInfo": {"status": "Accepted"}}])
    with pytest.raises(InvalidPayload, match="transactionId"):
        await asyncio.wait_for(pending, WAIT)
    pending = asyncio.create_task(wire.session.request(call.StartTransaction(
        connector_id=1, id_tag="T", meter_start=0, timestamp="2026-01-01T00:00:00Z")))
    frame = await wire.next_frame()
    await wire.send([3, frame[1], {"transactionId": 2**31 - 1, "idTagInfo": {"status": "Accepted"}}])
    assert (await asyncio.wait_for(pending, WAIT)).transaction_id == 2**31 - 1


@pytest.mark.parametrize("answer", ['{"currentTime": NaN}', "[]", '{"currentTime": "2026-01-01T00:00:00Z"'])
async def test_unreadable_answer_fails_the_request_at_once_not_at_the_timeout(wire: Wire, answer: str) -> None:
    pending = asyncio.create_task(wire.session.request(call.Heartbeat(), response_timeout=30))
    frame = await wire.next_frame()
    await wire.send(f'[3, "{frame[1]}", {answer}]')
    with pytest.raises(InvalidPayload):
        await asyncio.wait_for(pending, 2)
    # The session goes on: the next CALL is answered normally.
    pending = asyncio.create_task(wire.session.request(call.Heartbeat()))
    frame = await wire.next_frame()
    await wire.send([3, frame[1], {"currentTime": "2026-01-01T00:00:00Z"}])
    assert (await asyncio.wait_for(pending, WAIT)).current_time == "2026-01-01T00:00:00Z"
