"""OCTT 2.0.1 provisioning cases (Part 6, B05-B08) over real websockets against the bundled CSMS, the
simulator's hardware underneath: SetVariables / GetVariables (TC_B_05_CS .. TC_B_16_CS style), a value
set over OCPP taking effect at once (HeartbeatInterval), GetBaseReport / GetReport answered by
NotifyReport in tbc / seqNo chunks."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from typing import Any

import pytest

from agent.authcache import IdTagInfo, LocalAuthList
from tests.agent.ocpp.v201.conftest import Octt201, eventually


def cv(component: str, variable: str, **extra: Any) -> dict[str, Any]:
    return {"component": {"name": component}, "variable": {"name": variable}, **extra}


async def report(octt: Octt201, request_id: int, within: float = 8.0) -> list[dict[str, Any]]:
    """The NotifyReport payloads of one request, once the last (tbc false) has arrived."""

    def done() -> list[dict[str, Any]] | None:
        parts = [m.payload for m in octt.msgs("NotifyReport") if m.payload["requestId"] == request_id]
        return parts if any(not p.get("tbc", False) for p in parts) else None

    parts: list[dict[str, Any]] = await eventually(done, within, f"NotifyReport {request_id}")
    return parts


async def test_tc_b_06_to_11_32_to_39_set_get_variables_heartbeat_interval_takes_effect(octt: Octt201) -> None:
    agent = await octt.start_agent(
        {"DeviceDataCtrlr/ItemsPerMessage.GetVariables": 6, "TxCtrlr/EVConnectionTimeOut": 33}
    )
    await octt.booted()
    assert agent.station is not None
    assert agent.station.connector_view(1).settings.connection_timeout_s == 33  # the preset reached the connector
    answer = await octt.send("SetVariables", {"setVariableData": [
        cv("OCPPCommCtrlr", "HeartbeatInterval", attributeValue="1"),
        cv("OCPPCommCtrlr", "OfflineThreshold", attributeValue="300"),
        cv("TxCtrlr", "EVConnectionTimeOut", attributeValue="44"),
        cv("OCPPCommCtrlr", "UnlockOnEVSideDisconnect", attributeValue="false"),
        cv("SecurityCtrlr", "Identity", attributeValue="someone-else"),  # TC_B_07_CS-like: read-only
        cv("TxCtrlr", "TxStartPoint", attributeValue="Sometimes"),  # not in the values list
        cv("NoSuchCtrlr", "Enabled", attributeValue="true"),
        {**cv("OCPPCommCtrlr", "HeartbeatInterval", attributeValue="5"), "attributeType": "MaxSet"},
    ]})
    statuses = [(r["attributeStatus"], r.get("attributeStatusInfo", {}).get("reasonCode"))
                for r in answer["setVariableResult"]]
    assert statuses == [("Accepted", None), ("Accepted", None), ("Accepted", None), ("Accepted", None),
                        ("Rejected", "ReadOnly"),
                        ("Rejected", "InvalidValue"), ("UnknownComponent", None), ("NotSupportedAttributeType", None)]
    set_at = time.monotonic()
    settings = agent.station.connector_view(1).settings
    assert (settings.connection_timeout_s, settings.unlock_on_ev_disconnect) == (44, False)  # at once

    answer = await octt.send("GetVariables", {"getVariableData": [
        cv("OCPPCommCtrlr", "HeartbeatInterval"), cv("OCPPCommCtrlr", "OfflineThreshold"),
        cv("SecurityCtrlr", "BasicAuthPassword"), cv("TxCtrlr", "NoSuchVariable"),
        {"component": {"name": "EVSE", "evse": {"id": 1}}, "variable": {"name": "AvailabilityState"}},
        cv("SecurityCtrlr", "SecurityProfile"),
    ]})
    results = answer["getVariableResult"]
    assert [(r["attributeStatus"], r.get("attributeValue")) for r in results] == [
        ("Accepted", "1"), ("Accepted", "300"), ("Rejected", None), ("UnknownVariable", None),
        ("Accepted", "Available"), ("Accepted", str(agent.station.config.ocpp.security_profile)),
    ]
    assert {r["attributeType"] for r in results} == {"Actual"}
    # TC_B_08_CS: one entry more than ItemsPerMessageGetVariables: that one Rejected, TooManyElements
    answer = await octt.send("GetVariables", {"getVariableData": [cv("OCPPCommCtrlr", "OfflineThreshold")] * 7})
    assert [(r["attributeStatus"], r.get("attributeStatusInfo", {}).get("reasonCode"))
            for r in answer["getVariableResult"]] == [("Accepted", None)] * 6 + [("Rejected", "TooManyElements")]
    # The new interval is used at once: two heartbeats about a second apart, not 300 s from the boot.
    first = await octt.wait("Heartbeat", count=1, within=5)
    second = await octt.wait("Heartbeat", count=2, within=5)
    assert time.monotonic() - set_at < 6
    assert first is not second


async def test_tc_b_12_13_53_base_reports_and_get_report_in_chunks(octt: Octt201) -> None:
    await octt.start_agent({"DeviceDataCtrlr/ItemsPerMessage.GetReport": 12})
    await octt.booted()
    assert (await octt.send("GetBaseReport", {"requestId": 7, "reportBase": "FullInventory"}))["status"] == "Accepted"
    parts = await report(octt, 7)
    assert [p["seqNo"] for p in parts] == list(range(len(parts)))
    assert [p.get("tbc", False) for p in parts] == [True] * (len(parts) - 1) + [False]
    assert all(len(p["reportData"]) <= 12 for p in parts)
    items = [item for p in parts for item in p["reportData"]]
    names = {(i["component"]["name"], i["variable"]["name"]) for i in items}
    assert ("OCPPCommCtrlr", "HeartbeatInterval") in names and ("EVSE", "Power") in names
    password = next(i for i in items if i["variable"]["name"] == "BasicAuthPassword")
    assert "value" not in password["variableAttribute"][0]
    power = next(i for i in items if i["component"]["name"] == "EVSE" and i["variable"]["name"] == "Power")
    assert power["variableCharacteristics"]["unit"] == "W" and power["component"]["evse"] == {"id": 1}
    assert power["variableCharacteristics"]["maxLimit"] > 0  # the installation limit x phases x 230 V

    # TC_B_12_CS: ConfigurationInventory lists only writable variables, each with its characteristics
    answer = await octt.send("GetBaseReport", {"requestId": 6, "reportBase": "ConfigurationInventory"})
    assert answer["status"] == "Accepted"
    settings = [item for p in await report(octt, 6) for item in p["reportData"]]
    assert settings and all(i["variableAttribute"][0]["mutability"] in ("ReadWrite", "WriteOnly") for i in settings)
    assert all("variableCharacteristics" in i for i in settings)

    answer = await octt.send("GetReport", {"requestId": 8, "componentVariable": [
        {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}},
        {"component": {"name": "EVSE", "evse": {"id": 1}}},
    ]})
    assert answer["status"] == "Accepted"
    items = [item for p in await report(octt, 8) for item in p["reportData"]]
    assert {i["component"]["name"] for i in items} == {"OCPPCommCtrlr", "EVSE"}
    assert len([i for i in items if i["component"]["name"] == "OCPPCommCtrlr"]) == 1

    answer = await octt.send("GetReport", {"requestId": 9, "componentCriteria": ["Problem"],
                                           "componentVariable": [{"component": {"name": "NoSuchCtrlr"}}]})
    assert answer["status"] == "EmptyResultSet"
    assert not [m for m in octt.msgs("NotifyReport") if m.payload["requestId"] == 9]


async def test_cpctl_config_get_set_reach_the_device_model(octt: Octt201, capsys: pytest.CaptureFixture[str]) -> None:
    from agent.ctl import main as cpctl_main

    agent = await octt.start_agent()
    await octt.booted()
    sock = str(octt.rig.dir / "diag.sock")

    async def cpctl(*args: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(cpctl_main, ["--socket", sock, *args])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = await cpctl("config", "get", "OCPPCommCtrlr/HeartbeatInterval")
    assert code == 0 and out.strip() == "OCPPCommCtrlr/HeartbeatInterval = 300"  # the boot's interval
    code, out, _ = await cpctl("config", "set", "OCPPCommCtrlr/HeartbeatInterval", "45")
    assert code == 0 and out.strip() == "OCPPCommCtrlr/HeartbeatInterval: Accepted"
    assert agent.service.variables.value("OCPPCommCtrlr", "HeartbeatInterval") == 45
    code, _, err = await cpctl("config", "set", "SecurityCtrlr/Identity", "other")
    assert code == 1 and "ReadOnly" in err
    code, _, err = await cpctl("config", "set", "TxCtrlr/EVConnectionTimeOut", "0")
    assert code == 1 and "ValueOutOfRange" in err
    code, _, err = await cpctl("config", "set", "NoSuchCtrlr/Enabled", "true")
    assert code == 1 and "UnknownComponent" in err
    code, out, _ = await cpctl("config", "get", "EVSE@1/AvailabilityState")
    assert code == 0 and out.strip() == "EVSE@1/AvailabilityState = Available (read-only)"
    code, out, _ = await cpctl("config", "get", "NoSuchCtrlr/Enabled")
    assert code == 1 and "unknown key" in out
    code, out, _ = await cpctl("config", "get", "ClockCtrlr/DateTime")
    shown = datetime.fromisoformat(out.strip().split(" = ")[1].split(" ")[0].replace("Z", "+00:00"))
    assert code == 0 and abs(shown.timestamp() - agent.service.wall()) < 5
    code, out, _ = await cpctl("config", "get", "OCPPCommCtrlr/ActiveNetworkProfile")
    assert code == 0 and out.strip() == "OCPPCommCtrlr/ActiveNetworkProfile = 1 (read-only)"
    # facts kept elsewhere are read when asked: the Local Authorization List's size
    code, out, _ = await cpctl("config", "get", "LocalAuthListCtrlr/Entries")
    assert code == 0 and out.strip() == "LocalAuthListCtrlr/Entries = 0 (read-only)"
    LocalAuthList(agent.service.db, agent.service.clock).replace_all(
        1, {"TAG-A": IdTagInfo("Accepted"), "TAG-B": IdTagInfo("Blocked")})
    code, out, _ = await cpctl("config", "get", "LocalAuthListCtrlr/Entries")
    assert code == 0 and out.strip() == "LocalAuthListCtrlr/Entries = 2 (read-only)"
    code, out, _ = await cpctl("--json", "config", "get")
    keys = {row["key"]: row for row in json.loads(out)["configurationKey"]}
    assert {"TxCtrlr/TxStartPoint", "Connector@1.1/ConnectorType"} <= keys.keys()
    # write-only: whether it is set, never its value
    assert "value" not in keys["SecurityCtrlr/BasicAuthPassword"] and keys["SecurityCtrlr/BasicAuthPassword"]["secret"]


async def test_tc_b_02_cs_pending_the_csms_configures_and_reads_the_device_model(octt: Octt201) -> None:
    """TC_B_02_CS steps 3-10: while the boot is Pending the CSMS sets and gets variables and asks for a
    FullInventory; the NotifyReport messages go out although nothing else may."""
    octt.csms.boot_status = "Pending"
    octt.csms.heartbeat_interval = 300
    await octt.start_agent()
    await octt.wait("BootNotification")
    answer = await octt.send("SetVariables", {"setVariableData": [
        cv("OCPPCommCtrlr", "OfflineThreshold", attributeValue="300")]})
    assert answer["setVariableResult"][0]["attributeStatus"] == "Accepted"
    answer = await octt.send("GetVariables", {"getVariableData": [cv("OCPPCommCtrlr", "OfflineThreshold")]})
    assert answer["getVariableResult"][0]["attributeValue"] == "300"
    assert (await octt.send("GetBaseReport", {"requestId": 3, "reportBase": "FullInventory"}))["status"] == "Accepted"
    parts = await report(octt, 3)
    assert [p["seqNo"] for p in parts] == list(range(len(parts)))
    assert {m.action for m in octt.msgs()} == {"BootNotification", "NotifyReport"}
