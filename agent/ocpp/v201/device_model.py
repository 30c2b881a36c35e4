"""The OCPP 2.0.1 device model: every variable a Core AC station reports, declared as data, with
persisted values, ``[ocpp.variables]`` presets, validation and change listeners.

A variable is addressed by component (name, optional instance, optional EVSE / connector) and variable
(name, optional instance), and has attributes (Actual, Target, MinSet, MaxSet) with a mutability. The
table ``VARIABLES`` gives for each: data type, unit, limits, values list, mutability, default, and whether
the value is a setting (stored) or a fact of the station (read from ``StationPort`` views when asked:
Available, AvailabilityState, Power, SupplyPhases, ConnectorType, DateTime, Identity ...).

Effective value of a setting = value set over OCPP / cpctl (persisted in ``state.db``) > preset in
``[ocpp.variables]`` > declared default. Names are matched ignoring case and answered in the spec's
spelling. EVSE / Connector instances come from the station: each connector of the station is an EVSE
(``evse id = connector id``) with one connector (``connectorId = 1``).

Values cross OCPP as strings; ``value()`` gives the typed value (bool, int, float, str, or a tuple of
str for MemberList / SequenceList). Write-only variables (SecurityCtrlr.BasicAuthPassword) are never
reported, listed or logged.
"""

from __future__ import annotations

import logging
import math
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

from agent.config import ConfigError
from agent.db import Migration, StorageError, connect, migrate
from agent.events import ConnectorStatus
from agent.ocpp.v201 import meter_values
from agent.redact import REDACTED

if TYPE_CHECKING:
    from agent.station_api import ConnectorSettings, ConnectorView, StationPort
    from hal.clock import Clock

log = logging.getLogger("cpagent.ocpp.v201.device_model")

COMPONENT = "ocpp201_device_model"
MIGRATIONS: list[Migration] = [
    "CREATE TABLE ocpp201_variables (key TEXT PRIMARY KEY, value TEXT NOT NULL, changed_wall REAL NOT NULL)",
]

# Measurands the station's meters provide (agent/ocpp/v201/meter_values.py builds them). The *Measurands
# variables accept only these.
SUPPORTED_MEASURANDS: tuple[str, ...] = tuple(sorted(meter_values.SUPPORTED_MEASURANDS))
NOMINAL_VOLTAGE_V = 230.0  # EVSE.Power MaxSet: installation current x phases x nominal phase voltage


class DataType(StrEnum):
    STRING = "string"
    DECIMAL = "decimal"
    INTEGER = "integer"
    DATETIME = "dateTime"
    BOOLEAN = "boolean"
    OPTION_LIST = "OptionList"
    SEQUENCE_LIST = "SequenceList"
    MEMBER_LIST = "MemberList"


LIST_TYPES = frozenset({DataType.SEQUENCE_LIST, DataType.MEMBER_LIST})


class Mutability(StrEnum):
    READ_ONLY = "ReadOnly"
    WRITE_ONLY = "WriteOnly"
    READ_WRITE = "ReadWrite"


class Scope(StrEnum):
    STATION = "station"  # one instance (controllers, ChargingStation)
    EVSE = "evse"  # one per EVSE
    CONNECTOR = "connector"  # one per connector of each EVSE


ACTUAL = "Actual"
ATTRIBUTES = ("Actual", "Target", "MinSet", "MaxSet")
MEASURANDS = "measurands"  # values_from: the meters' measurands

GetStatus = Literal["Accepted", "Rejected", "UnknownComponent", "UnknownVariable", "NotSupportedAttributeType"]
SetStatus = Literal[
    "Accepted", "Rejected", "UnknownComponent", "UnknownVariable", "NotSupportedAttributeType", "RebootRequired"
]
# "ocpp": SetVariables; "local": cpctl; "internal": the agent itself (e.g. SecurityProfile after a new
# network profile, a BasicAuthPassword fallback, Entries counters): may write ReadOnly variables.
Source = Literal["ocpp", "local", "internal"]
Value = bool | int | float | str | tuple[str, ...]


@dataclass(frozen=True)
class VariableSpec:
    component: str
    name: str
    type: DataType
    default: str | None  # None: no stored value (a fact of the station, or unset until configured)
    mutability: Mutability = Mutability.READ_WRITE
    instance: str | None = None  # variable instance (MessageAttempts.TransactionEvent)
    unit: str | None = None
    min: float | None = None  # numbers: value range; string: length range
    max: float | None = None  # numbers: value range; string and lists: maximum length of the value
    values: tuple[str, ...] | None = None  # OptionList / MemberList / SequenceList
    values_from: str | None = None  # MEASURANDS: values list given by the station's meters
    required: bool = False  # "Required" in the spec's list of referenced variables
    scope: Scope = Scope.STATION
    source: str | None = None  # a fact of the station: name of the getter (see DeviceModel._FACTS)
    attributes: tuple[str, ...] = (ACTUAL,)
    reboot_required: bool = False  # a new value takes effect at the next boot / connection
    presettable: bool = False  # a ReadOnly limit the manufacturer may preset in [ocpp.variables]
    min_items: int = 0  # lists: at least this many members
    description: str = ""
    monitorable: bool = False  # variableCharacteristics.supportsMonitoring (N04 monitors allowed, monitoring.py)

    @property
    def variable(self) -> str:
        """``Name`` or ``Name.Instance`` (the preset / on_change spelling)."""
        return f"{self.name}.{self.instance}" if self.instance else self.name

    @property
    def key(self) -> str:
        return f"{self.component}/{self.variable}"

    @property
    def secret(self) -> bool:
        return self.mutability is Mutability.WRITE_ONLY


def _v(
    component: str,
    name: str,
    type_: DataType,
    default: str | None = None,
    mutability: Mutability = Mutability.READ_WRITE,
    **kw: object,
) -> VariableSpec:
    return VariableSpec(component, name, type_, default, mutability, **kw)  # type: ignore[arg-type]


RO = Mutability.READ_ONLY
RW = Mutability.READ_WRITE
WO = Mutability.WRITE_ONLY
B, INT, DEC, S, T = DataType.BOOLEAN, DataType.INTEGER, DataType.DECIMAL, DataType.STRING, DataType.DATETIME
OPT, SEQ, MEM = DataType.OPTION_LIST, DataType.SEQUENCE_LIST, DataType.MEMBER_LIST

TX_POINTS = ("ParkingBayOccupancy", "EVConnected", "Authorized", "DataSigned", "PowerPathClosed", "EnergyTransfer")
AVAILABILITY_STATES = ("Available", "Occupied", "Reserved", "Unavailable", "Faulted")
FILE_TRANSFER_PROTOCOLS = ("FTP", "FTPS", "HTTP", "HTTPS", "SFTP")

# The variables of OCPP 2.0.1 Part 2 (referenced components and variables of blocks A-N, Appendix 3) that
# this Core AC station implements. Defaults are the agent's (the spec gives few).
VARIABLES: tuple[VariableSpec, ...] = (
    # --- OCPPCommCtrlr -------------------------------------------------------------------------------
    _v("OCPPCommCtrlr", "Enabled", B, "true", RO),
    _v("OCPPCommCtrlr", "ActiveNetworkProfile", INT, None, RO, source="active_network_profile"),
    _v("OCPPCommCtrlr", "FileTransferProtocols", MEM, "HTTP,HTTPS", RO, values=FILE_TRANSFER_PROTOCOLS,
       required=True),
    _v("OCPPCommCtrlr", "HeartbeatInterval", INT, "3600", unit="s", min=1, max=86400 * 7),
    _v("OCPPCommCtrlr", "MessageTimeout", INT, "30", RO, instance="Default", unit="s", min=1, max=600,
       required=True, presettable=True),
    _v("OCPPCommCtrlr", "MessageAttemptInterval", INT, "60", instance="TransactionEvent", unit="s", min=0,
       max=86400, required=True),
    _v("OCPPCommCtrlr", "MessageAttempts", INT, "3", instance="TransactionEvent", min=1, max=100, required=True),
    # configuration slots; slot 1 is the [ocpp] endpoint of the TOML (SetNetworkProfile may fill others)
    _v("OCPPCommCtrlr", "NetworkConfigurationPriority", SEQ, "1", values=("1", "2", "3", "4", "5"),
       required=True, reboot_required=True, min_items=1),
    _v("OCPPCommCtrlr", "NetworkProfileConnectionAttempts", INT, "3", min=1, max=100, required=True),
    _v("OCPPCommCtrlr", "OfflineThreshold", INT, "60", unit="s", min=0, max=86400 * 7, required=True),
    _v("OCPPCommCtrlr", "PublicKeyWithSignedMeterValue", OPT, "Never",
       values=("Never", "OncePerTransaction", "EveryMeterValue")),
    _v("OCPPCommCtrlr", "QueueAllMessages", B, "false"),
    _v("OCPPCommCtrlr", "ResetRetries", INT, "3", min=0, max=100, required=True),
    _v("OCPPCommCtrlr", "RetryBackOffRandomRange", INT, "10", unit="s", min=0, max=3600, required=True),
    _v("OCPPCommCtrlr", "RetryBackOffRepeatTimes", INT, "5", min=0, max=100, required=True),
    _v("OCPPCommCtrlr", "RetryBackOffWaitMinimum", INT, "3", unit="s", min=0, max=3600, required=True),
    _v("OCPPCommCtrlr", "UnlockOnEVSideDisconnect", B, "true", required=True),
    _v("OCPPCommCtrlr", "WebSocketPingInterval", INT, "60", unit="s", min=0, max=86400, required=True),
    # --- TxCtrlr -------------------------------------------------------------------------------------
    _v("TxCtrlr", "Enabled", B, "true", RO),
    _v("TxCtrlr", "EVConnectionTimeOut", INT, "60", unit="s", min=1, max=3600, required=True),
    _v("TxCtrlr", "MaxEnergyOnInvalidId", INT, "0", unit="Wh", min=0, max=1_000_000),
    _v("TxCtrlr", "StopTxOnEVSideDisconnect", B, "true", required=True),
    _v("TxCtrlr", "StopTxOnInvalidId", B, "true", required=True),
    _v("TxCtrlr", "TxBeforeAcceptedEnabled", B, "false"),
    _v("TxCtrlr", "TxStartPoint", MEM, "PowerPathClosed", values=TX_POINTS, required=True, min_items=1),
    _v("TxCtrlr", "TxStopPoint", MEM, "EVConnected,Authorized", values=TX_POINTS, required=True, min_items=1),
    # --- DeviceDataCtrlr -----------------------------------------------------------------------------
    _v("DeviceDataCtrlr", "Enabled", B, "true", RO),
    _v("DeviceDataCtrlr", "BytesPerMessage", INT, "65000", RO, instance="GetReport", unit="B", min=1000,
       max=1_000_000, required=True, presettable=True),
    _v("DeviceDataCtrlr", "BytesPerMessage", INT, "65000", RO, instance="GetVariables", unit="B", min=1000,
       max=1_000_000, required=True, presettable=True),
    _v("DeviceDataCtrlr", "BytesPerMessage", INT, "65000", RO, instance="SetVariables", unit="B", min=1000,
       max=1_000_000, required=True, presettable=True),
    _v("DeviceDataCtrlr", "ConfigurationValueSize", INT, "1000", RO, min=1, max=1000, presettable=True),
    _v("DeviceDataCtrlr", "ItemsPerMessage", INT, "50", RO, instance="GetReport", min=1, max=1000, required=True,
       presettable=True),
    _v("DeviceDataCtrlr", "ItemsPerMessage", INT, "50", RO, instance="GetVariables", min=1, max=1000,
       required=True, presettable=True),
    _v("DeviceDataCtrlr", "ItemsPerMessage", INT, "50", RO, instance="SetVariables", min=1, max=1000,
       required=True, presettable=True),
    _v("DeviceDataCtrlr", "ReportingValueSize", INT, "2500", RO, min=1, max=2500, presettable=True),
    _v("DeviceDataCtrlr", "ValueSize", INT, "1000", RO, min=1, max=1000, presettable=True),
    # --- ClockCtrlr ----------------------------------------------------------------------------------
    _v("ClockCtrlr", "Enabled", B, "true", RO),
    _v("ClockCtrlr", "DateTime", T, None, RO, source="date_time", required=True),
    _v("ClockCtrlr", "NtpSource", OPT, "DHCP", values=("DHCP", "manual")),
    _v("ClockCtrlr", "NtpServerUri", S, "", instance="1", max=512),
    _v("ClockCtrlr", "TimeOffset", S, "+00:00", max=6),
    _v("ClockCtrlr", "NextTimeOffsetTransitionDateTime", T, ""),
    _v("ClockCtrlr", "TimeOffset", S, "", instance="NextTransition", max=6),
    _v("ClockCtrlr", "TimeSource", SEQ, "NTP,Heartbeat", values=("Heartbeat", "NTP", "RealTimeClock"),
       required=True, min_items=1),
    _v("ClockCtrlr", "TimeZone", S, "", max=64),
    _v("ClockCtrlr", "TimeAdjustmentReportingThreshold", INT, "20", unit="s", min=0, max=86400),
    # --- SecurityCtrlr -------------------------------------------------------------------------------
    _v("SecurityCtrlr", "Enabled", B, "true", RO),
    _v("SecurityCtrlr", "AdditionalRootCertificateCheck", B, "false", RO, presettable=True),
    _v("SecurityCtrlr", "BasicAuthPassword", S, None, WO, min=16, max=40),
    _v("SecurityCtrlr", "CertificateEntries", INT, None, RO, source="certificate_entries", max=50, required=True),
    _v("SecurityCtrlr", "CertSigningRepeatTimes", INT, "3", min=0, max=100),
    _v("SecurityCtrlr", "CertSigningWaitMinimum", INT, "60", unit="s", min=1, max=86400),
    _v("SecurityCtrlr", "Identity", S, None, RO, source="identity", max=48),
    _v("SecurityCtrlr", "MaxCertificateChainSize", INT, "10000", RO, max=10000, presettable=True),
    _v("SecurityCtrlr", "OrganizationName", S, "", max=50, required=True),
    _v("SecurityCtrlr", "SecurityProfile", INT, "1", RO, min=0, max=3, required=True),
    # --- SampledDataCtrlr ----------------------------------------------------------------------------
    _v("SampledDataCtrlr", "Enabled", B, "true"),
    _v("SampledDataCtrlr", "Available", B, "true", RO),
    _v("SampledDataCtrlr", "SignReadings", B, "false"),
    _v("SampledDataCtrlr", "TxEndedInterval", INT, "0", unit="s", min=0, max=86400, required=True),
    _v("SampledDataCtrlr", "TxEndedMeasurands", MEM, "Energy.Active.Import.Register", required=True, max=1000,
       values_from=MEASURANDS),
    _v("SampledDataCtrlr", "TxStartedMeasurands", MEM, "Energy.Active.Import.Register", required=True, max=1000,
       values_from=MEASURANDS),
    _v("SampledDataCtrlr", "TxUpdatedInterval", INT, "60", unit="s", min=0, max=86400, required=True),
    _v("SampledDataCtrlr", "TxUpdatedMeasurands", MEM, "Energy.Active.Import.Register,Power.Active.Import",
       required=True, max=1000, values_from=MEASURANDS),
    _v("SampledDataCtrlr", "RegisterValuesWithoutPhases", B, "false"),
    # --- AlignedDataCtrlr ----------------------------------------------------------------------------
    _v("AlignedDataCtrlr", "Enabled", B, "true"),
    _v("AlignedDataCtrlr", "Available", B, "true", RO),
    _v("AlignedDataCtrlr", "Interval", INT, "0", unit="s", min=0, max=86400, required=True),
    _v("AlignedDataCtrlr", "Measurands", MEM, "Energy.Active.Import.Register", required=True, max=1000,
       values_from=MEASURANDS),
    _v("AlignedDataCtrlr", "SendDuringIdle", B, "false"),
    _v("AlignedDataCtrlr", "SignReadings", B, "false"),
    _v("AlignedDataCtrlr", "TxEndedInterval", INT, "0", unit="s", min=0, max=86400, required=True),
    _v("AlignedDataCtrlr", "TxEndedMeasurands", MEM, "Energy.Active.Import.Register", required=True, max=1000,
       values_from=MEASURANDS),
    # --- AuthCtrlr -----------------------------------------------------------------------------------
    _v("AuthCtrlr", "Enabled", B, "true"),
    _v("AuthCtrlr", "AdditionalInfoItemsPerMessage", INT, "10", RO, min=0, max=100, presettable=True),
    _v("AuthCtrlr", "AuthorizeRemoteStart", B, "true", required=True),
    _v("AuthCtrlr", "LocalAuthorizeOffline", B, "true", required=True),
    _v("AuthCtrlr", "LocalPreAuthorize", B, "false", required=True),
    _v("AuthCtrlr", "MasterPassGroupId", S, "", max=36),
    _v("AuthCtrlr", "OfflineTxForUnknownIdEnabled", B, "false"),
    _v("AuthCtrlr", "DisableRemoteAuthorization", B, "false"),
    # --- AuthCacheCtrlr ------------------------------------------------------------------------------
    _v("AuthCacheCtrlr", "Enabled", B, "true"),
    _v("AuthCacheCtrlr", "Available", B, "true", RO),
    _v("AuthCacheCtrlr", "LifeTime", INT, "86400", unit="s", min=1, max=86400 * 365),
    _v("AuthCacheCtrlr", "Policy", OPT, "LRU", values=("LRU",)),
    _v("AuthCacheCtrlr", "Storage", INT, "1000", RO, unit="B", min=0, presettable=True),
    _v("AuthCacheCtrlr", "DisablePostAuthorize", B, "false"),
    # --- LocalAuthListCtrlr --------------------------------------------------------------------------
    _v("LocalAuthListCtrlr", "Enabled", B, "true"),
    _v("LocalAuthListCtrlr", "Available", B, "true", RO),
    _v("LocalAuthListCtrlr", "Entries", INT, None, RO, source="local_list_entries", max=1000, required=True),
    _v("LocalAuthListCtrlr", "ItemsPerMessage", INT, "100", RO, min=1, max=1000, required=True, presettable=True),
    _v("LocalAuthListCtrlr", "BytesPerMessage", INT, "65000", RO, unit="B", min=1000, max=1_000_000, required=True,
       presettable=True),
    _v("LocalAuthListCtrlr", "Storage", INT, "1000", RO, unit="B", min=0, presettable=True),
    _v("LocalAuthListCtrlr", "DisablePostAuthorize", B, "false"),
    # --- ReservationCtrlr (H01-H04, reservation.py) ----------------------------------------------------
    _v("ReservationCtrlr", "Enabled", B, "true"),
    _v("ReservationCtrlr", "Available", B, "true", RO),
    _v("ReservationCtrlr", "NonEvseSpecific", B, "true"),
    # --- MonitoringCtrlr (N04-N07, monitoring.py) ---------------------------------------------------------
    _v("MonitoringCtrlr", "Enabled", B, "true"),
    _v("MonitoringCtrlr", "Available", B, "true", RO),
    _v("MonitoringCtrlr", "ItemsPerMessage", INT, "20", RO, instance="ClearVariableMonitoring", min=1, max=1000,
       required=True, presettable=True),
    _v("MonitoringCtrlr", "ItemsPerMessage", INT, "20", RO, instance="SetVariableMonitoring", min=1, max=1000,
       required=True, presettable=True),
    _v("MonitoringCtrlr", "BytesPerMessage", INT, "65000", RO, instance="ClearVariableMonitoring", unit="B",
       min=1000, max=1_000_000, required=True, presettable=True),
    _v("MonitoringCtrlr", "BytesPerMessage", INT, "65000", RO, instance="SetVariableMonitoring", unit="B",
       min=1000, max=1_000_000, required=True, presettable=True),
    _v("MonitoringCtrlr", "OfflineQueuingSeverity", INT, "4", min=0, max=9),
    _v("MonitoringCtrlr", "MonitoringBase", OPT, "All", values=("All", "FactoryDefault", "HardWiredOnly")),
    _v("MonitoringCtrlr", "MonitoringLevel", INT, "9", min=0, max=9),
    _v("MonitoringCtrlr", "ActiveMonitoringBase", OPT, "All", RO, values=("All", "FactoryDefault", "HardWiredOnly")),
    _v("MonitoringCtrlr", "ActiveMonitoringLevel", INT, "9", RO, min=0, max=9),
    # --- DisplayMessageCtrlr (O01-O06, display.py; DisplayMessages maxLimit = display.MAX_MESSAGES) --------
    _v("DisplayMessageCtrlr", "Enabled", B, "true"),
    _v("DisplayMessageCtrlr", "Available", B, "true", RO),
    _v("DisplayMessageCtrlr", "DisplayMessages", INT, None, RO, source="display_message_entries", max=32,
       required=True),
    _v("DisplayMessageCtrlr", "SupportedFormats", MEM, "ASCII,UTF8", RO, values=("ASCII", "HTML", "URI", "UTF8"),
       required=True),
    _v("DisplayMessageCtrlr", "SupportedPriorities", MEM, "AlwaysFront,InFront,NormalCycle", RO,
       values=("AlwaysFront", "InFront", "NormalCycle"), required=True),
    _v("DisplayMessageCtrlr", "PersonalMessageSize", INT, "255", RO, min=0, max=512, presettable=True),  # 0: none kept
    # --- TariffCostCtrlr (I01-I08, pricing.py) ------------------------------------------------------------
    _v("TariffCostCtrlr", "Enabled", B, "true", instance="Tariff"),
    _v("TariffCostCtrlr", "Enabled", B, "true", instance="Cost"),
    _v("TariffCostCtrlr", "Available", B, "true", RO, instance="Tariff"),
    _v("TariffCostCtrlr", "Available", B, "true", RO, instance="Cost"),
    _v("TariffCostCtrlr", "TariffFallbackMessage", S, "Prices at the charger's sign", max=255, required=True),
    _v("TariffCostCtrlr", "TotalCostFallbackMessage", S, "Your cost will be shown in your account", max=255,
       required=True),
    _v("TariffCostCtrlr", "Currency", S, "EUR", min=3, max=3, required=True),
    # --- ChargingStation (physical, station tier) ------------------------------------------------------
    _v("ChargingStation", "AvailabilityState", OPT, None, RO, values=AVAILABILITY_STATES, source="availability_state",
       required=True, monitorable=True),
    _v("ChargingStation", "Available", B, None, RO, source="available", required=True),
    _v("ChargingStation", "SupplyPhases", INT, None, RO, source="supply_phases", min=0, max=3, required=True),
    _v("ChargingStation", "Model", S, None, RO, source="model", max=20),
    _v("ChargingStation", "VendorName", S, None, RO, source="vendor", max=50),
    _v("ChargingStation", "Problem", B, None, RO, source="problem", monitorable=True),
    # L01.FR.07 (firmware.py): new sessions while an install waits for the running transactions to end
    _v("ChargingStation", "AllowNewSessionsPendingFirmwareUpdate", B, "false", monitorable=True),
    # --- SmartChargingCtrlr: the site limit reported as an external limit (K11-K13, external_limits.py) -----
    _v("SmartChargingCtrlr", "LimitChangeSignificance", DEC, "10", unit="Percent", min=0, max=100, required=True),
    _v("SmartChargingCtrlr", "NotifyChargingLimitWithSchedules", B, "false"),
    # Charging profiles (K01-K10, smart_charging.py; Entries maxLimit = smart_charging.MAX_PROFILES)
    _v("SmartChargingCtrlr", "Enabled", B, "true"),
    _v("SmartChargingCtrlr", "Available", B, "true", RO),
    _v("SmartChargingCtrlr", "Entries", INT, None, RO, instance="ChargingProfiles", source="charging_profile_entries",
       max=32, required=True),
    _v("SmartChargingCtrlr", "PeriodsPerSchedule", INT, "24", RO, min=1, max=1024, required=True, presettable=True),
    _v("SmartChargingCtrlr", "ProfileStackLevel", INT, "10", RO, min=0, max=1000, required=True, presettable=True),
    _v("SmartChargingCtrlr", "RateUnit", MEM, "A,W", RO, values=("A", "W"), min_items=1, required=True,
       presettable=True),
    _v("SmartChargingCtrlr", "ExternalControlSignalsEnabled", B, "true", RO),  # the site controller: always
    # --- EVSE (one per EVSE) -------------------------------------------------------------------------
    _v("EVSE", "AvailabilityState", OPT, None, RO, values=AVAILABILITY_STATES, source="availability_state",
       scope=Scope.EVSE, required=True, monitorable=True),
    _v("EVSE", "Available", B, None, RO, source="available", scope=Scope.EVSE, required=True),
    _v("EVSE", "Power", DEC, None, RO, unit="W", source="power", scope=Scope.EVSE, attributes=(ACTUAL, "MaxSet"),
       required=True, monitorable=True),
    _v("EVSE", "Voltage", DEC, None, RO, unit="V", source="voltage", scope=Scope.EVSE, monitorable=True),
    _v("EVSE", "SupplyPhases", INT, None, RO, source="supply_phases", scope=Scope.EVSE, min=0, max=3, required=True),
    _v("EVSE", "AllowReset", B, "true", RO, scope=Scope.EVSE),
    _v("EVSE", "Problem", B, None, RO, source="problem", scope=Scope.EVSE, monitorable=True),
    # the EVSE's pilot board temperature (the standard TemperatureSensor component, one per EVSE here)
    _v("TemperatureSensor", "Temperature", DEC, None, RO, unit="Celsius", source="temperature", scope=Scope.EVSE,
       monitorable=True),
    # --- Connector (one per connector of an EVSE) ------------------------------------------------------
    _v("Connector", "AvailabilityState", OPT, None, RO, values=AVAILABILITY_STATES, source="availability_state",
       scope=Scope.CONNECTOR, required=True, monitorable=True),
    _v("Connector", "Available", B, None, RO, source="available", scope=Scope.CONNECTOR, required=True),
    _v("Connector", "ConnectorType", S, None, RO, source="connector_type", scope=Scope.CONNECTOR, required=True),
    _v("Connector", "SupplyPhases", INT, None, RO, source="supply_phases", scope=Scope.CONNECTOR, min=0, max=3,
       required=True),
    _v("Connector", "Problem", B, None, RO, source="problem", scope=Scope.CONNECTOR),
)  # fmt: skip


@dataclass(frozen=True)
class ComponentRef:
    """A component as OCPP names it: name, optional instance, optional EVSE and connector."""

    name: str
    instance: str | None = None
    evse: int | None = None
    connector: int | None = None


@dataclass(frozen=True)
class Entry:
    """One variable of one component instance (what a report lists)."""

    spec: VariableSpec
    evse: int | None = None
    connector: int | None = None

    @property
    def component(self) -> ComponentRef:
        return ComponentRef(self.spec.component, None, self.evse, self.connector)

    @property
    def storage_key(self) -> str:
        where = "" if self.evse is None else f"@{self.evse}" + ("" if self.connector is None else f".{self.connector}")
        return f"{self.spec.component}{where}/{self.spec.variable}"


@dataclass(frozen=True)
class GetResult:
    status: GetStatus
    value: str | None = None
    reason: str | None = None  # StatusInfo.reasonCode
    info: str | None = None  # StatusInfo.additionalInfo


@dataclass(frozen=True)
class SetResult:
    status: SetStatus
    reason: str | None = None
    info: str | None = None


class DeviceModelError(KeyError):
    """value() of a variable that does not exist (a programming error of the caller)."""


ChangeListener = Callable[[str, str, Value], None]
FactGetter = Callable[[Entry], "str | None"]


class DeviceModel:
    """The variable table, the station's instances, stored values and presets."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        presets: Mapping[str, object] | None = None,
        *,
        station: StationPort | None = None,
        evse_ids: Sequence[int] | None = None,
        clock: Clock | None = None,
        measurands: Iterable[str] = SUPPORTED_MEASURANDS,
        specs: Sequence[VariableSpec] = VARIABLES,
        facts: Mapping[str, Callable[[], object]] | None = None,
    ) -> None:
        """``evse_ids``: the EVSEs when no station is given (unit tests); with a station they are its
        connector ids. ``facts``: extra getters by source name for facts that other parts of the agent
        own (``certificate_entries``, ``local_list_entries``, ``active_network_profile``); see ``bind``."""
        self._conn = conn
        self._station = station
        self._clock = clock
        self._measurands = tuple(measurands)
        if evse_ids is None:
            evse_ids = station.connector_ids() if station is not None else (1,)
        self._evse_ids = tuple(sorted(evse_ids))
        self._specs = tuple(specs)
        self._by_name: dict[tuple[str, str, str], VariableSpec] = {}
        self._components: dict[str, str] = {}
        for spec in self._specs:
            self._by_name[(spec.component.lower(), spec.name.lower(), (spec.instance or "").lower())] = spec
            self._components[spec.component.lower()] = spec.component
        self._bound: dict[str, Callable[[], object]] = dict(facts or {})
        self._listeners: list[ChangeListener] = []
        self._overrides: dict[str, str] = {}
        self._presets: dict[str, str] = {}
        self._validate_presets(presets or {})
        with _storage("open the device model store"):
            migrate(conn, COMPONENT, MIGRATIONS)
            rows = conn.execute("SELECT key, value FROM ocpp201_variables").fetchall()
        entries = {e.storage_key: e for e in self.entries()}
        for key, value in rows:
            entry = entries.get(str(key))
            problem = None if entry is None else self._problem(entry.spec, str(value))
            if entry is None or problem is not None:
                secret = entry is not None and entry.spec.secret
                log.warning("ignoring stored OCPP 2.0.1 variable %s=%r (%s)", key, REDACTED if secret else value,
                            problem or "no such variable")
                continue
            self._overrides[entry.storage_key] = str(value)
        if station is not None:
            self.on_change(self._station_effects)

    # -- the table ----------------------------------------------------------------------------------

    @property
    def evse_ids(self) -> tuple[int, ...]:
        return self._evse_ids

    def entries(self) -> Iterator[Entry]:
        """Every variable of every component instance, in table order (EVSE / Connector per instance)."""
        for spec in self._specs:
            if spec.scope is Scope.STATION:
                yield Entry(spec)
        for evse in self._evse_ids:
            for spec in self._specs:
                if spec.scope is Scope.EVSE:
                    yield Entry(spec, evse)
            for spec in self._specs:
                if spec.scope is Scope.CONNECTOR:
                    yield Entry(spec, evse, 1)

    def spec(self, component: str, variable: str, instance: str | None = None) -> VariableSpec | None:
        if instance is None and "." in variable:
            variable, _, instance = variable.partition(".")
        return self._by_name.get((component.lower(), variable.lower(), (instance or "").lower()))

    def values_list(self, spec: VariableSpec) -> tuple[str, ...] | None:
        return self._measurands if spec.values_from == MEASURANDS else spec.values

    def max_limit(self, entry: Entry) -> float | None:
        """variableCharacteristics.maxLimit of this instance (EVSE.Power: the EVSE's maximum power)."""
        if entry.spec.source == "power":
            view = self._view(entry)
            return None if view is None else _max_power(view)
        return entry.spec.max

    def resolve(
        self,
        component: str,
        variable: str,
        *,
        component_instance: str | None = None,
        evse: int | None = None,
        connector: int | None = None,
        instance: str | None = None,
    ) -> Entry | GetStatus:
        """The entry addressed, or "UnknownComponent" / "UnknownVariable"."""
        name = self._components.get(component.lower())
        if name is None or component_instance:
            return "UnknownComponent"
        scopes = {s.scope for s in self._specs if s.component == name}
        scope = next(iter(scopes))
        if scope is Scope.STATION:
            if evse is not None or connector is not None:
                return "UnknownComponent"
        elif evse not in self._evse_ids:
            return "UnknownComponent"
        elif scope is Scope.EVSE and connector is not None:
            return "UnknownComponent"
        elif scope is Scope.CONNECTOR and connector != 1:
            return "UnknownComponent"
        spec = self.spec(name, variable, instance)
        if spec is None:
            return "UnknownVariable"
        return Entry(
            spec, evse if scope is not Scope.STATION else None, connector if scope is Scope.CONNECTOR else None
        )

    # -- reading --------------------------------------------------------------------------------------

    def value(
        self,
        component: str,
        variable: str,
        *,
        evse: int | None = None,
        connector: int | None = None,
        instance: str | None = None,
    ) -> Value:
        """The typed Actual value (``variable`` may be ``Name.Instance``). DeviceModelError if the
        variable does not exist or has no value."""
        entry = self.resolve(component, variable, evse=evse, connector=connector, instance=instance)
        if not isinstance(entry, Entry):
            raise DeviceModelError(f"{component}/{variable}: {entry}")
        raw = self._actual(entry)
        if raw is None:
            raise DeviceModelError(f"{entry.spec.key}: no value")
        return typed(entry.spec, raw)

    def integer(
        self, component: str, variable: str, *, evse: int | None = None, instance: str | None = None
    ) -> int:
        value = self.value(component, variable, evse=evse, instance=instance)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{component}/{variable} is not an integer")
        return value

    def boolean(
        self, component: str, variable: str, *, evse: int | None = None, instance: str | None = None
    ) -> bool:
        value = self.value(component, variable, evse=evse, instance=instance)
        if not isinstance(value, bool):
            raise TypeError(f"{component}/{variable} is not a boolean")
        return value

    def members(
        self, component: str, variable: str, *, evse: int | None = None, instance: str | None = None
    ) -> tuple[str, ...]:
        value = self.value(component, variable, evse=evse, instance=instance)
        if not isinstance(value, tuple):
            raise TypeError(f"{component}/{variable} is not a list")
        return value

    def text(
        self, component: str, variable: str, *, evse: int | None = None, instance: str | None = None
    ) -> str:
        """The value as OCPP carries it (any type); write-only variables included (for the agent)."""
        entry = self.resolve(component, variable, evse=evse, instance=instance)
        if not isinstance(entry, Entry):
            raise DeviceModelError(f"{component}/{variable}: {entry}")
        return self._actual(entry) or ""

    def get(
        self,
        component: str,
        variable: str,
        attribute: str | None = None,
        *,
        component_instance: str | None = None,
        evse: int | None = None,
        connector: int | None = None,
        instance: str | None = None,
    ) -> GetResult:
        """GetVariables for one variable (attribute default Actual)."""
        entry = self.resolve(
            component, variable, component_instance=component_instance, evse=evse, connector=connector,
            instance=instance,
        )
        if not isinstance(entry, Entry):
            return GetResult(entry)
        return self.get_entry(entry, attribute)

    def get_entry(self, entry: Entry, attribute: str | None = None) -> GetResult:
        attribute = attribute or ACTUAL
        if attribute not in entry.spec.attributes:
            return GetResult("NotSupportedAttributeType")
        if entry.spec.secret:
            return GetResult("Rejected", reason="WriteOnly")
        raw = self.attribute_value(entry, attribute)
        if raw is None:
            return GetResult("Rejected", reason="MissingDeviceModelInfo", info="no value")
        limit = self.integer("DeviceDataCtrlr", "ReportingValueSize")
        return GetResult("Accepted", raw[:limit])

    def attribute_value(self, entry: Entry, attribute: str = ACTUAL) -> str | None:
        """The wire value of one attribute; None if unknown now. Never for reports of a secret."""
        if attribute == "MaxSet" and entry.spec.source == "power":
            view = self._view(entry)
            return None if view is None else _number(_max_power(view))
        return self._actual(entry)

    # -- writing --------------------------------------------------------------------------------------

    def set(
        self,
        component: str,
        variable: str,
        value: str,
        attribute: str | None = None,
        *,
        component_instance: str | None = None,
        evse: int | None = None,
        connector: int | None = None,
        instance: str | None = None,
        source: Source = "ocpp",
    ) -> SetResult:
        """SetVariables for one variable: validate, persist, notify the listeners."""
        entry = self.resolve(
            component, variable, component_instance=component_instance, evse=evse, connector=connector,
            instance=instance,
        )
        if not isinstance(entry, Entry):
            return SetResult(entry)
        return self.set_entry(entry, value, attribute, source=source)

    def set_entry(
        self, entry: Entry, value: str, attribute: str | None = None, *, source: Source = "ocpp"
    ) -> SetResult:
        spec = entry.spec
        attribute = attribute or ACTUAL
        if attribute not in spec.attributes:
            return SetResult("NotSupportedAttributeType")
        shown = REDACTED if spec.secret else value
        if attribute != ACTUAL or (spec.mutability is Mutability.READ_ONLY and source != "internal"):
            log.info("SetVariables %s=%r rejected: read-only", spec.key, shown)
            return SetResult("Rejected", "ReadOnly", f"{spec.key} is read-only")
        if spec.source is not None:
            return SetResult("Rejected", "ReadOnly", f"{spec.key} reports the station's state")
        value = _normalise(spec, value)
        limit = self.integer("DeviceDataCtrlr", "ConfigurationValueSize")
        problem = f"longer than ConfigurationValueSize={limit}" if len(value) > limit else self._problem(spec, value)
        if problem is not None:
            log.info("SetVariables %s=%r rejected: %s", spec.key, shown, problem)
            reason = "ValueOutOfRange" if problem.startswith("out of range") else "InvalidValue"
            return SetResult("Rejected", reason, problem[:500])
        changed = self._actual(entry) != value
        with _storage(f"store {spec.key}"):
            self._conn.execute(
                "INSERT INTO ocpp201_variables(key, value, changed_wall) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value, changed_wall = excluded.changed_wall",
                (entry.storage_key, value, self._clock.wall() if self._clock else 0.0),
            )
        self._overrides[entry.storage_key] = value
        log.info("%s set to %r (%s)", spec.key, shown, source)
        if changed:
            typed_value = typed(spec, value)
            for listener in list(self._listeners):
                try:
                    listener(spec.component, spec.variable, typed_value)
                except Exception:
                    log.exception("device model listener failed for %s", spec.key)
        return SetResult("RebootRequired" if spec.reboot_required else "Accepted")

    def on_change(self, callback: ChangeListener) -> Callable[[], None]:
        """``callback(component, variable, value)`` after every accepted change of a value (``variable``
        is ``Name`` or ``Name.Instance``; ``value`` typed as ``value()`` gives it). Returns an
        unsubscribe function."""
        self._listeners.append(callback)

        def unsubscribe() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return unsubscribe

    def preset(self, component: str, variable: str, value: str) -> None:
        """A value the agent's own configuration gives (``[ocpp] security_profile``, ``password``): like a
        ``[ocpp.variables]`` preset, never persisted; a value set over OCPP (or internally) wins. A preset in
        ``[ocpp.variables]`` for the same variable wins too. ValueError for an invalid value."""
        spec = self.spec(component, variable)
        if spec is None or spec.source is not None:
            raise DeviceModelError(f"{component}/{variable}: not a setting")
        value = _normalise(spec, value)
        bad = self._problem(spec, value)
        if bad is not None:
            raise ValueError(f"{spec.key}: {bad}")
        self._presets.setdefault(spec.key, value)

    def bind(self, source: str, getter: Callable[[], object]) -> None:
        """Give the getter of a fact another part of the agent owns (``certificate_entries``,
        ``local_list_entries``, ``active_network_profile``: it gets no arguments;
        for EVSE-scoped facts it may return a mapping evse id -> value)."""
        self._bound[source] = getter

    def export(self) -> dict[str, str]:
        """Every readable Actual value by ``Component[@evse[.connector]]/Variable[.instance]`` (cpctl);
        write-only variables left out."""
        out: dict[str, str] = {}
        for entry in self.entries():
            if entry.spec.secret:
                continue
            raw = self._actual(entry)
            if raw is not None:
                out[entry.storage_key] = raw
        return out

    def connector_settings(self) -> ConnectorSettings:
        """What every connector follows: TxCtrlr.EVConnectionTimeOut, TxCtrlr.StopTxOnEVSideDisconnect,
        OCPPCommCtrlr.UnlockOnEVSideDisconnect."""
        from agent.station_api import ConnectorSettings

        return ConnectorSettings(
            connection_timeout_s=float(self.integer("TxCtrlr", "EVConnectionTimeOut")),
            stop_on_ev_disconnect=self.boolean("TxCtrlr", "StopTxOnEVSideDisconnect"),
            unlock_on_ev_disconnect=self.boolean("OCPPCommCtrlr", "UnlockOnEVSideDisconnect"),
        )

    def apply_connector_settings(self) -> None:
        """Hand ``connector_settings()`` to every connector of the station (at start and on change)."""
        if self._station is None:
            return
        settings = self.connector_settings()
        for cid in self._station.connector_ids():
            self._station.configure_connector(cid, settings)

    # -- internals ------------------------------------------------------------------------------------

    _CONNECTOR_VARIABLES = frozenset(
        {("TxCtrlr", "EVConnectionTimeOut"), ("TxCtrlr", "StopTxOnEVSideDisconnect"),
         ("OCPPCommCtrlr", "UnlockOnEVSideDisconnect")}
    )  # fmt: skip

    def _station_effects(self, component: str, variable: str, value: Value) -> None:
        if (component, variable) in self._CONNECTOR_VARIABLES:
            self.apply_connector_settings()

    def _actual(self, entry: Entry) -> str | None:
        spec = entry.spec
        if spec.source is not None:
            try:
                return self._fact(entry)
            except Exception as exc:  # a view not there yet (control side not connected): no value now
                log.debug("no value for %s: %s", entry.storage_key, exc)
                return None
        if entry.storage_key in self._overrides:
            return self._overrides[entry.storage_key]
        if spec.key in self._presets:
            return self._presets[spec.key]
        return spec.default

    def _view(self, entry: Entry) -> ConnectorView | None:
        if self._station is None or entry.evse is None:
            return None
        try:
            return self._station.connector_view(entry.evse)
        except Exception:
            return None

    def _views(self, entry: Entry) -> list[ConnectorView]:
        if self._station is None:
            return []
        if entry.evse is not None:
            view = self._view(entry)
            return [] if view is None else [view]
        return list(self._station.connector_views().values())

    def _fact(self, entry: Entry) -> str | None:
        source = entry.spec.source
        assert source is not None
        bound = self._bound.get(source)
        if bound is not None:
            result = bound()
            if isinstance(result, Mapping):
                result = result.get(entry.evse)
            return None if result is None else _wire(result)
        if source == "date_time":
            wall = self._clock.wall() if self._clock is not None else datetime.now(UTC).timestamp()
            return datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        if source == "certificate_entries" or source == "local_list_entries":
            return "0"  # until the owner binds its count
        if source == "active_network_profile":
            return None
        if self._station is None:
            return None
        if source in ("identity", "model", "vendor"):
            facts = self._station.facts()
            return {"identity": facts.charge_point_id, "model": facts.model, "vendor": facts.vendor}[source]
        views = self._views(entry)
        if not views:
            return None
        if source == "availability_state":
            states = [_availability_state(v) for v in views]
            if len(states) == 1:
                return states[0]
            for state in ("Available", "Occupied", "Reserved"):
                if state in states:
                    return state
            return "Faulted" if all(s == "Faulted" for s in states) else "Unavailable"
        if source == "available":
            return _wire(any(v.available for v in views))
        if source == "problem":
            return _wire(any(v.status is ConnectorStatus.FAULTED for v in views))
        if source == "supply_phases":
            return str(max(v.phases for v in views))
        if source == "connector_type":
            return "cType2" if views[0].fixed_cable else "sType2"
        if source == "voltage":  # the meter's first phase voltage (monitoring.py watches it)
            sample = views[0].meter_latest
            volts = None if sample is None else next((v for v in sample.voltage_v if v is not None), None)
            return None if volts is None else _number(round(volts, 1))
        if source == "temperature":
            celsius = views[0].temperature_c
            return None if celsius is None else _number(round(celsius, 1))
        if source == "power":
            sample = views[0].meter_latest or views[0].last_sample
            return _number(sample.power_w if sample is not None and views[0].relay_commanded_closed else 0.0)
        raise DeviceModelError(f"no getter for {source}")

    def _validate_presets(self, presets: Mapping[str, object]) -> None:
        for key, raw in presets.items():
            where = f"ocpp.variables.{key}"
            component, sep, variable = str(key).partition("/")
            if not sep or not component or not variable:
                raise ConfigError(where, 'expected "Component[.instance]/Variable[.instance]"')
            component, _, component_instance = component.partition(".")
            entry = self.resolve(component, variable, component_instance=component_instance or None)
            if not isinstance(entry, Entry):
                scoped = self._components.get(component.lower()) in ("EVSE", "Connector")
                why = {
                    "UnknownComponent": "an EVSE or Connector variable (presets address station-wide variables)"
                    if scoped else f"unknown component {component!r}"
                    + (f" instance {component_instance!r}" if component_instance else ""),
                    "UnknownVariable": f"{component} has no variable {variable!r}",
                }.get(entry, entry)
                raise ConfigError(where, why)
            spec = entry.spec
            if spec.source is not None:
                raise ConfigError(where, "read-only (reports the station's state)")
            if spec.mutability is Mutability.READ_ONLY and not spec.presettable:
                raise ConfigError(where, "read-only (a capability of this station, not a setting)")
            value = _normalise(spec, _preset_text(raw))
            bad = self._problem(spec, value)
            if bad is not None:
                raise ConfigError(where, bad)
            self._presets[spec.key] = value

    def _problem(self, spec: VariableSpec, value: str) -> str | None:
        return problem(spec, value, self.values_list(spec))


# -- pure helpers --------------------------------------------------------------------------------------


def problem(spec: VariableSpec, value: str, values: Sequence[str] | None = None) -> str | None:
    """Why ``value`` (normalised) is not a valid value of ``spec``, or None."""
    kind = spec.type
    if kind is DataType.BOOLEAN:
        return None if value in ("true", "false") else f"expected true or false, got {value!r}"
    if kind in (DataType.INTEGER, DataType.DECIMAL):
        if kind is DataType.INTEGER:
            if not re.fullmatch(r"[+-]?[0-9]{1,18}", value):  # ASCII only: int() takes any script's digits
                return f"expected an integer, got {value!r}"
            number: float = int(value)
        else:
            if not re.fullmatch(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?", value):
                return f"expected a decimal number, got {value!r}"
            number = float(value)
            if not math.isfinite(number):
                return f"expected a finite number, got {value!r}"
        if spec.min is not None and number < spec.min:
            return f"out of range: expected at least {_number(spec.min)}, got {value}"
        if spec.max is not None and number > spec.max:
            return f"out of range: expected at most {_number(spec.max)}, got {value}"
        return None
    if kind is DataType.DATETIME:
        if value == "":
            return None
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return f"expected an RFC 3339 date-time, got {value!r}"
        return None if parsed.tzinfo is not None else "expected a date-time with a time zone (e.g. Z)"
    if spec.max is not None and len(value) > spec.max:
        return f"out of range: expected at most {_number(spec.max)} characters"
    if kind is DataType.STRING:
        if spec.min is not None and value and len(value) < spec.min:
            return f"out of range: expected at least {_number(spec.min)} characters"
        return None
    if kind is DataType.OPTION_LIST:
        if values is not None and value not in values:
            return f"{value!r} is not one of {', '.join(values)}"
        return None
    items = _items(value)
    if len(items) < spec.min_items:
        return f"expected at least {spec.min_items} member(s)"
    if len(set(items)) != len(items):
        return "list has duplicates"
    for item in items:
        if values is not None and item not in values:
            return f"{item!r} is not one of {', '.join(values)}"
    return None


def typed(spec: VariableSpec, raw: str) -> Value:
    """The Python value of a wire value already validated for ``spec``."""
    if spec.type is DataType.BOOLEAN:
        return raw == "true"
    if spec.type is DataType.INTEGER:
        return int(raw)
    if spec.type is DataType.DECIMAL:
        return float(raw)
    if spec.type in LIST_TYPES:
        return tuple(_items(raw))
    return raw


def parse_key(key: str) -> tuple[str, str | None, str, str | None]:
    """``"Component[.instance]/Variable[.instance]"`` -> (component, instance, variable, instance)."""
    component, sep, variable = key.partition("/")
    if not sep or not component or not variable:
        raise ValueError(f'expected "Component[.instance]/Variable[.instance]", got {key!r}')
    c_name, _, c_inst = component.partition(".")
    v_name, _, v_inst = variable.partition(".")
    return c_name, c_inst or None, v_name, v_inst or None


def _normalise(spec: VariableSpec, value: str) -> str:
    if spec.type is DataType.BOOLEAN:
        return value.strip().lower()
    if spec.type in (DataType.INTEGER, DataType.DECIMAL, DataType.OPTION_LIST, DataType.DATETIME):
        return value.strip()
    if spec.type in LIST_TYPES:
        return ",".join(_items(value))
    return value


def _items(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _preset_text(raw: object) -> str:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, list | tuple):
        return ",".join(str(item) for item in raw)
    return str(raw)


def _wire(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value)
    return str(value)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}".rstrip("0")


def _max_power(view: ConnectorView) -> float:
    return float(round(view.max_current_a * view.phases * NOMINAL_VOLTAGE_V))


def _availability_state(view: ConnectorView) -> str:
    status = view.status
    if status is ConnectorStatus.AVAILABLE:
        return "Available"
    if status is ConnectorStatus.RESERVED:
        return "Reserved"
    if status is ConnectorStatus.UNAVAILABLE:
        return "Unavailable"
    if status is ConnectorStatus.FAULTED:
        return "Faulted"
    return "Occupied"


@contextmanager
def _storage(what: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise StorageError(f"OCPP 2.0.1 device model: cannot {what}: {exc}") from exc


def check_presets(presets: Mapping[str, object], *, evse_ids: Sequence[int] = (1,)) -> None:
    """Validate ``[ocpp.variables]`` exactly as the device model does when the agent starts, without
    touching the state database (``cpagent check-config``). Raises ConfigError naming the key."""
    conn = connect(":memory:", durable=False)
    try:
        DeviceModel(conn, presets, evse_ids=evse_ids)
    finally:
        conn.close()


__all__ = [
    "ACTUAL", "ATTRIBUTES", "VARIABLES", "ComponentRef", "DataType", "DeviceModel", "DeviceModelError", "Entry",
    "GetResult", "Mutability", "Scope", "SetResult", "VariableSpec", "check_presets", "parse_key",
    "problem", "typed",
]
