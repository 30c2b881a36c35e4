"""OCPP 2.0.1 transactions (E01-E15): a pure per-EVSE state machine from what happens at the EVSE to
TransactionEvent Started / Updated / Ended, and the feature that queues them in the durable outbox.

``TxMachine`` (pure, clock-injected, no I/O) keeps the conditions of one EVSE (EV connected, parking bay
occupied, authorized and by which idToken, charging state, signed data received) and the transaction
running there. Each input is one thing that happened, with the OCPP triggerReason it stands for; the answer
is the list of events to send:

- a transaction starts when a TxCtrlr.TxStartPoint condition becomes true and none runs (E01): Started,
  with a transactionId generated here (uuid4, 36 chars), the evse and the idToken when known;
- it ends when a TxCtrlr.TxStopPoint condition that held during the transaction stops holding (E06), when
  the EV leaves with StopTxOnEVSideDisconnect true (E10), on an abnormal condition or a reset, or when
  nothing is left to carry it (no EV, no parking bay, no authorization): Ended, exactly once, with the
  stoppedReason of the first cause that stopped the energy (a token stop before an unplug stays Local);
- anything else that changes during the transaction is one Updated with its triggerReason (Authorized,
  CablePluggedIn, ChargingStateChanged, StopAuthorized, EVCommunicationLost, meter values, Trigger ...);
  transactionInfo.chargingState goes along when it changed since the last event.

Conditions (E01 / E06): EVConnected = the EV is connected; Authorized = an idToken authorizes the EVSE;
PowerPathClosed = both (all preconditions for charging met; OCTT: "Started if TxStartPoint is EVConnected
or PowerPathClosed and State is Authorized"); EnergyTransfer = chargingState Charging; DataSigned = the
meter's signed reading arrived; ParkingBayOccupancy = the bay sensor says occupied (this station has no
sensor; the input exists so the rule is complete).

seqNo is not counted here: the outbox numbers a transaction's messages in the same SQLite transaction that
queues them (``Outbox.append(seq_field=...)``), so a crash can neither skip nor repeat one. The machine's
own state is persisted by the caller after every step (``TxState.to_json``), in that same commit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from ocpp.v201 import call

from agent.authcache import AuthorizationCache, LocalAuthList
from agent.db import Migration, migrate
from agent.events import (
    ConnectorStatus,
    MeterUpdate,
    SessionStarted,
    SessionStopped,
    StationEvent,
    StatusChanged,
    StopReason,
    TokenPresented,
)
from agent.ocpp import outbox_convert as convert
from agent.ocpp.v16.meter_values import ocpp_time
from agent.ocpp.v16.rpc import CallErrorReceived, CallTimeout, InvalidPayload
from agent.ocpp.v201 import meter_values as mv
from agent.ocpp.v201.authorization import READER_TYPE, Authorizer201, IdToken
from agent.outbox import (
    METER_VALUES,
    START,
    STOP,
    TRANSACTION_EVENT,
    DuplicateStop,
    Outbox,
    OutboxEntry,
    outbox_payload,
)
from agent.sessions import Session
from agent.station_api import ConnectorView, EnergyHold, StationPort
from hal.flag import Flag
from hal.types import CpState


class ChargingState(StrEnum):
    CHARGING = "Charging"
    EV_CONNECTED = "EVConnected"
    SUSPENDED_EV = "SuspendedEV"
    SUSPENDED_EVSE = "SuspendedEVSE"
    IDLE = "Idle"


class TxPoint(StrEnum):
    """A TxStartPoint / TxStopPoint value (TxStartStopPointEnumType)."""

    PARKING = "ParkingBayOccupancy"
    EV_CONNECTED = "EVConnected"
    AUTHORIZED = "Authorized"
    DATA_SIGNED = "DataSigned"
    POWER_PATH_CLOSED = "PowerPathClosed"
    ENERGY_TRANSFER = "EnergyTransfer"


class Trigger(StrEnum):
    AUTHORIZED = "Authorized"
    CABLE_PLUGGED_IN = "CablePluggedIn"
    CHARGING_RATE_CHANGED = "ChargingRateChanged"
    CHARGING_STATE_CHANGED = "ChargingStateChanged"
    DEAUTHORIZED = "Deauthorized"
    ENERGY_LIMIT_REACHED = "EnergyLimitReached"
    EV_COMMUNICATION_LOST = "EVCommunicationLost"
    EV_CONNECT_TIMEOUT = "EVConnectTimeout"
    METER_VALUE_CLOCK = "MeterValueClock"
    METER_VALUE_PERIODIC = "MeterValuePeriodic"
    TIME_LIMIT_REACHED = "TimeLimitReached"
    TRIGGER = "Trigger"
    UNLOCK_COMMAND = "UnlockCommand"
    STOP_AUTHORIZED = "StopAuthorized"
    EV_DEPARTED = "EVDeparted"
    EV_DETECTED = "EVDetected"
    REMOTE_STOP = "RemoteStop"
    REMOTE_START = "RemoteStart"
    ABNORMAL_CONDITION = "AbnormalCondition"
    SIGNED_DATA_RECEIVED = "SignedDataReceived"
    RESET_COMMAND = "ResetCommand"


class Reason(StrEnum):
    """stoppedReason (ReasonEnumType)."""

    DEAUTHORIZED = "DeAuthorized"
    EMERGENCY_STOP = "EmergencyStop"
    ENERGY_LIMIT_REACHED = "EnergyLimitReached"
    EV_DISCONNECTED = "EVDisconnected"
    GROUND_FAULT = "GroundFault"
    IMMEDIATE_RESET = "ImmediateReset"
    LOCAL = "Local"
    LOCAL_OUT_OF_CREDIT = "LocalOutOfCredit"
    MASTER_PASS = "MasterPass"
    OTHER = "Other"
    OVERCURRENT_FAULT = "OvercurrentFault"
    POWER_LOSS = "PowerLoss"
    POWER_QUALITY = "PowerQuality"
    REBOOT = "Reboot"
    REMOTE = "Remote"
    SOC_LIMIT_REACHED = "SOCLimitReached"
    STOPPED_BY_EV = "StoppedByEV"
    TIME_LIMIT_REACHED = "TimeLimitReached"
    TIMEOUT = "Timeout"


STARTED, UPDATED, ENDED = "Started", "Updated", "Ended"
TRANSACTION_ID_MAX = 36


def parse_points(text: str, *, key: str = "TxStartPoint") -> frozenset[TxPoint]:
    """A TxStartPoint / TxStopPoint value (comma separated MemberList) -> the set of points.
    ValueError names the key and the unknown member."""
    points: set[TxPoint] = set()
    for item in (part.strip() for part in str(text).split(",")):
        if not item:
            continue
        try:
            points.add(TxPoint(item))
        except ValueError:
            raise ValueError(f"{key}: {item!r} is not one of {', '.join(p.value for p in TxPoint)}") from None
    return frozenset(points)


@dataclass(frozen=True)
class TxEvent:
    """One TransactionEventRequest to queue (seqNo and meter values are added when it is queued)."""

    event_type: str
    wall: float
    trigger_reason: Trigger
    transaction_id: str
    evse_id: int
    connector_id: int
    include_evse: bool  # first message of the transaction, and the first after the EV connected
    charging_state: ChargingState | None  # only when it changed since the last event of the transaction
    stopped_reason: Reason | None = None
    id_token: IdToken | None = None
    remote_start_id: int | None = None

    def payload(self, *, offline: bool = False, meter_value: Iterable[Mapping[str, Any]] = (),
                seq_no: int | None = None) -> dict[str, Any]:
        """The TransactionEventRequest in wire (camelCase) form."""
        info: dict[str, Any] = {"transactionId": self.transaction_id}
        if self.charging_state is not None:
            info["chargingState"] = self.charging_state.value
        if self.stopped_reason is not None:
            info["stoppedReason"] = self.stopped_reason.value
        if self.remote_start_id is not None:
            info["remoteStartId"] = self.remote_start_id
        out: dict[str, Any] = {
            "eventType": self.event_type,
            "timestamp": ocpp_time(self.wall),
            "triggerReason": self.trigger_reason.value,
            "seqNo": 0 if seq_no is None else seq_no,
            "transactionInfo": info,
        }
        if offline:
            out["offline"] = True
        if self.id_token is not None:
            out["idToken"] = self.id_token.to_ocpp()
        if self.include_evse:
            out["evse"] = {"id": self.evse_id, "connectorId": self.connector_id}
        values = [dict(v) for v in meter_value]
        if values:
            out["meterValue"] = values
        return out


@dataclass
class TxState:
    """Everything the machine knows about its EVSE; persisted (JSON) after every step."""

    ev_connected: bool = False
    parking: bool = False
    id_token: IdToken | None = None  # the authorization in force (None: not authorized)
    group_id: IdToken | None = None  # its groupIdToken, for a stop by another token of the group
    charging_state: ChargingState = ChargingState.IDLE
    signed: bool = False  # DataSigned: the signed start reading arrived
    auth_deadline: float | None = None  # monotonic: EVConnectionTimeOut for an authorization without EV
    # The running transaction:
    transaction_id: str | None = None
    held: list[str] = field(default_factory=list)  # TxPoint values that held at some time during it
    reported_state: ChargingState | None = None  # chargingState last sent
    token_reported: bool = False  # the idToken in force went out in an event
    remote_start_id: int | None = None  # to report in the next event
    evse_reported: bool = False
    stopped_reason: str | None = None  # the first cause that stopped the energy

    def to_json(self) -> str:
        data = asdict(self)
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TxState:
        data = json.loads(text)
        for key in ("id_token", "group_id"):
            if data.get(key) is not None:
                data[key] = IdToken(**data[key])
        data["charging_state"] = ChargingState(data["charging_state"])
        if data.get("reported_state") is not None:
            data["reported_state"] = ChargingState(data["reported_state"])
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class TxSettings:
    """The TxCtrlr variables the machine follows (read afresh for each step)."""

    start_points: frozenset[TxPoint] = frozenset({TxPoint.POWER_PATH_CLOSED})
    stop_points: frozenset[TxPoint] = frozenset({TxPoint.EV_CONNECTED, TxPoint.AUTHORIZED})
    stop_on_ev_side_disconnect: bool = True
    ev_connection_timeout_s: float = 60.0


# The stoppedReason each trigger stands for when it stops the energy.
_REASON_OF: dict[Trigger, Reason] = {
    Trigger.STOP_AUTHORIZED: Reason.LOCAL,
    Trigger.REMOTE_STOP: Reason.REMOTE,
    Trigger.DEAUTHORIZED: Reason.DEAUTHORIZED,
    Trigger.EV_CONNECT_TIMEOUT: Reason.TIMEOUT,
    Trigger.EV_COMMUNICATION_LOST: Reason.EV_DISCONNECTED,
    Trigger.EV_DEPARTED: Reason.LOCAL,
    Trigger.ENERGY_LIMIT_REACHED: Reason.ENERGY_LIMIT_REACHED,
    Trigger.TIME_LIMIT_REACHED: Reason.TIME_LIMIT_REACHED,
    Trigger.UNLOCK_COMMAND: Reason.OTHER,
    Trigger.ABNORMAL_CONDITION: Reason.OTHER,
    Trigger.RESET_COMMAND: Reason.IMMEDIATE_RESET,
}


def new_transaction_id() -> str:
    return str(uuid.uuid4())


class TxMachine:
    """The transaction state machine of one EVSE (one connector per EVSE on this station)."""

    def __init__(
        self,
        evse_id: int,
        connector_id: int,
        *,
        wall: Callable[[], float],
        monotonic: Callable[[], float],
        settings: Callable[[], TxSettings],
        state: TxState | None = None,
        new_id: Callable[[], str] = new_transaction_id,
    ) -> None:
        self.evse_id = evse_id
        self.connector_id = connector_id
        self._wall = wall
        self._monotonic = monotonic
        self._settings = settings
        self.state = state or TxState()
        self._new_id = new_id

    # -- views -------------------------------------------------------------------------------------

    @property
    def transaction_id(self) -> str | None:
        return self.state.transaction_id

    @property
    def authorized(self) -> bool:
        return self.state.id_token is not None

    def conditions(self, state: TxState | None = None) -> frozenset[TxPoint]:
        s = state or self.state
        out = set()
        if s.parking:
            out.add(TxPoint.PARKING)
        if s.ev_connected:
            out.add(TxPoint.EV_CONNECTED)
        if s.id_token is not None:
            out.add(TxPoint.AUTHORIZED)
        if s.ev_connected and s.id_token is not None:
            out.add(TxPoint.POWER_PATH_CLOSED)
        if s.charging_state is ChargingState.CHARGING:
            out.add(TxPoint.ENERGY_TRANSFER)
        if s.signed:
            out.add(TxPoint.DATA_SIGNED)
        return frozenset(out)

    # -- inputs ------------------------------------------------------------------------------------

    def plug(self, charging_state: ChargingState = ChargingState.EV_CONNECTED) -> list[TxEvent]:
        """The EV was connected (CablePluggedIn)."""
        if self.state.ev_connected:
            return self.charging(charging_state)
        self.state.auth_deadline = None
        self.state.evse_reported = False  # the first event after the EV connected names the EVSE
        return self._step(Trigger.CABLE_PLUGGED_IN, ev_connected=True, charging_state=charging_state)

    def unplug(self, *, fixed_cable: bool = False) -> list[TxEvent]:
        """The EV is gone (EVCommunicationLost); StopTxOnEVSideDisconnect ends the transaction. A transaction
        kept open on a cable fixed to the station waits EVConnectionTimeOut for the EV, then is deauthorized
        (E10, TC_E_27_CS: EVConnectTimeout)."""
        if not self.state.ev_connected:
            return []
        settings = self._settings()
        force = settings.stop_on_ev_side_disconnect
        if fixed_cable and not force and self.state.transaction_id is not None and self.state.id_token is not None:
            self.state.auth_deadline = self._monotonic() + max(0.0, settings.ev_connection_timeout_s)
        return self._step(Trigger.EV_COMMUNICATION_LOST, ev_connected=False, charging_state=ChargingState.IDLE,
                          signed=False, end=force, id_token=None if force else self.state.id_token)

    def parking_bay(self, occupied: bool) -> list[TxEvent]:
        if occupied == self.state.parking:
            return []
        return self._step(Trigger.EV_DETECTED if occupied else Trigger.EV_DEPARTED, parking=occupied)

    def authorize(self, token: IdToken, *, remote_start_id: int | None = None,
                  group_id: IdToken | None = None) -> list[TxEvent]:
        """An idToken authorizes the EVSE (a card accepted, or RequestStartTransaction: RemoteStart)."""
        if token.same(self.state.id_token) and remote_start_id is None:
            return []
        deadline = None
        if not self.state.ev_connected:
            deadline = self._monotonic() + max(0.0, self._settings().ev_connection_timeout_s)
        self.state.auth_deadline = deadline
        self.state.token_reported = False
        if remote_start_id is not None:
            self.state.remote_start_id = remote_start_id
        trigger = Trigger.REMOTE_START if remote_start_id is not None else Trigger.AUTHORIZED
        return self._step(trigger, id_token=token, group_id=group_id)

    def deauthorize(self, trigger: Trigger = Trigger.STOP_AUTHORIZED, reason: Reason | None = None,
                    *, by: IdToken | None = None) -> list[TxEvent]:
        """The authorization ended: StopAuthorized (a token, ``by`` when another of the group), RemoteStop,
        Deauthorized (the CSMS refused the idToken), EVConnectTimeout."""
        if self.state.id_token is None and self.state.transaction_id is None:
            return []
        # A RemoteStop of a transaction nobody authorized (started at EVConnected) has nothing to take
        # away but the transaction itself.
        end = trigger is Trigger.REMOTE_STOP and self.state.id_token is None
        self.state.auth_deadline = None
        charging = self.state.charging_state
        if self.state.ev_connected and charging in (ChargingState.CHARGING, ChargingState.SUSPENDED_EV,
                                                    ChargingState.SUSPENDED_EVSE):
            charging = ChargingState.EV_CONNECTED  # the energy stops with the authorization
        return self._step(trigger, id_token=None, charging_state=charging, reason=reason, report_token=by, end=end)

    def charging(self, state: ChargingState) -> list[TxEvent]:
        """The charging state changed (ChargingStateChanged); leaving Charging because the EV said so is
        StoppedByEV when it ends the transaction."""
        if state is self.state.charging_state:
            return []
        reason = Reason.STOPPED_BY_EV if state is ChargingState.SUSPENDED_EV else None
        if state is ChargingState.IDLE:
            return self.unplug()
        if not self.state.ev_connected:
            return self.plug(state)
        return self._step(Trigger.CHARGING_STATE_CHANGED, charging_state=state, reason=reason)

    def signed_data(self, which: str = "start") -> list[TxEvent]:
        """The meter's signed "start" or "stop" reading arrived (SignedDataReceived). The start reading
        makes DataSigned hold; the end reading ends it (a TxStopPoint DataSigned ends the transaction)."""
        if which == "start":
            if self.state.signed:
                return []
            return self._step(Trigger.SIGNED_DATA_RECEIVED, signed=True)
        if self.state.transaction_id is None:
            self.state.signed = False
            return []
        return self._step(Trigger.SIGNED_DATA_RECEIVED, signed=False)

    def abnormal(self, reason: Reason) -> list[TxEvent]:
        """A fault stopped the energy for good (ground fault, overcurrent, emergency stop, power loss)."""
        if self.state.transaction_id is None:
            self.state.id_token = None
            self.state.auth_deadline = None
            return []
        return self._step(Trigger.ABNORMAL_CONDITION, id_token=None, reason=reason, end=True,
                          charging_state=ChargingState.EV_CONNECTED if self.state.ev_connected else None)

    def reset(self, reason: Reason = Reason.IMMEDIATE_RESET) -> list[TxEvent]:
        """A Reset ends the transaction (ResetCommand; ImmediateReset, or Reboot for an OnIdle one)."""
        if self.state.transaction_id is None:
            self.state.id_token = None
            return []
        # The reset opens the power path: an EV still plugged in is EVConnected (TC_B_27_CS)
        return self._step(Trigger.RESET_COMMAND, id_token=None, reason=reason, end=True,
                          charging_state=ChargingState.EV_CONNECTED if self.state.ev_connected else None)

    def update(self, trigger: Trigger) -> list[TxEvent]:
        """An Updated for the running transaction with nothing changed (meter values, a trigger)."""
        if self.state.transaction_id is None:
            return []
        return self._step(trigger)

    def timeout_due(self) -> float | None:
        """Monotonic time at which the authorization lapses without an EV (None: none pending)."""
        return self.state.auth_deadline

    def check_timeout(self) -> list[TxEvent]:
        """EVConnectionTimeOut: an authorization with no EV connected in time lapses (EVConnectTimeout)."""
        deadline = self.state.auth_deadline
        if deadline is None or self._monotonic() < deadline or self.state.ev_connected:
            return []
        self.state.auth_deadline = None
        return self.deauthorize(Trigger.EV_CONNECT_TIMEOUT, Reason.TIMEOUT)

    # -- the rule ------------------------------------------------------------------------------------

    _UNSET: Any = object()

    def _step(
        self,
        trigger: Trigger,
        *,
        ev_connected: bool | None = None,
        parking: bool | None = None,
        id_token: Any = _UNSET,
        group_id: IdToken | None = None,
        charging_state: ChargingState | None = None,
        signed: bool | None = None,
        reason: Reason | None = None,
        end: bool = False,
        report_token: IdToken | None = None,
    ) -> list[TxEvent]:
        before = self.conditions()
        s = self.state
        if ev_connected is not None:
            s.ev_connected = ev_connected
        if parking is not None:
            s.parking = parking
        if id_token is not TxMachine._UNSET:
            s.id_token = id_token
            s.group_id = group_id if id_token is not None else None
        if charging_state is not None:
            s.charging_state = charging_state
        if signed is not None:
            s.signed = signed
        after = self.conditions()
        settings = self._settings()
        if s.transaction_id is None:
            if not (after - before) & settings.start_points:
                return []  # only a start point that becomes true starts one (never twice for one plug-in)
            s.transaction_id = self._new_id()
            s.held = sorted(after)
            s.reported_state = None
            s.evse_reported = False
            s.stopped_reason = None
            return [self._event(STARTED, trigger)]
        s.held = sorted(set(s.held) | after)
        lost = (set(s.held) & settings.stop_points) - after
        cause = reason or _REASON_OF.get(trigger)
        if TxPoint.EV_CONNECTED in before and not s.ev_connected:
            cause = reason or Reason.EV_DISCONNECTED
        if TxPoint.AUTHORIZED in before and s.id_token is None and s.stopped_reason is None:
            s.stopped_reason = (cause or Reason.OTHER).value  # the energy stopped for this cause
        nothing_left = not (s.ev_connected or s.parking or s.id_token is not None)
        if end or lost or nothing_left:
            return [self._end(trigger, cause, token=report_token)]
        return [self._event(UPDATED, trigger, token=report_token)]

    def _end(self, trigger: Trigger, reason: Reason | None, *, token: IdToken | None = None) -> TxEvent:
        s = self.state
        if s.stopped_reason is not None:
            stopped = Reason(s.stopped_reason)
        elif reason is not None:
            stopped = reason
        else:
            stopped = _REASON_OF.get(trigger, Reason.OTHER)
        event = self._event(ENDED, trigger, stopped=stopped, token=token)
        s.transaction_id = None
        s.held = []
        s.reported_state = None
        s.token_reported = False
        s.stopped_reason = None
        s.signed = False
        if s.id_token is None:
            s.group_id = None
        return event

    def _event(self, kind: str, trigger: Trigger, *, stopped: Reason | None = None,
               token: IdToken | None = None) -> TxEvent:
        s = self.state
        assert s.transaction_id is not None
        # Required when it changed; a triggered event and the Ended report it even unchanged (allowed; the
        # OCTT validates it: TC_F_13/14_CS, TC_B_27_CS).
        fresh = s.charging_state is not s.reported_state or kind in (STARTED, ENDED) or trigger is Trigger.TRIGGER
        state = s.charging_state if fresh else None
        s.reported_state = s.charging_state
        id_token = token
        if s.id_token is not None and not s.token_reported:
            id_token = s.id_token
            s.token_reported = True
        include_evse = kind == STARTED or not s.evse_reported
        s.evse_reported = True
        remote, s.remote_start_id = s.remote_start_id, None
        return TxEvent(
            event_type=kind,
            wall=self._wall(),
            trigger_reason=trigger,
            transaction_id=s.transaction_id,
            evse_id=self.evse_id,
            connector_id=self.connector_id,
            include_evse=include_evse,
            charging_state=state,
            stopped_reason=stopped,
            id_token=id_token,
            remote_start_id=remote,
        )

    def snapshot(self) -> TxState:
        return replace(self.state, held=list(self.state.held))


# ==================================================================================================
# The feature: station events -> TxMachine -> TransactionEvent in the durable outbox, and back.
# ==================================================================================================

log = logging.getLogger("cpagent.ocpp.v201.transactions")

COMPONENT = "ocpp201_tx"
MIGRATIONS: list[Migration] = [
    "CREATE TABLE ocpp201_tx (evse_id INTEGER PRIMARY KEY, state TEXT NOT NULL)",
]
MAX_NAP_S = 3600.0  # the scheduler looks at its timers at least this often
SIGNED_WAIT_S = 15.0

# StopReason of the station's session -> (triggerReason, stoppedReason); None: EV-side disconnect.
_SESSION_STOP: dict[StopReason, tuple[Trigger, Reason] | None] = {
    StopReason.LOCAL: (Trigger.STOP_AUTHORIZED, Reason.LOCAL),
    StopReason.REMOTE: (Trigger.REMOTE_STOP, Reason.REMOTE),
    StopReason.EV_DISCONNECTED: None,
    StopReason.POWER_LOSS: (Trigger.ABNORMAL_CONDITION, Reason.POWER_LOSS),
    StopReason.REBOOT: (Trigger.RESET_COMMAND, Reason.REBOOT),
    StopReason.HARD_RESET: (Trigger.RESET_COMMAND, Reason.IMMEDIATE_RESET),
    StopReason.SOFT_RESET: (Trigger.RESET_COMMAND, Reason.IMMEDIATE_RESET),
    StopReason.DEAUTHORIZED: (Trigger.DEAUTHORIZED, Reason.DEAUTHORIZED),
    StopReason.EMERGENCY_STOP: (Trigger.ABNORMAL_CONDITION, Reason.EMERGENCY_STOP),
    StopReason.UNLOCK_COMMAND: (Trigger.UNLOCK_COMMAND, Reason.OTHER),
    StopReason.OTHER: (Trigger.ABNORMAL_CONDITION, Reason.OTHER),
}
_ENDS = {Trigger.ABNORMAL_CONDITION, Trigger.RESET_COMMAND}


def ev_present(view: ConnectorView) -> bool:
    """Is an EV connected? The pilot says so (B, C, D) at once; through E/F (or no pilot reading yet) the
    controller's judgement holds; pilot A is no EV."""
    return view.plugged_in or (view.ev_connected and view.cp_state is not CpState.A)


def charging_state_of(view: ConnectorView) -> ChargingState:
    """transactionInfo.chargingState from the station's view of the connector."""
    if not ev_present(view):
        return ChargingState.IDLE
    if view.status is ConnectorStatus.CHARGING:
        return ChargingState.CHARGING
    if view.status is ConnectorStatus.SUSPENDED_EV:
        return ChargingState.SUSPENDED_EV
    if view.status is ConnectorStatus.SUSPENDED_EVSE or view.session is not None:
        return ChargingState.SUSPENDED_EVSE
    return ChargingState.EV_CONNECTED


class Transactions:
    """E01-E15, F01-F04, J01-J03 on the 2.0.1 service (agent/ocpp/v201/features.py)."""

    def __init__(self, service: Any) -> None:
        self._svc = service
        self._station: StationPort = service.station
        self._vars = service.variables
        self._clock = service.clock
        self._db: sqlite3.Connection = service.db
        self.outbox: Outbox = service.outbox
        migrate(self._db, COMPONENT, MIGRATIONS)
        saved = {int(e): s for e, s in self._db.execute("SELECT evse_id, state FROM ocpp201_tx")}
        self.machines: dict[int, TxMachine] = {}
        for cid in self._station.connector_ids():
            state = None
            if cid in saved:
                try:
                    state = TxState.from_json(saved[cid])
                except (ValueError, TypeError, KeyError) as exc:
                    log.error("EVSE %d: saved transaction state unreadable (%s); starting afresh", cid, exc)
            self.machines[cid] = TxMachine(cid, 1, wall=service.wall, monotonic=self._clock.monotonic,
                                           settings=self.settings, state=state)
        shared = self._station.shared
        local_list = LocalAuthList(self._db, self._clock)
        self.cache = AuthorizationCache(self._db, self._clock, local_list)
        self._master_stops: set[int] = set()  # EVSEs whose session a master pass is stopping (C16)
        self.authorizer = Authorizer201(
            self._vars, local_list, self.cache,
            online=self._online, request=service.request, wall=service.wall,
        )
        self._sessions = shared.sessions
        self.ended_values = mv.EndedValues()
        self._anchors: dict[int, float] = {}  # EVSE -> monotonic start of its running transaction
        self._due: dict[tuple[str, int], tuple[int, float]] = {}  # (kind, EVSE) -> (interval, monotonic due)
        self._pending_starts: dict[int, int] = {}  # remoteStartId -> EVSE chosen for it
        self._held: dict[int, list[StationEvent]] = {}  # EVSE -> its events while a stop awaits its signature
        self._aligned_last: dict[str, float] = {}  # AlignedDataCtrlr variable -> the last boundary handled
        self._energy_caps: dict[str, float] = {}  # session ref -> register (Wh) at which energy stops
        self._poke = Flag()
        # Other features add fields to each TransactionEvent payload (e.g. reservationId, reservation.py).
        self.payload_extras: list[Callable[[ConnectorView | None, dict[str, Any]], None]] = []
        # Called with (the TransactionEvent payload sent, the CSMS's answer) once acknowledged (pricing.py:
        # totalCost, updatedPersonalMessage); a listener's failure is logged, the delivery stands.
        self.answer_listeners: list[Callable[[dict[str, Any], Any], None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._station.register_authority(self.authorizer)
        self._station.subscribe(self._on_event)
        self._vars.on_change(self._on_variable)
        service.deliverers[TRANSACTION_EVENT] = self._deliver
        for action in (START, STOP, METER_VALUES):
            service.deliverers[action] = self._deliver_converted
        service.register_trigger("TransactionEvent", self._accept_trigger, self._send_trigger_tx)
        service.register_trigger("MeterValues", self._accept_trigger_mv, self._send_trigger_mv)

    # -- settings ------------------------------------------------------------------------------------

    def _int(self, component: str, variable: str, default: int, instance: str | None = None) -> int:
        try:
            return int(self._vars.integer(component, variable, instance=instance))
        except Exception:
            return default

    def _bool(self, component: str, variable: str, default: bool) -> bool:
        try:
            return bool(self._vars.boolean(component, variable))
        except Exception:
            return default

    def _members(self, component: str, variable: str) -> tuple[str, ...]:
        try:
            return mv.measurands(self._vars.members(component, variable))
        except Exception:
            return (mv.ENERGY,)

    def settings(self) -> TxSettings:
        def points(variable: str, default: str) -> frozenset[TxPoint]:
            try:
                raw = self._vars.value("TxCtrlr", variable)
                return parse_points(",".join(raw) if isinstance(raw, tuple) else str(raw), key=variable)
            except Exception:
                return parse_points(default, key=variable)

        return TxSettings(
            points("TxStartPoint", "PowerPathClosed"),
            points("TxStopPoint", "EVConnected,Authorized"),
            self._bool("TxCtrlr", "StopTxOnEVSideDisconnect", True),
            float(self._int("TxCtrlr", "EVConnectionTimeOut", 60)),
        )

    def charging_rate_changed(self, evse_id: int) -> bool:
        """K11.FR.04 / K13.FR.03: an Updated (triggerReason ChargingRateChanged) for the EVSE's running
        transaction, asked for by agent/ocpp/v201/external_limits.py. False without a transaction."""
        machine = self.machines.get(evse_id)
        if machine is None:
            return False
        events = machine.update(Trigger.CHARGING_RATE_CHANGED)
        self._emit(machine, events, self._view(evse_id))
        return bool(events)

    # -- station events -> machines --------------------------------------------------------------------

    def _view(self, cid: int) -> ConnectorView | None:
        try:
            return self._station.connector_view(cid)
        except KeyError:
            return None

    def _on_event(self, event: StationEvent) -> None:
        held = self._held.get(getattr(event, "connector_id", None) or 0)
        if held is not None and not isinstance(event, MeterUpdate):
            held.append(event)  # after the stop that waits for its signed end reading
            return
        try:
            if isinstance(event, StatusChanged):
                self._sync(event.connector_id)
            elif isinstance(event, SessionStarted):
                self._session_started(event)
            elif isinstance(event, SessionStopped):
                self._session_stopped(event)
            elif isinstance(event, TokenPresented):
                self._token(event)
            elif isinstance(event, MeterUpdate):
                self._meter(event)
        except Exception:
            log.exception("transaction events for %s failed", type(event).__name__)

    def _sync(self, cid: int, view: ConnectorView | None = None) -> None:
        """Bring the machine to what the connector shows: EV connected or not, charging state."""
        machine = self.machines.get(cid)
        view = view or self._view(cid)
        if machine is None or view is None:
            return
        state = charging_state_of(view)
        if ev_present(view) and not machine.state.ev_connected:
            self._emit(machine, machine.plug(state), view)
        elif not ev_present(view) and machine.state.ev_connected:
            events = machine.unplug(fixed_cable=view.fixed_cable)
            self._emit(machine, events, view)
            if view.session is not None and any(e.event_type == ENDED for e in events) and \
                    not self.settings().stop_on_ev_side_disconnect:
                # A TxStopPoint (EVConnected, PowerPathClosed) ended the transaction although
                # StopTxOnEVSideDisconnect false keeps the station's session for the EV to come back: the
                # authorization ended with it, so must the session (else the next EV to plug in would
                # start a transaction on this idToken; TC_E_37_CS). With it true the connector stops it.
                self._station.stop_session(cid, StopReason.EV_DISCONNECTED)
        elif ev_present(view):
            self._emit(machine, machine.charging(state), view)
        self._poke.set()

    def _session_started(self, event: SessionStarted) -> None:
        machine = self.machines.get(event.connector_id)
        view = self._view(event.connector_id)
        if machine is None:
            return
        if view is not None and ev_present(view) and not machine.state.ev_connected:
            self._emit(machine, machine.plug(charging_state_of(view)), view)
        token = self.authorizer.token(event.session.id_tag)
        if not token.same(machine.state.id_token):
            self._emit(machine, machine.authorize(token, group_id=self._group(event.session.id_tag)), view)
        ref = event.session.ref
        if machine.transaction_id is not None:  # started before the session (e.g. TxStartPoint EVConnected)
            self._note_transaction(ref, machine.transaction_id)
        if self._station.signed_reading_pending(event.connector_id, ref, "start"):
            self._spawn(self._signed(event.connector_id, ref, "start"))
        self._sync(event.connector_id)

    def _note_transaction(self, session_ref: str, transaction_id: str) -> None:
        """The station's session record carries the 2.0.1 transactionId (`cpctl status`, `cpctl sessions`)."""
        try:
            self._sessions.set_transaction_id(session_ref, transaction_id)
        except sqlite3.Error as exc:
            log.warning("session %s: transactionId not recorded: %s", session_ref, exc)

    def _session_stopped(self, event: SessionStopped) -> None:
        cid = event.connector_id
        if cid in self.machines and self._station.signed_reading_pending(cid, event.session.ref, "stop"):
            # The meter signs the end reading: the stop (and what happens at the EVSE after it) waits for it,
            # bounded, so that the event ending the energy carries it (J02 signed data, DataSigned).
            self._held[cid] = []
            self._spawn(self._stop_when_signed(event))
            return
        self._stop(event)

    async def _stop_when_signed(self, event: SessionStopped) -> None:
        cid, ref = event.connector_id, event.session.ref
        record = None
        try:
            async with asyncio.timeout(SIGNED_WAIT_S):
                record = await self._station.signed_reading(cid, ref, "stop")
        except Exception:
            log.warning("EVSE %d: no signed end reading in time; the transaction goes on without it", cid)
        held = self._held.pop(cid, [])
        try:
            value = None
            if record is not None:
                session = self._sessions.get(ref) or event.session
                energy = session.stop_energy_wh if session.stop_energy_wh is not None else session.last_energy_wh
                value = {"timestamp": mv.ocpp_time(self._svc.wall()),
                         "sampledValue": [mv.signed_value(record, mv.TX_END, energy)]}
            self._stop(event, extra=[value] if value else None)
            machine = self.machines[cid]
            if record is not None and machine.transaction_id is not None:
                self._emit(machine, machine.signed_data("stop"), self._view(cid))
        except Exception:
            log.exception("EVSE %d: the stop of session %s failed", cid, ref)
        for later in held:
            self._on_event(later)

    def _stop(self, event: SessionStopped, extra: list[dict[str, Any]] | None = None) -> None:
        cid = event.connector_id
        machine = self.machines.get(cid)
        if machine is None:
            return
        self._energy_caps.pop(event.session.ref, None)
        view = self._view(cid)
        mapped = _SESSION_STOP.get(event.reason, (Trigger.ABNORMAL_CONDITION, Reason.OTHER))
        if mapped is None:  # the EV left (StopTxOnEVSideDisconnect)
            events = machine.unplug() if machine.state.ev_connected else machine.deauthorize(
                Trigger.EV_COMMUNICATION_LOST, Reason.EV_DISCONNECTED)
        else:
            trigger, reason = mapped
            by = None
            if event.session.stop_id_tag:
                by = self.authorizer.token(event.session.stop_id_tag)
                if self.authorizer.is_master_pass(event.session.stop_id_tag):
                    reason = Reason.MASTER_PASS
                    self._master_stop_all(cid)
            if cid in self._master_stops:
                self._master_stops.discard(cid)
                reason = Reason.MASTER_PASS
            if trigger is Trigger.RESET_COMMAND:
                events = machine.reset(reason)
            elif trigger in _ENDS:
                events = machine.abnormal(reason)
            else:
                events = machine.deauthorize(trigger, reason, by=by)
        self._emit(machine, events, view, session=event.session, extra=extra)
        self._sync(cid)

    def _master_stop_all(self, first: int) -> None:
        """C16 (no UI to choose): a master pass stops every running transaction, not just one."""
        for cid, view in self._station.connector_views().items():
            if cid != first and view.session is not None:
                self._master_stops.add(cid)
                self._station.stop_session(cid, StopReason.LOCAL)

    def _token(self, event: TokenPresented) -> None:
        if not event.accepted or event.connector_id is None:
            return
        machine = self.machines.get(event.connector_id)
        view = self._view(event.connector_id)
        if machine is None or view is None:
            return
        if view.session is None and view.pending_id_tag is not None and \
                view.pending_id_tag.upper() == event.id_tag.upper():
            token = self.authorizer.token(event.id_tag)
            if not token.same(machine.state.id_token):  # authorized, waiting for the EV (E03)
                self._emit(machine, machine.authorize(token, group_id=self._group(event.id_tag)), view)
                self._poke.set()

    def _group(self, id_tag: str) -> IdToken | None:
        group = self.authorizer.group_of(id_tag)
        return IdToken(group, "Central") if group else None

    def _meter(self, event: MeterUpdate) -> None:
        """MaxEnergyOnInvalidId: energy stops once a transaction with a refused idToken reached it. And the
        EV leaving / coming back under a transaction kept open (StopTxOnEVSideDisconnect false), which the
        connector status does not show (SuspendedEV either way): EVCommunicationLost / CablePluggedIn (E10)."""
        machine = self.machines.get(event.connector_id)
        if machine is not None and machine.transaction_id is not None:
            view = self._view(event.connector_id)
            if view is not None and ev_present(view) != machine.state.ev_connected:
                self._sync(event.connector_id, view)
        ref = event.session_ref
        cap = self._energy_caps.get(ref) if ref is not None else None
        if ref is None or cap is None or event.sample.energy_import_wh < cap:
            return
        del self._energy_caps[ref]
        log.warning("EVSE %d: MaxEnergyOnInvalidId reached: energy stopped", event.connector_id)
        self._station.hold_energy(event.connector_id, EnergyHold.INVALID_ID)

    async def _signed(self, cid: int, ref: str, which: str) -> None:
        try:
            async with asyncio.timeout(SIGNED_WAIT_S):
                record = await self._station.signed_reading(cid, ref, which)
        except Exception:
            log.warning("EVSE %d: no signed %s reading", cid, which)
            return
        machine = self.machines.get(cid)
        if record is None or machine is None:
            return
        session = self._sessions.get(ref)
        energy = 0.0
        if session is not None:
            energy = session.start_energy_wh if which == "start" else (session.stop_energy_wh or session.last_energy_wh)
        context = mv.TX_BEGIN if which == "start" else mv.TX_END
        value = {"timestamp": mv.ocpp_time(self._svc.wall()),
                 "sampledValue": [mv.signed_value(record, context, energy)]}
        self._emit(machine, machine.signed_data(which), self._view(cid), extra=[value])

    # -- events -> outbox ----------------------------------------------------------------------------

    def _emit(self, machine: TxMachine, events: list[TxEvent], view: ConnectorView | None, *,
              session: Session | None = None, extra: list[dict[str, Any]] | None = None,
              meter: list[dict[str, Any]] | None = None) -> None:
        """Queue the events (durable, numbered) together with the machine's new state; with no event
        only the state is saved."""
        state = machine.state.to_json()

        def save(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO ocpp201_tx(evse_id, state) VALUES (?, ?) ON CONFLICT(evse_id) "
                         "DO UPDATE SET state = excluded.state", (machine.evse_id, state))

        if not events:
            save(self._db)
            return
        for event in events:
            values = list(meter or []) + self._values_for(event, view, session) + list(extra or [])
            payload = event.payload(offline=not self._online(), meter_value=values)
            payload["evse"] = {"id": event.evse_id, "connectorId": event.connector_id}
            for add in self.payload_extras:
                add(view, payload)
            try:
                self.outbox.append(TRANSACTION_EVENT, payload, tx_ref=event.transaction_id, seq_field="seqNo",
                                   also=save)
            except DuplicateStop:
                log.info("transaction %s already ended; no second Ended", event.transaction_id)
                save(self._db)
            if event.event_type == STARTED:
                self._anchors[machine.evse_id] = self._clock.monotonic()
                if view is not None and view.session is not None:
                    self._note_transaction(view.session.ref, event.transaction_id)
            elif event.event_type == ENDED:
                self._anchors.pop(machine.evse_id, None)
            log.info("EVSE %d: TransactionEvent %s (%s) queued for %s", event.evse_id, event.event_type,
                     event.trigger_reason.value, event.transaction_id)
        self._svc._wake()
        self._poke.set()

    def _values_for(self, event: TxEvent, view: ConnectorView | None,
                    session: Session | None) -> list[dict[str, Any]]:
        sample = (view.last_sample or view.meter_latest) if view is not None else None
        wall = self._svc.wall()
        offered = view.offered_current_a if view is not None else None
        if event.event_type == STARTED:
            names = self._members("SampledDataCtrlr", "TxStartedMeasurands")
            if sample is not None:
                value = mv.meter_value(wall, sample, names, mv.TX_BEGIN, offered_a=offered)
                return [value] if value else []
            return []
        if event.event_type == ENDED:
            values = self.ended_values.take(event.transaction_id)
            names = self._members("SampledDataCtrlr", "TxEndedMeasurands")
            if sample is not None:
                value = mv.meter_value(wall, sample, names, mv.TX_END, offered_a=offered)
                if value:
                    values.append(value)
            elif session is not None:
                energy = session.stop_energy_wh if session.stop_energy_wh is not None else session.last_energy_wh
                values.append(mv.energy_only(wall, energy, mv.TX_END))
            return values
        return []

    # -- delivery ------------------------------------------------------------------------------------

    async def _deliver(self, session: Any, entry: OutboxEntry) -> None:
        """Send one TransactionEvent; ack, retry (MessageAttempts / MessageAttemptInterval
        .TransactionEvent: wait interval x previous sends) or give up. ConnectionLost propagates."""
        payload = self.outbox.payload_for_send(entry)
        attempts = self.outbox.record_attempt(entry.id)
        try:  # the queued camelCase payload as it is (schema-checked by the session), no dataclass round trip
            conf = await session.request_payload(TRANSACTION_EVENT, outbox_payload(payload, entry.may_hold_nulls))
        except (CallErrorReceived, CallTimeout, InvalidPayload) as exc:
            limit = max(1, self._int("OCPPCommCtrlr", "MessageAttempts", 3, "TransactionEvent"))
            if attempts >= limit:
                self.outbox.drop(entry.id, f"{exc} (after {attempts} attempts)")
                log.error("gave up on TransactionEvent #%d after %d attempts: %s", entry.id, attempts, exc)
                return
            interval = self._int("OCPPCommCtrlr", "MessageAttemptInterval", 60, "TransactionEvent")
            delay = Outbox.retry_delay(attempts, interval)
            log.warning("TransactionEvent #%d failed (%s); retry %d/%d in %.0f s", entry.id, exc, attempts + 1,
                        limit, delay)
            self.outbox.defer(entry.id, delay)
            return
        self.outbox.ack(entry.id)
        for listener in self.answer_listeners:
            try:
                listener(payload, conf)
            except Exception:
                log.exception("TransactionEvent answer listener failed")
        info = getattr(conf, "id_token_info", None)
        token = payload.get("idToken")
        if info is not None and isinstance(token, dict) and token.get("idToken"):
            record = self.authorizer.learn(str(token["idToken"]), info)
            if record is not None and not record.accepted:
                self._invalid(str(payload["transactionInfo"]["transactionId"]), record.status)

    def _invalid(self, transaction_id: str, status: str) -> None:
        """The CSMS refused the idToken of a transaction (E05/C15): StopTxOnInvalidId deauthorizes it;
        otherwise it goes on and energy stops at MaxEnergyOnInvalidId."""
        for cid, machine in self.machines.items():
            if machine.transaction_id != transaction_id:
                continue
            view = self._view(cid)
            if self._bool("TxCtrlr", "StopTxOnInvalidId", True):
                log.warning("EVSE %d: idToken %s by the CSMS: deauthorizing the transaction", cid, status)
                if view is not None and view.session is not None:
                    self._station.stop_session(cid, StopReason.DEAUTHORIZED)
                else:
                    self._emit(machine, machine.deauthorize(Trigger.DEAUTHORIZED, Reason.DEAUTHORIZED), view)
                return
            limit = self._int("TxCtrlr", "MaxEnergyOnInvalidId", 0)
            if view is not None and view.session is not None and limit > 0 and view.session_energy_wh < limit:
                self._energy_caps[view.session.ref] = view.session.start_energy_wh + limit
                log.warning("EVSE %d: idToken %s: energy stops after %d Wh", cid, status, limit)
            else:
                log.warning("EVSE %d: idToken %s: energy stopped, transaction kept", cid, status)
                self._station.hold_energy(cid, EnergyHold.INVALID_ID)
            return

    async def _deliver_converted(self, session: Any, entry: OutboxEntry) -> None:
        """An entry queued under OCPP 1.6 goes out as its 2.0.1 equivalent (rewritten in place, keeping
        its place in the queue), or is given up on loudly when it has none. A 2.0.1 MeterValues (evseId,
        e.g. AlignedDataCtrlr.SendDuringIdle) goes out as it is."""
        head: OutboxEntry | None = entry
        action = entry.action
        if convert.is_v16(entry.action, entry.payload):
            bound = self.outbox.transaction_id(entry.tx_ref) if entry.tx_ref else None
            converted = convert.to_201(entry.action, entry.payload, entry.tx_ref, bound)
            if converted is None:
                self.outbox.drop(entry.id, f"{entry.action} queued under OCPP 1.6 has no 2.0.1 form")
                return
            action, payload = converted
            seq = "seqNo" if action == TRANSACTION_EVENT else None
            self.outbox.rewrite(entry.id, action, payload, seq_field=seq)
            head = self.outbox.head()
        if head is None or head.id != entry.id:
            return
        if action == TRANSACTION_EVENT:
            await self._deliver(session, head)
            return
        attempts = self.outbox.record_attempt(head.id)
        try:
            await session.request_payload("MeterValues", outbox_payload(head.payload, head.may_hold_nulls))
        except (CallErrorReceived, CallTimeout, InvalidPayload) as exc:
            if attempts >= 3:
                self.outbox.drop(head.id, f"{exc} (after {attempts} attempts)")
            else:
                self.outbox.defer(head.id, Outbox.retry_delay(attempts, 30))
            return
        self.outbox.ack(head.id)

    # -- CSMS requests (F01-F04, E14) ------------------------------------------------------------------

    def _evse_for_start(self, evse_id: int | None) -> int | None:
        if evse_id is not None:
            return evse_id if evse_id in self.machines else None
        views = self._station.connector_views()
        free = [c for c, v in views.items() if v.available and v.session is None and not self.machines[c].authorized]
        plugged = [c for c in free if ev_present(views[c])]
        choice = plugged or free
        return choice[0] if choice else None

    async def on_request_start_transaction(self, id_token: dict[str, Any], remote_start_id: int,
                                           evse_id: int | None = None, group_id_token: Any = None,
                                           charging_profile: dict[str, Any] | None = None,
                                           **_: Any) -> dict[str, Any]:
        cid = self._evse_for_start(evse_id)
        if cid is None:
            return {"status": "Rejected", "statusInfo": {"reasonCode": "UnknownEvse" if evse_id else "NoEvse"}}
        view = self._view(cid)
        machine = self.machines[cid]
        if view is None or not view.available or view.session is not None or machine.authorized:
            return {"status": "Rejected", "statusInfo": {"reasonCode": "OccupiedEvse"}}
        smart = self._svc.features.get("SmartCharging")
        if charging_profile is not None and smart is not None:  # F01.FR.08-12: its TxProfile (smart_charging.py)
            refused = smart.hold_for_remote_start(cid, IdToken.from_ocpp(id_token).id_token, charging_profile)
            if refused is not None:
                return {"status": "Rejected", "statusInfo": {"reasonCode": refused}}
        out: dict[str, Any] = {"status": "Accepted"}
        if machine.transaction_id is not None:
            out["transactionId"] = machine.transaction_id  # started already (EVConnected): F02.FR.xx
        self._pending_starts[remote_start_id] = cid
        return out

    async def after_request_start_transaction(self, id_token: dict[str, Any], remote_start_id: int,
                                              group_id_token: Any = None, **_: Any) -> None:
        cid = self._pending_starts.pop(remote_start_id, None)
        if cid is None:
            return
        token, group = IdToken.from_ocpp(id_token), group_id_token
        if token.type != READER_TYPE:
            self.authorizer.types[token.id_token.upper()] = token.type
        if self._bool("AuthCtrlr", "AuthorizeRemoteStart", True) and self._bool("AuthCtrlr", "Enabled", True) \
                and token.type != "NoAuthorization":
            answer = await self.authorizer.authorize(token.id_token)
            if not answer.accepted:
                log.warning("RequestStartTransaction: idToken %s; no transaction", answer.status)
                return
        machine = self.machines[cid]
        group_token = IdToken.from_ocpp(group) if isinstance(group, dict) else self._group(token.id_token)
        self._emit(machine, machine.authorize(token, remote_start_id=remote_start_id, group_id=group_token),
                   self._view(cid))
        parent = group_token.id_token if group_token is not None else None
        if not self._station.begin_authorized(cid, token.id_token, parent):
            log.warning("EVSE %d: reserved for another idToken; remote start not taken", cid)
            self._emit(machine, machine.deauthorize(Trigger.DEAUTHORIZED, Reason.DEAUTHORIZED), self._view(cid))
        self._poke.set()

    async def on_request_stop_transaction(self, transaction_id: str, **_: Any) -> dict[str, Any]:
        for machine in self.machines.values():
            if machine.transaction_id == transaction_id:
                return {"status": "Accepted"}
        return {"status": "Rejected"}

    async def after_request_stop_transaction(self, transaction_id: str, **_: Any) -> None:
        for cid, machine in self.machines.items():
            if machine.transaction_id != transaction_id:
                continue
            view = self._view(cid)
            if view is not None and view.session is not None:
                self._station.stop_session(cid, StopReason.REMOTE)
            else:
                self._emit(machine, machine.deauthorize(Trigger.REMOTE_STOP, Reason.REMOTE), view)

    async def on_clear_cache(self, **_: Any) -> dict[str, Any]:
        """C11: ClearCache empties the Authorization Cache; Rejected while the cache is disabled."""
        if not self._bool("AuthCacheCtrlr", "Enabled", True):
            return {"status": "Rejected"}
        self.cache.clear()
        return {"status": "Accepted"}

    async def on_get_transaction_status(self, transaction_id: str | None = None, **_: Any) -> dict[str, Any]:
        if transaction_id is None:
            return {"messagesInQueue": self.outbox.has_action(TRANSACTION_EVENT)}
        ongoing = any(m.transaction_id == transaction_id for m in self.machines.values())
        return {"ongoingIndicator": ongoing, "messagesInQueue": self.outbox.queued_for(transaction_id) > 0}

    # -- TriggerMessage (F06) ------------------------------------------------------------------------------

    def _targets(self, evse: Mapping[str, Any] | None) -> list[int]:
        if evse is None or int(evse.get("id", 0)) == 0:
            return list(self.machines)
        return [int(evse["id"])] if int(evse["id"]) in self.machines else []

    def _accept_trigger(self, evse: Mapping[str, Any] | None) -> str:
        running = [c for c in self._targets(evse) if self.machines[c].transaction_id is not None]
        return "Accepted" if running else "Rejected"

    async def _send_trigger_tx(self, evse: Mapping[str, Any] | None) -> None:
        for cid in self._targets(evse):
            machine = self.machines[cid]
            view = self._view(cid)
            values = self._sample(view, self._members("SampledDataCtrlr", "TxUpdatedMeasurands"), mv.TRIGGER)
            self._emit(machine, machine.update(Trigger.TRIGGER), view, meter=values)

    def _accept_trigger_mv(self, evse: Mapping[str, Any] | None) -> str:
        return "Accepted" if self._targets(evse) else "Rejected"

    async def _send_trigger_mv(self, evse: Mapping[str, Any] | None) -> None:
        for cid in self._targets(evse):
            values = self._sample(self._view(cid), self._members("AlignedDataCtrlr", "Measurands"), mv.TRIGGER)
            if values:
                try:
                    await self._svc.request(call.MeterValues(evse_id=cid, meter_value=values))
                except Exception as exc:
                    log.warning("triggered MeterValues for EVSE %d failed: %s", cid, exc)

    def _sample(self, view: ConnectorView | None, names: Iterable[str], context: str) -> list[dict[str, Any]]:
        sample = (view.last_sample or view.meter_latest) if view is not None else None
        if sample is None or view is None:
            return []
        value = mv.meter_value(self._svc.wall(), sample, names, context, offered_a=view.offered_current_a)
        return [value] if value else []

    # -- the scheduler: periodic and clock-aligned values, EVConnectionTimeOut -----------------------------

    def _on_variable(self, component: str, variable: str, value: object) -> None:
        """A sampling interval, EVConnectionTimeOut or the like changed: the scheduler recomputes now."""
        if component in ("SampledDataCtrlr", "AlignedDataCtrlr", "TxCtrlr"):
            self._poke.set()

    def _spawn(self, coro: Any) -> None:
        try:
            task = asyncio.ensure_future(coro)
        except RuntimeError:  # no running loop (constructed outside one): nothing to wait for then
            coro.close()
            log.warning("no event loop: a signed meter reading is not awaited")
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _tick(self) -> float | None:
        """Do what is due now; the monotonic time of the next thing due (None: nothing)."""
        now = self._clock.monotonic()
        nexts: list[float] = []
        for cid, machine in self.machines.items():
            for event_list in (machine.check_timeout(),):
                if event_list:
                    view = self._view(cid)
                    self._emit(machine, event_list, view)
                    if machine.transaction_id is None and view is not None and view.session is not None:
                        # the EV never came back to the fixed cable: the station's session ends with it
                        self._station.stop_session(cid, StopReason.DEAUTHORIZED)
            deadline = machine.timeout_due()
            if deadline is not None:
                nexts.append(deadline)
            if machine.transaction_id is None:
                self._due.pop(("updated", cid), None)
                self._due.pop(("ended", cid), None)
                continue
            anchor = self._anchors.setdefault(cid, now)
            for kind, interval, names_of, context in (
                ("updated", self._int("SampledDataCtrlr", "TxUpdatedInterval", 0), "TxUpdatedMeasurands",
                 mv.PERIODIC),
                ("ended", self._int("SampledDataCtrlr", "TxEndedInterval", 0), "TxEndedMeasurands", mv.PERIODIC),
            ):
                interval = mv.effective_interval(interval)
                key = (kind, cid)
                if interval == 0:
                    self._due.pop(key, None)
                    continue
                known = self._due.get(key)
                due = known[1] if known is not None and known[0] == interval else mv.next_sample_due(
                    anchor, interval, now)
                if now >= due:
                    view = self._view(cid)
                    values = self._sample(view, self._members("SampledDataCtrlr", names_of), context)
                    if kind == "updated":
                        self._emit(machine, machine.update(Trigger.METER_VALUE_PERIODIC), view, meter=values)
                    else:
                        for value in values:
                            self.ended_values.add(machine.transaction_id or "", value)
                    due = mv.next_sample_due(anchor, interval, max(now, due))
                self._due[key] = (interval, due)
                nexts.append(due)
        # Clock-aligned: Interval (J01, sent at once) and TxEndedInterval (kept for the Ended event, TC_J_03_CS)
        for variable, handle in (("Interval", self._aligned), ("TxEndedInterval", self._aligned_ended)):
            aligned = mv.effective_interval(self._int("AlignedDataCtrlr", variable, 0))
            if not aligned:
                self._aligned_last.pop(variable, None)
                continue
            wall = self._svc.wall()
            last = self._aligned_last.get(variable)
            if last is None or last - wall > aligned:  # first look, or the clock went back: start afresh
                last = mv.next_aligned_boundary(wall, aligned) - aligned
            boundary = mv.next_aligned_boundary(last, aligned)
            if wall >= boundary:
                if wall - boundary <= max(float(aligned), 60.0):  # not a clock jump past it
                    handle(boundary)
                last = boundary
                boundary = mv.next_aligned_boundary(max(wall, boundary), aligned)
            self._aligned_last[variable] = last
            nexts.append(now + (boundary - wall))
        return min(nexts) if nexts else None

    def _aligned_ended(self, boundary: float) -> None:
        """AlignedDataCtrlr.TxEndedMeasurands at a TxEndedInterval boundary, kept for the Ended event of each
        running transaction (context Sample.Clock, TC_J_03_CS)."""
        for cid, machine in self.machines.items():
            if machine.transaction_id is None:
                continue
            view = self._view(cid)
            sample = (view.last_sample or view.meter_latest) if view is not None else None
            if sample is None or view is None:
                continue
            names = self._members("AlignedDataCtrlr", "TxEndedMeasurands")
            self.ended_values.add(machine.transaction_id,
                                  mv.meter_value(boundary, sample, names, mv.CLOCK, offered_a=view.offered_current_a))

    def _aligned(self, boundary: float) -> None:
        """Clock-aligned values (J01): in a TransactionEvent of a running transaction; outside one, a
        MeterValues (durable) only with AlignedDataCtrlr.SendDuringIdle."""
        idle = self._bool("AlignedDataCtrlr", "SendDuringIdle", False)
        for cid, machine in self.machines.items():
            if machine.transaction_id is None and not idle:
                continue
            view = self._view(cid)
            names = self._members("AlignedDataCtrlr", "Measurands")
            sample = (view.last_sample or view.meter_latest) if view is not None else None
            if sample is None or view is None:
                continue
            value = mv.meter_value(boundary, sample, names, mv.CLOCK, offered_a=view.offered_current_a)
            if machine.transaction_id is None:
                if value:
                    self._svc.enqueue(METER_VALUES, {"evseId": cid, "meterValue": [value]})
                continue
            if view.session is not None and self._bool("AlignedDataCtrlr", "SignReadings", False):
                self._spawn(self._aligned_signed(cid, view.session.ref, boundary, value))
                continue
            self._emit(machine, machine.update(Trigger.METER_VALUE_CLOCK), view, meter=[value] if value else [])

    async def _aligned_signed(self, cid: int, ref: str, boundary: float, value: dict[str, Any] | None) -> None:
        """AlignedDataCtrlr.SignReadings (TC_J_04_CS): the clock-aligned energy register as the meter's signed
        record (signedMeterValue); without one (the meter cannot sign, timeout) the values go unsigned."""
        record: str | None = None
        try:
            async with asyncio.timeout(SIGNED_WAIT_S):
                record = await self._station.signed_reading(cid, ref, "update")
        except Exception as exc:
            log.warning("EVSE %d: no signed clock-aligned reading: %s", cid, exc)
        machine, view = self.machines.get(cid), self._view(cid)
        if machine is None or machine.transaction_id is None:
            return
        if record is not None:
            energy = view.last_sample.energy_import_wh if view is not None and view.last_sample else 0.0
            sampled = [v for v in (value or {}).get("sampledValue", [])
                       if not (v.get("measurand", mv.ENERGY) == mv.ENERGY and "phase" not in v)]
            value = {"timestamp": mv.ocpp_time(boundary),
                     "sampledValue": [*sampled, mv.signed_value(record, mv.CLOCK, energy)]}
        self._emit(machine, machine.update(Trigger.METER_VALUE_CLOCK), view, meter=[value] if value else [])

    def _online(self) -> bool:
        try:
            return bool(self._svc.online)
        except AttributeError:  # the service is still being built
            return False

    async def run(self) -> None:
        try:
            self._recover()
        except Exception:
            log.exception("recovering the transactions after the restart failed")
        failing = False
        while True:
            self._poke.clear()
            try:
                due = self._tick()
                failing = False
            except Exception:
                if not failing:
                    log.exception("transaction scheduler failed")
                failing = True
                due = self._clock.monotonic() + 1.0
            wait = MAX_NAP_S if due is None else min(MAX_NAP_S, max(0.0, due - self._clock.monotonic()) + 0.001)
            await self._poke.wait_for(wait)

    # -- restart -------------------------------------------------------------------------------------

    def _recover(self) -> None:
        """After a restart: what changed while we were away reaches the machines (a session closed by a
        power loss ends its transaction; an EV unplugged meanwhile is reported)."""
        for cid, machine in self.machines.items():
            view = self._view(cid)
            if view is None:
                continue
            if machine.authorized and view.session is None and view.pending_id_tag is None:
                last = next((s for s in self._sessions.recent(20) if s.connector_id == cid and not s.open), None)
                reason = StopReason.POWER_LOSS
                if last is not None and last.stop_reason in StopReason.__members__.values():
                    reason = StopReason(last.stop_reason)
                if last is not None:
                    self._session_stopped(SessionStopped(cid, last, reason))
                else:
                    self._emit(machine, machine.abnormal(Reason.POWER_LOSS), view)
            elif view.session is not None and not machine.authorized:
                self._session_started(SessionStarted(cid, view.session))
            elif machine.transaction_id is not None and not machine.authorized and view.session is None \
                    and not getattr(self._svc, "boot_resumed", True):
                # The station itself restarted (not only the network side): a transaction nobody authorized
                # (started at EVConnected / ParkingBayOccupancy) ends with the reboot, like the sessions did.
                remote = getattr(self._svc, "boot_reason", lambda: "PowerUp")() == "RemoteReset"
                self._emit(machine, machine.reset(Reason.IMMEDIATE_RESET) if remote
                           else machine.abnormal(Reason.POWER_LOSS), view)
            if view.cp_state is not None:  # without a pilot reading yet, the station's first status tells
                self._sync(cid, view)
