"""What the OCPP 1.6 service shows and offers to `cpctl` (agent.diag.OcppDiagnostics)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from agent.ocpp.v16.rpc import OcppRpcError

if TYPE_CHECKING:
    from agent.ocpp.v16.service import OcppService


class OcppDiagnosticsAdapter:
    def __init__(self, service: OcppService) -> None:
        self._service = service

    def diag_status(self) -> dict[str, Any]:
        s = self._service
        last = s.link.last_contact_wall
        return {
            "version": "1.6",
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
        known, unknown = self._service.store.get(keys)
        return {
            "configurationKey": [
                {"key": kv.key, "readonly": kv.readonly, **({"value": kv.value} if kv.value is not None else {})}
                for kv in known
            ],
            "unknownKey": unknown,
        }

    def diag_config_set(self, key: str, value: str) -> str:
        # Same validation as ChangeConfiguration; a local technician may do what the CSMS may.
        return str(self._service.store.change(key, value, source="local"))

    def diag_outbox(self, limit: int) -> dict[str, Any]:
        s = self._service
        return {
            "depth": s.outbox.depth(),
            "oldest_wall": s.outbox.oldest_wall(),
            "entries": [
                {"id": e.id, "action": e.action, "tx_ref": e.tx_ref, "attempts": e.attempts,
                 "created_wall": e.created_wall}
                for e in s.outbox.entries(limit)
            ],
        }

    async def diag_trigger(self, what: str) -> str:
        s = self._service
        try:
            if what == "heartbeat":
                return await s.trigger_heartbeat()
            if what == "boot":
                return await s.trigger_boot()
            return s.trigger_statuses()
        except OcppRpcError as exc:
            return f"failed: {exc}"
