"""The OCPP 2.0.1 transaction state machine (E01-E15), pure: every TxStartPoint / TxStopPoint option, the
triggerReason / stoppedReason each cause gives, Started / Ended exactly once, EVConnectionTimeOut."""

from __future__ import annotations

import itertools
from functools import partial

import pytest
from ocpp.messages import Call
from ocpp.messages import _validate_payload as validate_payload

from agent.ocpp.v201.transactions import (
    ENDED,
    STARTED,
    UPDATED,
    ChargingState,
    IdToken,
    Reason,
    Trigger,
    TxEvent,
    TxMachine,
    TxPoint,
    TxSettings,
    TxState,
    parse_points,
)
from hal.clock import FakeClock

CARD = IdToken("CARD-1", "ISO14443")
OTHER = IdToken("CARD-2", "ISO14443")


class Rig:
    def __init__(self, start: str = "PowerPathClosed", stop: str = "EVConnected,Authorized", *,
                 ev_side: bool = True, timeout: float = 60.0) -> None:
        self.clock = FakeClock()
        self.settings = TxSettings(parse_points(start), parse_points(stop, key="TxStopPoint"), ev_side, timeout)
        ids = itertools.count(1)
        self.machine = TxMachine(1, 1, wall=self.clock.wall, monotonic=self.clock.monotonic,
                                 settings=lambda: self.settings, new_id=lambda: f"tx-{next(ids)}")
        self.events: list[TxEvent] = []

    def __call__(self, events: list[TxEvent]) -> list[TxEvent]:
        for event in events:  # every event is a valid TransactionEventRequest
            validate_payload(Call("1", "TransactionEvent", event.payload(seq_no=len(self.events))), "2.0.1")
            self.events.append(event)
        return events

    def kinds(self) -> list[tuple[str, str]]:
        return [(e.event_type, e.trigger_reason.value) for e in self.events]


def one(events: list[TxEvent]) -> TxEvent:
    assert len(events) == 1, events
    return events[0]


def test_power_path_closed_cable_first_then_card_then_stop_by_card() -> None:
    rig = Rig()
    assert rig(rig.machine.plug()) == []  # EV connected alone is no transaction at PowerPathClosed
    started = one(rig(rig.machine.authorize(CARD)))
    assert (started.event_type, started.trigger_reason) == (STARTED, Trigger.AUTHORIZED)
    assert started.id_token == CARD and started.include_evse and started.charging_state is ChargingState.EV_CONNECTED
    assert len(started.transaction_id) <= 36
    charging = one(rig(rig.machine.charging(ChargingState.CHARGING)))
    assert (charging.event_type, charging.trigger_reason, charging.charging_state) == (
        UPDATED, Trigger.CHARGING_STATE_CHANGED, ChargingState.CHARGING)
    assert charging.id_token is None and not charging.include_evse
    ended = one(rig(rig.machine.deauthorize(Trigger.STOP_AUTHORIZED)))
    assert (ended.event_type, ended.trigger_reason, ended.stopped_reason) == (ENDED, Trigger.STOP_AUTHORIZED,
                                                                              Reason.LOCAL)
    assert ended.charging_state is ChargingState.EV_CONNECTED
    assert rig(rig.machine.unplug()) == [] and rig.machine.transaction_id is None


def test_ev_connected_start_card_later_unplug_ends() -> None:
    rig = Rig("EVConnected", "EVConnected")
    started = one(rig(rig.machine.plug()))
    assert (started.trigger_reason, started.id_token, started.include_evse) == (Trigger.CABLE_PLUGGED_IN, None, True)
    auth = one(rig(rig.machine.authorize(CARD)))
    assert (auth.event_type, auth.trigger_reason, auth.id_token) == (UPDATED, Trigger.AUTHORIZED, CARD)
    rig(rig.machine.charging(ChargingState.CHARGING))
    ended = one(rig(rig.machine.unplug()))
    assert (ended.trigger_reason, ended.stopped_reason, ended.charging_state) == (
        Trigger.EV_COMMUNICATION_LOST, Reason.EV_DISCONNECTED, ChargingState.IDLE)
    assert {e.transaction_id for e in rig.events} == {"tx-1"}


def test_authorized_start_card_first_then_plug_names_the_evse() -> None:
    rig = Rig("Authorized", "EVConnected,Authorized")
    started = one(rig(rig.machine.authorize(CARD)))
    assert (started.trigger_reason, started.charging_state) == (Trigger.AUTHORIZED, ChargingState.IDLE)
    plugged = one(rig(rig.machine.plug()))
    assert (plugged.event_type, plugged.trigger_reason, plugged.include_evse, plugged.charging_state) == (
        UPDATED, Trigger.CABLE_PLUGGED_IN, True, ChargingState.EV_CONNECTED)


def test_ev_connection_timeout_ends_an_authorized_transaction() -> None:
    rig = Rig("Authorized", "Authorized", timeout=30)
    rig(rig.machine.authorize(CARD))
    rig.clock.advance(29)
    assert rig.machine.check_timeout() == []
    rig.clock.advance(1.5)
    ended = one(rig(rig.machine.check_timeout()))
    assert (ended.event_type, ended.trigger_reason, ended.stopped_reason) == (ENDED, Trigger.EV_CONNECT_TIMEOUT,
                                                                              Reason.TIMEOUT)
    assert not rig.machine.authorized and rig.machine.timeout_due() is None


def test_timeout_without_transaction_only_drops_the_authorization() -> None:
    rig = Rig()
    rig(rig.machine.authorize(CARD))  # PowerPathClosed: nothing yet
    rig.clock.advance(61)
    assert rig(rig.machine.check_timeout()) == [] and not rig.machine.authorized
    assert rig(rig.machine.plug()) == []  # the lapsed authorization does not start one at plug-in


def test_plug_in_time_cancels_the_timeout() -> None:
    rig = Rig()
    rig(rig.machine.authorize(CARD))
    rig.clock.advance(10)
    assert one(rig(rig.machine.plug())).event_type == STARTED
    rig.clock.advance(100)
    assert rig.machine.check_timeout() == []


def test_energy_transfer_start_and_stop_by_the_ev() -> None:
    rig = Rig("EnergyTransfer", "EnergyTransfer")
    assert rig(rig.machine.plug()) == [] and rig(rig.machine.authorize(CARD)) == []
    started = one(rig(rig.machine.charging(ChargingState.CHARGING)))
    assert (started.trigger_reason, started.charging_state, started.id_token) == (
        Trigger.CHARGING_STATE_CHANGED, ChargingState.CHARGING, CARD)
    ended = one(rig(rig.machine.charging(ChargingState.SUSPENDED_EV)))
    assert (ended.event_type, ended.stopped_reason, ended.charging_state) == (ENDED, Reason.STOPPED_BY_EV,
                                                                             ChargingState.SUSPENDED_EV)
    assert rig(rig.machine.charging(ChargingState.CHARGING)) != []  # a new energy transfer: a new transaction
    assert rig.events[-1].transaction_id == "tx-2"


def test_energy_transfer_stop_point_ends_on_stop_authorized() -> None:
    rig = Rig("PowerPathClosed", "EnergyTransfer")
    rig(rig.machine.plug())
    rig(rig.machine.authorize(CARD))
    rig(rig.machine.charging(ChargingState.CHARGING))
    ended = one(rig(rig.machine.deauthorize()))
    assert (ended.event_type, ended.trigger_reason, ended.stopped_reason) == (ENDED, Trigger.STOP_AUTHORIZED,
                                                                              Reason.LOCAL)


def test_parking_bay_occupancy_start_and_stop() -> None:
    rig = Rig("ParkingBayOccupancy", "ParkingBayOccupancy", ev_side=False)
    started = one(rig(rig.machine.parking_bay(True)))
    assert (started.trigger_reason, started.include_evse) == (Trigger.EV_DETECTED, True)
    assert one(rig(rig.machine.plug())).trigger_reason is Trigger.CABLE_PLUGGED_IN
    rig(rig.machine.authorize(CARD))
    rig(rig.machine.deauthorize())  # stop by card: energy stops, the transaction goes on (bay still occupied)
    assert rig.events[-1].event_type == UPDATED
    rig(rig.machine.unplug())
    assert rig.events[-1].event_type == UPDATED
    ended = one(rig(rig.machine.parking_bay(False)))
    assert (ended.trigger_reason, ended.stopped_reason) == (Trigger.EV_DEPARTED, Reason.LOCAL)


def test_data_signed_start_and_stop() -> None:
    rig = Rig("DataSigned", "DataSigned")
    rig(rig.machine.plug())
    rig(rig.machine.authorize(CARD))
    started = one(rig(rig.machine.signed_data("start")))
    assert (started.event_type, started.trigger_reason) == (STARTED, Trigger.SIGNED_DATA_RECEIVED)
    assert rig(rig.machine.signed_data("start")) == []
    ended = one(rig(rig.machine.signed_data("stop")))
    assert (ended.event_type, ended.trigger_reason) == (ENDED, Trigger.SIGNED_DATA_RECEIVED)


def test_stop_point_ev_connected_keeps_the_transaction_after_a_card_stop_reason_stays_local() -> None:
    rig = Rig("PowerPathClosed", "EVConnected")
    rig(rig.machine.plug())
    rig(rig.machine.authorize(CARD))
    rig(rig.machine.charging(ChargingState.CHARGING))
    stop = one(rig(rig.machine.deauthorize(Trigger.STOP_AUTHORIZED, by=CARD)))
    assert (stop.event_type, stop.trigger_reason, stop.id_token, stop.charging_state) == (
        UPDATED, Trigger.STOP_AUTHORIZED, CARD, ChargingState.EV_CONNECTED)
    ended = one(rig(rig.machine.unplug()))
    assert (ended.trigger_reason, ended.stopped_reason) == (Trigger.EV_COMMUNICATION_LOST, Reason.LOCAL)


def test_ev_side_disconnect_false_keeps_an_authorized_transaction() -> None:
    rig = Rig("PowerPathClosed", "Authorized", ev_side=False)
    rig(rig.machine.plug())
    rig(rig.machine.authorize(CARD))
    rig(rig.machine.charging(ChargingState.CHARGING))
    lost = one(rig(rig.machine.unplug()))
    assert (lost.event_type, lost.trigger_reason, lost.charging_state) == (
        UPDATED, Trigger.EV_COMMUNICATION_LOST, ChargingState.IDLE)
    back = one(rig(rig.machine.plug()))
    assert (back.event_type, back.trigger_reason, back.include_evse) == (UPDATED, Trigger.CABLE_PLUGGED_IN, True)


def test_ev_side_disconnect_true_ends_whatever_the_stop_points() -> None:
    rig = Rig("PowerPathClosed", "Authorized", ev_side=True)
    rig(rig.machine.plug())
    rig(rig.machine.authorize(CARD))
    ended = one(rig(rig.machine.unplug()))
    assert (ended.event_type, ended.stopped_reason) == (ENDED, Reason.EV_DISCONNECTED)
    assert not rig.machine.authorized


def test_power_path_closed_stop_point_ends_on_ev_disconnect_even_if_ev_side_false() -> None:
    rig = Rig("PowerPathClosed", "PowerPathClosed", ev_side=False)  # TC_E_37_CS
    rig(rig.machine.plug())
    rig(rig.machine.authorize(CARD))
    rig(rig.machine.charging(ChargingState.SUSPENDED_EV))
    ended = one(rig(rig.machine.unplug()))
    assert (ended.event_type, ended.trigger_reason, ended.stopped_reason, ended.charging_state) == (
        ENDED, Trigger.EV_COMMUNICATION_LOST, Reason.EV_DISCONNECTED, ChargingState.IDLE)


def test_remote_start_and_remote_stop() -> None:
    rig = Rig()
    rig(rig.machine.plug())
    started = one(rig(rig.machine.authorize(CARD, remote_start_id=42)))
    assert (started.trigger_reason, started.remote_start_id) == (Trigger.REMOTE_START, 42)
    assert started.payload()["transactionInfo"]["remoteStartId"] == 42
    assert rig(rig.machine.charging(ChargingState.CHARGING))[0].remote_start_id is None
    ended = one(rig(rig.machine.deauthorize(Trigger.REMOTE_STOP)))
    assert (ended.trigger_reason, ended.stopped_reason) == (Trigger.REMOTE_STOP, Reason.REMOTE)


def test_remote_stop_of_an_unauthorized_transaction_ends_it() -> None:
    rig = Rig("EVConnected", "EVConnected")
    rig(rig.machine.plug())
    ended = one(rig(rig.machine.deauthorize(Trigger.REMOTE_STOP)))
    assert (ended.event_type, ended.stopped_reason) == (ENDED, Reason.REMOTE)


def test_invalid_id_deauthorizes() -> None:
    rig = Rig()
    rig(rig.machine.plug())
    rig(rig.machine.authorize(CARD))
    ended = one(rig(rig.machine.deauthorize(Trigger.DEAUTHORIZED)))
    assert (ended.trigger_reason, ended.stopped_reason) == (Trigger.DEAUTHORIZED, Reason.DEAUTHORIZED)


@pytest.mark.parametrize(("call", "trigger", "reason"), [
    (lambda m: m.abnormal(Reason.GROUND_FAULT), Trigger.ABNORMAL_CONDITION, Reason.GROUND_FAULT),
    (lambda m: m.reset(), Trigger.RESET_COMMAND, Reason.IMMEDIATE_RESET),
    (lambda m: m.reset(Reason.REBOOT), Trigger.RESET_COMMAND, Reason.REBOOT),
])
def test_faults_and_resets_end_the_transaction(call, trigger, reason) -> None:  # type: ignore[no-untyped-def]
    rig = Rig()
    rig(rig.machine.plug())
    rig(rig.machine.authorize(CARD))
    ended = one(rig(call(rig.machine)))
    assert (ended.event_type, ended.trigger_reason, ended.stopped_reason) == (ENDED, trigger, reason)
    assert rig(call(rig.machine)) == []


def test_started_and_ended_exactly_once_whatever_the_repeats() -> None:
    for start in TxPoint:
        for stop in TxPoint:
            rig = Rig(start.value, stop.value)
            m = rig.machine
            for step in (partial(m.parking_bay, True), m.plug, partial(m.authorize, CARD),
                         partial(m.signed_data, "start"), partial(m.charging, ChargingState.CHARGING),
                         partial(m.update, Trigger.METER_VALUE_PERIODIC),
                         partial(m.charging, ChargingState.SUSPENDED_EV), partial(m.signed_data, "stop"),
                         m.deauthorize, m.unplug, partial(m.parking_bay, False)):
                rig(step())
                rig(step())  # every input twice: a repeat never gives another Started / Ended
            kinds = [e.event_type for e in rig.events]
            assert kinds.count(STARTED) == 1 and kinds.count(ENDED) == 1, (start, stop, rig.kinds())
            assert kinds[0] == STARTED and kinds[-1] == ENDED, (start, stop, rig.kinds())
            assert rig.machine.transaction_id is None


def test_state_survives_a_restart_as_json() -> None:
    rig = Rig()
    rig(rig.machine.plug())
    rig(rig.machine.authorize(CARD, group_id=OTHER))
    saved = rig.machine.state.to_json()
    again = TxMachine(1, 1, wall=rig.clock.wall, monotonic=rig.clock.monotonic, settings=lambda: rig.settings,
                      state=TxState.from_json(saved))
    assert again.transaction_id == "tx-1" and again.state.id_token == CARD and again.state.group_id == OTHER
    assert again.plug() == []  # still connected: no second CablePluggedIn, no second Started
    assert one(again.deauthorize()).event_type == ENDED


def test_parse_points_names_the_key_and_member() -> None:
    assert parse_points("EVConnected, Authorized") == {TxPoint.EV_CONNECTED, TxPoint.AUTHORIZED}
    with pytest.raises(ValueError, match="TxStopPoint: 'Plugged'"):
        parse_points("Plugged", key="TxStopPoint")


def test_payload_offline_flag_and_meter_values() -> None:
    rig = Rig()
    rig(rig.machine.plug())
    event = one(rig.machine.authorize(CARD))
    mv = {"timestamp": "2026-01-01T00:00:00.000Z", "sampledValue": [{"value": 1.0}]}
    payload = event.payload(offline=True, meter_value=[mv], seq_no=3)
    assert payload["offline"] is True and payload["seqNo"] == 3 and payload["meterValue"] == [mv]
    assert payload["evse"] == {"id": 1, "connectorId": 1} and payload["idToken"] == CARD.to_ocpp()
    assert "offline" not in event.payload()
    validate_payload(Call("1", "TransactionEvent", payload), "2.0.1")


def test_random_histories_keep_the_transaction_invariants() -> None:
    """300 random histories of 40 inputs over random start/stop points (with restarts through JSON): every
    transaction is Started once, first, Ended at most once, last; nothing of a transaction after its Ended;
    an Updated only inside a running transaction; every event a valid TransactionEventRequest."""
    import random

    rnd = random.Random(2013)
    points = [p.value for p in TxPoint]
    for _ in range(300):
        rig = Rig(",".join(rnd.sample(points, rnd.randint(1, 3))), ",".join(rnd.sample(points, rnd.randint(1, 3))),
                  ev_side=rnd.random() < 0.5, timeout=5)
        for _step in range(40):
            m = rig.machine
            choice = rnd.randrange(13)
            if choice == 12:  # a restart: the persisted state is all that survives
                rig.machine = TxMachine(1, 1, wall=rig.clock.wall, monotonic=rig.clock.monotonic,
                                        settings=lambda r=rig: r.settings, state=TxState.from_json(m.state.to_json()),
                                        new_id=m._new_id)
                continue
            steps = [m.plug, m.unplug, partial(m.authorize, rnd.choice([CARD, OTHER])), m.deauthorize,
                     partial(m.deauthorize, Trigger.REMOTE_STOP), partial(m.charging, rnd.choice(list(ChargingState))),
                     partial(m.parking_bay, rnd.random() < 0.5), partial(m.signed_data, rnd.choice(["start", "stop"])),
                     partial(m.update, Trigger.METER_VALUE_PERIODIC), partial(m.abnormal, Reason.GROUND_FAULT),
                     m.check_timeout, m.reset]
            rig(steps[choice]())
            rig.clock.advance(rnd.choice([0.1, 1.0, 6.0]))
        ended: set[str] = set()
        running: str | None = None
        for event in rig.events:
            tx = event.transaction_id
            assert tx not in ended, rig.kinds()
            if event.event_type == STARTED:
                assert running is None, rig.kinds()
                running = tx
            else:
                assert running == tx, rig.kinds()
            if event.event_type == ENDED:
                ended.add(tx)
                running = None
        assert running == rig.machine.transaction_id
