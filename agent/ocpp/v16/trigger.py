"""OCPP 1.6 RemoteTrigger: TriggerMessage. The .conf goes first (on_), then the message (after_). Allowed
while the boot is Pending too ("send requests only when TriggerMessage asks"), so triggered messages go
straight on the current connection, not through the sender loop or the Outbox (a triggered MeterValues is
not a transaction message).

The send_* helpers are shared with ExtendedTriggerMessage (signed_firmware.py).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ocpp.v16 import call

from agent.ocpp.v16 import meter_values as mv
from agent.ocpp.v16.configuration import REMOTE_TRIGGER
from agent.ocpp.v16.rpc import ConnectionLost, OcppRpcError

if TYPE_CHECKING:
    from agent.ocpp.v16.service import OcppService

log = logging.getLogger("cpagent.ocpp.v16.trigger")

TRIGGER = "Trigger"  # ReadingContext of a triggered MeterValues
PER_CONNECTOR = frozenset({"MeterValues", "StatusNotification"})


async def send_now(service: OcppService, payload: Any) -> Any:
    """One CALL on the current connection, whatever the boot state (Pending included)."""
    session = service.link.session
    if session is None or session.closed:
        raise ConnectionLost("not connected to the CSMS")
    return await session.request(payload)


def connector_problem(service: OcppService, requested: str, connector_id: int | None) -> str | None:
    """Why a connectorId cannot be used for this message (None if it can)."""
    if connector_id is None:
        return None
    if requested not in PER_CONNECTOR:
        return None  # ignored for station-wide messages
    if requested == "MeterValues" and connector_id == 0:
        return "no main meter on connector 0"
    if connector_id != 0 and connector_id not in service.station.connector_ids():
        return f"no connector {connector_id}"
    return None


async def send_boot(service: OcppService) -> None:
    conf = await send_now(service, call.BootNotification(**service._boot_fields()))
    service._sync_clock(conf.current_time)


async def send_heartbeat(service: OcppService) -> None:
    conf = await send_now(service, call.Heartbeat())
    service._sync_clock(conf.current_time)


async def send_statuses(service: OcppService, connector_id: int | None) -> None:
    """The current StatusNotification of one connector, or of connector 0 and every connector."""
    targets = [0, *service.station.connector_ids()] if connector_id is None else [connector_id]
    for cid in targets:
        payload = service._status_payload(cid)
        await send_now(service, call.StatusNotification(
            connector_id=cid,
            error_code=payload["errorCode"],
            status=payload["status"],
            timestamp=payload["timestamp"],
            info=payload.get("info"),
            vendor_error_code=payload.get("vendorErrorCode"),
        ))
        service._reported[cid] = (payload["status"], payload["errorCode"])


def triggered_meter_values(service: OcppService, connector_id: int) -> dict[str, Any] | None:
    """MeterValues.req payload (context Trigger) for one connector, or None without a meter sample."""
    connector = service.station.connector_view(connector_id)
    sample = connector.last_sample
    if sample is None:
        return None
    value = mv.meter_value(service.wall(), sample, service.store.get_csl("MeterValuesSampledData"), TRIGGER,
                           offered_a=connector.offered_current_a)
    if value is None:
        return None
    payload: dict[str, Any] = {"connectorId": connector_id, "meterValue": [value]}
    session = connector.session
    if session is not None:
        transaction_id = service.outbox.transaction_id(session.ref)
        if transaction_id is not None:
            payload["transactionId"] = transaction_id
    return payload


async def send_meter_values(service: OcppService, connector_id: int | None) -> None:
    for cid in service.station.connector_ids() if connector_id is None else [connector_id]:
        payload = triggered_meter_values(service, cid)
        if payload is None:
            log.info("triggered MeterValues: connector %d has no meter reading yet", cid)
            continue
        await send_now(service, call.MeterValues(
            connector_id=payload["connectorId"],
            meter_value=payload["meterValue"],
            transaction_id=payload.get("transactionId"),
        ))


async def send_triggered(service: OcppService, what: str, action: Any) -> None:
    """Run one triggered send; failures are logged (the .conf has already said Accepted)."""
    try:
        await action
    except OcppRpcError as exc:
        log.warning("triggered %s not delivered: %s", what, exc)


class RemoteTrigger:
    profile = REMOTE_TRIGGER

    def __init__(self, service: OcppService) -> None:
        self._svc = service

    def _answer(self, requested_message: str, connector_id: int | None) -> str:
        if requested_message in ("DiagnosticsStatusNotification", "FirmwareStatusNotification") and (
            self._svc.features.get("FirmwareManagement") is None
        ):
            return "NotImplemented"
        if requested_message not in {"BootNotification", "DiagnosticsStatusNotification",
                                     "FirmwareStatusNotification", "Heartbeat", "MeterValues",
                                     "StatusNotification"}:
            return "NotImplemented"
        problem = connector_problem(self._svc, requested_message, connector_id)
        if problem is not None:
            log.info("TriggerMessage %s rejected: %s", requested_message, problem)
            return "Rejected"
        return "Accepted"

    async def on_trigger_message(self, requested_message: str, connector_id: int | None = None,
                                 **_: Any) -> dict[str, Any]:
        return {"status": self._answer(requested_message, connector_id)}

    async def after_trigger_message(self, requested_message: str, connector_id: int | None = None,
                                    **_: Any) -> None:
        if self._answer(requested_message, connector_id) != "Accepted":
            return
        svc = self._svc
        firmware: Any = svc.features.get("FirmwareManagement")
        if requested_message == "BootNotification":
            action: Any = send_boot(svc)
        elif requested_message == "Heartbeat":
            action = send_heartbeat(svc)
        elif requested_message == "StatusNotification":
            action = send_statuses(svc, connector_id)
        elif requested_message == "MeterValues":
            action = send_meter_values(svc, connector_id)
        elif requested_message == "FirmwareStatusNotification":
            action = send_now(svc, call.FirmwareStatusNotification(status=firmware.firmware_status))
        else:
            action = send_now(svc, call.DiagnosticsStatusNotification(status=firmware.diagnostics_status))
        await send_triggered(svc, requested_message, action)
