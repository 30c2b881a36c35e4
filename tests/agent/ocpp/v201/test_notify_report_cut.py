"""A multi-part NotifyReport (GetBaseReport, B07) cut by the connection in its middle, over a real websocket
against the bundled CSMS: the report takes the shared cut-report path (agent/ocpp/v201/reports.py). With
OCPPCommCtrlr.QueueAllMessages false the rest is dropped with one warning (the CSMS asks again) and nothing
of it comes after the reconnect; with true the rest, the message in flight included, is sent after the
reconnect from the durable outbox, in order, the last one with tbc false."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tests.agent.ocpp.v201.conftest import CP, Octt201, eventually

LOGGER = "cpagent.ocpp.v201.reports"


def parts_of(octt: Octt201, request_id: int) -> list[dict[str, Any]]:
    return [m.payload for m in octt.msgs("NotifyReport") if m.payload["requestId"] == request_id]


def cut_at_second_part(octt: Octt201) -> None:
    """The CSMS never answers the second part (seqNo 1) of a NotifyReport and drops the connection."""

    def hostile(cp: str, action: str, unique_id: str, payload: dict[str, Any]) -> str | None:
        if action != "NotifyReport" or payload.get("seqNo") != 1:
            return None
        octt.csms.hostile_reply = None  # once
        drop = asyncio.ensure_future(octt.csms.drop(cp))
        drop.add_done_callback(lambda _: None)
        return ""

    octt.csms.hostile_reply = hostile


async def test_notify_report_cut_in_the_middle_dropped_or_queued(
        octt: Octt201, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    agent = await octt.start_agent({"DeviceDataCtrlr/ItemsPerMessage.GetReport": 10,
                                    "OCPPCommCtrlr/RetryBackOffWaitMinimum": 0})
    await octt.booted()
    service = agent.service

    # QueueAllMessages false (the default): the rest is dropped, one warning names it.
    cut_at_second_part(octt)
    answer = await octt.send("GetBaseReport", {"requestId": 21, "reportBase": "FullInventory"})
    assert answer["status"] == "Accepted"
    warned = await eventually(lambda: [r.getMessage() for r in caplog.records if r.name == LOGGER], what="warning")
    assert len(warned) == 1 and warned[0].startswith("NotifyReport 21: messages 2-")
    assert warned[0].endswith("report dropped (the CSMS asks again)")
    total = int(warned[0].split(" of ")[1].split(" ")[0])
    assert total >= 3  # a report of several parts, cut in its middle
    assert service.outbox.depth() == 0
    await octt.csms.wait_connected(CP, within=8)
    await eventually(lambda: service.online, within=8, what="back online")

    answer = await octt.send("SetVariables", {"setVariableData": [{
        "attributeValue": "true", "component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "QueueAllMessages"}}]})
    assert answer["setVariableResult"][0]["attributeStatus"] == "Accepted"
    assert [p["seqNo"] for p in parts_of(octt, 21)] == [0, 1]  # nothing of the dropped report came after

    # QueueAllMessages true: the rest goes after the reconnect, the message in flight (seqNo 1) again.
    cut_at_second_part(octt)
    answer = await octt.send("GetBaseReport", {"requestId": 22, "reportBase": "FullInventory"})
    assert answer["status"] == "Accepted"

    def complete() -> list[dict[str, Any]] | None:
        parts = parts_of(octt, 22)
        return parts if parts and parts[-1].get("tbc") is False else None

    parts = await eventually(complete, within=10, what="the queued rest of NotifyReport 22")
    assert [p["seqNo"] for p in parts] == [0, 1, *range(1, total)]
    assert [p["tbc"] for p in parts] == [True] * (len(parts) - 1) + [False]
    assert parts[1] == parts[2]  # the one in flight, sent again as it was
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER][1:] == [
        f"NotifyReport 22: messages 2-{total} of {total} not sent (connection lost); "
        "queued until the reconnect (OCPPCommCtrlr.QueueAllMessages)"]
    await eventually(lambda: service.outbox.depth() == 0, what="outbox drained")
