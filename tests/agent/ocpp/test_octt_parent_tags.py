"""parentIdTag and expiryDate of the CSMS's idTagInfo (Authorize / StartTransaction / StopTransaction.conf)
reach the agent's decisions (issue 11 item 4). Every idTagInfo here comes over the real websocket from the
bundled CSMS, never from a local list or a preset: that is the path where both fields used to be dropped."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from tests.agent.ocpp.conftest import CP, TAG, Octt, eventually


def stamp(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def member(parent: str, expiry_s: float | None = None) -> dict[str, str]:
    info = {"status": "Accepted", "parentIdTag": parent}
    if expiry_s is not None:
        info["expiryDate"] = stamp(expiry_s)
    return info


async def reserve(octt: Octt, id_tag: str, parent: str, reservation_id: int) -> None:
    answer = await octt.csms.send(CP, "ReserveNow", {"connectorId": 1, "expiryDate": stamp(300), "idTag": id_tag,
                                                     "parentIdTag": parent, "reservationId": reservation_id})
    assert answer == {"status": "Accepted"}
    await octt.wait_status("Reserved")


async def plugged(octt: Octt) -> None:
    assert octt.agent is not None
    agent = octt.agent
    octt.ctl("plug")
    await eventually(lambda: agent.connector.controller.cp_state is not None
                     and agent.connector.controller.cp_state.ev_connected, what="EV connected")


def authorized(octt: Octt, id_tag: str) -> list[str]:
    return [m.payload["idTag"] for m in octt.msgs("Authorize") if m.payload["idTag"] == id_tag]


async def test_053_reserved_connector_admits_a_card_of_the_parent_learnt_from_authorize(octt: Octt) -> None:
    """1.6 section 5.13 / OCTT 053: the parent of an incoming idTag not in the local list or cache comes from
    Authorize.conf; a card whose parentIdTag equals the reservation's parentIdTag may charge there."""
    octt.csms.id_tag_infos["MEMBER0001"] = member("FLEET")
    octt.csms.id_tag_infos["OUTSIDER01"] = member("OTHER")
    agent = await octt.start_agent()
    await octt.booted()
    await reserve(octt, TAG, "FLEET", reservation_id=53)
    await plugged(octt)
    assert not (await agent.tap("OUTSIDER01")).accepted  # valid, but another group
    assert (await agent.tap("MEMBER0001")).accepted
    start = await octt.wait("StartTransaction")
    assert start.payload["idTag"] == "MEMBER0001" and start.payload["reservationId"] == 53
    assert authorized(octt, "MEMBER0001") == ["MEMBER0001"]


async def test_069_sibling_card_from_the_csms_stops_the_transaction(octt: Octt) -> None:
    """OCTT 069 / 1.6 section 3.5 (parentIdTag): a card with the same parentIdTag as the one that started may
    stop the transaction; both parents known only from the CSMS's idTagInfo."""
    octt.csms.id_tag_infos.update({"CARDA1": member("FLEET1"), "CARDB2": member("FLEET1"),
                                   "CARDC3": member("FLEET2")})
    agent = await octt.start_agent()
    await octt.booted()
    start = await octt.charging("CARDA1")
    assert start.payload["idTag"] == "CARDA1"
    assert not (await agent.tap("CARDC3")).accepted  # another parent
    await asyncio.sleep(0.2)
    assert octt.msgs("StopTransaction") == []
    assert (await agent.tap("CARDB2")).accepted
    stop = await octt.wait("StopTransaction")
    assert stop.payload["reason"] == "Local"
    # 1.6 section 6.49: StopTransaction.req idTag is "the identifier which requested to stop the charging"
    assert stop.payload["idTag"] == "CARDB2"


async def test_expired_cache_entry_is_not_used_and_authorize_is_sent(octt: Octt) -> None:
    """1.6 section 3.5.1: the cache keeps an idTag's expiryDate; with LocalPreAuthorize an entry still valid
    starts at once, one whose expiryDate has passed is not used: Authorize.req goes to the CSMS."""
    octt.csms.id_tag_infos[TAG] = {"status": "Accepted", "expiryDate": stamp(2.5)}
    agent = await octt.start_agent()
    await octt.booted()
    answer = await octt.csms.send(CP, "ChangeConfiguration", {"key": "LocalPreAuthorize", "value": "true"})
    assert answer == {"status": "Accepted"}
    assert (await agent.tap(TAG)).accepted  # unknown so far: asks the CSMS, learns the expiry
    assert len(authorized(octt, TAG)) == 1
    assert (await agent.tap(TAG)).accepted  # cached and not expired yet: no Authorize.req
    assert len(authorized(octt, TAG)) == 1
    await eventually(lambda: datetime.now(UTC).timestamp() > datetime.fromisoformat(
        octt.csms.id_tag_infos[TAG]["expiryDate"]).timestamp() + 0.2, within=5, what="expiry")
    octt.csms.id_tag_infos[TAG] = {"status": "Accepted", "expiryDate": stamp(600)}
    assert (await agent.tap(TAG)).accepted
    assert len(authorized(octt, TAG)) == 2  # the expired entry was not used
    await plugged(octt)
    start = await octt.wait("StartTransaction")
    assert start.payload["idTag"] == TAG


async def test_later_conf_without_parent_keeps_the_known_parent(octt: Octt) -> None:
    """parentIdTag is optional in idTagInfo (1.6 section 7.20): a StartTransaction.conf that leaves it out
    does not erase the parent an earlier Authorize.conf gave, so a sibling card still stops (OCTT 069)."""
    octt.csms.id_tag_infos.update({"CARDA1": member("FLEET1"), "CARDB2": member("FLEET1")})
    agent = await octt.start_agent()
    await octt.booted()
    assert (await agent.tap("CARDA1")).accepted  # Authorize.conf: parent FLEET1; waits for the EV
    octt.csms.id_tag_infos["CARDA1"] = {"status": "Accepted"}  # the Start's idTagInfo will carry no parent
    await plugged(octt)
    await octt.wait("StartTransaction")
    await octt.wait_status("Charging")
    assert agent.service is not None
    assert agent.service.authorizer.parent_of("CARDA1") == "FLEET1"
    cached = agent.service.cache.lookup("CARDA1")
    assert cached is not None and cached.parent_id_tag == "FLEET1"
    assert (await agent.tap("CARDB2")).accepted
    stop = await octt.wait("StopTransaction")
    assert stop.payload["reason"] == "Local"
    # 1.6 section 6.49: StopTransaction.req idTag is "the identifier which requested to stop the charging"
    assert stop.payload["idTag"] == "CARDB2"


async def test_remote_start_for_member_of_reservation_parent_sends_authorize(octt: Octt) -> None:
    """1.6 section 5.13: the parent of an idTag unknown to the local list and cache is learnt with an
    Authorize.req. A RemoteStartTransaction for another idTag of the reservation's parent is not refused at
    once; an idTag of another group gets no transaction, and the reservation stays."""
    octt.csms.id_tag_infos.update({"MEMBER0002": member("FLEET"), "OUTSIDER02": member("OTHER")})
    agent = await octt.start_agent()
    await octt.booted()
    answer = await octt.csms.send(CP, "ChangeConfiguration", {"key": "AuthorizeRemoteTxRequests", "value": "false"})
    assert answer == {"status": "Accepted"}
    await reserve(octt, TAG, "FLEET", reservation_id=11)
    await plugged(octt)
    remote = await octt.csms.send(CP, "RemoteStartTransaction", {"idTag": "OUTSIDER02", "connectorId": 1})
    assert remote == {"status": "Accepted"}  # its parent is unknown here: the CSMS is asked
    await eventually(lambda: authorized(octt, "OUTSIDER02"), what="Authorize.req for OUTSIDER02")
    await asyncio.sleep(0.3)
    assert octt.msgs("StartTransaction") == [] and agent.connector.reservation is not None
    # now known (cached) as another group's card: refused at once
    remote = await octt.csms.send(CP, "RemoteStartTransaction", {"idTag": "OUTSIDER02", "connectorId": 1})
    assert remote == {"status": "Rejected"}
    remote = await octt.csms.send(CP, "RemoteStartTransaction", {"idTag": "MEMBER0002", "connectorId": 1})
    assert remote == {"status": "Accepted"}
    start = await octt.wait("StartTransaction")
    assert start.payload["idTag"] == "MEMBER0002" and start.payload["reservationId"] == 11
    assert authorized(octt, "MEMBER0002") == ["MEMBER0002"]


async def test_unusable_id_tag_info_is_logged_and_wedges_nothing(octt: Octt, caplog: pytest.LogCaptureFixture) -> None:
    """A schema-valid idTagInfo the agent cannot use (an expiryDate after year 9999 UTC) is a precise, logged
    error: Authorize decides as offline (unknown idTag: refused), a StartTransaction.conf carrying it still
    completes the delivery and the queue goes on (the Stop is delivered once)."""
    absurd = {"status": "Accepted", "expiryDate": "9999-12-31T23:59:59-12:00"}
    octt.csms.id_tag_infos["BADEXPIRY1"] = absurd
    agent = await octt.start_agent()
    await octt.booted()
    refused = await agent.tap("BADEXPIRY1")
    assert not refused.accepted and refused.status == "Invalid"
    assert "idTagInfo expiryDate" in caplog.text
    assert (await agent.tap(TAG)).accepted  # Authorize.conf fine; waits for the EV
    octt.csms.id_tag_infos[TAG] = absurd  # the StartTransaction.conf will carry the absurd expiry
    await plugged(octt)
    await octt.wait("StartTransaction")
    await octt.wait_status("Charging")
    assert (await agent.tap(TAG)).accepted
    await octt.wait("StopTransaction")
    await asyncio.sleep(0.3)
    assert len(octt.msgs("StartTransaction")) == 1 and len(octt.msgs("StopTransaction")) == 1
    assert len(octt.csms.handshakes) == 1  # never closed and redialled over it
    assert "StartTransaction #" in caplog.text and "idTagInfo of the answer ignored" in caplog.text


async def test_local_list_parent_and_expiry_survive_a_restart(octt: Octt) -> None:
    """SendLocalList (1.6 section 5.15) idTagInfo keeps parentIdTag and expiryDate, across a restart: the
    reserved connector admits a list member of the reservation's parent without asking the CSMS, and a
    member whose expiryDate has passed is not pre-authorized (section 3.5.3)."""
    agent = await octt.start_agent()
    await octt.booted()
    items = [{"idTag": "LISTED0001", "idTagInfo": {"status": "Accepted", "parentIdTag": "FLEET",
                                                    "expiryDate": stamp(600)}},
             {"idTag": "LISTED0002", "idTagInfo": {"status": "Accepted", "parentIdTag": "FLEET",
                                                    "expiryDate": "2020-01-01T00:00:00Z"}}]
    answer = await octt.csms.send(CP, "SendLocalList", {"listVersion": 1, "updateType": "Full",
                                                        "localAuthorizationList": items})
    assert answer == {"status": "Accepted"}
    answer = await octt.csms.send(CP, "ChangeConfiguration", {"key": "LocalPreAuthorize", "value": "true"})
    assert answer == {"status": "Accepted"}
    agent = await octt.restart_agent()
    await octt.wait("BootNotification", count=2)
    await eventually(lambda: agent.service is not None and agent.service.online, what="online again")
    await reserve(octt, TAG, "FLEET", reservation_id=15)
    await plugged(octt)
    assert not (await agent.tap("LISTED0002")).accepted  # expired: the CSMS is asked and does not know it
    assert authorized(octt, "LISTED0002") == ["LISTED0002"]
    assert (await agent.tap("LISTED0001")).accepted
    start = await octt.wait("StartTransaction")
    assert start.payload["idTag"] == "LISTED0001" and start.payload["reservationId"] == 15
    assert authorized(octt, "LISTED0001") == []  # the list gave status and parent
