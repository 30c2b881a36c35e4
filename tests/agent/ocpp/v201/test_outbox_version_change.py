"""The outbox across an OCPP version change (issue 13): entries queued under one version are delivered in
the other's form, in their place in the queue, never dropped silently (agent/ocpp/outbox_convert.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from ocpp.messages import Call
from ocpp.messages import _validate_payload as validate_payload

from agent import db
from agent.ocpp import outbox_convert as convert
from agent.outbox import METER_VALUES, START, STOP, TRANSACTION_EVENT, Outbox
from hal.clock import SystemClock
from simulator.csms import Csms
from simulator.rig import RigOptions
from tests.agent.ocpp.conftest import Octt as Octt16
from tests.agent.ocpp.inprocess import harness_on
from tests.agent.ocpp.v201.conftest import TAG, Agent201, Octt201, eventually

STAMP = "2026-01-01T10:00:00.000Z"
START_16 = {"connectorId": 1, "idTag": TAG, "meterStart": 1000, "timestamp": STAMP}
METER_16 = {"connectorId": 1, "meterValue": [{"timestamp": STAMP, "sampledValue": [
    {"value": "1500", "context": "Sample.Periodic", "format": "Raw", "measurand": "Energy.Active.Import.Register",
     "location": "Outlet", "unit": "Wh"}]}]}
STOP_16 = {"meterStop": 2000, "timestamp": STAMP, "reason": "Local", "idTag": TAG}


def energy(value: float, context: str) -> dict[str, Any]:
    return {"timestamp": STAMP, "sampledValue": [{"value": value, "context": context,
                                                  "measurand": "Energy.Active.Import.Register",
                                                  "unitOfMeasure": {"unit": "Wh"}}]}


def tx_event(kind: str, trigger: str, seq: int, **extra: Any) -> dict[str, Any]:
    return {"eventType": kind, "timestamp": STAMP, "triggerReason": trigger, "seqNo": seq,
            "transactionInfo": {"transactionId": "tx-201"}, "evse": {"id": 1, "connectorId": 1}, **extra}


STARTED = tx_event("Started", "CablePluggedIn", 0, meterValue=[energy(1000, "Transaction.Begin")])
AUTHORIZED = tx_event("Updated", "Authorized", 1, idToken={"idToken": TAG, "type": "ISO14443"})
PERIODIC = tx_event("Updated", "MeterValuePeriodic", 2, meterValue=[energy(1500, "Sample.Periodic")])
ENDED = {**tx_event("Ended", "StopAuthorized", 3, meterValue=[energy(2000, "Transaction.End")]),
         "transactionInfo": {"transactionId": "tx-201", "stoppedReason": "Local"}}


def test_1_6_entries_in_2_0_1_form_are_schema_valid() -> None:
    forms = [convert.to_201(action, payload, "ref-1", None) for action, payload in
             ((START, START_16), (METER_VALUES, METER_16), (STOP, STOP_16))]
    for n, form in enumerate(forms):
        assert form is not None and form[0] == TRANSACTION_EVENT
        validate_payload(Call("1", form[0], {**form[1], "seqNo": n}), "2.0.1")
    started, updated, ended = (f[1] for f in forms if f is not None)
    assert started["idToken"]["idToken"] == TAG and started["transactionInfo"]["transactionId"] == "ref-1"
    assert updated["meterValue"][0]["sampledValue"][0]["value"] == 1500.0
    assert ended["transactionInfo"]["stoppedReason"] == "Local" and ended["triggerReason"] == "StopAuthorized"
    bound = convert.to_201(STOP, STOP_16, "ref-1", 17)  # the 1.6 CSMS knew it as 17: the id goes along
    assert bound is not None and bound[1]["transactionInfo"]["transactionId"] == "17"
    loose = convert.to_201(METER_VALUES, METER_16, None, None)
    assert loose is not None and loose[0] == METER_VALUES and loose[1]["evseId"] == 1
    validate_payload(Call("1", METER_VALUES, loose[1]), "2.0.1")


def test_2_0_1_entries_in_1_6_form_are_schema_valid() -> None:
    later = [AUTHORIZED, PERIODIC, ENDED]
    start = convert.to_16(TRANSACTION_EVENT, STARTED, later)
    assert start == (START, {"connectorId": 1, "idTag": TAG, "meterStart": 1000, "timestamp": STAMP})
    assert convert.to_16(TRANSACTION_EVENT, AUTHORIZED) is None  # a state change only: no 1.6 form
    meter = convert.to_16(TRANSACTION_EVENT, PERIODIC)
    stop = convert.to_16(TRANSACTION_EVENT, ENDED)
    assert meter is not None and stop is not None
    assert stop[1]["meterStop"] == 2000 and stop[1]["reason"] == "Local"
    for action, payload in (start, (meter[0], {**meter[1], "transactionId": 1}), (stop[0], {**stop[1],
                                                                                         "transactionId": 1})):
        validate_payload(Call("1", action, payload), "1.6")


def queue(state_dir: Path, entries: list[tuple[str, dict[str, Any], str | None]]) -> None:
    """What the other version's side left in the outbox when the agent stopped."""
    state_dir.mkdir(parents=True, exist_ok=True)
    conn = db.connect(state_dir / "state.db")
    box = Outbox(conn, SystemClock())
    for action, payload, tx_ref in entries:
        box.append(action, payload, tx_ref=tx_ref)
    conn.close()


async def test_queued_under_1_6_delivered_under_2_0_1(octt: Octt201) -> None:
    state_dir = Agent201(octt.rig, {}).config().state_dir
    queue(state_dir, [(START, START_16, "ref-16"), (METER_VALUES, METER_16, "ref-16"),
                      ("SecurityEventNotification", {"type": "StartupOfTheDevice", "timestamp": STAMP}, None),
                      (STOP, STOP_16, "ref-16")])
    await octt.start_agent()
    ended = await octt.wait_tx_event("Ended")
    events = octt.tx_events("ref-16")
    assert [(e["eventType"], e["seqNo"]) for e in events] == [("Started", 0), ("Updated", 1), ("Ended", 2)]
    assert ended["transactionInfo"]["stoppedReason"] == "Local"
    assert any(m.payload.get("timestamp") == STAMP for m in octt.msgs("SecurityEventNotification"))


@pytest.fixture
async def octt16(tmp_path: Path) -> AsyncIterator[Octt16]:
    csms = Csms(accept=[TAG], heartbeat_interval=300)
    await csms.start()
    try:
        options = RigOptions(directory=tmp_path / "rig16", csms_url=csms.url, charge_point_id="CP1")
        async with harness_on(Octt16, csms, options) as harness:
            yield harness
    finally:
        await csms.stop()


async def test_queued_under_2_0_1_delivered_under_1_6(octt16: Octt16) -> None:
    from agent.config import load

    state_dir = load(octt16.rig.dir / "agent.toml").state_dir
    queue(state_dir, [(TRANSACTION_EVENT, STARTED, "tx-201"), (TRANSACTION_EVENT, AUTHORIZED, "tx-201"),
                      (TRANSACTION_EVENT, PERIODIC, "tx-201"), (TRANSACTION_EVENT, ENDED, "tx-201")])
    await octt16.start_agent()
    stop = await octt16.wait("StopTransaction", within=10)
    start = octt16.msgs("StartTransaction")[0].payload
    assert (start["idTag"], start["meterStart"]) == (TAG, 1000)
    meter = octt16.msgs("MeterValues")[0].payload
    assert meter["transactionId"] == stop.payload["transactionId"] == 1
    assert stop.payload["reason"] == "Local" and stop.payload["meterStop"] == 2000
    agent = octt16.agent
    assert agent is not None and agent.service is not None
    dropped = agent.service.tx.outbox.dropped()
    assert any("no 1.6 form" in reason for _action, _ref, reason in dropped)  # the state-only Updated
    await eventually(lambda: agent.service is not None and agent.service.tx.outbox.depth() == 0, what="empty")
