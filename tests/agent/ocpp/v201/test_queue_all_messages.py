"""OCPPCommCtrlr.QueueAllMessages over a real websocket with a real outage (the bundled CSMS refuses
connections): with false (the default) a status change that is already over when the station is back is not
reported (only the current status, which the CSMS knows); with true every StatusNotification of the outage
arrives after the reconnect, in order, stamped with the time it happened, and nothing twice."""

from __future__ import annotations

import time
from datetime import datetime

from tests.agent.ocpp.v201.conftest import Octt201, eventually

OUTAGE_S = 2.0


def statuses(octt: Octt201) -> list[str]:
    return [m.payload["connectorStatus"] for m in octt.msgs("StatusNotification") if m.payload["evseId"] == 1]


async def plug_and_unplug_offline(octt: Octt201, queued: int) -> float:
    """An outage in which the EV is plugged in and out again; returns when (epoch s) the EV was plugged."""
    assert octt.agent is not None
    service = octt.agent.service
    await octt.csms.outage(OUTAGE_S)
    await eventually(lambda: not service.online, what="offline")
    plugged_at = time.time()
    await octt.plugged()
    await eventually(lambda: service.status_of(1) == "Occupied", what="Occupied")
    octt.ctl("unplug")
    await eventually(lambda: service.status_of(1) == "Available" and service.outbox.depth() == queued,
                     what=f"Available again, {queued} message(s) queued")
    return plugged_at


async def test_queue_all_messages_keeps_offline_status_changes_in_order(octt: Octt201) -> None:
    agent = await octt.start_agent({"OCPPCommCtrlr/OfflineThreshold": 600})
    await octt.booted()
    await eventually(lambda: agent.service.session_idle(), what="idle")  # the Available answered, not only sent
    assert statuses(octt) == ["Available"]

    await plug_and_unplug_offline(octt, queued=0)  # QueueAllMessages false: nothing kept
    await eventually(lambda: agent.service.online, within=15, what="back online")
    await eventually(lambda: agent.service.session_idle(), what="idle")
    assert statuses(octt) == ["Available"], "a status change of the outage was reported without QueueAllMessages"

    answer = await octt.send("SetVariables", {"setVariableData": [{
        "attributeValue": "true", "component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "QueueAllMessages"}}]})
    assert answer["setVariableResult"][0]["attributeStatus"] == "Accepted"
    plugged_at = await plug_and_unplug_offline(octt, queued=2)
    await octt.wait_status("Available", count=2, within=15)
    await eventually(lambda: agent.service.session_idle(), what="idle")
    sent = [m.payload for m in octt.msgs("StatusNotification") if m.payload["evseId"] == 1]
    assert [p["connectorStatus"] for p in sent] == ["Available", "Occupied", "Available"]
    reconnected = octt.msgs("StatusNotification")[1].at
    stamps = [datetime.fromisoformat(p["timestamp"].replace("Z", "+00:00")).timestamp() for p in sent[1:]]
    assert plugged_at - 1 <= stamps[0] <= stamps[1] < reconnected, "not stamped with the time of the change"
    assert agent.service.outbox.depth() == 0
