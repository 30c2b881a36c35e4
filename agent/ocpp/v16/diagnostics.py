"""What the OCPP 1.6 service shows and offers to `cpctl` (agent.diag.OcppDiagnostics)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent.ocpp.diagnostics import OcppDiagnosticsBase
from agent.ocpp.v16.rpc import OcppRpcError

if TYPE_CHECKING:
    from agent.ocpp.v16.service import OcppService


class OcppDiagnosticsAdapter(OcppDiagnosticsBase):
    version = "1.6"
    _service: OcppService

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
