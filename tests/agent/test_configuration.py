"""OCPP 1.6 configuration keys: declarations, presets, persisted overrides, validation, listeners."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from agent import db
from agent.config import ConfigError
from agent.ocpp.v16.configuration import (
    KEYS,
    MEASURANDS,
    ConfigurationStore,
    KeySpec,
    KeyType,
    KeyValue,
    TooManyKeys,
)
from hal.clock import FakeClock

FIXTURES = Path(__file__).parent / "fixtures"

CORE_KEYS = {
    "AllowOfflineTxForUnknownId", "AuthorizationCacheEnabled", "AuthorizeRemoteTxRequests",
    "ClockAlignedDataInterval", "ConnectionTimeOut", "ConnectorPhaseRotation", "GetConfigurationMaxKeys",
    "HeartbeatInterval", "LocalAuthorizeOffline", "LocalPreAuthorize", "MaxEnergyOnInvalidId",
    "MeterValuesAlignedData", "MeterValuesSampledData", "MeterValueSampleInterval", "MinimumStatusDuration",
    "NumberOfConnectors", "ResetRetries", "StopTransactionOnEVSideDisconnect", "StopTransactionOnInvalidId",
    "StopTxnAlignedData", "StopTxnSampledData", "SupportedFeatureProfiles", "TransactionMessageAttempts",
    "TransactionMessageRetryInterval", "UnlockConnectorOnEVSideDisconnect", "WebSocketPingInterval",
    "MessageTimeout", "StopTransactionMaxMeterValues", "SupportedFileTransferProtocols",
}  # fmt: skip
ALL_PROFILES = ("Core", "LocalAuthListManagement", "Reservation", "SmartCharging", "Security")


def make(
    path: Path, presets: dict[str, str] | None = None, profiles: tuple[str, ...] = ("Core",), **kw: object
) -> ConfigurationStore:
    conn = db.connect(path, durable=False)
    return ConfigurationStore(
        conn, presets or {}, number_of_connectors=2, enabled_profiles=profiles, clock=FakeClock(), **kw
    )  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> ConfigurationStore:
    return make(tmp_path / "state.db", profiles=ALL_PROFILES)


def values(store: ConfigurationStore, *keys: str) -> dict[str, str | None]:
    known, _ = store.get(list(keys))
    return {kv.key: kv.value for kv in known}


def test_every_core_key_is_declared_with_a_valid_default(tmp_path: Path) -> None:
    core = make(tmp_path / "a.db")
    names = {kv.key for kv in core.get()[0]}
    assert names >= CORE_KEYS
    assert all(spec.profile == "Core" for spec in KEYS if spec.name in CORE_KEYS)
    for spec in KEYS:  # a default that fails its own validation would break start-up
        if not spec.derived and not spec.secret:
            assert core._problem(spec, spec.default, "local") is None, spec.name
    assert values(core, "MeterValuesSampledData")["MeterValuesSampledData"] == "Energy.Active.Import.Register"
    assert values(core, "NumberOfConnectors", "SupportedFeatureProfiles") == {
        "NumberOfConnectors": "2",
        "SupportedFeatureProfiles": "Core",
    }


def test_other_profiles_are_unknown_until_enabled(tmp_path: Path) -> None:
    core = make(tmp_path / "a.db")
    known, unknown = core.get(["LocalAuthListEnabled", "HeartbeatInterval", "SecurityProfile", "Nope"])
    assert [kv.key for kv in known] == ["HeartbeatInterval"]
    assert unknown == ["LocalAuthListEnabled", "SecurityProfile", "Nope"]
    assert core.change("LocalAuthListEnabled", "false") == "NotSupported"
    full = make(tmp_path / "b.db", profiles=ALL_PROFILES)
    assert full.get(["LocalAuthListEnabled"]) == ([KeyValue("LocalAuthListEnabled", False, "true")], [])
    assert full.get_str("SupportedFeatureProfiles") == "Core,LocalAuthListManagement,Reservation,SmartCharging"


def test_readonly_flags_and_case_insensitive_names(store: ConfigurationStore) -> None:
    known, unknown = store.get(["numberofconnectors", "HEARTBEATINTERVAL", "heartbeatinterval"])
    assert unknown == []
    assert known[0] == KeyValue("NumberOfConnectors", True, "2")
    assert known[1] == KeyValue("HeartbeatInterval", False, "3600")
    assert store.change("heartbeatinterval", "300") == "Accepted"
    assert store.get_int("HeartbeatInterval") == 300


def test_get_configuration_max_keys(tmp_path: Path) -> None:
    small = make(tmp_path / "a.db", {"GetConfigurationMaxKeys": "2"})
    assert len(small.get(["HeartbeatInterval", "ResetRetries"])[0]) == 2
    with pytest.raises(TooManyKeys):
        small.get(["HeartbeatInterval", "ResetRetries", "MessageTimeout"])
    assert len(small.get()[0]) > 2  # a full listing is not bounded by it


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("WebSocketPingInterval", "-1", "Rejected"),
        ("WebSocketPingInterval", "0", "Accepted"),
        ("HeartbeatInterval", "abc", "Rejected"),
        ("HeartbeatInterval", "1.5", "Rejected"),
        ("HeartbeatInterval", " 900 ", "Accepted"),
        ("LightIntensity", "101", "Rejected"),
        ("TransactionMessageAttempts", "0", "Rejected"),
        ("AuthorizeRemoteTxRequests", "TRUE", "Accepted"),
        ("AuthorizeRemoteTxRequests", "False", "Accepted"),
        ("AuthorizeRemoteTxRequests", "yes", "Rejected"),
        ("AuthorizeRemoteTxRequests", "1", "Rejected"),
        ("MeterValuesSampledData", "Energy.Active.Import.Register, Power.Active.Import,SoC", "Accepted"),
        ("MeterValuesSampledData", "Energy.Active.Import.Register,Frequency.Hz", "Rejected"),
        ("MeterValuesSampledData", "Power.Active.Import,Power.Active.Import", "Rejected"),
        ("MeterValuesSampledData", ",".join(sorted(MEASURANDS)[:9]), "Rejected"),  # > MaxLength 8
        ("StopTxnSampledData", "", "Accepted"),
        ("ConnectorPhaseRotation", "0.RST,1.RST,2.RTS", "Accepted"),
        ("ConnectorPhaseRotation", "3.RST", "Rejected"),
        ("ConnectorPhaseRotation", "1.XYZ", "Rejected"),
        ("NumberOfConnectors", "3", "Rejected"),
        ("GetConfigurationMaxKeys", "5", "Rejected"),
        ("SupportedFeatureProfiles", "Core", "Rejected"),
        ("UnknownVendorKey", "1", "NotSupported"),
        ("CpoName", "x" * 501, "Rejected"),
        ("AuthorizationKey", "tooshort", "Rejected"),
        ("AuthorizationKey", "0123456789abcdef0123", "Accepted"),
        ("SecurityProfile", "4", "Rejected"),
        ("SecurityProfile", "1", "Accepted"),
    ],
)
def test_change_validation(store: ConfigurationStore, key: str, value: str, expected: str) -> None:
    before = store.export()
    assert store.change(key, value) == expected
    if expected != "Accepted":
        assert store.export() == before


def test_normalised_values_are_stored(store: ConfigurationStore) -> None:
    store.change("MeterValuesSampledData", " Energy.Active.Import.Register , SoC ")
    assert store.get_csl("MeterValuesSampledData") == ["Energy.Active.Import.Register", "SoC"]
    store.change("StopTransactionOnInvalidId", "FALSE")
    assert values(store, "StopTransactionOnInvalidId")["StopTransactionOnInvalidId"] == "false"
    assert store.get_bool("StopTransactionOnInvalidId") is False


def test_security_profile_only_increases(store: ConfigurationStore) -> None:
    assert store.change("SecurityProfile", "2") == "Accepted"
    assert store.change("SecurityProfile", "1") == "Rejected"
    assert store.get_int("SecurityProfile") == 2
    assert store.change("SecurityProfile", "1", source="local") == "Rejected"  # nor through cpctl (issue 11)
    assert store.change("SecurityProfile", "1", source="fallback") == "Accepted"  # the security fallback


def test_authorization_key_is_write_only(store: ConfigurationStore) -> None:
    assert store.change("AuthorizationKey", "0123456789abcdef0123") == "Accepted"
    assert "AuthorizationKey" not in {kv.key for kv in store.get()[0]}
    assert store.get(["AuthorizationKey"]) == ([KeyValue("AuthorizationKey", False, None)], [])
    assert "AuthorizationKey" not in store.export()
    assert store.get_str("AuthorizationKey") == "0123456789abcdef0123"  # for the link's Basic auth


def test_precedence_override_over_preset_over_default_and_persistence(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first = make(path, {"HeartbeatInterval": "600", "MeterValueSampleInterval": "30"})
    assert first.get_int("HeartbeatInterval") == 600
    assert first.get_int("ResetRetries") == 3
    assert first.change("HeartbeatInterval", "120") == "Accepted"
    first._conn.close()
    second = make(path, {"HeartbeatInterval": "600", "MeterValueSampleInterval": "30"})
    assert second.get_int("HeartbeatInterval") == 120  # changed value survives reboot, beats the preset
    assert second.get_int("MeterValueSampleInterval") == 30


def test_stored_value_that_no_longer_validates_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    make(path)._conn.close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO ocpp16_config VALUES ('HeartbeatInterval', '-5', 0), ('Gone', 'x', 0)")
    conn.commit()
    conn.close()
    assert make(path).get_int("HeartbeatInterval") == 3600


@pytest.mark.parametrize(
    ("presets", "named"),
    [
        ({"HeartbeatInterval": "often"}, "ocpp.keys.HeartbeatInterval"),
        ({"NoSuchKey": "1"}, "ocpp.keys.NoSuchKey"),
        ({"LocalAuthListEnabled": "true"}, "ocpp.keys.LocalAuthListEnabled"),  # profile not enabled
        ({"NumberOfConnectors": "4"}, "ocpp.keys.NumberOfConnectors"),
        ({"MeterValuesSampledData": "Voltage,Bogus"}, "ocpp.keys.MeterValuesSampledData"),
        ({"MeterValuesSampledDataMaxLength": "1", "MeterValuesSampledData": "Voltage,SoC"}, "SampledData"),
    ],
)
def test_bad_presets_fail_start_up_naming_the_key(tmp_path: Path, presets: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as error:
        make(tmp_path / "a.db", presets)
    assert named in error.value.key


def test_readonly_capability_keys_can_be_preset(tmp_path: Path) -> None:
    store = make(tmp_path / "a.db", {"MeterValuesSampledDataMaxLength": "2"})
    assert store.get(["MeterValuesSampledDataMaxLength"])[0] == [KeyValue("MeterValuesSampledDataMaxLength", True, "2")]
    assert store.change("MeterValuesSampledData", "Voltage,SoC,Temperature") == "Rejected"


def test_supported_measurands_restrict_lists(tmp_path: Path) -> None:
    store = make(tmp_path / "a.db", supported_measurands={"Energy.Active.Import.Register", "Voltage"})
    assert store.change("MeterValuesSampledData", "Voltage") == "Accepted"
    assert store.change("MeterValuesSampledData", "SoC") == "Rejected"


def test_listeners_hear_accepted_changes_only(store: ConfigurationStore) -> None:
    heard: list[tuple[str, str]] = []

    def broken(key: str, value: str) -> None:
        raise RuntimeError("listener bug")

    store.subscribe(broken)
    unsubscribe = store.subscribe(lambda k, v: heard.append((k, v)))
    assert store.change("HeartbeatInterval", "60") == "Accepted"  # a failing listener changes nothing
    store.change("HeartbeatInterval", "-60")
    store.change("NoSuchKey", "1")
    unsubscribe()
    store.change("HeartbeatInterval", "90")
    assert heard == [("HeartbeatInterval", "60")]


def test_typed_accessors_check_types(store: ConfigurationStore) -> None:
    assert store.get_bool("LocalAuthorizeOffline") is True
    assert store.get_csl("ChargingScheduleAllowedChargingRateUnit") == ["Current", "Power"]
    assert store.get_csl("StopTxnSampledData") == []
    with pytest.raises(TypeError):
        store.get_int("LocalAuthorizeOffline")
    with pytest.raises(TypeError):
        store.get_csl("HeartbeatInterval")
    with pytest.raises(KeyError):
        store.get_int("NoSuchKey")


def test_reboot_required_key_keeps_boot_value_until_restart(tmp_path: Path) -> None:
    specs = (*KEYS, KeySpec("VendorBaudRate", KeyType.INT, "9600", minimum=1200, reboot_required=True))
    path = tmp_path / "state.db"
    heard: list[str] = []
    store = make(path, specs=specs)
    store.subscribe(lambda k, v: heard.append(k))
    assert store.change("VendorBaudRate", "19200") == "RebootRequired"
    assert store.get_int("VendorBaudRate") == 9600  # the running agent keeps the old value
    assert values(store, "VendorBaudRate") == {"VendorBaudRate": "19200"}  # GetConfiguration shows the new
    assert heard == []
    store._conn.close()
    assert make(path, specs=specs).get_int("VendorBaudRate") == 19200


def test_storage_error_on_change(store: ConfigurationStore) -> None:
    store._conn.execute("PRAGMA query_only = ON")
    with pytest.raises(db.StorageError, match="HeartbeatInterval"):
        store.change("HeartbeatInterval", "30")
    store._conn.execute("PRAGMA query_only = OFF")
    assert store.get_int("HeartbeatInterval") == 3600


def test_migrates_v1_fixture_database(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    shutil.copy(FIXTURES / "state_v1.db", path)
    store = make(path)
    assert store.get_int("HeartbeatInterval") == 120
    assert store.get_csl("MeterValuesSampledData") == ["Energy.Active.Import.Register", "Power.Active.Import"]
    fresh = db.connect(tmp_path / "fresh.db")
    from agent.ocpp.v16 import configuration

    db.migrate(fresh, configuration.COMPONENT, configuration.MIGRATIONS[:1])
    sql = "SELECT sql FROM sqlite_master WHERE name = 'ocpp16_config'"
    assert fresh.execute(sql).fetchall() == store._conn.execute(sql).fetchall()


def test_readonly_presets_only_where_the_agent_honours_them(tmp_path: Path) -> None:
    """A read-only key is the charge point's to report (OCPP 1.6 section 9): presetting a capability the
    agent does not have, or a value it derives, is a configuration error; limits it enforces and
    implemented-but-off capabilities may be preset by the manufacturer."""
    profiles = (*ALL_PROFILES, "CaliforniaPricing")
    for key, value in (
        ("CustomMultiLanguageMessages", "true"), ("AdditionalRootCertificateCheck", "true"),
        ("ConnectorSwitch3to1PhaseSupported", "true"), ("SupportedFileTransferProtocols", "FTP"),
        ("NumberOfConnectors", "2"), ("SupportedFeatureProfiles", "Core"),
    ):  # fmt: skip
        with pytest.raises(ConfigError) as error:
            make(tmp_path / f"{key}.db", {key: value}, profiles)
        assert error.value.key == f"ocpp.keys.{key}"
        assert error.value.problem.startswith("read-only")
    store = make(tmp_path / "ok.db", {"ReserveConnectorZeroSupported": "true", "ChargingScheduleMaxPeriods": "12"},
                 profiles)
    assert store.get_bool("ReserveConnectorZeroSupported") and store.get_int("ChargingScheduleMaxPeriods") == 12


@pytest.mark.parametrize("value", ["\u0663\u0666\u0660\u0660", "\uff16\uff10", "+60", "6_0", "60\u0966"])
def test_integers_are_ascii_digits_only(tmp_path: Path, value: str) -> None:
    store = make(tmp_path / "a.db")
    assert store.change("HeartbeatInterval", value) == "Rejected"
    assert store.change("ConnectorPhaseRotation", "\u0661.RST") == "Rejected"
    with pytest.raises(ConfigError) as error:
        make(tmp_path / "b.db", {"HeartbeatInterval": value})
    assert error.value.key == "ocpp.keys.HeartbeatInterval"
    assert store.change("HeartbeatInterval", "-60") == "Rejected"  # parsed, then out of range
    assert store.change("HeartbeatInterval", "60") == "Accepted"
