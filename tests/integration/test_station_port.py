"""The station interface (agent/station_api.StationPort) against the bus-level simulator: commands given by
connector id act on the real hardware path, and the views it returns are frozen snapshots."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from agent.events import ConnectorStatus, StopReason
from agent.station_api import ConnectorReservation, ConnectorSettings, EnergyHold, StationPort
from tests.integration.conftest import Bench

TAG = "DEADBEEF01"


async def test_a_session_through_the_port(bench: Bench) -> None:
    port: StationPort = bench.station
    bench.ctl(cmd="plug", connector=1)
    await bench.wait_for(lambda: port.connector_view(1).status is ConnectorStatus.PREPARING, 5, "Preparing")
    before = port.connector_view(1)
    assert port.begin_authorized(1, TAG) is True
    await bench.wait_for(lambda: port.connector_view(1).relay_feedback_closed is True, 8, "relay closed")
    view = port.connector_view(1)
    assert view.session is not None and view.session.id_tag == TAG
    assert view.status is ConnectorStatus.CHARGING and view.offered_current_a > 0
    # A view is a snapshot: what was taken before the start still says so, and it cannot be changed.
    assert before.session is None and before.status is ConnectorStatus.PREPARING
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.available = False  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(view)) == view  # plain data: it can cross a process boundary

    # An energy hold stops the offer inside the call; the relay opens once the EV has stopped drawing.
    port.hold_energy(1, EnergyHold.INVALID_ID)
    held = port.connector_view(1)
    assert EnergyHold.INVALID_ID in held.energy_holds and held.offered_current_a == 0
    assert held.status is ConnectorStatus.SUSPENDED_EVSE and held.session is not None
    await bench.wait_for(lambda: port.connector_view(1).relay_commanded_closed is False, 8, "relay opened")
    port.release_energy(1, EnergyHold.INVALID_ID)
    assert EnergyHold.INVALID_ID not in port.connector_view(1).energy_holds

    stopped = port.stop_session(1, StopReason.REMOTE)
    assert stopped is not None and stopped.stop_reason == "Remote" and stopped.ref == view.session.ref
    after = port.connector_view(1)
    assert after.session is None and after.status is ConnectorStatus.FINISHING
    assert port.stop_session(1, StopReason.REMOTE) is None  # nothing left to stop
    await bench.wait_for(lambda: bench.rig.connectors[1].plant.relay_closed is False, 5, "plant relay open")
    assert port.shared.sessions.get(stopped.ref) is not None


async def test_availability_reservation_and_settings_through_the_port(bench: Bench) -> None:
    port: StationPort = bench.station
    assert port.connector_ids() == (1,)
    facts = port.facts()
    assert facts.connector_ids == (1,) and facts.charge_point_id == bench.station.config.station.charge_point_id
    assert {t.name for t in facts.tasks} >= {f"device:{n}" for n in bench.station.devices}

    port.set_available(1, False)
    assert port.connector_view(1).status is ConnectorStatus.UNAVAILABLE
    assert EnergyHold.UNAVAILABLE in port.connector_view(1).energy_holds
    port.set_available(1, True)
    assert port.connector_view(1).status is ConnectorStatus.AVAILABLE

    hold = ConnectorReservation(42, "OTHERTAG")
    port.set_reservation(1, hold)
    view = port.connector_view(1)
    assert view.status is ConnectorStatus.RESERVED and view.reservation == hold
    assert not view.admits(TAG) and view.admits("othertag")
    assert port.begin_authorized(1, TAG) is False  # held for someone else
    port.set_reservation(1, None)
    assert port.connector_view(1).status is ConnectorStatus.AVAILABLE

    settings = ConnectorSettings(connection_timeout_s=0.3, stop_on_ev_disconnect=False, unlock_on_ev_disconnect=False)
    port.configure_connector(1, settings)
    assert port.connector_view(1).settings == settings
    # The connection timeout is the connector's: an authorization without an EV lapses after it.
    assert port.begin_authorized(1, TAG) is True
    assert port.connector_view(1).pending_id_tag == TAG
    await bench.wait_for(lambda: port.connector_view(1).pending_id_tag is None, 3, "authorization expired")
    assert port.connector_view(1).status is ConnectorStatus.AVAILABLE

    port.set_display_extra(1, (("price", "0.30/kWh"),))
    assert port.connector_view(1).display_extra == (("price", "0.30/kWh"),)
    with pytest.raises(KeyError):
        port.connector_view(9)
