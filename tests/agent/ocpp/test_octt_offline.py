"""OCTT 1.6 offline and power-loss cases: 007 cached id, 036 connection loss during a transaction,
037_1-3 offline start, 038 offline stop, 039 offline transaction, 032_1/2 and 034 power loss.
Every replayed message must carry the real transactionId, in order, and each Stop exactly once."""

from __future__ import annotations

import asyncio

from agent.authcache import IdTagInfo
from tests.agent.ocpp.conftest import TAG, Agent, Octt, eventually


async def go_offline(octt: Octt, agent: Agent, seconds: float) -> None:
    await octt.csms.outage(seconds)
    await eventually(lambda: agent.service is not None and not agent.service.online, 5, "agent offline")


async def plug(octt: Octt, agent: Agent) -> None:
    octt.ctl("plug")
    await eventually(lambda: agent.connector.controller.cp_state is not None
                     and agent.connector.controller.cp_state.ev_connected, what="EV connected")


def tx_actions(octt: Octt) -> list[tuple[str, int | None]]:
    return [
        (m.action, m.payload.get("transactionId"))
        for m in octt.msgs()
        if m.action in ("StartTransaction", "MeterValues", "StopTransaction")
    ]


async def test_007_cached_id_with_local_pre_authorize(octt: Octt) -> None:
    agent = await octt.start_agent(LocalPreAuthorize="true")
    await octt.booted()
    assert agent.service is not None
    agent.service.cache.update(TAG, IdTagInfo("Accepted"))
    await octt.charging(TAG)
    assert octt.msgs("Authorize") == []


async def test_007_cached_id_offline(octt: Octt) -> None:
    agent = await octt.start_agent()
    await octt.booted()
    assert (await agent.tap(TAG)).accepted  # online: Authorize.conf fills the cache
    agent.connector._pending = None  # forget the pending authorization, keep the cache
    await go_offline(octt, agent, 2.0)
    await plug(octt, agent)
    assert (await agent.tap(TAG)).accepted  # offline, from the cache
    assert len(octt.msgs("Authorize")) == 1
    start = await octt.wait("StartTransaction", within=8)
    assert start.payload["idTag"] == TAG


async def test_036_connection_loss_during_transaction(octt: Octt) -> None:
    agent = await octt.start_agent(MeterValueSampleInterval="1")
    await octt.booted()
    await octt.charging()
    await go_offline(octt, agent, 2.5)
    await asyncio.sleep(1.5)
    assert agent.service is not None and agent.service.outbox.depth() >= 1  # queued meter values
    octt.ctl("unplug")
    stop = await octt.wait("StopTransaction", within=10)
    assert stop.payload["transactionId"] == 1
    actions = tx_actions(octt)
    assert actions[0] == ("StartTransaction", None)
    assert all(tid == 1 for _, tid in actions[1:])
    assert [a for a, _ in actions].count("StopTransaction") == 1
    assert actions.index(("StopTransaction", 1)) == len(actions) - 1 or all(
        a == "MeterValues" for a, _ in actions[actions.index(("StopTransaction", 1)) + 1:]
    )


async def test_037_1_offline_start_unknown_id_allowed(octt: Octt) -> None:
    agent = await octt.start_agent(AllowOfflineTxForUnknownId="true", LocalAuthorizeOffline="true")
    await octt.booted()
    await go_offline(octt, agent, 2.0)
    await plug(octt, agent)
    assert (await agent.tap(TAG)).accepted
    assert agent.connector.session is not None
    start = await octt.wait("StartTransaction", within=8)
    assert start.payload["idTag"] == TAG
    octt.ctl("unplug")
    stop = await octt.wait("StopTransaction")
    assert stop.payload["transactionId"] == 1


async def test_037_offline_start_refused_without_allow_unknown(octt: Octt) -> None:
    agent = await octt.start_agent(AllowOfflineTxForUnknownId="false")
    await octt.booted()
    await go_offline(octt, agent, 2.0)
    await plug(octt, agent)
    decision = await agent.tap("STRANGER1")
    assert not decision.accepted
    assert agent.connector.session is None


async def test_037_3_offline_start_invalid_id_deauthorized(octt: Octt) -> None:
    agent = await octt.start_agent(AllowOfflineTxForUnknownId="true", StopTransactionOnInvalidId="true")
    await octt.booted()
    await go_offline(octt, agent, 1.5)
    await plug(octt, agent)
    assert (await agent.tap("STRANGER1")).accepted
    start = await octt.wait("StartTransaction", within=8)
    assert start.payload["idTag"] == "STRANGER1"
    stop = await octt.wait("StopTransaction", within=5)
    assert stop.payload["reason"] == "DeAuthorized"
    assert stop.payload["transactionId"] == 1


async def test_037_2_offline_start_invalid_id_energy_stopped_only(octt: Octt) -> None:
    agent = await octt.start_agent(AllowOfflineTxForUnknownId="true", StopTransactionOnInvalidId="false")
    await octt.booted()
    await go_offline(octt, agent, 1.5)
    await plug(octt, agent)
    assert (await agent.tap("STRANGER1")).accepted
    await octt.wait("StartTransaction", within=8)
    await eventually(lambda: not agent.connector.controller.relay_commanded_closed, 5, "relay open")
    assert agent.connector.session is not None
    await asyncio.sleep(0.3)
    assert octt.msgs("StopTransaction") == []


async def test_037_2_max_energy_on_invalid_id_lets_the_transaction_finish_its_allowance(octt: Octt) -> None:
    agent = await octt.start_agent(
        AllowOfflineTxForUnknownId="true", StopTransactionOnInvalidId="false", MaxEnergyOnInvalidId="25"
    )
    await octt.booted()
    await go_offline(octt, agent, 1.5)
    await plug(octt, agent)
    assert (await agent.tap("STRANGER1")).accepted
    start = await octt.wait("StartTransaction", within=8)
    await eventually(lambda: agent.service is not None and agent.service.outbox.transaction_id(
        agent.connector.session.ref) is not None, 5, "StartTransaction.conf (Invalid) handled")
    meter_start = start.payload["meterStart"]
    delivered = agent.connector.last_sample.energy_import_wh - meter_start
    assert delivered < 25, f"the allowance was used up offline ({delivered:.0f} Wh): test too slow"
    assert agent.connector.controller.relay_commanded_closed  # energy goes on within the allowance
    await eventually(lambda: not agent.connector.controller.relay_commanded_closed, 20, "relay open at 25 Wh")
    assert agent.connector.last_sample.energy_import_wh - meter_start >= 25
    assert agent.connector.session is not None
    assert octt.msgs("StopTransaction") == []


async def test_038_offline_stop(octt: Octt) -> None:
    agent = await octt.start_agent()
    await octt.booted()
    await octt.charging()
    await go_offline(octt, agent, 2.0)
    assert (await agent.tap(TAG)).accepted  # the same card stops offline
    assert agent.connector.session is None
    stop = await octt.wait("StopTransaction", within=8)
    assert stop.payload["transactionId"] == 1
    assert stop.payload["reason"] == "Local"


async def test_039_offline_transaction_gets_real_id(octt: Octt) -> None:
    agent = await octt.start_agent(AllowOfflineTxForUnknownId="true", MeterValueSampleInterval="1")
    await octt.booted()
    await go_offline(octt, agent, 3.0)
    await plug(octt, agent)
    assert (await agent.tap(TAG)).accepted
    await asyncio.sleep(1.3)
    octt.ctl("unplug")
    await eventually(lambda: agent.connector.session is None, what="offline stop")
    stop = await octt.wait("StopTransaction", within=10)
    assert stop.payload["transactionId"] == 1  # the real id, never -1
    actions = tx_actions(octt)
    assert actions[0][0] == "StartTransaction" and actions[-1][0] == "StopTransaction"
    assert all(tid == 1 for _, tid in actions[1:])


async def test_032_1_power_loss_during_transaction(octt: Octt) -> None:
    await octt.start_agent()
    await octt.booted()
    await octt.charging()
    await octt.power_loss()
    octt.ctl("unplug")  # and the driver leaves
    await octt.restart_agent()
    await octt.wait("BootNotification", count=2)
    stop = await octt.wait("StopTransaction", within=10)
    assert stop.payload["reason"] == "PowerLoss"
    assert stop.payload["transactionId"] == 1
    # Delivery is at-least-once: a reboot before the .conf arrives would resend it. Once acked, never again.
    await eventually(lambda: octt.agent and octt.agent.service and octt.agent.service.outbox.depth() == 0)
    await octt.restart_agent()  # another reboot never repeats the Stop
    await octt.wait("BootNotification", count=3)
    await asyncio.sleep(3.5)
    for m in octt.msgs("StopTransaction"):
        print(m)
    assert len(octt.msgs("StopTransaction")) == 1


async def test_032_2_power_loss_before_start_was_delivered(octt: Octt) -> None:
    agent = await octt.start_agent(AllowOfflineTxForUnknownId="true")
    await octt.booted()
    await go_offline(octt, agent, 3.0)
    await plug(octt, agent)
    assert (await agent.tap(TAG)).accepted
    await octt.power_loss()  # with the Start only in the outbox
    octt.ctl("unplug")
    await octt.restart_agent()
    start = await octt.wait("StartTransaction", within=10)
    stop = await octt.wait("StopTransaction", within=10)
    assert start.payload["idTag"] == TAG
    assert stop.payload["reason"] == "PowerLoss" and stop.payload["transactionId"] == 1
    assert len(octt.msgs("StartTransaction")) == 1


async def test_034_power_loss_ev_still_connected_resumes(octt: Octt) -> None:
    agent = await octt.start_agent()
    await octt.booted()
    await octt.charging()
    await octt.power_loss()
    agent = await octt.restart_agent()  # EV stays plugged: the session resumes
    await octt.wait("BootNotification", count=2)
    await eventually(lambda: agent.connector.controller.relay_commanded_closed, 8, "charging again")
    assert octt.msgs("StopTransaction") == []
    assert (await agent.tap(TAG)).accepted
    stop = await octt.wait("StopTransaction")
    assert stop.payload["transactionId"] == 1 and stop.payload["reason"] == "Local"
    assert len(octt.msgs("StartTransaction")) == 1


def failing_start_ids(octt: Octt, failures: int) -> list[int]:
    """Make the CSMS answer the first ``failures`` StartTransactions with a CALLERROR (InternalError)."""
    calls: list[int] = []
    real = octt.csms._next_transaction_id

    def next_id() -> int:
        calls.append(1)
        if len(calls) <= failures:
            raise RuntimeError("CSMS database down")
        return real()

    octt.csms._next_transaction_id = next_id  # type: ignore[method-assign]
    return calls


async def test_transaction_message_retried_with_growing_interval(octt: Octt) -> None:
    calls = failing_start_ids(octt, 2)
    await octt.start_agent(TransactionMessageAttempts="3", TransactionMessageRetryInterval="1")
    await octt.booted()
    await octt.charging()
    await octt.wait("StartTransaction", count=3, within=6)
    starts = octt.msgs("StartTransaction")
    assert len(starts) == 3
    await eventually(lambda: len(calls) == 3, what="the third StartTransaction answered")
    assert starts[1].at - starts[0].at >= 0.9  # 1 s x 1 previous send
    assert starts[2].at - starts[1].at >= 1.9  # 1 s x 2 previous sends
    octt.ctl("unplug")
    stop = await octt.wait("StopTransaction")
    assert stop.payload["transactionId"] == 1


async def test_start_dropped_after_attempts_then_stop_carries_minus_one(octt: Octt) -> None:
    failing_start_ids(octt, 100)
    agent = await octt.start_agent(TransactionMessageAttempts="2", TransactionMessageRetryInterval="0")
    await octt.booted()
    await plug(octt, agent)
    assert (await agent.tap(TAG)).accepted
    await octt.wait("StartTransaction", count=2)
    octt.ctl("unplug")
    stop = await octt.wait("StopTransaction")
    assert stop.payload["transactionId"] == -1
    assert len(octt.msgs("StartTransaction")) == 2
    assert agent.service is not None
    assert ("StartTransaction",) == tuple(a for a, _, _ in agent.service.outbox.dropped())
