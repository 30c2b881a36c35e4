"""The station interface: the one boundary between the control side and the network side.

Control side: the drivers, the IEC 61851 controller and the connectors (relay, PWM, lock, fault latches,
sessions), owned by ``agent.station.Station``. Network side: OCPP (``agent/ocpp/``), the diagnostic socket
(``agent/diag.py``) and file transfers. The network side uses the station **only** through ``StationPort``:

- commands in: one method of ``StationPort`` each (start a session for an authorized idTag, stop one with a
  reason, current limit, availability, maintenance, unlock, energy holds, reservation, display text,
  connector settings, the token authority, technician actuation);
- state out: ``connector_view(id)`` / ``connector_views()`` return frozen ``ConnectorView`` snapshots and
  ``facts()`` a frozen ``StationFacts``; nothing live (no Connector, controller, lock or driver object)
  crosses;
- events out: ``subscribe(listener)`` delivers the ``agent.events`` events (StatusChanged, SessionStarted,
  SessionStopped, MeterUpdate, TokenPresented).

Commands whose answer only the control side can know at the time (``unlock``, ``clear_faults``, and
``manual_relay`` / ``manual_pwm``, which refuse outside maintenance) are coroutines, so that carried over IPC
(``agent.ipc.station_proxy.StationProxy``) they await the control side's reply. The other commands are plain
calls: over IPC they are sent in order without waiting, and the values they return are exact from the
network side's mirror of the views (``begin_authorized`` refuses exactly when the mirrored reservation does
not admit the idTag; ``stop_session`` returns the session being stopped, whose finished record follows in
``SessionStopped``).

Everything that crosses is a frozen dataclass, an enum or a plain value, so the interface can be
carried over IPC between two processes unchanged (``agent/ipc/``), and it is protocol-neutral: the OCPP
1.6 adapter uses it today and an OCPP 2.0.1 adapter will use the same. ``tests/test_station_boundary.py`` fails when a
network-side module imports the control side (``agent.connector``, ``agent.charge_control``,
``agent.station``, ...) or reaches into its objects (``.controller``, ``.connectors[...]``, an attribute of
the station that is not part of ``StationPort``).

One thing is shared explicitly rather than through commands: ``StationPort.shared`` (the SQLite
connection holding the outbox, OCPP configuration, caches and session records, the session store, the
event log and the clock). It is genuinely shared storage today; when the two sides become two processes it
moves to the network process's own database (and the control side keeps its own session records).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from agent.authorize import AuthDecision
from agent.events import ConnectorStatus, EventListener, StopReason
from agent.sessions import Session, SessionStore
from hal.types import CpState, Fault, MeterSample, ScreenState

if TYPE_CHECKING:
    from agent.eventlog import EventLog
    from hal.clock import Clock

__all__ = [
    "NON_BLOCKING_FAULTS", "AuthDecision", "ConnectorReservation", "ConnectorSettings", "ConnectorStatus",
    "ConnectorView", "EnergyHold", "NetworkDiagnostics", "SharedResources", "StationFacts", "StationPort",
    "StopReason", "TaskView", "TokenAuthority",
]


# Faults that are reported (errorCode) but do not stop charging: the safety path does not depend on them.
NON_BLOCKING_FAULTS = frozenset(
    {Fault.METER_SILENT, Fault.METER_IMPLAUSIBLE, Fault.READER_SILENT, Fault.SITE_METER}
)


class EnergyHold(StrEnum):
    """A named reason to withhold energy from the EV. Energy is offered only while none is active, and a
    reason ends only when whoever set it releases it."""

    NOT_AUTHORIZED = "not_authorized"  # no session authorizes the EV plugged in now (an unplug sets it again)
    INVALID_ID = "invalid_id"  # the session's idTag was refused after the start; the transaction goes on
    ZERO_LIMIT = "zero_limit"  # the current limit is below what a PWM can offer (follows the limit, not held)
    UNAVAILABLE = "unavailable"  # the operator took the connector out of service (pilot F)
    MAINTENANCE = "maintenance"  # a technician drives relay and pilot by hand (pilot F)
    RESERVED = "reserved"  # held for a reservation that no session has used yet
    PHASE_SWITCH = "phase_switch"  # paused while the board switches between 1 and 3 phases (agent/phase_switch.py)


@dataclass(frozen=True)
class ConnectorReservation:
    """The connector is held for one idTag (or any idTag with the same parentIdTag) until it is used."""

    ref: int  # the reservation's identifier where it came from (e.g. OCPP reservationId)
    id_tag: str
    parent_id_tag: str | None = None

    def admits(self, id_tag: str, parent_id_tag: str | None) -> bool:
        if id_tag.upper() == self.id_tag.upper():
            return True
        return (
            self.parent_id_tag is not None
            and parent_id_tag is not None
            and parent_id_tag.upper() == self.parent_id_tag.upper()
        )


class MessagePriority(StrEnum):
    """How an operator message competes with the station's own guidance (OCPP 2.0.1 MessagePriorityEnumType)."""

    ALWAYS_FRONT = "always_front"  # in place of the station's guidance text (never of a fault screen)
    IN_FRONT = "in_front"  # before every normal message
    NORMAL = "normal"


@dataclass(frozen=True, slots=True)
class OperatorMessage:
    """A message from the operator for a connector's display. The control side decides what is shown: the
    most urgent message whose ``states`` admit the current screen (empty: any screen); a fault screen keeps
    its fault text and code and only gains the message as an extra line."""

    ref: int  # the message's identifier where it came from (e.g. OCPP MessageInfo.id)
    text: str
    priority: MessagePriority = MessagePriority.NORMAL
    states: tuple[ScreenState, ...] = ()


@dataclass(frozen=True, slots=True)
class ConnectorSettings:
    """Connector behaviour the network side configures (OCPP: ConnectionTimeOut,
    StopTransactionOnEVSideDisconnect, UnlockConnectorOnEVSideDisconnect)."""

    connection_timeout_s: float = 60.0  # an authorization waits this long for the EV to be plugged in
    stop_on_ev_disconnect: bool = True  # unplugging the EV ends the session
    unlock_on_ev_disconnect: bool = True  # false keeps the cable locked after it was pulled from the EV


@dataclass(frozen=True, slots=True)
class ConnectorView:
    """A snapshot of one connector, taken when asked for: it never changes afterwards."""

    id: int
    status: ConnectorStatus
    faults: frozenset[Fault]
    available: bool  # operative (not taken out of service)
    maintenance: bool
    session: Session | None  # the running session
    pending_id_tag: str | None  # authorized, waiting for the EV to be plugged in
    session_energy_wh: float  # energy of the running session so far (0 without one)
    last_sample: MeterSample | None
    meter_latest: MeterSample | None  # the meter's freshest value (None: no meter or no fresh value)
    has_meter: bool
    cp_state: CpState | None  # None: the board has not (yet) said
    ev_connected: bool  # the controller's judgement (remembers the EV through state F, uses PP)
    charge_state: str  # the IEC 61851 machine's state name
    offered_current_a: float  # what the pilot offers now (0 without PWM)
    duty_percent: float | None
    relay_commanded_closed: bool
    relay_feedback_closed: bool | None
    energy_holds: frozenset[EnergyHold]
    has_lock: bool  # a lock the station may be asked to unlock (not a tethered cable)
    locked: bool | None  # the lock's reported position (None: unknown or no lock)
    lock_held_for: str | None  # cable kept locked after an EV-side disconnect, for this idTag
    reservation: ConnectorReservation | None
    used_reservation: tuple[str, ConnectorReservation] | None  # (session ref, the reservation it used)
    display_extra: tuple[tuple[str, str], ...]
    max_current_a: float  # installation limit per phase
    phases: int
    fixed_cable: bool
    settings: ConnectorSettings
    effective_limit_a: float = 0.0  # the effective limit: min of connector, cable, OCPP and site limits
    binding_limit: str = "connector"  # which one sets it: connector | cable | ocpp | site-fuse | solar | failsafe
    site_limit_a: float | None = None  # the site allocation (local energy management), None = none
    temperature_c: float | None = None  # the pilot board's temperature sensor (None: none or not fresh)

    def admits(self, id_tag: str, parent_id_tag: str | None = None) -> bool:
        """May this idTag start here (no reservation, or one that admits it)?"""
        return self.reservation is None or self.reservation.admits(id_tag, parent_id_tag)

    @property
    def plugged_in(self) -> bool:
        """The pilot says an EV is connected now (B, C or D)."""
        return self.cp_state is not None and self.cp_state.ev_connected


@dataclass(frozen=True, slots=True)
class TaskView:
    """One supervised task of the control side."""

    name: str
    alive: bool
    gave_up: bool
    last_error: str


@dataclass(frozen=True, slots=True)
class StationFacts:
    charge_point_id: str
    vendor: str
    model: str
    serial_number: str
    firmware_version: str
    connector_ids: tuple[int, ...]
    has_reader: bool
    reader_faults: frozenset[Fault]
    started_wall: float
    tasks: tuple[TaskView, ...]


@dataclass(frozen=True)
class SharedResources:
    """What both sides share explicitly today (not state of the station): the state database connection
    (outbox, OCPP configuration, caches, reservations), the session records, the event log and the clock.
    They move to the network process's own database and clock when the processes split."""

    db: sqlite3.Connection
    sessions: SessionStore
    eventlog: EventLog
    clock: Clock


class TokenAuthority(Protocol):
    """How the station asks the network side for a token decision (registered with
    ``StationPort.register_authority``)."""

    async def authorize(self, id_tag: str) -> AuthDecision: ...

    async def may_stop(self, session: Session, id_tag: str) -> bool:
        """May ``id_tag`` (not the session's own) stop ``session``, e.g. by a shared parentIdTag?"""
        ...


class NetworkDiagnostics(Protocol):
    """What the network side (OCPP) offers the technician socket: plain data only."""

    def diag_status(self) -> dict[str, Any]: ...
    def diag_config_get(self, keys: list[str] | None) -> dict[str, Any]: ...
    def diag_config_set(self, key: str, value: str) -> str: ...
    def diag_outbox(self, limit: int) -> dict[str, Any]: ...
    async def diag_trigger(self, what: str) -> str: ...
    def diag_session_cost(self, transaction_id: str) -> str | None: ...


class StationPort(Protocol):
    """Every command the network side may give the station, and every view it may take of it."""

    # -- shared explicitly (see the module docstring) ---------------------------------------------
    @property
    def shared(self) -> SharedResources: ...

    # -- state out ---------------------------------------------------------------------------------
    def facts(self) -> StationFacts: ...

    def connector_ids(self) -> tuple[int, ...]: ...

    def connector_view(self, connector_id: int) -> ConnectorView:
        """KeyError for an unknown connector."""
        ...

    def connector_views(self) -> Mapping[int, ConnectorView]:
        """Every connector by id, in id order (named so as not to clash with the control side's own
        ``Station.connectors``, which the network side never sees)."""
        ...

    # -- events out --------------------------------------------------------------------------------
    def subscribe(self, listener: EventListener) -> None: ...

    # -- commands in -------------------------------------------------------------------------------
    def begin_authorized(self, connector_id: int, id_tag: str, parent_id_tag: str | None = None) -> bool:
        """Start a session for an idTag already authorized: now if the EV is plugged in, else when it is
        (within the connection timeout). False if a reservation holds the connector for someone else."""
        ...

    def stop_session(self, connector_id: int, reason: StopReason) -> Session | None:
        """Stop the running session; the finished session, or None if there was none."""
        ...

    def set_current_limit(self, connector_id: int, amps: float | None) -> None:
        """An external current limit per phase (None: only the installation's and the cable's)."""
        ...

    def set_available(self, connector_id: int, available: bool) -> None: ...

    def set_maintenance(self, connector_id: int, on: bool) -> None: ...

    async def unlock(self, connector_id: int) -> bool:
        """Command the lock open (ending a hold after an EV-side disconnect). False if the command failed;
        the position shows later in ``ConnectorView.locked``."""
        ...

    def hold_energy(self, connector_id: int, reason: EnergyHold) -> None:
        """Withhold energy for ``reason`` (the relay opens inside the call) until ``release_energy``."""
        ...

    def release_energy(self, connector_id: int, reason: EnergyHold) -> None: ...

    def set_reservation(self, connector_id: int, reservation: ConnectorReservation | None) -> None: ...

    def set_display_extra(self, connector_id: int, extra: tuple[tuple[str, str], ...]) -> None:
        """Extra (key, text) lines for the connector's display, e.g. price and cost."""
        ...

    def set_operator_messages(self, connector_id: int, messages: tuple[OperatorMessage, ...]) -> None:
        """The operator messages for the connector's display now (replacing the earlier ones; most urgent
        first). The control side picks what is shown; a fault screen is never hidden."""
        ...

    def configure_connector(self, connector_id: int, settings: ConnectorSettings) -> None: ...

    def register_authority(self, authority: TokenAuthority) -> None:
        """From now on token decisions (card at the reader, stop by another card) are asked of ``authority``."""
        ...

    def signed_reading_pending(self, connector_id: int, session_ref: str, which: str) -> bool:
        """A signed "start"/"stop" meter reading of the session is in progress (or just done)."""
        ...

    async def signed_reading(self, connector_id: int, session_ref: str, which: str) -> str | None:
        """That signed reading (the meter's record), or None if there is none or it failed."""
        ...

    async def manual_relay(self, connector_id: int, closed: bool) -> None:
        """Maintenance only (RuntimeError otherwise)."""
        ...

    async def manual_pwm(self, connector_id: int, duty_percent: float) -> None:
        """Maintenance only (RuntimeError otherwise)."""
        ...

    async def clear_faults(self, connector_id: int) -> bool:
        """Operator clear of latched faults whose cause is gone; True once none is left."""
        ...

    # -- the technician socket's view of the network side ------------------------------------------
    def attach_network_diagnostics(self, provider: NetworkDiagnostics) -> None: ...

    def network_diagnostics(self) -> NetworkDiagnostics | None: ...
