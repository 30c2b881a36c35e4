"""OCPP 2.0.1 RPC (Part 4) on the shared session: the 2.0.1 CALLERROR codes as 2.0.1 spells them, seen on
real websockets (a raw websockets server plays the CSMS and sends hand-made frames), and the codec rules
for frames the 1.6 side ignores."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from ocpp.exceptions import FormatViolationError
from ocpp.v201 import call
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

from agent.ocpp.v16.rpc import V16, FrameError, decode_frame, to_201_error_code
from agent.ocpp.v201.rpc import DIALECT, CallErrorReceived, OcppSession, handlers_from_object


class Service:
    async def on_reset(self, type: str, **_: Any) -> dict[str, Any]:
        return {"status": "Accepted"}

    async def on_clear_cache(self, **_: Any) -> dict[str, Any]:
        raise FormatViolationError(description="deliberate")

    async def on_unlock_connector(self, **_: Any) -> dict[str, Any]:
        return {"status": "Perhaps"}  # not in the enum: our bug, must not go out as is


@pytest.fixture
async def wire() -> AsyncIterator[tuple[ServerConnection, OcppSession]]:
    accepted: asyncio.Queue[ServerConnection] = asyncio.Queue()
    done = asyncio.Event()

    async def handler(connection: ServerConnection) -> None:
        accepted.put_nowait(connection)
        await done.wait()

    async with serve(handler, "127.0.0.1", 0, subprotocols=[Subprotocol("ocpp2.0.1")]) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/CP1", subprotocols=[Subprotocol("ocpp2.0.1")]) as client:
            handlers, after = handlers_from_object(Service())
            session = OcppSession(client, "CP1", handlers, after=after, dialect=DIALECT, message_timeout=5)
            serving = asyncio.create_task(session.serve())
            csms = await asyncio.wait_for(accepted.get(), 5)
            yield csms, session
            done.set()
            serving.cancel()


async def answer(csms: ServerConnection, frame: Any) -> list[Any]:
    await csms.send(frame if isinstance(frame, str) else json.dumps(frame))
    reply: list[Any] = json.loads(await asyncio.wait_for(csms.recv(), 5))
    return reply


@pytest.mark.parametrize(("frame", "expected"), [
    ([2, "a1", "Reset", {"type": "OnIdle"}], [3, "a1", {"status": "Accepted"}]),
    ([2, "a2", "Reset", {}], [4, "a2", "OccurrenceConstraintViolation"]),
    ([2, "a3", "Reset", {"type": 7}], [4, "a3", "TypeConstraintViolation"]),
    ([2, "a4", "Reset", {"type": "Sometime"}], [4, "a4", "PropertyConstraintViolation"]),
    ([2, "a5", "FlyToTheMoon", {}], [4, "a5", "NotImplemented"]),
    ([2, "a6", "GetLog", {"logType": "DiagnosticsLog", "requestId": 1, "log": {"remoteLocation": "x"}}],
     [4, "a6", "NotSupported"]),
    ([2, "a7", "ClearCache", {}], [4, "a7", "FormatViolation"]),
    ([2, "a8", "UnlockConnector", {"evseId": 1, "connectorId": 1}], [4, "a8", "InternalError"]),
    ([7, "a9", "Whatever", {}], [4, "a9", "MessageTypeNotSupported"]),
    ('[2, "b1", "Reset", {"type": ', [4, "b1", "FormatViolation"]),
    ("this is not json", [4, "-1", "RpcFrameworkError"]),
    ('{"not": "an array"}', [4, "-1", "RpcFrameworkError"]),
])  # fmt: skip
async def test_callerror_codes_201(wire: tuple[ServerConnection, OcppSession], frame: Any,
                                   expected: list[Any]) -> None:
    csms, _ = wire
    reply = await answer(csms, frame)
    assert reply[: len(expected)] == expected
    if reply[0] == 4:
        assert len(reply) == 5 and isinstance(reply[3], str) and reply[4] == {}


async def test_outgoing_call_and_callerror_201(wire: tuple[ServerConnection, OcppSession]) -> None:
    csms, session = wire
    request = asyncio.create_task(session.request(call.Heartbeat()))
    sent = json.loads(await asyncio.wait_for(csms.recv(), 5))
    assert sent[:3] == [2, sent[1], "Heartbeat"]
    await csms.send(json.dumps([4, sent[1], "SecurityError", "no", {}]))
    with pytest.raises(CallErrorReceived) as error:
        await request
    assert error.value.code == "SecurityError"


def test_codec_rules_differ_by_version() -> None:
    """1.6 ignores an unknown message type and frames without a readable id; 2.0.1 answers them."""
    with pytest.raises(FrameError) as ignored:
        decode_frame('[5, "x", 1]', V16)
    assert ignored.value.unique_id is None
    with pytest.raises(FrameError) as answered:
        decode_frame('[5, "x", 1]', DIALECT)
    assert (answered.value.code, answered.value.unique_id) == ("MessageTypeNotSupported", "x")
    with pytest.raises(FrameError) as broken_result:
        decode_frame('[3, 17, {}]', DIALECT)  # an answer is never answered
    assert broken_result.value.unique_id is None
    assert to_201_error_code("FormationViolation") == "FormatViolation"
    assert to_201_error_code("OccurenceConstraintViolation") == "OccurrenceConstraintViolation"
    assert to_201_error_code("NoSuchCode") == "GenericError"
    assert to_201_error_code("RpcFrameworkError") == "RpcFrameworkError"
