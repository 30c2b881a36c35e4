"""Events the station raises for everything above it (OCPP adapter, diagnostics, timeline).

They say what happened at the connector in protocol-neutral words; the OCPP 1.6 adapter (and a later
2.0.1 one) translates them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from agent.sessions import Session
from hal.types import Fault, MeterSample


class ConnectorStatus(StrEnum):
    AVAILABLE = "Available"
    PREPARING = "Preparing"
    CHARGING = "Charging"
    SUSPENDED_EV = "SuspendedEV"
    SUSPENDED_EVSE = "SuspendedEVSE"
    FINISHING = "Finishing"
    RESERVED = "Reserved"
    UNAVAILABLE = "Unavailable"
    FAULTED = "Faulted"


class StopReason(StrEnum):
    """OCPP 1.6 StopTransaction reasons (also used in the session log)."""

    LOCAL = "Local"
    REMOTE = "Remote"
    EV_DISCONNECTED = "EVDisconnected"
    POWER_LOSS = "PowerLoss"
    REBOOT = "Reboot"
    HARD_RESET = "HardReset"
    SOFT_RESET = "SoftReset"
    DEAUTHORIZED = "DeAuthorized"
    EMERGENCY_STOP = "EmergencyStop"
    UNLOCK_COMMAND = "UnlockCommand"
    OTHER = "Other"


@dataclass(frozen=True)
class StatusChanged:
    connector_id: int
    status: ConnectorStatus
    faults: frozenset[Fault]


@dataclass(frozen=True)
class SessionStarted:
    connector_id: int
    session: Session


@dataclass(frozen=True)
class SessionStopped:
    connector_id: int
    session: Session
    reason: StopReason


@dataclass(frozen=True)
class MeterUpdate:
    connector_id: int
    sample: MeterSample
    session_ref: str | None


@dataclass(frozen=True)
class TokenPresented:
    connector_id: int | None
    id_tag: str
    accepted: bool


StationEvent = StatusChanged | SessionStarted | SessionStopped | MeterUpdate | TokenPresented
EventListener = Callable[[StationEvent], None]
