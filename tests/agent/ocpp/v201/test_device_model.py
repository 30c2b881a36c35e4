"""OCPP 2.0.1 device model: the table, validation, presets, persistence, change listeners, and the
variables that read the station (pure unit tests; the station is a small stand-in of StationPort's
read side, since only views are read)."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from agent.config import ConfigError
from agent.db import connect
from agent.events import ConnectorStatus
from agent.ocpp.v201.device_model import (
    VARIABLES,
    DataType,
    DeviceModel,
    DeviceModelError,
    Mutability,
    check_presets,
    parse_key,
    problem,
)
from agent.station_api import ConnectorSettings, ConnectorView, StationFacts
from hal.clock import FakeClock
from hal.types import CpState, MeterSample

MANDATORY = (
    "OCPPCommCtrlr", "TxCtrlr", "DeviceDataCtrlr", "ClockCtrlr", "SecurityCtrlr", "SampledDataCtrlr",
    "AlignedDataCtrlr", "AuthCtrlr", "AuthCacheCtrlr", "LocalAuthListCtrlr", "ChargingStation", "EVSE", "Connector",
)  # fmt: skip


def model(presets: Mapping[str, object] | None = None, **kw: Any) -> DeviceModel:
    return DeviceModel(connect(":memory:", durable=False), presets, evse_ids=kw.pop("evse_ids", (1, 2)), **kw)


# -- the table ----------------------------------------------------------------------------------------


def test_table_covers_the_mandatory_components_and_every_default_is_valid() -> None:
    dm = model()
    assert {s.component for s in VARIABLES} >= set(MANDATORY)
    assert len({s.key.lower() for s in VARIABLES}) == len(VARIABLES)
    for component in {s.component for s in VARIABLES}:
        assert len({s.scope for s in VARIABLES if s.component == component}) == 1, component
    for spec in VARIABLES:
        if spec.default is not None:
            assert problem(spec, spec.default, dm.values_list(spec)) is None, spec.key
        if spec.type in (DataType.OPTION_LIST, DataType.MEMBER_LIST, DataType.SEQUENCE_LIST):
            assert dm.values_list(spec), spec.key
    # the variables the issue names, each with the spec's type and mutability
    for key, kind, mutability in [
        ("OCPPCommCtrlr/HeartbeatInterval", DataType.INTEGER, Mutability.READ_WRITE),
        ("OCPPCommCtrlr/MessageAttempts.TransactionEvent", DataType.INTEGER, Mutability.READ_WRITE),
        ("TxCtrlr/TxStartPoint", DataType.MEMBER_LIST, Mutability.READ_WRITE),
        ("SecurityCtrlr/BasicAuthPassword", DataType.STRING, Mutability.WRITE_ONLY),
        ("ClockCtrlr/TimeSource", DataType.SEQUENCE_LIST, Mutability.READ_WRITE),
        ("EVSE/Power", DataType.DECIMAL, Mutability.READ_ONLY),
        ("ChargingStation/AvailabilityState", DataType.OPTION_LIST, Mutability.READ_ONLY),
    ]:
        found = dm.spec(*key.split("/"))
        assert found is not None and (found.type, found.mutability) == (kind, mutability), key


def test_evse_and_connector_instances_follow_the_station() -> None:
    dm = model(evse_ids=(1, 2, 3))
    evses = {e.evse for e in dm.entries() if e.spec.component == "EVSE"}
    connectors = {(e.evse, e.connector) for e in dm.entries() if e.spec.component == "Connector"}
    assert evses == {1, 2, 3}
    assert connectors == {(1, 1), (2, 1), (3, 1)}


# -- value(), get(), set() --------------------------------------------------------------------------


def test_typed_values_and_names_ignore_case() -> None:
    dm = model()
    assert dm.value("OCPPCommCtrlr", "HeartbeatInterval") == 3600
    assert dm.value("ocppcommctrlr", "messageattempts", instance="transactionevent") == 3
    assert dm.value("OCPPCommCtrlr", "MessageAttempts.TransactionEvent") == 3
    assert dm.boolean("TxCtrlr", "StopTxOnInvalidId") is True
    assert dm.members("TxCtrlr", "TxStopPoint") == ("EVConnected", "Authorized")
    with pytest.raises(DeviceModelError):
        dm.value("TxCtrlr", "NoSuchThing")


@pytest.mark.parametrize(
    ("variable", "value", "status", "reason"),
    [
        ("OCPPCommCtrlr/HeartbeatInterval", "60", "Accepted", None),
        ("OCPPCommCtrlr/HeartbeatInterval", " 60 ", "Accepted", None),
        ("OCPPCommCtrlr/HeartbeatInterval", "0", "Rejected", "ValueOutOfRange"),
        ("OCPPCommCtrlr/HeartbeatInterval", "6O", "Rejected", "InvalidValue"),
        ("OCPPCommCtrlr/HeartbeatInterval", "١٢", "Rejected", "InvalidValue"),  # non-ASCII digits
        ("OCPPCommCtrlr/HeartbeatInterval", "1" * 40, "Rejected", "InvalidValue"),
        ("TxCtrlr/StopTxOnInvalidId", "False", "Accepted", None),
        ("TxCtrlr/StopTxOnInvalidId", "yes", "Rejected", "InvalidValue"),
        ("TxCtrlr/TxStartPoint", "EVConnected, Authorized", "Accepted", None),
        ("TxCtrlr/TxStartPoint", "EVConnected,Plugged", "Rejected", "InvalidValue"),
        ("TxCtrlr/TxStartPoint", "Authorized,Authorized", "Rejected", "InvalidValue"),
        ("TxCtrlr/TxStartPoint", "", "Rejected", "InvalidValue"),
        ("SampledDataCtrlr/TxUpdatedMeasurands", "Voltage,SoC", "Accepted", None),
        ("SampledDataCtrlr/TxUpdatedMeasurands", "Frequency", "Rejected", "InvalidValue"),  # no meter gives it
        ("SampledDataCtrlr/TxEndedMeasurands", "", "Accepted", None),
        ("AuthCacheCtrlr/Policy", "LFU", "Rejected", "InvalidValue"),
        ("SecurityCtrlr/BasicAuthPassword", "short", "Rejected", "ValueOutOfRange"),
        ("SecurityCtrlr/BasicAuthPassword", "x" * 41, "Rejected", "ValueOutOfRange"),
        ("SecurityCtrlr/OrganizationName", "x" * 51, "Rejected", "ValueOutOfRange"),
        ("ClockCtrlr/NextTimeOffsetTransitionDateTime", "2027-03-28T01:00:00Z", "Accepted", None),
        ("ClockCtrlr/NextTimeOffsetTransitionDateTime", "2027-03-28T01:00:00", "Rejected", "InvalidValue"),
        ("OCPPCommCtrlr/NetworkConfigurationPriority", "2,1", "RebootRequired", None),
        ("OCPPCommCtrlr/NetworkConfigurationPriority", "0", "Rejected", "InvalidValue"),
        ("SecurityCtrlr/SecurityProfile", "2", "Rejected", "ReadOnly"),
        ("DeviceDataCtrlr/ItemsPerMessage.GetReport", "5", "Rejected", "ReadOnly"),
        ("ChargingStation/AvailabilityState", "Available", "Rejected", "ReadOnly"),
        ("TxCtrlr/NoSuchVariable", "1", "UnknownVariable", None),
        ("NoSuchCtrlr/Enabled", "1", "UnknownComponent", None),
    ],
)
def test_set_variables_validation(variable: str, value: str, status: str, reason: str | None) -> None:
    dm = model()
    component, name = variable.split("/")
    before = dm.text(component, name) if dm.spec(component, name) else None
    result = dm.set(component, name, value)
    assert (result.status, result.reason) == (status, reason), result
    if status in ("Accepted", "RebootRequired"):
        assert dm.get(component, name).status in ("Accepted", "Rejected")  # the write-only one: Rejected
    elif before is not None:
        assert dm.text(component, name) == before  # a refused value changes nothing


def test_attributes_components_and_write_only() -> None:
    dm = model()
    assert dm.get("TxCtrlr", "TxStartPoint", "Target").status == "NotSupportedAttributeType"
    assert dm.set("TxCtrlr", "TxStartPoint", "EVConnected", "MinSet").status == "NotSupportedAttributeType"
    assert dm.get("TxCtrlr", "TxStartPoint", evse=1).status == "UnknownComponent"  # station-wide component
    assert dm.get("EVSE", "AllowReset").status == "UnknownComponent"  # an EVSE needs its id
    assert dm.get("EVSE", "AllowReset", evse=3).status == "UnknownComponent"
    assert dm.get("EVSE", "AllowReset", evse=2).value == "true"
    assert dm.get("Connector", "Available", evse=1).status == "UnknownComponent"  # needs connectorId
    assert dm.get("OCPPCommCtrlr", "HeartbeatInterval", component_instance="x").status == "UnknownComponent"
    assert dm.set("SecurityCtrlr", "BasicAuthPassword", "0123456789abcdefXYZ").status == "Accepted"
    result = dm.get("SecurityCtrlr", "BasicAuthPassword")
    assert (result.status, result.reason, result.value) == ("Rejected", "WriteOnly", None)
    assert "SecurityCtrlr/BasicAuthPassword" not in dm.export()
    assert dm.text("SecurityCtrlr", "BasicAuthPassword") == "0123456789abcdefXYZ"  # the agent may read it
    # the agent itself may write a read-only variable (a new security profile after SetNetworkProfile)
    assert dm.set("SecurityCtrlr", "SecurityProfile", "2", source="internal").status == "Accepted"
    assert dm.value("SecurityCtrlr", "SecurityProfile") == 2


def test_secret_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    dm = model()
    caplog.set_level(logging.DEBUG, logger="cpagent")
    dm.set("SecurityCtrlr", "BasicAuthPassword", "0123456789abcdefSECRET")
    dm.set("SecurityCtrlr", "BasicAuthPassword", "tooSHORTsecret")
    assert caplog.records
    assert "SECRET" not in caplog.text


def test_on_change_once_per_change_and_a_failing_listener_is_contained() -> None:
    dm = model()
    seen: list[tuple[str, str, object]] = []

    def broken(component: str, variable: str, value: object) -> None:
        raise RuntimeError("listener bug")

    dm.on_change(broken)
    unsubscribe = dm.on_change(lambda c, v, x: seen.append((c, v, x)))
    assert dm.set("OCPPCommCtrlr", "HeartbeatInterval", "30").status == "Accepted"
    assert dm.set("OCPPCommCtrlr", "HeartbeatInterval", "30").status == "Accepted"  # same value: no event
    dm.set("OCPPCommCtrlr", "MessageAttempts", "7", instance="TransactionEvent")
    dm.set("OCPPCommCtrlr", "HeartbeatInterval", "-5")  # refused: no event
    unsubscribe()
    dm.set("OCPPCommCtrlr", "HeartbeatInterval", "31")
    assert seen == [
        ("OCPPCommCtrlr", "HeartbeatInterval", 30),
        ("OCPPCommCtrlr", "MessageAttempts.TransactionEvent", 7),
    ]


# -- presets and persistence --------------------------------------------------------------------------


def test_presets_apply_and_a_value_set_over_ocpp_wins_across_restarts(tmp_path: Path) -> None:
    presets = {
        "OCPPCommCtrlr/HeartbeatInterval": 90,
        "TxCtrlr/TxStartPoint": ["EVConnected", "Authorized"],
        "TxCtrlr/StopTxOnInvalidId": False,
        "DeviceDataCtrlr/ItemsPerMessage.GetReport": 7,  # a read-only limit the manufacturer presets
    }
    db = tmp_path / "state.db"
    dm = DeviceModel(connect(db), presets, evse_ids=(1,))
    assert dm.value("OCPPCommCtrlr", "HeartbeatInterval") == 90
    assert dm.members("TxCtrlr", "TxStartPoint") == ("EVConnected", "Authorized")
    assert dm.value("TxCtrlr", "StopTxOnInvalidId") is False
    assert dm.value("DeviceDataCtrlr", "ItemsPerMessage.GetReport") == 7
    assert dm.set("OCPPCommCtrlr", "HeartbeatInterval", "15").status == "Accepted"
    dm.set("SecurityCtrlr", "BasicAuthPassword", "0123456789abcdefXYZ")

    again = DeviceModel(connect(db), presets, evse_ids=(1,))
    assert again.value("OCPPCommCtrlr", "HeartbeatInterval") == 15  # set over OCPP beats the preset
    assert again.value("TxCtrlr", "StopTxOnInvalidId") is False
    assert again.text("SecurityCtrlr", "BasicAuthPassword") == "0123456789abcdefXYZ"


def test_a_stored_value_that_no_longer_fits_is_ignored(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    DeviceModel(connect(db), evse_ids=(1,))
    conn = connect(db)
    conn.execute("INSERT INTO ocpp201_variables VALUES ('OCPPCommCtrlr/HeartbeatInterval', 'abc', 0)")
    conn.execute("INSERT INTO ocpp201_variables VALUES ('Gone/Away', '1', 0)")
    assert DeviceModel(conn, evse_ids=(1,)).value("OCPPCommCtrlr", "HeartbeatInterval") == 3600


@pytest.mark.parametrize(
    ("presets", "key", "words"),
    [
        ({"OCPPCommCtrlr/HeartbeatInterval": "often"}, "ocpp.variables.OCPPCommCtrlr/HeartbeatInterval",
         "integer"),
        ({"OCPPCommCtrlr/HeartbeatInterval": 0}, "ocpp.variables.OCPPCommCtrlr/HeartbeatInterval", "at least 1"),
        ({"NoCtrlr/X": 1}, "ocpp.variables.NoCtrlr/X", "unknown component"),
        ({"TxCtrlr/X": 1}, "ocpp.variables.TxCtrlr/X", "no variable"),
        ({"TxCtrlr": 1}, "ocpp.variables.TxCtrlr", "Component[.instance]/Variable[.instance]"),
        ({"SecurityCtrlr/SecurityProfile": 2}, "ocpp.variables.SecurityCtrlr/SecurityProfile", "read-only"),
        ({"EVSE/Power": 1}, "ocpp.variables.EVSE/Power", "station-wide"),
        ({"TxCtrlr/TxStopPoint": ["Sometime"]}, "ocpp.variables.TxCtrlr/TxStopPoint", "not one of"),
    ],
)
def test_bad_presets_name_the_key(presets: dict[str, object], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as error:
        check_presets(presets)
    assert error.value.key == key
    assert words in error.value.problem


def test_parse_key() -> None:
    assert parse_key("OCPPCommCtrlr/MessageAttempts.TransactionEvent") == (
        "OCPPCommCtrlr", None, "MessageAttempts", "TransactionEvent",
    )
    with pytest.raises(ValueError):
        parse_key("OCPPCommCtrlr")


# -- variables that read the station --------------------------------------------------------------------


def _view(cid: int, **changes: Any) -> ConnectorView:
    base = ConnectorView(
        id=cid, status=ConnectorStatus.AVAILABLE, faults=frozenset(), available=True, maintenance=False,
        session=None, pending_id_tag=None, session_energy_wh=0.0, last_sample=None, meter_latest=None,
        has_meter=True, cp_state=CpState.A, ev_connected=False, charge_state="IDLE", offered_current_a=0.0,
        duty_percent=None, relay_commanded_closed=False, relay_feedback_closed=False, energy_holds=frozenset(),
        has_lock=True, locked=False, lock_held_for=None, reservation=None, used_reservation=None,
        display_extra=(), max_current_a=16.0, phases=3, fixed_cable=False, settings=ConnectorSettings(),
    )
    return dataclasses.replace(base, **changes)


class ViewsOnly:
    """The read side of StationPort (views and facts) plus configure_connector, recorded."""

    def __init__(self, views: dict[int, ConnectorView]) -> None:
        self.views = views
        self.configured: list[tuple[int, ConnectorSettings]] = []

    def connector_ids(self) -> tuple[int, ...]:
        return tuple(self.views)

    def connector_view(self, connector_id: int) -> ConnectorView:
        return self.views[connector_id]

    def connector_views(self) -> Mapping[int, ConnectorView]:
        return dict(self.views)

    def facts(self) -> StationFacts:
        return StationFacts("CP-7", "ACME", "Box22", "SN1", "1.0", tuple(self.views), True, frozenset(), 0.0, ())

    def configure_connector(self, connector_id: int, settings: ConnectorSettings) -> None:
        self.configured.append((connector_id, settings))


def test_station_variables_read_the_views_at_each_request() -> None:
    station = ViewsOnly({1: _view(1), 2: _view(2, phases=1, fixed_cable=True, max_current_a=32.0)})
    port: Any = station
    dm = DeviceModel(connect(":memory:", durable=False), station=port, clock=FakeClock(start_wall=1_800_000_000.0))
    assert dm.evse_ids == (1, 2)
    assert dm.get("EVSE", "AvailabilityState", evse=1).value == "Available"
    assert dm.get("EVSE", "Power", "MaxSet", evse=1).value == "11040"  # 16 A x 3 x 230 V
    assert dm.get("EVSE", "Power", "MaxSet", evse=2).value == "7360"
    assert dm.get("EVSE", "Power", evse=1).value == "0"
    assert dm.get("Connector", "ConnectorType", evse=2, connector=1).value == "cType2"
    assert dm.get("Connector", "ConnectorType", evse=1, connector=1).value == "sType2"
    assert dm.value("Connector", "SupplyPhases", evse=2, connector=1) == 1
    assert dm.value("ChargingStation", "SupplyPhases") == 3
    assert dm.value("SecurityCtrlr", "Identity") == "CP-7"
    assert dm.value("ClockCtrlr", "DateTime") == "2027-01-15T08:00:00Z"

    sample = MeterSample(1000.0, 7123.5)
    station.views[1] = _view(1, status=ConnectorStatus.CHARGING, relay_commanded_closed=True, last_sample=sample)
    station.views[2] = _view(2, status=ConnectorStatus.UNAVAILABLE, available=False)
    assert dm.get("EVSE", "AvailabilityState", evse=1).value == "Occupied"
    assert dm.get("EVSE", "Power", evse=1).value == "7123.5"
    assert dm.value("EVSE", "Available", evse=2) is False
    assert dm.value("ChargingStation", "AvailabilityState") == "Occupied"
    assert dm.value("ChargingStation", "Available") is True
    station.views[1] = _view(1, status=ConnectorStatus.FAULTED)
    assert dm.value("ChargingStation", "AvailabilityState") == "Unavailable"
    assert dm.value("Connector", "Problem", evse=1, connector=1) is True


def test_connector_settings_take_effect_at_once() -> None:
    station = ViewsOnly({1: _view(1), 2: _view(2)})
    port: Any = station
    dm = DeviceModel(connect(":memory:", durable=False), station=port)
    assert dm.set("TxCtrlr", "EVConnectionTimeOut", "45").status == "Accepted"
    assert station.configured == [(1, ConnectorSettings(45.0, True, True)), (2, ConnectorSettings(45.0, True, True))]
    dm.set("OCPPCommCtrlr", "UnlockOnEVSideDisconnect", "false")
    dm.set("TxCtrlr", "StopTxOnEVSideDisconnect", "false")
    assert station.configured[-1] == (2, ConnectorSettings(45.0, False, False))


def test_bound_facts_from_other_parts() -> None:
    dm = model(facts={"local_list_entries": lambda: 12})
    assert dm.value("LocalAuthListCtrlr", "Entries") == 12
    dm.bind("certificate_entries", lambda: 3)
    assert dm.value("SecurityCtrlr", "CertificateEntries") == 3


def test_frames_never_show_the_basic_auth_password() -> None:
    from agent.redact import LoggedFrame

    set_request = [2, "1", "SetVariables", {"setVariableData": [
        {"attributeValue": "0123456789abcdefSECRET", "component": {"name": "SecurityCtrlr"},
         "variable": {"name": "BasicAuth\\u0050assword"}},
        {"attributeValue": "60", "component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}},
    ]}]
    text = str(LoggedFrame(json.dumps(set_request).replace("\\\\u0050", "\\u0050")))
    assert "SECRET" not in text and '"attributeValue":"60"' in text and "SecurityCtrlr" in text
    report = [2, "2", "NotifyReport", {"reportData": [{"component": {"name": "SecurityCtrlr"},
              "variable": {"name": "BasicAuthPassword"}, "variableAttribute": [{"value": "0123456789abcdefSECRET"}]}]}]
    assert "SECRET" not in str(LoggedFrame(json.dumps(report)))


def test_ocpp_variables_table_in_the_toml(tmp_path: Path) -> None:
    from agent.config import load
    from agent.preflight import check_ocpp_variables

    base = (
        '[station]\nid = "CP1"\n[devices.b]\ndriver = "pilot-board-serial"\nport = "/dev/null"\n'
        '[[connectors]]\npilot = "b"\n[ocpp]\nendpoint = "ws://127.0.0.1:9/ocpp"\n[ocpp.variables]\n'
    )
    path = tmp_path / "agent.toml"

    def loaded(table: str) -> Any:
        path.write_text(base + table)
        return load(path)

    config = loaded('"OCPPCommCtrlr/HeartbeatInterval" = 60\n"TxCtrlr/TxStopPoint" = ["EVConnected"]\n')
    assert config.ocpp.variables == {"OCPPCommCtrlr/HeartbeatInterval": "60", "TxCtrlr/TxStopPoint": "EVConnected"}
    check_ocpp_variables(config)
    with pytest.raises(ConfigError) as error:
        loaded('"OCPPCommCtrlr/HeartbeatInterval" = {a = 1}\n')
    assert error.value.key == "ocpp.variables.OCPPCommCtrlr/HeartbeatInterval"
    with pytest.raises(ConfigError) as error:
        loaded("HeartbeatInterval = 60\n")
    assert error.value.key == "ocpp.variables.HeartbeatInterval"
    with pytest.raises(ConfigError) as error:
        check_ocpp_variables(loaded('"EVSE/Power" = 60\n'))
    assert error.value.key == "ocpp.variables.EVSE/Power"


def test_agent_presets_from_the_ocpp_table() -> None:
    dm = model({"SecurityCtrlr/OrganizationName": "ACME"})
    dm.preset("SecurityCtrlr", "SecurityProfile", "2")
    assert dm.value("SecurityCtrlr", "SecurityProfile") == 2
    dm.preset("SecurityCtrlr", "OrganizationName", "Other")  # [ocpp.variables] wins
    assert dm.value("SecurityCtrlr", "OrganizationName") == "ACME"
    assert dm.set("SecurityCtrlr", "SecurityProfile", "3", source="internal").status == "Accepted"
    assert dm.value("SecurityCtrlr", "SecurityProfile") == 3
    with pytest.raises(ValueError, match="at least 16"):
        dm.preset("SecurityCtrlr", "BasicAuthPassword", "short")
    with pytest.raises(DeviceModelError):
        dm.preset("EVSE", "Power", "1")
