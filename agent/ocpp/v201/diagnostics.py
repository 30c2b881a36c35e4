"""What the OCPP 2.0.1 service shows and offers to `cpctl` (agent.station_api.NetworkDiagnostics), as
agent/ocpp/v16/diagnostics.py does for 1.6: ``config get/set`` address device model variables as
``Component[@evse[.connector]]/Variable[.instance]`` (e.g. ``OCPPCommCtrlr/HeartbeatInterval``,
``EVSE@1/Power``), validated as SetVariables is."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent.ocpp.diagnostics import OcppDiagnosticsBase
from agent.ocpp.v201.configuration import diag_config_get, diag_config_set

if TYPE_CHECKING:
    from agent.ocpp.v201.service import OcppService


class OcppDiagnosticsAdapter(OcppDiagnosticsBase):
    version = "2.0.1"
    _service: OcppService

    def diag_config_get(self, keys: list[str] | None) -> dict[str, Any]:
        return diag_config_get(self._service.variables, keys)

    def diag_config_set(self, key: str, value: str) -> str:
        return diag_config_set(self._service.variables, key, value)

    def entry_fields(self, payload: dict[str, Any]) -> dict[str, Any]:
        return _transaction_fields(payload)

    def diag_session_cost(self, transaction_id: str) -> str | None:
        pricing = self._service.features.get("Pricing")
        text: str | None = pricing.cost_text(transaction_id) if pricing is not None else None
        return text

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
