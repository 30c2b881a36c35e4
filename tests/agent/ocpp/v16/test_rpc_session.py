"""OcppSession over real websockets on 127.0.0.1: a raw websockets server plays the CSMS and sends
hand-made frames, so every CALLERROR code and every crossing is seen on the wire."""

from __future__ import annotations

import asyncio
import json
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


async def test_connection_loss_fails_the_pending_call_fast(wire: Wire) -> None:
    pending = asyncio.create_task(wire.session.request(call.Heartbeat()))
    await wire.next_frame()
    await wire.csms.close()
    with pytest.raises(ConnectionLost):
        await asyncio.wait_for(pending, WAIT)
    with pytest.raises(ConnectionLost):
        await wire.session.request(call.Heartbeat())
