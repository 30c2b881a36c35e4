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

import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from agent.ocpp.v16.meter_values import ocpp_time


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
ID_TOKEN_TYPES = frozenset(
    {"Central", "eMAID", "ISO14443", "ISO15693", "KeyCode", "Local", "MacAddress", "NoAuthorization"}
)
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
class IdToken:
    id_token: str
    type: str = "ISO14443"

    def __post_init__(self) -> None:
        if self.type not in ID_TOKEN_TYPES:
            raise ValueError(f"idToken type {self.type!r} is not an IdTokenEnumType")
        if not isinstance(self.id_token, str) or len(self.id_token) > 36:
            raise ValueError("idToken is not a string of at most 36 characters")

    def to_ocpp(self) -> dict[str, str]:
        return {"idToken": self.id_token, "type": self.type}

    @classmethod
    def from_ocpp(cls, value: Mapping[str, Any]) -> IdToken:
        """From an IdTokenType object, wire form (``idToken``) or the library's (``id_token``)."""
        if not isinstance(value, Mapping):
            raise ValueError(f"idToken is not an object: {type(value).__name__}")
        token = value.get("idToken", value.get("id_token"))
        return cls(str(token) if token is not None else "", str(value.get("type", "")))

    def same(self, other: IdToken | None) -> bool:
        """idTokens compare case-insensitively (IdToken is a CiString36 / identifier string)."""
        return other is not None and other.id_token.upper() == self.id_token.upper()


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

    def unplug(self) -> list[TxEvent]:
        """The EV is gone (EVCommunicationLost); StopTxOnEVSideDisconnect ends the transaction."""
        if not self.state.ev_connected:
            return []
        force = self._settings().stop_on_ev_side_disconnect
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
        return self._step(Trigger.RESET_COMMAND, id_token=None, reason=reason, end=True)

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
            return [self._end(trigger, cause)]
        return [self._event(UPDATED, trigger, token=report_token)]

    def _end(self, trigger: Trigger, reason: Reason | None) -> TxEvent:
        s = self.state
        if s.stopped_reason is not None:
            stopped = Reason(s.stopped_reason)
        elif reason is not None:
            stopped = reason
        else:
            stopped = _REASON_OF.get(trigger, Reason.OTHER)
        event = self._event(ENDED, trigger, stopped=stopped)
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
        state = s.charging_state if s.charging_state is not s.reported_state or kind == STARTED else None
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
