"""OCPP 2.0.1 provisioning, pure parts: Get/SetVariables results, report selection, NotifyReport chunks
(every message checked against the 2.0.1 JSON schemas of the ``ocpp`` library), request bounds."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jsonschema
import ocpp.v201
import pytest
from ocpp.charge_point import camel_to_snake_case, snake_to_camel_case
from ocpp.exceptions import FormatViolationError

from agent.db import connect
from agent.ocpp.v201.configuration import (
    base_entries,
    check_request,
    chunks,
    get_variables,
    notify_reports,
    report_item,
    select_entries,
    set_variables,
)
from agent.ocpp.v201.device_model import DeviceModel

SCHEMAS = Path(ocpp.v201.__file__).parent / "schemas"


def schema_check(name: str, payload: dict[str, Any]) -> None:
    schema = json.loads((SCHEMAS / f"{name}.json").read_text())
    jsonschema.validate(payload, schema)


def model(presets: dict[str, object] | None = None) -> DeviceModel:
    return DeviceModel(connect(":memory:", durable=False), presets, evse_ids=(1, 2))


def cv(component: str, variable: str, evse: int | None = None, connector: int | None = None,
       instance: str | None = None) -> dict[str, Any]:
    comp: dict[str, Any] = {"name": component}
    if evse is not None:
        comp["evse"] = {"id": evse} if connector is None else {"id": evse, "connector_id": connector}
    var: dict[str, Any] = {"name": variable}
    if instance is not None:
        var["instance"] = instance
    return {"component": comp, "variable": var}


def test_get_and_set_variables_answers_fit_the_schema() -> None:
    dm = model()
    sets = [
        {**cv("OCPPCommCtrlr", "HeartbeatInterval"), "attribute_value": "42"},
        {**cv("OCPPCommCtrlr", "HeartbeatInterval"), "attribute_value": "-1"},
        {**cv("SecurityCtrlr", "Identity"), "attribute_value": "X"},
        {**cv("OCPPCommCtrlr", "NetworkConfigurationPriority"), "attribute_value": "2,1"},
        {**cv("TxCtrlr", "TxStartPoint"), "attribute_value": "EVConnected", "attribute_type": "Target"},
        {**cv("NoCtrlr", "Enabled"), "attribute_value": "true"},
    ]
    answer = {"setVariableResult": set_variables(dm, sets)}
    schema_check("SetVariablesResponse", answer)
    assert [r["attributeStatus"] for r in answer["setVariableResult"]] == [
        "Accepted", "Rejected", "Rejected", "RebootRequired", "NotSupportedAttributeType", "UnknownComponent",
    ]
    assert answer["setVariableResult"][1]["attributeStatusInfo"]["reasonCode"] == "ValueOutOfRange"

    gets = [
        cv("OCPPCommCtrlr", "HeartbeatInterval"),
        cv("OCPPCommCtrlr", "MessageAttempts", instance="TransactionEvent"),
        cv("SecurityCtrlr", "BasicAuthPassword"),
        cv("EVSE", "AllowReset", evse=2),
        cv("Connector", "Available", evse=1, connector=2),
        cv("TxCtrlr", "Nope"),
    ]
    answer = {"getVariableResult": get_variables(dm, gets)}
    schema_check("GetVariablesResponse", answer)
    results = answer["getVariableResult"]
    assert [r["attributeStatus"] for r in results] == [
        "Accepted", "Accepted", "Rejected", "Accepted", "UnknownComponent", "UnknownVariable",
    ]
    assert results[0]["attributeValue"] == "42"
    assert {r["attributeType"] for r in results} == {"Actual"}  # TC_B_06_CS: Actual also when omitted
    assert results[1]["variable"] == {"name": "MessageAttempts", "instance": "TransactionEvent"}
    assert "attributeValue" not in results[2]
    assert results[3]["component"] == {"name": "EVSE", "evse": {"id": 2}}


def test_request_bounds() -> None:
    """TC_B_08_CS: entries beyond ItemsPerMessage are Rejected (TooManyElements), the others answered;
    a request over BytesPerMessage is a CALLERROR FormatViolation."""
    dm = model(
        {"DeviceDataCtrlr/ItemsPerMessage.GetVariables": 2, "DeviceDataCtrlr/ItemsPerMessage.SetVariables": 1,
         "DeviceDataCtrlr/BytesPerMessage.SetVariables": 1000}
    )
    items = [cv("OCPPCommCtrlr", "HeartbeatInterval")] * 3
    results = get_variables(dm, items)
    assert [(r["attributeStatus"], r.get("attributeStatusInfo", {}).get("reasonCode")) for r in results] == [
        ("Accepted", None), ("Accepted", None), ("Rejected", "TooManyElements"),
    ]
    sets = [{**cv("OCPPCommCtrlr", "HeartbeatInterval"), "attribute_value": value} for value in ("7", "8")]
    assert [r["attributeStatus"] for r in set_variables(dm, sets)] == ["Accepted", "Rejected"]
    assert dm.value("OCPPCommCtrlr", "HeartbeatInterval") == 7  # the refused entry was not applied
    check_request(dm, "GetVariables", {"get_variable_data": items})
    big = [{**cv("OCPPCommCtrlr", "HeartbeatInterval"), "attribute_value": "1" * 400}] * 3
    with pytest.raises(FormatViolationError):
        check_request(dm, "SetVariables", {"set_variable_data": big})


def test_base_reports() -> None:
    dm = model()
    full = base_entries(dm, "FullInventory")
    config = base_entries(dm, "ConfigurationInventory")
    summary = base_entries(dm, "SummaryInventory")
    assert len(full) == len(list(dm.entries()))
    assert config and all(e.spec.mutability.value != "ReadOnly" for e in config)
    assert {e.spec.name for e in summary} == {"AvailabilityState", "Available", "Problem"}
    assert {(e.spec.component, e.evse) for e in summary if e.spec.component == "EVSE"} == {("EVSE", 1), ("EVSE", 2)}


def test_notify_report_chunks_fit_the_bounds_and_the_schema() -> None:
    dm = model({"DeviceDataCtrlr/ItemsPerMessage.GetReport": 7, "DeviceDataCtrlr/BytesPerMessage.GetReport": 3000})
    dm.set("SecurityCtrlr", "BasicAuthPassword", "0123456789abcdefSECRET")
    entries = base_entries(dm, "FullInventory")
    messages = notify_reports(dm, 5, entries, "2027-01-01T00:00:00Z")
    assert len(messages) >= -(-len(entries) // 7)  # at least ceil(entries / ItemsPerMessage)
    assert [m.seq_no for m in messages] == list(range(len(messages)))
    assert [m.tbc for m in messages] == [True] * (len(messages) - 1) + [False]
    reported = 0
    for message in messages:
        payload = snake_to_camel_case(dataclasses.asdict(message))
        payload = {k: v for k, v in payload.items() if v is not None}
        schema_check("NotifyReportRequest", payload)
        assert len(message.report_data) <= 7
        assert len(json.dumps(payload, separators=(",", ":"))) <= 3000 or len(message.report_data) == 1
        reported += len(message.report_data)
        assert "SECRET" not in json.dumps(payload)
    assert reported == len(entries)
    password = next(
        item for m in messages for item in m.report_data if item["variable"]["name"] == "BasicAuthPassword"
    )
    assert password["variableAttribute"] == [
        {"type": "Actual", "mutability": "WriteOnly", "persistent": True, "constant": False}
    ]


def test_chunks_by_items_and_bytes() -> None:
    items = [{"k": "x" * 50} for _ in range(10)]
    assert [len(c) for c in chunks(items, 4, 100_000)] == [4, 4, 2]
    assert [len(c) for c in chunks(items, 100, 200 + 3 * 61)] == [3, 3, 3, 1]
    assert [len(c) for c in chunks(items, 100, 10)] == [1] * 10  # one entry larger than the bound goes alone
    assert chunks([], 5, 1000) == []


def test_get_report_selection() -> None:
    dm = model()
    selected = select_entries(dm, camel_to_snake_case([{"component": {"name": "OCPPCommCtrlr"}}]), None)
    assert selected and {e.spec.component for e in selected} == {"OCPPCommCtrlr"}
    one = select_entries(dm, [cv("OCPPCommCtrlr", "messageattempts", instance="TransactionEvent")], None)
    assert [e.spec.key for e in one] == ["OCPPCommCtrlr/MessageAttempts.TransactionEvent"]
    evse2 = select_entries(dm, [{"component": {"name": "EVSE", "evse": {"id": 2}}}], None)
    assert evse2 and {e.evse for e in evse2} == {2}
    assert select_entries(dm, [cv("NoCtrlr", "X")], None) == []
    enabled = select_entries(dm, None, ["Enabled"])
    assert {e.spec.component for e in enabled} >= {"OCPPCommCtrlr", "TxCtrlr", "AuthCtrlr", "SampledDataCtrlr"}
    dm.set("AuthCacheCtrlr", "Enabled", "false")
    assert "AuthCacheCtrlr" not in {e.spec.component for e in select_entries(dm, None, ["Enabled"])}
    both = select_entries(dm, [{"component": {"name": "AuthCtrlr"}}], ["Enabled"])
    assert {e.spec.component for e in both} == {"AuthCtrlr"}
    assert select_entries(dm, None, ["Problem"]) == []  # nothing is faulted


# OCTT TC_B_53_CS (Part 6): the Core variables a FullInventory must report, with mutability and dataType
# ("RW|RO": either is accepted), and maxLimit > 0 where the test case says so.
TC_B_53_REQUIRED = """
AlignedDataCtrlr Interval - RW integer s
AlignedDataCtrlr Measurands - RW MemberList max
AlignedDataCtrlr TxEndedInterval - RW integer s
AlignedDataCtrlr TxEndedMeasurands - RW MemberList max
AuthCtrlr AuthorizeRemoteStart - RW|RO boolean
AuthCtrlr LocalAuthorizeOffline - RW boolean
AuthCtrlr LocalPreAuthorize - RW boolean
ChargingStation AvailabilityState - RO OptionList
ChargingStation Available - RO boolean
ChargingStation SupplyPhases - RO integer
ClockCtrlr DateTime - RO dateTime
ClockCtrlr TimeSource - RW SequenceList
Connector AvailabilityState - RO OptionList
Connector Available - RO boolean
Connector ConnectorType - RO string
Connector SupplyPhases - RO integer
DeviceDataCtrlr BytesPerMessage GetReport RO integer
DeviceDataCtrlr BytesPerMessage GetVariables RO integer
DeviceDataCtrlr BytesPerMessage SetVariables RO integer
DeviceDataCtrlr ItemsPerMessage GetReport RO integer
DeviceDataCtrlr ItemsPerMessage GetVariables RO integer
DeviceDataCtrlr ItemsPerMessage SetVariables RO integer
EVSE AvailabilityState - RO OptionList
EVSE Available - RO boolean
EVSE Power - RO decimal W
EVSE SupplyPhases - RO integer
OCPPCommCtrlr FileTransferProtocols - RO MemberList
OCPPCommCtrlr MessageTimeout Default RO integer s
OCPPCommCtrlr MessageAttemptInterval TransactionEvent RW integer s
OCPPCommCtrlr MessageAttempts TransactionEvent RW integer
OCPPCommCtrlr NetworkConfigurationPriority - RW SequenceList
OCPPCommCtrlr NetworkProfileConnectionAttempts - RW integer
OCPPCommCtrlr OfflineThreshold - RW integer s
OCPPCommCtrlr ResetRetries - RW integer
OCPPCommCtrlr UnlockOnEVSideDisconnect - RW|RO boolean
SampledDataCtrlr TxEndedInterval - RW integer s
SampledDataCtrlr TxEndedMeasurands - RW MemberList max
SampledDataCtrlr TxStartedMeasurands - RW MemberList max
SampledDataCtrlr TxUpdatedInterval - RW integer s
SampledDataCtrlr TxUpdatedMeasurands - RW MemberList max
SecurityCtrlr CertificateEntries - RO integer max
SecurityCtrlr OrganizationName - RW string
SecurityCtrlr SecurityProfile - RO integer
TxCtrlr EVConnectionTimeOut - RW integer s
TxCtrlr StopTxOnEVSideDisconnect - RW|RO boolean
TxCtrlr StopTxOnInvalidId - RW boolean
TxCtrlr TxStartPoint - RW|RO MemberList
TxCtrlr TxStopPoint - RW|RO MemberList
LocalAuthListCtrlr BytesPerMessage - RO integer
LocalAuthListCtrlr Entries - RO integer max
LocalAuthListCtrlr ItemsPerMessage - RO integer
"""


def test_full_inventory_reports_every_variable_tc_b_53_cs_requires() -> None:
    dm = model()
    items = [report_item(dm, e) for e in base_entries(dm, "FullInventory")]
    by_key = {(i["component"]["name"], i["variable"]["name"], i["variable"].get("instance")): i for i in items}
    mutabilities = {"RW": "ReadWrite", "RO": "ReadOnly"}
    for line in TC_B_53_REQUIRED.strip().splitlines():
        component, variable, instance, mutability, data_type, *other = line.split()
        item = by_key.get((component, variable, None if instance == "-" else instance))
        assert item is not None, line
        actual = item["variableAttribute"][0]
        assert actual["mutability"] in {mutabilities[m] for m in mutability.split("|")}, line
        chars = item["variableCharacteristics"]
        assert chars["dataType"] == data_type, line
        if "s" in other or "W" in other:
            assert chars["unit"] in other, line
        if "max" in other:
            assert chars["maxLimit"] > 0, line
        if data_type in ("OptionList", "MemberList", "SequenceList"):
            assert chars["valuesList"], line
