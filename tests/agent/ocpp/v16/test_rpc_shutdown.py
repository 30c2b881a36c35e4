"""OcppSession: a connection that closes while our CALL is being sent leaves no "Future exception was never
retrieved" behind (seen as an asyncio ERROR at every stop of `cpagent run` with a CALL in flight). A unit test
of the one class over a connection stand-in whose send and recv end together."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from ocpp.v16 import call
from websockets.exceptions import ConnectionClosedError

from agent.ocpp.v16.rpc import ConnectionLost, OcppSession


class ClosingConnection:
    """recv and send both wait until close(), then fail as a dropped websocket does."""

    def __init__(self) -> None:
        self.sending = asyncio.Event()
        self._gone = asyncio.Event()

    def close(self) -> None:
        self._gone.set()

    async def recv(self) -> str:
        await self._gone.wait()
        raise ConnectionClosedError(None, None)

    async def send(self, text: str) -> None:
        self.sending.set()
        await self._gone.wait()
        raise ConnectionClosedError(None, None)


async def test_connection_lost_during_the_send_leaves_no_unretrieved_future() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        connection = ClosingConnection()
        session = OcppSession(connection, "CP1", {})
        serving = asyncio.create_task(session.serve())
        await asyncio.sleep(0)  # serve() waits in recv() first: it sees the close first, as the link does
        requesting = asyncio.create_task(session.request(call.Heartbeat()))
        await asyncio.wait_for(connection.sending.wait(), 5)
        connection.close()
        with pytest.raises(ConnectionLost):
            await requesting
        await serving
        del requesting, serving, session
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert [c.get("message") for c in reported] == []
