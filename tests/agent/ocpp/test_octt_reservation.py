"""OCTT 1.6 reservation: 046-053 (ReserveNow / CancelReservation, expiry, idTag and parentIdTag, connector 0,
answers by connector state, reservationId in StartTransaction, persistence across a restart)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent.connector import ConnectorReservation
from tests.agent.ocpp.conftest import CP, TAG, TAG2, Octt, eventually


def expiry(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def reserve(octt: Octt, connector_id: int = 1, id_tag: str = TAG, reservation_id: int = 1,
                  within_s: float = 300, parent: str | None = None) -> str:
    payload: dict[str, object] = {"connectorId": connector_id, "expiryDate": expiry(within_s), "idTag": id_tag,
                                  "reservationId": reservation_id}
    if parent:
        payload["parentIdTag"] = parent
    return str((await octt.csms.send(CP, "ReserveNow", payload))["status"])


def test_reservation_admits_tag_or_same_parent() -> None:
    hold = ConnectorReservation(1, "AAA", "GROUP")
    assert hold.admits("aaa", None) and hold.admits("BBB", "group")
    assert not hold.admits("BBB", None) and not hold.admits("BBB", "OTHER")
    assert not ConnectorReservation(2, "AAA").admits("BBB", "GROUP")


async def test_046_reserve_then_charge_with_the_reserved_tag(octt: Octt) -> None:
    agent = await octt.start_agent()
    await octt.booted()
    assert await reserve(octt, reservation_id=42) == "Accepted"
    await octt.wait_status("Reserved")
    start = await octt.charging(TAG)
    assert start.payload["reservationId"] == 42
    assert agent.connector.reservation is None
    assert await octt.csms.send(CP, "CancelReservation", {"reservationId": 42}) == {"status": "Rejected"}  # used


async def test_047_reservation_expires(octt: Octt) -> None:
    agent = await octt.start_agent()
    await octt.booted()
    assert await reserve(octt, within_s=1.0) == "Accepted"
    await octt.wait_status("Reserved")
    await eventually(lambda: agent.connector.reservation is None, 5, "reservation to expire")
    statuses = [m.payload["status"] for m in octt.msgs("StatusNotification") if m.payload["connectorId"] == 1]
    await eventually(lambda: [m.payload["status"] for m in octt.msgs("StatusNotification")
                              if m.payload["connectorId"] == 1][-1] == "Available", what="Available again")
    assert "Reserved" in statuses
    assert await reserve(octt, within_s=-10) == "Rejected"  # already expired


async def test_048_other_tag_refused_same_parent_accepted(octt: Octt) -> None:
    agent = await octt.start_agent(LocalPreAuthorize="true")
    await octt.booted()
    members = [
        {"idTag": "MEMBER0001", "idTagInfo": {"status": "Accepted", "parentIdTag": "FLEET"}},
        {"idTag": "OUTSIDER01", "idTagInfo": {"status": "Accepted", "parentIdTag": "OTHER"}},
    ]
    answer = await octt.csms.send(
        CP, "SendLocalList", {"listVersion": 1, "updateType": "Full", "localAuthorizationList": members}
    )
    assert answer == {"status": "Accepted"}
    assert await reserve(octt, id_tag=TAG, parent="FLEET", reservation_id=7) == "Accepted"
    await octt.wait_status("Reserved")
    octt.ctl("plug")
    await eventually(lambda: agent.connector.controller.cp_state is not None
                     and agent.connector.controller.cp_state.ev_connected, what="EV connected")
    assert not (await agent.tap(TAG2)).accepted  # valid at the CSMS, but not the reserved tag
    assert not (await agent.tap("OUTSIDER01")).accepted
    remote = await octt.csms.send(CP, "RemoteStartTransaction", {"idTag": TAG2, "connectorId": 1})
    assert remote == {"status": "Rejected"}
    assert agent.connector.session is None and agent.connector.reservation is not None
    assert (await agent.tap("MEMBER0001")).accepted  # same parentIdTag
    start = await octt.wait("StartTransaction")
    assert start.payload["idTag"] == "MEMBER0001" and start.payload["reservationId"] == 7


async def test_049_cancel_reservation(octt: Octt) -> None:
    agent = await octt.start_agent()
    await octt.booted()
    assert await reserve(octt, reservation_id=5) == "Accepted"
    await octt.wait_status("Reserved")
    assert await octt.csms.send(CP, "CancelReservation", {"reservationId": 6}) == {"status": "Rejected"}
    assert await octt.csms.send(CP, "CancelReservation", {"reservationId": 5}) == {"status": "Accepted"}
    await eventually(lambda: agent.connector.status().value == "Available", what="Available")
    start = await octt.charging(TAG2)  # anyone may charge again
    assert "reservationId" not in start.payload


async def test_050_051_answers_by_connector_state(octt: Octt) -> None:
    agent = await octt.start_agent()
    await octt.booted()
    assert await reserve(octt, connector_id=9) == "Rejected"  # no such connector
    assert await reserve(octt, connector_id=0) == "Rejected"  # ReserveConnectorZeroSupported is false
    assert await reserve(octt, reservation_id=1) == "Accepted"
    assert await reserve(octt, reservation_id=2, id_tag=TAG2) == "Occupied"  # reserved for someone else
    assert await reserve(octt, reservation_id=1, id_tag=TAG2) == "Accepted"  # same id: replaced
    assert agent.connector.reservation is not None and agent.connector.reservation.id_tag == TAG2
    assert await octt.csms.send(CP, "CancelReservation", {"reservationId": 1}) == {"status": "Accepted"}
    await octt.charging(TAG)
    assert await reserve(octt, reservation_id=3) == "Occupied"  # charging
    assert (await agent.tap(TAG)).accepted
    await octt.wait("StopTransaction")
    octt.ctl("unplug")
    await octt.wait_status("Available", within=5)
    assert await octt.csms.send(CP, "ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}) \
        == {"status": "Accepted"}
    await eventually(lambda: not agent.connector.available, what="Unavailable")
    assert await reserve(octt, reservation_id=4) == "Unavailable"
    assert await octt.csms.send(CP, "ChangeAvailability", {"connectorId": 1, "type": "Operative"}) \
        == {"status": "Accepted"}
    await eventually(lambda: agent.connector.available, what="Available")
    octt.ctl("fault", connector=1, name="overtemp")
    await eventually(lambda: agent.connector.status().value == "Faulted", what="Faulted")
    assert await reserve(octt, reservation_id=5) == "Faulted"


async def test_052_reserve_connector_zero(octt: Octt) -> None:
    agent = await octt.start_agent(ReserveConnectorZeroSupported="true")
    await octt.booted()
    assert await reserve(octt, connector_id=0, reservation_id=11) == "Accepted"
    await octt.wait_status("Reserved")  # the only connector is the last one free: it is held
    assert await reserve(octt, connector_id=0, reservation_id=12, id_tag=TAG2) == "Occupied"
    octt.ctl("plug")
    await eventually(lambda: agent.connector.controller.cp_state is not None
                     and agent.connector.controller.cp_state.ev_connected, what="EV connected")
    assert not (await agent.tap(TAG2)).accepted
    assert (await agent.tap(TAG)).accepted
    start = await octt.wait("StartTransaction")
    assert start.payload["reservationId"] == 11


async def test_053_reservation_survives_a_restart(octt: Octt) -> None:
    await octt.start_agent()
    await octt.booted()
    assert await reserve(octt, reservation_id=9) == "Accepted"
    await octt.wait_status("Reserved")
    agent = await octt.restart_agent()
    await octt.wait("BootNotification", count=2)
    await eventually(lambda: agent.connector.reservation is not None, what="reservation restored")
    await eventually(lambda: sum(1 for m in octt.msgs("StatusNotification")
                                 if m.payload["connectorId"] == 1 and m.payload["status"] == "Reserved") >= 2,
                     what="Reserved reported after the reboot")
    assert await octt.csms.send(CP, "CancelReservation", {"reservationId": 9}) == {"status": "Accepted"}
