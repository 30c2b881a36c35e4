"""Outbox entries across an OCPP version change: pure conversions between the 1.6 transaction messages
and the 2.0.1 TransactionEvent (the README's outbox section states the rule).

The outbox keeps each entry as queued; the side that delivers it converts an entry of the other version
when it reaches the head of the queue (``Outbox.rewrite``: same place, same transaction; a converted
TransactionEvent gets its seqNo then). Nothing is dropped silently: an entry without an equivalent is
given up on with a reason in the outbox's dropped list and the log.

1.6 -> 2.0.1: StartTransaction -> Started (transactionId: the station's reference of the session;
  idToken ISO14443; meterStart as a Transaction.Begin energy value), MeterValues of a transaction ->
  Updated (MeterValuePeriodic, or MeterValueClock for clock-aligned values), StopTransaction -> Ended (the
  reason mapped to triggerReason / stoppedReason, meterStop and transactionData as meter values), a
  MeterValues without transaction -> 2.0.1 MeterValues (evseId). A transaction whose Start the 1.6 CSMS
  already acknowledged keeps the CSMS's id (as a string) for its remaining messages, so the same backend
  recognises it. SecurityEventNotification has the same fields in both versions: sent unchanged.
2.0.1 -> 1.6: Started -> StartTransaction (the idToken of the transaction's first event that has one),
  Updated with meter values -> MeterValues, Ended -> StopTransaction; an Updated without meter values
  (a state change only) has no 1.6 form and is given up on with that reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from agent.ocpp.v16 import meter_values as mv16
from agent.ocpp.v201 import meter_values as mv201

START, STOP, METER_VALUES, TRANSACTION_EVENT = "StartTransaction", "StopTransaction", "MeterValues", "TransactionEvent"

# 1.6 StopTransaction reason -> (2.0.1 triggerReason, stoppedReason)
_REASON_16_TO_201: dict[str, tuple[str, str]] = {
    "Local": ("StopAuthorized", "Local"),
    "Remote": ("RemoteStop", "Remote"),
    "EVDisconnected": ("EVCommunicationLost", "EVDisconnected"),
    "PowerLoss": ("AbnormalCondition", "PowerLoss"),
    "Reboot": ("ResetCommand", "Reboot"),
    "HardReset": ("ResetCommand", "ImmediateReset"),
    "SoftReset": ("ResetCommand", "ImmediateReset"),
    "DeAuthorized": ("Deauthorized", "DeAuthorized"),
    "EmergencyStop": ("AbnormalCondition", "EmergencyStop"),
    "UnlockCommand": ("UnlockCommand", "Other"),
    "Other": ("AbnormalCondition", "Other"),
}
# 2.0.1 stoppedReason -> 1.6 reason (the 1.6 Reason enumeration is smaller)
_REASON_201_TO_16: dict[str, str] = {
    "DeAuthorized": "DeAuthorized", "EmergencyStop": "EmergencyStop", "EVDisconnected": "EVDisconnected",
    "ImmediateReset": "HardReset", "Local": "Local", "MasterPass": "Local", "PowerLoss": "PowerLoss",
    "Reboot": "Reboot", "Remote": "Remote", "StoppedByEV": "Local",
}


def is_v16(action: str, payload: Mapping[str, Any]) -> bool:
    """Was this entry queued by the 1.6 side? (MeterValues exists in both: 1.6 has connectorId.)"""
    return action in (START, STOP) or (action == METER_VALUES and "connectorId" in payload)


def to_201(action: str, payload: Mapping[str, Any], tx_ref: str | None,
           bound_id: int | None) -> tuple[str, dict[str, Any]] | None:
    """The 2.0.1 form of a 1.6 entry (seqNo is added by the outbox), or None if it has none."""
    transaction_id = str(bound_id) if bound_id is not None else (tx_ref or "")[:36]
    evse = {"id": int(payload.get("connectorId", 1) or 1), "connectorId": 1}
    stamp = str(payload.get("timestamp") or "")
    if action == START:
        return TRANSACTION_EVENT, {
            "eventType": "Started", "timestamp": stamp, "triggerReason": "Authorized", "seqNo": 0,
            "transactionInfo": {"transactionId": transaction_id},
            "idToken": {"idToken": str(payload.get("idTag", "")), "type": "ISO14443"},
            "evse": evse,
            "meterValue": [mv201.v16_to_201(mv16.energy_only(0.0, float(payload.get("meterStart", 0)),
                                                             mv16.TX_BEGIN) | {"timestamp": stamp})],
        }
    if action == METER_VALUES:
        values = [mv201.v16_to_201(v) for v in payload.get("meterValue", [])]
        values = [v for v in values if v["sampledValue"]]
        if not values:
            return None
        if tx_ref is None:
            return METER_VALUES, {"evseId": evse["id"], "meterValue": values}
        clock = any(s.get("context") == mv201.CLOCK for v in values for s in v["sampledValue"])
        return TRANSACTION_EVENT, {
            "eventType": "Updated", "timestamp": values[-1]["timestamp"],
            "triggerReason": "MeterValueClock" if clock else "MeterValuePeriodic", "seqNo": 0,
            "transactionInfo": {"transactionId": transaction_id}, "evse": evse, "meterValue": values,
        }
    if action == STOP:
        trigger, stopped = _REASON_16_TO_201.get(str(payload.get("reason", "Local")), ("StopAuthorized", "Local"))
        values = [mv201.v16_to_201(v) for v in payload.get("transactionData", [])]
        values.append(mv201.v16_to_201(mv16.energy_only(0.0, float(payload.get("meterStop", 0)), mv16.TX_END)
                                       | {"timestamp": stamp}))
        out: dict[str, Any] = {
            "eventType": "Ended", "timestamp": stamp, "triggerReason": trigger, "seqNo": 0,
            "transactionInfo": {"transactionId": transaction_id, "stoppedReason": stopped},
            "meterValue": [v for v in values if v["sampledValue"]],
        }
        if payload.get("idTag"):
            out["idToken"] = {"idToken": str(payload["idTag"]), "type": "ISO14443"}
        return TRANSACTION_EVENT, out
    return None


def to_16(action: str, payload: Mapping[str, Any], later: Iterable[Mapping[str, Any]] = ()
          ) -> tuple[str, dict[str, Any]] | None:
    """The 1.6 form of a 2.0.1 entry, or None if it has none. ``later``: the payloads of the same
    transaction's other queued events (a Started without idToken takes the first one given later)."""
    if action == METER_VALUES and "evseId" in payload:
        return METER_VALUES, {"connectorId": int(payload["evseId"]),
                              "meterValue": [mv201.v201_to_16(v) for v in payload.get("meterValue", [])]}
    if action != TRANSACTION_EVENT:
        return None
    kind = payload.get("eventType")
    connector = int((payload.get("evse") or {}).get("id", 1))
    values = list(payload.get("meterValue", []))
    stamp = str(payload.get("timestamp", ""))
    if kind == "Started":
        token = (payload.get("idToken") or {}).get("idToken")
        for other in later:
            token = token or (other.get("idToken") or {}).get("idToken")
        energy = mv201.energy_of(values, mv201.TX_BEGIN)
        return START, {"connectorId": connector, "idTag": str(token or "")[:20],
                       "meterStart": round(energy or 0.0), "timestamp": stamp}
    if kind == "Updated":
        if not values:
            return None
        return METER_VALUES, {"connectorId": connector, "meterValue": [mv201.v201_to_16(v) for v in values]}
    if kind == "Ended":
        info = payload.get("transactionInfo") or {}
        energy = mv201.energy_of(values, mv201.TX_END)
        if energy is None:
            energy = mv201.energy_of(values)
        out: dict[str, Any] = {"meterStop": round(energy or 0.0), "timestamp": stamp,
                               "reason": _REASON_201_TO_16.get(str(info.get("stoppedReason", "")), "Other")}
        data = [mv201.v201_to_16(v) for v in values]
        if data:
            out["transactionData"] = data
        token = (payload.get("idToken") or {}).get("idToken")
        if token:
            out["idTag"] = str(token)[:20]
        return STOP, out
    return None
