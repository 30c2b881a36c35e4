"""OCTT 2.0.1 charging-station cases that were still missing (docs/octt-201-coverage.md): transaction
message retries when the CSMS never answers (E_41/E_42), MaxEnergyOnInvalidId after an offline start
(C_15/C_18) ... Real websockets to the bundled CSMS, the simulator rig underneath (tests/agent/ocpp/v201/
conftest.py)."""

from __future__ import annotations

from typing import Any

from tests.agent.ocpp.v201.conftest import TAG, Octt201, eventually


async def test_tc_e_42_e_41_cs_transaction_event_unanswered_until_message_attempts(octt: Octt201) -> None:
    """E13.FR.xx (spec 2.0.1 Part 2 E13): a TransactionEventRequest without a response within MessageTimeout
    is sent again after MessageAttemptInterval x (previous sends), at most MessageAttempts sends in all, then
    dropped. TC_E_42: answered at the second send -> no third; TC_E_41: never answered -> exactly
    MessageAttempts sends, then none."""
    silent: dict[str, int] = {}  # eventType -> how many more sends to leave unanswered

    def never_answer(_cp: str, action: str, _uid: str, payload: dict[str, Any]) -> str | None:
        key = str(payload.get("eventType"))
        if action != "TransactionEvent" or not silent.get(key):
            return None
        silent[key] -= 1
        return ""  # no CALLRESULT, no CALLERROR

    octt.csms.hostile_reply = never_answer
    octt.rig.connectors[1].plant.ev.pwm_reaction_s = 0.2
    agent = await octt.start_agent({"OCPPCommCtrlr/MessageTimeout.Default": 1,
                                    "OCPPCommCtrlr/MessageAttempts.TransactionEvent": 3,
                                    "OCPPCommCtrlr/MessageAttemptInterval.TransactionEvent": 1})
    await octt.booted()
    await octt.plugged()
    # TC_E_42_CS: the first Started is never answered; resent 1 s (timeout) + 1 s (interval x 1) later
    silent["Started"] = 1
    assert (await agent.tap(TAG)).accepted
    first = await octt.wait("TransactionEvent")
    tx = first.payload["transactionInfo"]["transactionId"]
    second = await octt.wait("TransactionEvent", count=2, within=6)
    assert second.payload == first.payload  # the same message (same seqNo), not a new one
    assert second.at - first.at >= 1.7
    await eventually(lambda: agent.service.outbox.queued_for(tx) == 0, what="the Started acknowledged")
    await octt.wait_charging_state("Charging")
    # TC_E_41_CS: the Ended is never answered: sent MessageAttempts times (set to 2 now, at run time: the
    # test's budget), 1 s timeout + 1 x interval apart, then given up
    answer = await octt.send("SetVariables", {"setVariableData": [{
        "component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "MessageAttempts", "instance": "TransactionEvent"},
        "attributeValue": "2"}]})
    assert answer["setVariableResult"][0]["attributeStatus"] == "Accepted"
    silent["Ended"] = 99
    await agent.tap(TAG)
    sends = [await octt.wait_tx_event("Ended", count=n, within=8) for n in (1, 2)]
    assert sends[0] == sends[1]
    at = [m.at for m in octt.msgs("TransactionEvent") if m.payload["eventType"] == "Ended"]
    assert at[1] - at[0] >= 1.7
    await eventually(lambda: any(a == "TransactionEvent" for a, _, _ in agent.service.outbox.dropped()),
                     within=4, what="the Ended given up")
    assert agent.service.outbox.queued_for(tx) == 0
    assert len([p for p in octt.tx_events(tx) if p["eventType"] == "Ended"]) == 2
    # the connection stayed usable: a request after the give-up is answered
    assert (await octt.send("GetTransactionStatus", {"transactionId": tx})) == {
        "ongoingIndicator": False, "messagesInQueue": False}
