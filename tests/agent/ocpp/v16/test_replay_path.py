"""The per-message replay path: outgoing frames are logged at DEBUG only, CALLs leave no tasks behind and
still fail with ConnectionLost when the link goes, and the call built from a queued payload puts exactly
that payload on the wire (checked against the schema first). Real websockets on 127.0.0.1; a raw server
plays the CSMS."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from ocpp.v16 import call
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

from agent.ocpp.v16.rpc import V201, ConnectionLost, InvalidPayload, OcppSession
from agent.outbox import outbox_payload

WAIT = 5.0
OCPP16 = [Subprotocol("ocpp1.6")]


class Csms:
    """Answers every MeterValues CALL with an empty CALLRESULT, unless told to stay silent."""

    def __init__(self) -> None:
        self.frames: list[list[Any]] = []
        self.silent = False
        self.connection: ServerConnection | None = None
        self.received = asyncio.Event()

    async def handler(self, connection: ServerConnection) -> None:
        self.connection = connection
        async for raw in connection:
            frame = json.loads(raw)
            self.frames.append(frame)
            self.received.set()
            if not self.silent:
                await connection.send(json.dumps([3, frame[1], {}]))


@pytest.fixture
async def link() -> AsyncIterator[tuple[Csms, OcppSession]]:
    csms = Csms()
    async with serve(csms.handler, "127.0.0.1", 0, subprotocols=OCPP16) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/CP1", subprotocols=OCPP16) as client:
            session = OcppSession(client, "CP1", {}, message_timeout=WAIT)
            serving = asyncio.create_task(session.serve())
            yield csms, session
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)


def meter_values(n: int) -> Any:
    return call.MeterValues(connector_id=1, transaction_id=7, meter_value=[
        {"timestamp": "2026-01-01T00:00:00Z", "sampledValue": [{"value": str(n)}]}])


async def test_outgoing_frames_are_logged_at_debug_not_info(
    link: tuple[Csms, OcppSession], caplog: pytest.LogCaptureFixture
) -> None:
    csms, session = link
    caplog.set_level(logging.INFO)
    await session.request(meter_values(1))
    assert not [r for r in caplog.records if "MeterValues" in r.getMessage()]  # nothing formatted at INFO
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    await session.request(meter_values(2))
    sent = [r for r in caplog.records if r.levelno == logging.DEBUG and "> [2," in r.getMessage()]
    assert len(sent) == 1 and '"MeterValues"' in sent[0].getMessage()
    assert len(csms.frames) == 2


async def test_many_calls_leave_no_tasks_behind(link: tuple[Csms, OcppSession]) -> None:
    csms, session = link
    await session.request(meter_values(0))
    before = len(asyncio.all_tasks())
    for n in range(50):
        await session.request(meter_values(n))
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == before
    assert [f[3]["meterValue"][0]["sampledValue"][0]["value"] for f in csms.frames[1:]] == [str(n) for n in range(50)]


async def test_link_going_away_fails_the_pending_call_and_later_ones(link: tuple[Csms, OcppSession]) -> None:
    csms, session = link
    await session.request(meter_values(0))  # the closed-waiter exists from here on
    csms.silent = True
    csms.received.clear()
    pending = asyncio.create_task(session.request(meter_values(1)))
    async with asyncio.timeout(WAIT):
        await csms.received.wait()
    assert len(csms.frames) == 2
    assert csms.connection is not None
    await csms.connection.close()
    with pytest.raises(ConnectionLost):
        async with asyncio.timeout(WAIT):
            await pending
    with pytest.raises(ConnectionLost):
        await session.request(meter_values(2))


PAYLOADS: list[tuple[str, dict[str, Any]]] = [
    ("StartTransaction", {"connectorId": 1, "idTag": "ABC", "meterStart": 10, "timestamp": "2026-01-01T00:00:00Z",
                          "reservationId": 4}),
    ("MeterValues", {"connectorId": 2, "transactionId": 9, "meterValue": [{
        "timestamp": "2026-01-01T00:00:00Z",
        "sampledValue": [{"value": "1.5", "context": "Sample.Periodic", "measurand": "Current.Offered",
                          "phase": "L1", "location": "Outlet", "unit": "A", "format": "Raw"}]}]}),
    ("StopTransaction", {"meterStop": 20, "timestamp": "2026-01-01T01:00:00Z", "transactionId": 9,
                         "reason": "Local", "idTag": "ABC", "transactionData": [{
                             "timestamp": "2026-01-01T01:00:00Z",
                             "sampledValue": [{"value": "OCMF|{}|{}", "context": "Transaction.End",
                                               "format": "SignedData", "measurand": "Energy.Active.Import.Register",
                                               "location": "Outlet", "unit": "Wh"}]}]}),
    ("SecurityEventNotification", {"type": "SettingSystemTime", "timestamp": "2026-01-01T00:00:00Z",
                                   "techInfo": "moved by +90 s"}),
]


@pytest.mark.parametrize(("action", "payload"), PAYLOADS, ids=[a for a, _ in PAYLOADS])
async def test_call_from_a_queued_payload_puts_that_payload_on_the_wire(
    link: tuple[Csms, OcppSession], action: str, payload: dict[str, Any]
) -> None:
    csms, session = link
    if action == "StartTransaction":  # the CSMS's {} lacks transactionId: the answer fails its schema, after the send
        with pytest.raises(InvalidPayload, match="StartTransaction"):
            await session.request_payload(action, outbox_payload(payload))
    else:
        await session.request_payload(action, outbox_payload(payload))
    assert csms.frames[-1][2:] == [action, payload]


def test_absent_fields_of_a_queued_payload_are_left_out_as_the_library_leaves_them_out() -> None:
    queued = {"connectorId": 1, "reservationId": None, "meterValue": [{"timestamp": "t", "sampledValue": [
        {"value": "1", "unit": None}]}]}
    assert outbox_payload(queued) == {"connectorId": 1, "meterValue": [{"timestamp": "t", "sampledValue": [
        {"value": "1"}]}]}
    assert queued["reservationId"] is None  # the queued payload itself is not changed


async def test_a_request_breaking_the_schema_is_refused_before_it_is_sent(link: tuple[Csms, OcppSession]) -> None:
    csms, session = link
    with pytest.raises(InvalidPayload, match="schema"):
        await session.request_payload("MeterValues", {"connectorId": 1, "meterValue": [], "junk": 1})
    assert csms.frames == []
    await session.request(meter_values(1))  # the session goes on
    assert len(csms.frames) == 1


async def test_a_queued_transaction_event_goes_out_exactly_as_queued() -> None:
    """2.0.1: nothing added on the way (the schema's defaults, e.g. offline false, multiplier 0, are not ours
    to send), and the queued payload itself is not changed by the checks."""
    csms = Csms()
    ocpp201 = [Subprotocol("ocpp2.0.1")]
    queued = {"eventType": "Updated", "timestamp": "2026-01-01T00:00:00Z", "triggerReason": "MeterValuePeriodic",
              "seqNo": 3, "transactionInfo": {"transactionId": "tx-1"}, "evse": {"id": 1, "connectorId": 1},
              "meterValue": [{"timestamp": "2026-01-01T00:00:00Z", "sampledValue": [
                  {"value": 5.0, "measurand": "Energy.Active.Import.Register", "unitOfMeasure": {"unit": "Wh"}}]}]}
    before = json.dumps(queued, sort_keys=True)
    async with serve(csms.handler, "127.0.0.1", 0, subprotocols=ocpp201) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/CP1", subprotocols=ocpp201) as client:
            session = OcppSession(client, "CP1", {}, message_timeout=WAIT, dialect=V201)
            serving = asyncio.create_task(session.serve())
            for _ in range(5):  # also once a compiled check is in use for it
                await session.request_payload("TransactionEvent", outbox_payload(queued))
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
    assert [frame[3] for frame in csms.frames] == [queued] * 5
    assert json.dumps(queued, sort_keys=True) == before
