"""OCPP 1.6 configuration keys: declared as data, persisted overrides, validation, change listeners.

Effective value = override stored in ``state.db`` (ChangeConfiguration or cpctl) > TOML preset
(``[ocpp.keys]``) > declared default. Key names are CiString50 in OCPP, so lookups ignore case and
answers use the canonical spelling. Keys of profiles that are not enabled behave as unknown keys.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Literal

from agent.config import ConfigError
from agent.db import Migration, StorageError, connect, migrate
from agent.redact import REDACTED, is_secret_name
from hal.clock import Clock

log = logging.getLogger("cpagent.ocpp.v16.configuration")

COMPONENT = "ocpp16_configuration"

# Keys committed without an fsync (synchronous=NORMAL for that statement; safe against a process crash, an
# OS crash or power cut may roll the change back, and the next fsynced commit of the same WAL makes it durable).
# HeartbeatInterval: every accepted BootNotification sets it again (the agent stores the CSMS's interval at
# each boot, cpsim fleet's N stations at once), so a lost change is restored by the next boot; no transaction
# message depends on it.
UNSYNCED_KEYS = frozenset({"HeartbeatInterval"})

MIGRATIONS: list[Migration] = [
    "CREATE TABLE ocpp16_config (key TEXT PRIMARY KEY, value TEXT NOT NULL, changed_wall REAL NOT NULL)",
]

CORE = "Core"
FIRMWARE = "FirmwareManagement"
LOCAL_AUTH = "LocalAuthListManagement"
RESERVATION = "Reservation"
SMART_CHARGING = "SmartCharging"
REMOTE_TRIGGER = "RemoteTrigger"
SECURITY = "Security"  # security whitepaper keys; not a name SupportedFeatureProfiles lists
CALIFORNIA_PRICING = "CaliforniaPricing"  # OCA California pricing whitepaper keys; not listed either
FEATURE_PROFILES = (CORE, FIRMWARE, LOCAL_AUTH, RESERVATION, SMART_CHARGING, REMOTE_TRIGGER)

MEASURANDS = frozenset(
    {
        "Current.Export", "Current.Import", "Current.Offered",
        "Energy.Active.Export.Register", "Energy.Active.Import.Register",
        "Energy.Reactive.Export.Register", "Energy.Reactive.Import.Register",
        "Energy.Active.Export.Interval", "Energy.Active.Import.Interval",
        "Energy.Reactive.Export.Interval", "Energy.Reactive.Import.Interval",
        "Frequency", "Power.Active.Export", "Power.Active.Import", "Power.Factor", "Power.Offered",
        "Power.Reactive.Export", "Power.Reactive.Import", "RPM", "SoC", "Temperature", "Voltage",
    }
)  # fmt: skip
PHASE_ROTATIONS = ("NotApplicable", "Unknown", "RST", "RTS", "SRT", "STR", "TRS", "TSR")
MAX_VALUE_LENGTH = 500  # ChangeConfiguration.req value is CiString500

ChangeStatus = Literal["Accepted", "Rejected", "RebootRequired", "NotSupported"]
# "fallback": the security feature restoring the last working settings after new ones failed to connect
# (the whitepaper's one way down for SecurityProfile); "ocpp" and "local" (cpctl) may only raise it.
Source = Literal["ocpp", "local", "fallback"]


class KeyType(StrEnum):
    BOOL = "bool"
    INT = "int"
    STRING = "string"
    MEASURANDS = "csl-measurands"  # comma separated list of 1.6 measurands
    CSL = "csl"  # comma separated list of ``allowed`` values (or items matching ``item_pattern``)


@dataclass(frozen=True)
class KeySpec:
    name: str
    type: KeyType
    default: str
    profile: str = CORE
    readonly: bool = False
    minimum: int | None = None
    maximum: int | None = None
    allowed: frozenset[str] | None = None
    item_pattern: str | None = None
    max_items_key: str | None = None  # the *MaxLength key bounding this list
    min_length: int = 0
    reboot_required: bool = False
    secret: bool = False  # write-only: never shown by GetConfiguration or exports
    only_increase: bool = False  # from the CSMS and from cpctl; only a "fallback" may lower it
    derived: bool = False  # value comes from the station (NumberOfConnectors, SupportedFeatureProfiles)
    # A read-only key the agent honours, so a manufacturer may preset it in [ocpp.keys] (a limit, or a
    # capability that is implemented but off by default). Other read-only keys are errors as presets.
    presettable: bool = False


def _bool(
    name: str, default: bool, profile: str = CORE, *, readonly: bool = False, presettable: bool = False
) -> KeySpec:
    return KeySpec(name, KeyType.BOOL, "true" if default else "false", profile, readonly, presettable=presettable)


def _int(
    name: str,
    default: int,
    profile: str = CORE,
    *,
    readonly: bool = False,
    low: int | None = 0,
    high: int | None = None,
    only_increase: bool = False,
    presettable: bool = False,
) -> KeySpec:
    return KeySpec(
        name, KeyType.INT, str(default), profile, readonly, low, high, only_increase=only_increase,
        presettable=presettable,
    )


def _measurands(name: str, default: str, max_key: str) -> KeySpec:
    return KeySpec(name, KeyType.MEASURANDS, default, max_items_key=max_key)


KEYS: tuple[KeySpec, ...] = (
    # Core (OCPP 1.6 section 9.1) + errata
    _bool("AllowOfflineTxForUnknownId", False),
    _bool("AuthorizationCacheEnabled", True),
    _bool("AuthorizeRemoteTxRequests", True),
    _int("ClockAlignedDataInterval", 0),
    _int("ConnectionTimeOut", 60, low=1),
    KeySpec(
        "ConnectorPhaseRotation",
        KeyType.CSL,
        "0.Unknown",
        item_pattern=rf"([0-9]+)\.({'|'.join(PHASE_ROTATIONS)})",  # ASCII digits: \d takes any script's
        max_items_key="ConnectorPhaseRotationMaxLength",
    ),
    _int("ConnectorPhaseRotationMaxLength", 8, readonly=True, presettable=True),
    _int("GetConfigurationMaxKeys", 100, readonly=True, low=1, presettable=True),
    _int("HeartbeatInterval", 3600),
    _int("LightIntensity", 100, high=100),
    _bool("LocalAuthorizeOffline", True),
    _bool("LocalPreAuthorize", False),
    _int("MaxEnergyOnInvalidId", 0),
    _measurands("MeterValuesAlignedData", "Energy.Active.Import.Register", "MeterValuesAlignedDataMaxLength"),
    _int("MeterValuesAlignedDataMaxLength", 8, readonly=True, presettable=True),
    _measurands("MeterValuesSampledData", "Energy.Active.Import.Register", "MeterValuesSampledDataMaxLength"),
    _int("MeterValuesSampledDataMaxLength", 8, readonly=True, presettable=True),
    _int("MeterValueSampleInterval", 60),
    _int("MinimumStatusDuration", 0),
    KeySpec("NumberOfConnectors", KeyType.INT, "1", readonly=True, derived=True),
    _int("ResetRetries", 3),
    _bool("StopTransactionOnEVSideDisconnect", True),
    _bool("StopTransactionOnInvalidId", True),
    _measurands("StopTxnAlignedData", "", "StopTxnAlignedDataMaxLength"),
    _int("StopTxnAlignedDataMaxLength", 8, readonly=True, presettable=True),
    _measurands("StopTxnSampledData", "", "StopTxnSampledDataMaxLength"),
    _int("StopTxnSampledDataMaxLength", 8, readonly=True, presettable=True),
    KeySpec(
        "SupportedFeatureProfiles",
        KeyType.CSL,
        CORE,
        readonly=True,
        derived=True,
        allowed=frozenset(FEATURE_PROFILES),
        max_items_key="SupportedFeatureProfilesMaxLength",
    ),
    _int("SupportedFeatureProfilesMaxLength", len(FEATURE_PROFILES), readonly=True),
    _int("TransactionMessageAttempts", 3, low=1),
    _int("TransactionMessageRetryInterval", 60),
    _bool("UnlockConnectorOnEVSideDisconnect", True),
    _int("WebSocketPingInterval", 60),  # 0 = no pings; negative -> Rejected
    _int("MessageTimeout", 30, low=1),
    _int("StopTransactionMaxMeterValues", 100),
    KeySpec(
        "SupportedFileTransferProtocols",
        KeyType.CSL,
        "HTTP,HTTPS",
        readonly=True,
        allowed=frozenset({"FTP", "FTPS", "HTTP", "HTTPS", "SFTP"}),
    ),
    # LocalAuthListManagement
    _bool("LocalAuthListEnabled", True, LOCAL_AUTH),
    _int("LocalAuthListMaxLength", 1000, LOCAL_AUTH, readonly=True, presettable=True),
    _int("SendLocalListMaxLength", 100, LOCAL_AUTH, readonly=True, presettable=True),
    # Reservation
    _bool("ReserveConnectorZeroSupported", False, RESERVATION, readonly=True, presettable=True),
    # SmartCharging
    _int("ChargeProfileMaxStackLevel", 10, SMART_CHARGING, readonly=True, presettable=True),
    KeySpec(
        "ChargingScheduleAllowedChargingRateUnit",
        KeyType.CSL,
        "Current,Power",
        SMART_CHARGING,
        readonly=True,
        allowed=frozenset({"Current", "Power"}),
        presettable=True,
    ),
    _int("ChargingScheduleMaxPeriods", 24, SMART_CHARGING, readonly=True, presettable=True),
    _bool("ConnectorSwitch3to1PhaseSupported", False, SMART_CHARGING, readonly=True),
    _int("MaxChargingProfilesInstalled", 10, SMART_CHARGING, readonly=True, presettable=True),
    # Security whitepaper
    _int("SecurityProfile", 0, SECURITY, high=3, only_increase=True),
    KeySpec("AuthorizationKey", KeyType.STRING, "", SECURITY, min_length=16, secret=True),
    KeySpec("CpoName", KeyType.STRING, "", SECURITY),
    _int("CertificateSignedMaxChainSize", 10000, SECURITY, readonly=True, presettable=True),
    _int("CertificateStoreMaxLength", 50, SECURITY, readonly=True, presettable=True),
    _bool("AdditionalRootCertificateCheck", False, SECURITY, readonly=True),
    # California pricing whitepaper (DataTransfer org.openchargealliance.costmsg)
    _bool("CustomDisplayCostAndPrice", True, CALIFORNIA_PRICING, readonly=True),
    _bool("CustomIdleFeeAfterStop", False, CALIFORNIA_PRICING, readonly=True),
    _bool("CustomMultiLanguageMessages", False, CALIFORNIA_PRICING, readonly=True),
    _int("NumberOfDecimalsForCostValues", 2, CALIFORNIA_PRICING, readonly=True, high=6, presettable=True),
    KeySpec("DefaultPrice", KeyType.STRING, "", CALIFORNIA_PRICING),  # JSON: priceText, priceTextOffline, ...
    KeySpec("DefaultPriceText", KeyType.STRING, "", CALIFORNIA_PRICING),
    KeySpec("Language", KeyType.STRING, "en", CALIFORNIA_PRICING),
    KeySpec(
        "SupportedLanguages", KeyType.CSL, "en", CALIFORNIA_PRICING, readonly=True, item_pattern=r"[A-Za-z-]{2,35}"
    ),
    KeySpec("TimeOffset", KeyType.STRING, "+00:00", CALIFORNIA_PRICING),
    KeySpec("NextTimeOffsetTransitionDateTime", KeyType.STRING, "", CALIFORNIA_PRICING),
    KeySpec("TimeOffsetNextTransition", KeyType.STRING, "", CALIFORNIA_PRICING),
)


@dataclass(frozen=True)
class KeyValue:
    """One GetConfiguration.conf configurationKey entry (value None = write-only key)."""

    key: str
    readonly: bool
    value: str | None


class TooManyKeys(ValueError):
    """GetConfiguration asked for more keys than GetConfigurationMaxKeys."""


Listener = Callable[[str, str], None]


# Key specs by lowercase name, per (spec table, enabled profiles): read-only and shared by every store built from
# the same table and profiles (cpsim fleet builds one per station; each would hold its own ~6 kB dict).
_SPEC_TABLES: dict[tuple[int, frozenset[str]], tuple[Sequence[KeySpec], Mapping[str, KeySpec]]] = {}


def _spec_table(specs: Sequence[KeySpec], profiles: frozenset[str]) -> Mapping[str, KeySpec]:
    hit = _SPEC_TABLES.get((id(specs), profiles))
    if hit is None or hit[0] is not specs:  # the table itself is kept in the entry: its id is not reused
        hit = (specs, MappingProxyType({s.name.lower(): s for s in specs if s.profile in profiles}))
        _SPEC_TABLES[(id(specs), profiles)] = hit
    return hit[1]


# Equal frozensets of profile and measurand names shared by every store of the process (cpsim fleet: ~1.2 kB per
# station otherwise); a handful of distinct sets at most.
_SHARED_SETS: dict[frozenset[str], frozenset[str]] = {}


def _shared(names: frozenset[str]) -> frozenset[str]:
    return _SHARED_SETS.setdefault(names, names)


class ConfigurationStore:
    def __init__(
        self,
        conn: sqlite3.Connection,
        presets: Mapping[str, str],
        *,
        number_of_connectors: int,
        enabled_profiles: Iterable[str] = (CORE,),
        clock: Clock | None = None,
        specs: Sequence[KeySpec] = KEYS,
        supported_measurands: Iterable[str] | None = None,
    ) -> None:
        if number_of_connectors < 1:
            raise ValueError("number_of_connectors must be at least 1")
        self._conn = conn
        self._clock = clock
        self._connectors = number_of_connectors
        self._profiles = _shared(frozenset(enabled_profiles) | {CORE})
        unknown_profiles = self._profiles - set(FEATURE_PROFILES) - {SECURITY, CALIFORNIA_PRICING}
        if unknown_profiles:
            raise ValueError(f"unknown OCPP profiles: {sorted(unknown_profiles)}")
        self._measurands = _shared(frozenset(supported_measurands)) if supported_measurands is not None else MEASURANDS
        self._specs = _spec_table(specs, self._profiles)
        self._derived = {
            "NumberOfConnectors": str(number_of_connectors),
            "SupportedFeatureProfiles": ",".join(p for p in FEATURE_PROFILES if p in self._profiles),
        }
        self._listeners: list[Listener] = []
        self._overrides: dict[str, str] = {}
        self._presets: dict[str, str] = {}
        self._validate_presets(presets, specs)
        with self._storage("open the configuration store"):
            migrate(conn, COMPONENT, MIGRATIONS)
            rows = conn.execute("SELECT key, value FROM ocpp16_config").fetchall()
        for key, value in rows:
            spec = self._specs.get(str(key).lower())
            if spec is None or spec.readonly or self._problem(spec, value, "local") is not None:
                # A stored value that no longer fits (key removed, range narrowed): ignore it, keep the row.
                shown = REDACTED if is_secret_name(str(key)) else value
                log.warning("ignoring stored OCPP configuration %s=%r", key, shown)
                continue
            self._overrides[spec.name] = value
        # Reboot-required keys keep their boot-time value for the running agent.
        self._boot_values = {s.name: self._effective(s) for s in self._specs.values() if s.reboot_required}

    # -- OCPP operations ------------------------------------------------------------------------------

    def get(self, keys: list[str] | None = None) -> tuple[list[KeyValue], list[str]]:
        """GetConfiguration: (known keys with values, unknown keys). Write-only keys appear without a
        value when asked for by name and not at all in a full listing."""
        if keys is None:
            return [self._key_value(s) for s in self._specs.values() if not s.secret], []
        wanted = list(dict.fromkeys(keys))
        limit = self.get_int("GetConfigurationMaxKeys")
        if len(wanted) > limit:
            raise TooManyKeys(f"{len(wanted)} keys requested, GetConfigurationMaxKeys is {limit}")
        known: list[KeyValue] = []
        unknown: list[str] = []
        for name in wanted:
            spec = self._specs.get(name.lower())
            if spec is None:
                unknown.append(name)
            else:
                known.append(self._key_value(spec))
        return known, unknown

    def change(self, key: str, value: str, *, source: Source = "ocpp") -> ChangeStatus:
        """ChangeConfiguration (``source="ocpp"``) or cpctl (``"local"``): validate, persist, notify."""
        spec = self._specs.get(key.lower())
        if spec is None:
            return "NotSupported"
        value = self._normalise(spec, value)
        problem = "read-only" if spec.readonly else self._problem(spec, value, source)
        if problem is not None:
            log.info("ChangeConfiguration %s=%r rejected: %s", spec.name, REDACTED if spec.secret else value, problem)
            return "Rejected"
        with self._storage(f"store {spec.name}"):
            unsynced = spec.name in UNSYNCED_KEYS
            if unsynced:
                level = int(self._conn.execute("PRAGMA synchronous").fetchone()[0])
                self._conn.execute("PRAGMA synchronous=NORMAL")
            try:
                self._conn.execute(
                    "INSERT INTO ocpp16_config(key, value, changed_wall) VALUES (?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value, changed_wall = excluded.changed_wall",
                    (spec.name, value, self._clock.wall() if self._clock else 0.0),
                )
            finally:
                if unsynced:
                    self._conn.execute(f"PRAGMA synchronous={level}")
        self._overrides[spec.name] = value
        if spec.reboot_required:
            return "RebootRequired"
        for listener in list(self._listeners):
            try:
                listener(spec.name, value)
            except Exception:
                log.exception("configuration listener failed for %s", spec.name)
        return "Accepted"

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(key, value)`` after every accepted change. Returns an unsubscribe function."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    # -- typed accessors for the agent ----------------------------------------------------------------

    def spec(self, key: str) -> KeySpec | None:
        return self._specs.get(key.lower())

    def get_str(self, key: str) -> str:
        spec = self._require(key, None)
        return self._boot_values.get(spec.name, self._effective(spec))

    def get_int(self, key: str) -> int:
        return int(self._typed(key, KeyType.INT))

    def get_bool(self, key: str) -> bool:
        return self._typed(key, KeyType.BOOL) == "true"

    def get_csl(self, key: str) -> list[str]:
        spec = self._require(key, None)
        if spec.type not in (KeyType.CSL, KeyType.MEASURANDS):
            raise TypeError(f"{spec.name} is {spec.type}, not a list")
        return _items(self.get_str(spec.name))

    def secret_keys(self) -> list[tuple[str, bool]]:
        """The write-only keys as (name, readonly): for cpctl to say whether they are set."""
        return [(s.name, s.readonly) for s in self._specs.values() if s.secret]

    def export(self) -> dict[str, str]:
        """Effective values for diagnostics and cpctl; secrets left out."""
        return {s.name: self._effective(s) for s in self._specs.values() if not s.secret}

    # -- internals ------------------------------------------------------------------------------------

    def _typed(self, key: str, kind: KeyType) -> str:
        spec = self._require(key, kind)
        return self.get_str(spec.name)

    def _require(self, key: str, kind: KeyType | None) -> KeySpec:
        spec = self._specs.get(key.lower())
        if spec is None:
            raise KeyError(f"unknown or disabled OCPP configuration key {key!r}")
        if kind is not None and spec.type != kind:
            raise TypeError(f"{spec.name} is {spec.type}, not {kind}")
        return spec

    def _effective(self, spec: KeySpec) -> str:
        if spec.derived:
            return self._derived[spec.name]
        if spec.name in self._overrides:
            return self._overrides[spec.name]
        return self._presets.get(spec.name, spec.default)

    def _key_value(self, spec: KeySpec) -> KeyValue:
        return KeyValue(spec.name, spec.readonly, None if spec.secret else self._effective(spec))

    def _validate_presets(self, presets: Mapping[str, str], all_specs: Sequence[KeySpec]) -> None:
        by_name = {s.name.lower(): s for s in all_specs}
        # Scalars first, so a list key is checked against its preset *MaxLength.
        lists = {s.name.lower() for s in all_specs if s.type in (KeyType.CSL, KeyType.MEASURANDS)}
        ordered = sorted(presets.items(), key=lambda kv: kv[0].lower() in lists)
        for key, raw in ordered:
            where = f"ocpp.keys.{key}"
            spec = by_name.get(key.lower())
            if spec is None:
                raise ConfigError(where, "not an OCPP 1.6 configuration key")
            if spec.profile not in self._profiles:
                raise ConfigError(where, f"belongs to the {spec.profile} profile, which is not enabled")
            if spec.derived:
                raise ConfigError(where, "read-only (derived from the station configuration)")
            if spec.readonly and not spec.presettable:
                raise ConfigError(where, "read-only (a capability of this charge point, not a setting)")
            value = self._normalise(spec, str(raw))
            problem = self._problem(spec, value, "local")
            if problem is not None:
                raise ConfigError(where, problem)
            self._presets[spec.name] = value

    @staticmethod
    def _normalise(spec: KeySpec, value: str) -> str:
        if spec.type is KeyType.BOOL:
            return value.strip().lower()
        if spec.type in (KeyType.CSL, KeyType.MEASURANDS):
            return ",".join(_items(value))
        return value.strip() if spec.type is KeyType.INT else value

    def _problem(self, spec: KeySpec, value: str, source: Source) -> str | None:
        """Why ``value`` (normalised) is not acceptable for ``spec``, or None."""
        if len(value) > MAX_VALUE_LENGTH:
            return f"longer than {MAX_VALUE_LENGTH} characters"
        if spec.type is KeyType.BOOL:
            return None if value in ("true", "false") else "expected true or false"
        if spec.type is KeyType.INT:
            if not re.fullmatch(r"-?[0-9]{1,18}", value):  # ASCII only: int() takes any script's digits
                return f"expected an integer, got {value!r}"
            number = int(value)
            if spec.minimum is not None and number < spec.minimum:
                return f"expected at least {spec.minimum}, got {number}"
            if spec.maximum is not None and number > spec.maximum:
                return f"expected at most {spec.maximum}, got {number}"
            if spec.only_increase and source != "fallback" and number < int(self._effective(spec)):
                return f"may only increase (now {self._effective(spec)})"
            return None
        if spec.type is KeyType.STRING:
            if value and len(value) < spec.min_length:
                return f"expected at least {spec.min_length} characters"
            return None
        items = _items(value)
        if len(set(items)) != len(items):
            return "list has duplicates"
        if spec.max_items_key is not None:
            limit_spec = self._specs.get(spec.max_items_key.lower())
            limit = int(self._effective(limit_spec)) if limit_spec else None
            if limit is not None and len(items) > limit:
                return f"more than {spec.max_items_key}={limit} items"
        for item in items:
            problem = self._item_problem(spec, item)
            if problem is not None:
                return problem
        return None

    def _item_problem(self, spec: KeySpec, item: str) -> str | None:
        if spec.type is KeyType.MEASURANDS:
            if item not in MEASURANDS:
                return f"{item!r} is not an OCPP 1.6 measurand"
            if item not in self._measurands:
                return f"measurand {item!r} is not supported by this station's meters"
            return None
        if spec.allowed is not None and item not in spec.allowed:
            return f"{item!r} is not one of {', '.join(sorted(spec.allowed))}"
        if spec.item_pattern is not None:
            match = re.fullmatch(spec.item_pattern, item)
            if match is None:
                return f"{item!r} does not match {spec.item_pattern}"
            if spec.name == "ConnectorPhaseRotation" and int(match.group(1)) > self._connectors:
                return f"connector {match.group(1)} does not exist"
        return None

    @staticmethod
    @contextmanager
    def _storage(what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StorageError(f"OCPP configuration: cannot {what}: {exc}") from exc


def _items(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def check_presets(
    presets: Mapping[str, str],
    *,
    number_of_connectors: int,
    enabled_profiles: Iterable[str],
    supported_measurands: Iterable[str] | None = None,
) -> None:
    """Validate ``[ocpp.keys]`` exactly as the store does when the agent starts, without touching the
    state database (``cpagent check-config``). Raises ConfigError naming the key."""
    conn = connect(":memory:", durable=False)
    try:
        ConfigurationStore(
            conn, presets, number_of_connectors=number_of_connectors, enabled_profiles=enabled_profiles,
            supported_measurands=supported_measurands,
        )
    finally:
        conn.close()
