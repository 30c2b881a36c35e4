"""OCTT 2.0.1 Local Authorization List (D01 SendLocalList, D02 GetLocalListVersion) and Reservation (H01-H04)
over real websockets against the bundled CSMS, the simulated hardware underneath (cards through the real
reader emulator: ``ctl("tap")``)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.ocpp.v201.local_list import InvalidList, parse_entries
from tests.agent.ocpp.v201.conftest import TAG, TAG2, Octt201, eventually

FLEET = {"idToken": "FLEET", "type": "Central"}
LOCAL = "0A0B0C0D01"  # a card the CSMS does not know (the reader reads 10 hex digits)


def entry(token: str, status: str | None = "Accepted", **info: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"idToken": {"idToken": token, "type": "ISO14443"}}
    if status is not None:
        out["idTokenInfo"] = {"status": status, **info}
    return out


def expiry(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_parse_entries_full_differential_and_refusals() -> None:
    now = 1_700_000_000.0
    full = parse_entries([entry("a1", groupIdToken=FLEET), entry("B2", "Blocked"), entry("c3", None)],
                         full=True, now_wall=now)
    assert set(full) == {"a1", "B2"}  # Full without idTokenInfo adds nothing
    assert full["a1"] is not None and full["a1"].parent_id_tag == "FLEET" and full["a1"].accepted
    diff = parse_entries([entry("c3", None), entry("d4", cacheExpiryDateTime="2030-01-01T00:00:00Z")],
                         full=False, now_wall=now)
    assert diff["c3"] is None  # Differential without idTokenInfo removes the idToken
    assert diff["d4"] is not None and diff["d4"].expiry_wall == datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    with pytest.raises(InvalidList, match="twice"):
        parse_entries([entry("x"), entry("X")], full=True, now_wall=now)
    with pytest.raises(InvalidList, match="status"):
        parse_entries([entry("x", "Maybe")], full=True, now_wall=now)
    with pytest.raises(InvalidList, match="type"):
        parse_entries([{"idToken": {"idToken": "x", "type": "Bogus"}}], full=True, now_wall=now)


async def local_version(octt: Octt201) -> int:
    return int((await octt.send("GetLocalListVersion", {}))["versionNumber"])


async def send_list(octt: Octt201, version: int, kind: str, items: list[dict[str, Any]] | None) -> dict[str, Any]:
    payload: dict[str, Any] = {"versionNumber": version, "updateType": kind}
    if items is not None:
        payload["localAuthorizationList"] = items
    return await octt.send("SendLocalList", payload)


async def test_tc_d_01_02_send_local_list_versions_limits_and_use(octt: Octt201) -> None:
    agent = await octt.start_agent({"AuthCtrlr/LocalPreAuthorize": True, "LocalAuthListCtrlr/ItemsPerMessage": 3,
                                    "LocalAuthListCtrlr/DisablePostAuthorize": True})
    await octt.booted()
    assert await local_version(octt) == 0  # TC_D_02: no list yet
    # TC_D_01 Full: LOCAL is unknown to the CSMS, TAG2 is Accepted by it but Blocked in the list.
    result = await send_list(octt, 1, "Full", [entry(LOCAL, groupIdToken=FLEET), entry(TAG2, "Blocked")])
    assert result["status"] == "Accepted"
    assert await local_version(octt) == 1
    got = await octt.send("GetVariables", {"getVariableData": [
        {"component": {"name": "LocalAuthListCtrlr"}, "variable": {"name": "Entries"}}]})
    assert got["getVariableResult"][0]["attributeValue"] == "2"
    # Refusals change nothing: an old version, a duplicate, more than ItemsPerMessage, version 0.
    stale = await send_list(octt, 1, "Differential", [entry("OTHER")])
    assert stale["status"] == "VersionMismatch"
    assert (await send_list(octt, 2, "Differential", [entry("X1"), entry("x1")]))["status"] == "Failed"
    too_many = await send_list(octt, 2, "Full", [entry(f"T{n}") for n in range(4)])
    assert too_many["status"] == "Failed" and too_many["statusInfo"]["reasonCode"] == "TooManyElements"
    assert (await send_list(octt, 0, "Full", None))["status"] == "Failed"
    assert await local_version(octt) == 1
    # Differential: TAG2 removed, OTHER added.
    assert (await send_list(octt, 2, "Differential", [entry(TAG2, None), entry("OTHER")]))["status"] == "Accepted"
    assert await local_version(octt) == 2
    assert "OTHER" in agent.service.features["LocalAuthListManagement"].list
    assert TAG2 not in agent.service.features["LocalAuthListManagement"].list

    # The list drives the reader: LOCAL starts at once (LocalPreAuthorize, no AuthorizeRequest) ...
    await octt.plugged()
    octt.ctl("tap", id_tag=LOCAL)
    started = await octt.wait_tx_event("Started")
    assert started["idToken"]["idToken"] == LOCAL
    assert not octt.msgs("Authorize")
    assert (await agent.tap(LOCAL)).accepted  # stop (the reader reports a card held still only once in 2 s)
    await octt.wait_tx_event("Ended")
    octt.ctl("unplug")
    await octt.wait_status("Available", count=2)
    # ... and a Blocked entry is refused without asking the CSMS (DisablePostAuthorize), though it knows it.
    assert (await send_list(octt, 3, "Differential", [entry(TAG2, "Blocked")]))["status"] == "Accepted"
    assert not (await agent.tap(TAG2)).accepted
    assert not octt.msgs("Authorize")
    # Full with no list empties it: version 0 again.
    assert (await send_list(octt, 4, "Full", None))["status"] == "Accepted"
    assert await local_version(octt) == 0


async def reserve(octt: Octt201, rid: int, token: str, seconds: float = 60, **more: Any) -> dict[str, Any]:
    return await octt.send("ReserveNow", {"id": rid, "expiryDateTime": expiry(seconds),
                                          "idToken": {"idToken": token, "type": "ISO14443"}, **more})


async def status_updates(octt: Octt201, count: int) -> list[dict[str, Any]]:
    await eventually(lambda: len(octt.msgs("ReservationStatusUpdate")) >= count, what="ReservationStatusUpdate")
    return [m.payload for m in octt.msgs("ReservationStatusUpdate")]


async def test_tc_h_reserve_specific_evse_group_cancel_and_refusals(octt: Octt201) -> None:
    octt.csms.id_token_infos.update({TAG: {"status": "Accepted", "groupIdToken": FLEET}})
    agent = await octt.start_agent()
    await octt.booted()
    # H01 refusals: unknown EVSE, a connector type the station lacks.
    assert (await reserve(octt, 9, "RESV1", evseId=9))["status"] == "Rejected"
    assert (await reserve(octt, 9, "RESV1", evseId=1, connectorType="cCCS1"))["status"] == "Rejected"
    # TC_H_01/H_07-like: EVSE 1 reserved for RESV1 or its group FLEET.
    result = await reserve(octt, 1, "RESV1", evseId=1, groupIdToken=FLEET)
    assert result["status"] == "Accepted"
    await octt.wait_status("Reserved")
    await octt.plugged()
    # Another token at the reader: the CSMS accepts TAG2, the reserved EVSE refuses it.
    octt.ctl("tap", id_tag=TAG2)
    await octt.wait("Authorize")
    await asyncio.sleep(0.5)
    assert agent.connector.session is None and agent.connector.reservation is not None
    assert not octt.tx_events()
    # A token of the reservation's group is admitted; its transaction names the reservation (H03).
    octt.ctl("tap", id_tag=TAG)
    started = await octt.wait_tx_event("Started")
    assert started["idToken"]["idToken"] == TAG and started["reservationId"] == 1
    await octt.wait_status("Occupied")
    assert (await reserve(octt, 2, "RESV2", evseId=1))["status"] == "Occupied"
    assert (await octt.send("CancelReservation", {"reservationId": 1}))["status"] == "Rejected"  # used up
    assert (await agent.tap(TAG)).accepted  # stop (the reader reports a card held still only once in 2 s)
    await octt.wait_tx_event("Ended")
    octt.ctl("unplug")
    await octt.wait_status("Available", count=2)
    # H02 cancel: Reserved, then Available again.
    assert (await reserve(octt, 3, "RESV3", evseId=1))["status"] == "Accepted"
    await octt.wait_status("Reserved", count=2)
    agent = await octt.restart_agent()  # kept in the state database: held again after a restart
    await octt.wait("BootNotification", count=2)
    await eventually(lambda: agent.station is not None and agent.connector.reservation is not None
                     and agent.connector.reservation.ref == 3, what="reservation 3 restored")
    assert (await octt.send("CancelReservation", {"reservationId": 3}))["status"] == "Accepted"
    await octt.wait_status("Available", count=3)
    # ReservationCtrlr.Enabled false: Rejected.
    await octt.send("SetVariables", {"setVariableData": [{"component": {"name": "ReservationCtrlr"},
                                                          "variable": {"name": "Enabled"}, "attributeValue": "false"}]})
    assert (await reserve(octt, 4, "RESV4", evseId=1))["status"] == "Rejected"


async def test_tc_h_unspecified_evse_expiry_and_removed(octt: Octt201) -> None:
    agent = await octt.start_agent()
    await octt.booted()
    # No evseId (NonEvseSpecific): the last idle EVSE is held, then the reservation expires (H04 Expired).
    assert (await reserve(octt, 5, "RESV5", seconds=1.0))["status"] == "Accepted"
    await octt.wait_status("Reserved")
    assert not (await agent.tap(TAG)).accepted  # held for RESV5
    assert await status_updates(octt, 1) == [{"reservationId": 5, "reservationUpdateStatus": "Expired"}]
    await octt.wait_status("Available", count=2)
    # The freed EVSE takes any accepted token through the reader.
    await octt.plugged()
    octt.ctl("tap", id_tag=TAG)
    started = await octt.wait_tx_event("Started")
    assert "reservationId" not in started
    assert (await agent.tap(TAG)).accepted  # stop (the reader reports a card held still only once in 2 s)
    await octt.wait_tx_event("Ended")
    octt.ctl("unplug")
    await octt.wait_status("Available", count=3)
    # The reserved EVSE taken out of service: the reservation is removed (H04 Removed).
    assert (await reserve(octt, 6, "RESV6", evseId=1))["status"] == "Accepted"
    await octt.wait_status("Reserved", count=2)
    changed = await octt.send("ChangeAvailability", {"operationalStatus": "Inoperative", "evse": {"id": 1}})
    assert changed["status"] == "Accepted"
    updates = await status_updates(octt, 2)
    assert updates[1] == {"reservationId": 6, "reservationUpdateStatus": "Removed"}
    assert agent.connector.reservation is None
    # NonEvseSpecific false: an unspecified EVSE is Rejected.
    await octt.send("SetVariables", {"setVariableData": [{"component": {"name": "ReservationCtrlr"},
                                                          "variable": {"name": "NonEvseSpecific"},
                                                          "attributeValue": "false"}]})
    assert (await reserve(octt, 7, "RESV7"))["status"] == "Rejected"
