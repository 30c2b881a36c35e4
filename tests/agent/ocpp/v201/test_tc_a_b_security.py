"""OCPP 2.0.1 security and network profiles over real websockets against the bundled CSMS:
TC_A_09_CS / TC_A_10_CS (BasicAuthPassword update, fallback to the old one), TC_B_43_CS / TC_A_20_CS /
TC_A_22_CS (SetNetworkProfile rejected), TC_B_45_CS / TC_B_46_CS (migrate to another slot, fallback after
NetworkProfileConnectionAttempts), TC_A_19_CS (security profile upgrade 1 -> 2 over real TLS on 127.0.0.1),
plus unit tests of the pure parts of agent/ocpp/v201/security.py."""

from __future__ import annotations

import base64
import logging
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from agent.ocpp.v201.security import dial_order, profile_problem
from simulator.csms import Csms
from simulator.rig import Rig, RigOptions
from tests.agent.ocpp.test_octt_security import PASSWORD, Pki
from tests.agent.ocpp.test_octt_security import pki as pki  # the fixture
from tests.agent.ocpp.v201.conftest import CP, Octt201, eventually

NEW_PASSWORD = "NewPassword-23456"
OTHER_PASSWORD = "NeverAccepted-98765"


def basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"{CP}:{password}".encode()).decode()


def security_events(octt: Octt201) -> list[str]:
    return [m.payload["type"] for m in octt.msgs("SecurityEventNotification")]


def network_profile(url: str, profile: int) -> dict[str, Any]:
    return {"ocppVersion": "OCPP20", "ocppTransport": "JSON", "ocppCsmsUrl": url, "messageTimeout": 30,
            "securityProfile": profile, "ocppInterface": "Wired0"}


async def get_variable(octt: Octt201, component: str, variable: str) -> str | None:
    answer = await octt.send("GetVariables", {"getVariableData": [
        {"component": {"name": component}, "variable": {"name": variable}}]})
    value: str | None = answer["getVariableResult"][0].get("attributeValue")
    return value


async def set_variable(octt: Octt201, component: str, variable: str, value: str) -> str:
    answer = await octt.send("SetVariables", {"setVariableData": [
        {"component": {"name": component}, "variable": {"name": variable}, "attributeValue": value}]})
    status: str = answer["setVariableResult"][0]["attributeStatus"]
    return status


async def harness(tmp_path: Path, *, profile: int, pki: Pki | None = None) -> Octt201:
    csms = Csms(accept=["DEADBEEF01"], password=PASSWORD if profile else None, version="2.0.1",
                ssl_context=pki.server_context() if pki else None)
    await csms.start()
    rig = Rig(RigOptions(directory=tmp_path / "rig", csms_url=csms.url, charge_point_id=CP, ocpp_version="2.0.1",
                         security_profile=profile, password=PASSWORD if profile else None,
                         ca_file=pki.ca_file if pki else None))
    await rig.start()
    return Octt201(csms, rig)


@pytest.fixture
async def closing() -> Any:
    harnesses: list[Octt201] = []
    yield harnesses
    for octt in harnesses:
        if octt.agent is not None:
            await octt.agent.stop()
        await octt.rig.stop()
        await octt.csms.stop()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- pure parts ---------------------------------------------------------------------------------------


def test_profile_problem_b09_rules() -> None:
    slots = ("1", "2", "3")
    ok = network_profile("ws://127.0.0.1:9/x", 1)
    assert profile_problem(ok, current_profile=1, active_slot=1, slot=2, slots=slots) is None
    assert "999" in (profile_problem(ok, current_profile=1, active_slot=1, slot=999, slots=slots) or "")
    assert "in use" in (profile_problem(ok, current_profile=1, active_slot=2, slot=2, slots=slots) or "")
    assert "downgrade" in (profile_problem(ok, current_profile=2, active_slot=1, slot=2, slots=slots) or "")
    tls_on_ws = network_profile("ws://127.0.0.1:9/x", 2)
    assert "wss" in (profile_problem(tls_on_ws, current_profile=1, active_slot=1, slot=2, slots=slots) or "")
    old = {**ok, "ocppVersion": "OCPP16"}
    assert "OCPP20" in (profile_problem(old, current_profile=1, active_slot=1, slot=2, slots=slots) or "")


def test_dial_order_priority_then_last_working() -> None:
    assert dial_order(("2", "1"), [1, 2], 1) == [2, 1]
    assert dial_order(("3",), [1, 3], 1) == [3, 1]  # the last working slot is the final fallback
    assert dial_order(("2", "1"), [1], None) == [1]  # an unusable slot is skipped
    assert dial_order(("2", "2", "1"), [1, 2], None) == [2, 1]


# -- A01 / B09 over the wire --------------------------------------------------------------------------


async def test_tc_a_09_a_10_b_43_a_20_a_22_cs_password_update_and_rejected_profiles(
    tmp_path: Path, closing: list[Octt201], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    octt = await harness(tmp_path, profile=1)
    closing.append(octt)
    await octt.start_agent({"OCPPCommCtrlr/NetworkProfileConnectionAttempts": 2})
    await octt.booted()
    assert octt.csms.handshakes[-1].authorization == basic(PASSWORD)
    url = octt.csms.url

    # TC_B_43_CS: an unknown slot; TC_A_22_CS: a lower security profile; TC_A_20_CS: profile 2 without a
    # CSMSRootCertificate; the slot in use
    for slot, data in ((999, network_profile(url, 1)), (2, network_profile(url, 0)),
                       (2, network_profile(url.replace("ws://", "wss://"), 2)), (1, network_profile(url, 1))):
        answer = await octt.send("SetNetworkProfile", {"configurationSlot": slot, "connectionData": data})
        assert answer["status"] == "Rejected", (slot, data)

    # TC_A_09_CS: the new password is used from a new connection
    octt.csms.password = NEW_PASSWORD
    handshakes = len(octt.csms.handshakes)
    assert await set_variable(octt, "SecurityCtrlr", "BasicAuthPassword", NEW_PASSWORD) == "Accepted"
    await eventually(lambda: any(h.authorization == basic(NEW_PASSWORD) for h in octt.csms.handshakes[handshakes:])
                     and CP in octt.csms.connected_ids, 8, "reconnect with the new password")
    assert len(octt.msgs("BootNotification")) == 1  # a new connection, not a new boot

    # TC_A_10_CS style: a password the CSMS does not take -> after NetworkProfileConnectionAttempts refused
    # dials the station is back on the one that worked
    assert octt.agent is not None and octt.agent.service is not None
    security = octt.agent.service.features["Security"]
    await eventually(lambda: not security.in_trial, 5, "new password confirmed")
    handshakes = len(octt.csms.handshakes)
    assert await set_variable(octt, "SecurityCtrlr", "BasicAuthPassword", OTHER_PASSWORD) == "Accepted"
    await eventually(lambda: sum(h.authorization == basic(OTHER_PASSWORD)
                                 for h in octt.csms.handshakes[handshakes:]) >= 2, 10, "two refused dials")
    await eventually(lambda: octt.csms.handshakes[-1].authorization == basic(NEW_PASSWORD)
                     and CP in octt.csms.connected_ids, 10, "fallback to the working password")
    await eventually(lambda: "FailedToAuthenticateAtCsms" in security_events(octt), 8, "security event")
    assert "ReconfigurationOfSecurityParameters" in security_events(octt)
    assert await get_variable(octt, "SecurityCtrlr", "BasicAuthPassword") is None  # write-only

    assert octt.agent is not None and octt.agent.service is not None
    state = octt.agent.service.config.state_dir / "security201-state.json"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("cpagent"))  # the agent's
    for secret in (NEW_PASSWORD, OTHER_PASSWORD, base64.b64encode(f"{CP}:{NEW_PASSWORD}".encode()).decode()):
        assert secret not in logged


# -- B09 / B10: migrate and fall back ----------------------------------------------------------------


async def test_tc_b_45_b_46_cs_migrate_to_new_profile_and_fallback(tmp_path: Path, octt: Octt201) -> None:
    first = await octt.start_agent({"OCPPCommCtrlr/NetworkProfileConnectionAttempts": 2})
    await octt.booted()
    await eventually(lambda: not first.service.features["Security"].in_trial, 5, "slot 1 confirmed")
    # TC_B_46_CS: slot 2 cannot connect -> after 2 dials the station uses slot 1 again
    dead = f"ws://127.0.0.1:{closed_port()}/ocpp"
    answer = await octt.send("SetNetworkProfile", {"configurationSlot": 2, "connectionData": network_profile(dead, 0)})
    assert answer["status"] == "Accepted"
    assert await set_variable(octt, "OCPPCommCtrlr", "NetworkConfigurationPriority", "2,1") == "RebootRequired"
    agent = await octt.restart_agent()  # what Reset OnIdle does
    await eventually(lambda: agent.service.online and agent.service.endpoint == octt.csms.url, 8, "back on slot 1")
    await octt.wait_status("Available", count=2)
    assert await get_variable(octt, "OCPPCommCtrlr", "ActiveNetworkProfile") == "1"
    await eventually(lambda: any("network profile 2 could not connect" in (m.payload.get("techInfo") or "")
                                 for m in octt.msgs("SecurityEventNotification")), 5, "the fallback reported")

    # TC_B_45_CS: slot 3 is another working URL of the CSMS -> used after the reset
    other = octt.csms.url.rstrip("/") + "/"
    answer = await octt.send("SetNetworkProfile", {"configurationSlot": 3, "connectionData": network_profile(other, 0)})
    assert answer["status"] == "Accepted"
    assert await set_variable(octt, "OCPPCommCtrlr", "NetworkConfigurationPriority", "3,1") == "RebootRequired"
    agent = await octt.restart_agent()
    await eventually(lambda: agent.service.online and agent.service.endpoint == other, 8, "slot 3")
    await octt.wait_status("Available", count=3)  # the CSMS has the new connection
    assert await get_variable(octt, "OCPPCommCtrlr", "ActiveNetworkProfile") == "3"


# -- A05: security profile upgrade over real TLS -----------------------------------------------------


async def test_tc_a_19_a_21_cs_upgrade_security_profile_1_to_2_with_fallback(
    tmp_path: Path, pki: Pki, closing: list[Octt201]
) -> None:
    octt = await harness(tmp_path, profile=1, pki=pki)  # wss:// with Basic auth, [ocpp] ca_file trusted
    closing.append(octt)
    first = await octt.start_agent({"OCPPCommCtrlr/NetworkProfileConnectionAttempts": 1})
    await octt.booted()
    await eventually(lambda: not first.service.features["Security"].in_trial, 5, "profile 1 confirmed")
    url = octt.csms.url
    assert url.startswith("wss://")
    # TC_A_21_CS: profile 3 without a ChargingStationCertificate
    no_cert = await octt.send("SetNetworkProfile", {"configurationSlot": 2, "connectionData": network_profile(url, 3)})
    assert no_cert["status"] == "Rejected"
    # an upgrade that cannot connect (nobody listens there): back on profile 1 after the attempts
    dead = f"wss://127.0.0.1:{closed_port()}"
    answer = await octt.send("SetNetworkProfile", {"configurationSlot": 3, "connectionData": network_profile(dead, 2)})
    assert answer["status"] == "Accepted"
    assert await set_variable(octt, "OCPPCommCtrlr", "NetworkConfigurationPriority", "3,1") == "RebootRequired"
    agent = await octt.restart_agent()
    await eventually(lambda: agent.service.online and agent.service.endpoint == url, 8, "fallback to profile 1")
    await octt.wait_status("Available", count=2)
    assert await get_variable(octt, "SecurityCtrlr", "SecurityProfile") == "1"
    # TC_A_19_CS
    answer = await octt.send("SetNetworkProfile", {"configurationSlot": 2, "connectionData": network_profile(url, 2)})
    assert answer["status"] == "Accepted"
    assert await set_variable(octt, "OCPPCommCtrlr", "NetworkConfigurationPriority", "2,1") == "RebootRequired"
    agent = await octt.restart_agent()
    await eventually(lambda: agent.service.online and agent.service.security_profile == 2, 8, "profile 2")
    await octt.wait_status("Available", count=3)
    await eventually(lambda: not agent.service.features["Security"].in_trial, 5, "profile 2 confirmed")
    assert await get_variable(octt, "SecurityCtrlr", "SecurityProfile") == "2"
    priority = await get_variable(octt, "OCPPCommCtrlr", "NetworkConfigurationPriority")
    assert priority is not None and "1" not in priority.split(",")  # no way back to the lower profile
