"""OCTT 1.6 local authorization list: 008 (offline start with a local-list id), 042 (GetLocalListVersion),
043 (SendLocalList Full / Differential / limits / disabled); expired entries are refused."""

from __future__ import annotations

import time

import pytest

from agent.ocpp.v16.local_list import InvalidList, parse_entries
from tests.agent.ocpp.conftest import CP, Octt, eventually

LOCAL = "LOCAL00001"
FAR = "2099-01-01T00:00:00Z"


def entry(tag: str, status: str = "Accepted", expiry: str | None = FAR, parent: str | None = None) -> dict[str, object]:
    info: dict[str, object] = {"status": status}
    if expiry:
        info["expiryDate"] = expiry
    if parent:
        info["parentIdTag"] = parent
    return {"idTag": tag, "idTagInfo": info}


def test_parse_entries_rules() -> None:
    parsed = parse_entries([entry("A"), {"idTag": "B"}], full=False)
    assert parsed["A"] is not None and parsed["A"].accepted and parsed["B"] is None  # B removed
    assert list(parse_entries([entry("A"), {"idTag": "B"}], full=True)) == ["A"]
    with pytest.raises(InvalidList):
        parse_entries([entry("A"), entry("a")], full=True)
    with pytest.raises(InvalidList):
        parse_entries([{"idTag": "A", "idTagInfo": {"status": "Accepted", "expiryDate": "tomorrow"}}], full=True)


async def send_list(octt: Octt, version: int, update: str, items: list[dict[str, object]]) -> str:
    answer = await octt.csms.send(
        CP, "SendLocalList", {"listVersion": version, "updateType": update, "localAuthorizationList": items}
    )
    return str(answer["status"])


async def version(octt: Octt) -> int:
    return int((await octt.csms.send(CP, "GetLocalListVersion", {}))["listVersion"])


async def test_042_get_local_list_version_empty_and_after_updates(octt: Octt) -> None:
    await octt.start_agent()
    await octt.booted()
    assert await version(octt) == 0  # 042_2: empty list
    assert await send_list(octt, 3, "Full", [entry(LOCAL)]) == "Accepted"
    assert await version(octt) == 3
    assert await send_list(octt, 4, "Differential", [entry("LOCAL00002")]) == "Accepted"
    assert await version(octt) == 4
    assert await send_list(octt, 5, "Full", []) == "Accepted"
    assert await version(octt) == 0  # emptied: 0 again


async def test_042_1_and_043_disabled_list(octt: Octt) -> None:
    await octt.start_agent(LocalAuthListEnabled="false")
    await octt.booted()
    assert await version(octt) == -1
    assert await send_list(octt, 1, "Full", [entry(LOCAL)]) == "NotSupported"
    keys = await octt.csms.send(CP, "GetConfiguration", {"key": ["SupportedFeatureProfiles"]})
    assert "LocalAuthListManagement" in keys["configurationKey"][0]["value"]


async def test_043_differential_version_mismatch_and_limits(octt: Octt) -> None:
    agent = await octt.start_agent()
    await octt.booted()
    assert await send_list(octt, 2, "Full", [entry(LOCAL), entry("LOCAL00002")]) == "Accepted"
    assert await send_list(octt, 2, "Differential", [entry("LOCAL00003")]) == "VersionMismatch"
    assert await send_list(octt, 1, "Differential", [entry("LOCAL00003")]) == "VersionMismatch"
    # Differential: an entry without idTagInfo is removed, others added or replaced.
    assert await send_list(octt, 3, "Differential", [{"idTag": "LOCAL00002"}, entry("LOCAL00003")]) == "Accepted"
    assert agent.service is not None
    local = agent.service.local_list
    assert "LOCAL00002" not in local and "LOCAL00003" in local and LOCAL in local
    # SendLocalListMaxLength (100) bounds one message; the list keeps its state when it is refused.
    too_many = [entry(f"TAG{i:05d}") for i in range(101)]
    assert await send_list(octt, 4, "Full", too_many) == "Failed"
    assert await send_list(octt, 4, "Full", [entry("DUP"), entry("dup")]) == "Failed"
    assert await version(octt) == 3 and len(local) == 2
    keys = await octt.csms.send(CP, "GetConfiguration", {"key": ["SendLocalListMaxLength", "LocalAuthListMaxLength"]})
    assert {k["key"]: (k["value"], k["readonly"]) for k in keys["configurationKey"]} == {
        "SendLocalListMaxLength": ("100", True), "LocalAuthListMaxLength": ("1000", True)}


async def test_043_list_survives_a_restart(octt: Octt) -> None:
    await octt.start_agent()
    await octt.booted()
    assert await send_list(octt, 7, "Full", [entry(LOCAL)]) == "Accepted"
    agent = await octt.restart_agent()
    await octt.wait("BootNotification", count=2)
    await eventually(lambda: agent.service is not None and agent.service.online, what="online again")
    assert await version(octt) == 7
    assert agent.service is not None and LOCAL in agent.service.local_list


async def test_008_1_offline_start_with_local_list_id(octt: Octt) -> None:
    agent = await octt.start_agent(LocalAuthorizeOffline="true", AllowOfflineTxForUnknownId="false")
    await octt.booted()
    assert await send_list(octt, 1, "Full", [entry(LOCAL), entry("EXPIRED01", expiry="2020-01-01T00:00:00Z"),
                                             entry("BLOCKED01", status="Blocked")]) == "Accepted"
    await octt.csms.outage(30)
    assert agent.service is not None
    await eventually(lambda: agent.service is not None and not agent.service.online, what="offline")
    octt.ctl("plug")
    await eventually(lambda: agent.connector.controller.cp_state is not None
                     and agent.connector.controller.cp_state.ev_connected, what="EV connected")
    assert not (await agent.tap("EXPIRED01")).accepted  # expired entries are refused
    assert not (await agent.tap("BLOCKED01")).accepted
    assert not (await agent.tap("UNKNOWN001")).accepted
    decision = await agent.tap(LOCAL)
    assert decision.accepted
    await eventually(lambda: agent.connector.session is not None, what="session started offline")
    assert octt.msgs("Authorize") == []


async def test_008_2_local_pre_authorize_online(octt: Octt) -> None:
    agent = await octt.start_agent(LocalPreAuthorize="true")
    await octt.booted()
    assert await send_list(octt, 1, "Full", [entry(LOCAL), entry("EXPIRED01", expiry="2020-01-01T00:00:00Z")]) \
        == "Accepted"
    octt.ctl("plug")
    await eventually(lambda: agent.connector.controller.cp_state is not None
                     and agent.connector.controller.cp_state.ev_connected, what="EV connected")
    started = time.monotonic()
    assert (await agent.tap(LOCAL)).accepted
    assert time.monotonic() - started < 2.0
    start = await octt.wait("StartTransaction")
    assert start.payload["idTag"] == LOCAL
    assert octt.msgs("Authorize") == []  # LocalPreAuthorize: no Authorize.req for a valid local-list id
    # An expired local-list id is not pre-authorized: the CSMS is asked (and does not know it).
    assert (await agent.tap(LOCAL)).accepted  # stop
    await octt.wait("StopTransaction")
    assert not (await agent.tap("EXPIRED01")).accepted
    await eventually(lambda: [m.payload["idTag"] for m in octt.msgs("Authorize")] == ["EXPIRED01"],
                     what="Authorize for the expired id")
