"""What the OCPP 2.0.1 service shows and offers to `cpctl` (agent.station_api.NetworkDiagnostics), as
agent/ocpp/v16/diagnostics.py does for 1.6: ``config get/set`` address device model variables as
``Component[@evse[.connector]]/Variable[.instance]`` (e.g. ``OCPPCommCtrlr/HeartbeatInterval``,
``EVSE@1/Power``), validated as SetVariables is."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from agent.ocpp.v201.configuration import diag_config_get, diag_config_set

if TYPE_CHECKING:
    from agent.ocpp.v201.service import OcppService


class OcppDiagnosticsAdapter:
    def __init__(self, service: OcppService) -> None:
        self._service = service

    def diag_status(self) -> dict[str, Any]:
        s = self._service
        last = s.link.last_contact_wall
        return {
            "version": "2.0.1",
            "link": s.link.state.value,
            "endpoint": s.config.ocpp.endpoint,
            "last_contact_wall": last,
            "last_contact_age_s": round(time.time() - last, 1) if last else None,
            "last_error": s.link.last_error,
            "boot_status": s.boot_status.value,
            "outbox_depth": s.outbox.depth(),
            "outbox_oldest_wall": s.outbox.oldest_wall(),
            "clock_offset_s": round(s.clock_offset_s, 3),
        }

    def diag_config_get(self, keys: list[str] | None) -> dict[str, Any]:
        return diag_config_get(self._service.variables, keys)

    def diag_config_set(self, key: str, value: str) -> str:
        return diag_config_set(self._service.variables, key, value)

    def diag_outbox(self, limit: int) -> dict[str, Any]:
        s = self._service
        return {
            "depth": s.outbox.depth(),
            "oldest_wall": s.outbox.oldest_wall(),
            "entries": [
                {"id": e.id, "action": e.action, "tx_ref": e.tx_ref, "attempts": e.attempts,
                 "created_wall": e.created_wall, **_transaction_fields(e.payload)}
                for e in s.outbox.entries(limit)
            ],
        }

    async def diag_trigger(self, what: str) -> str:
        s = self._service
        if what == "boot":
            await s.trigger_boot()
            return "Accepted" if s.accepted else f"failed: boot {s.boot_status.value}"
        if not s.online:
            return "failed: not connected to the CSMS"
        if what == "heartbeat":
            await s.heartbeat()
            return "Accepted"
        s.queue_all_statuses()
        return "Accepted"


def _transaction_fields(payload: dict[str, Any]) -> dict[str, Any]:
    """What `cpctl outbox` shows of a queued TransactionEvent: eventType, seqNo and the station's
    transactionId (a 2.0.1 entry of another action has none of them)."""
    info = payload.get("transactionInfo")
    if "seqNo" not in payload or not isinstance(info, dict):
        return {}
    return {"event_type": payload.get("eventType"), "seq_no": payload["seqNo"],
            "transaction_id": info.get("transactionId")}
