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
        """Known keys with values; a write-only key (AuthorizationKey) as ``secret`` and whether it is
        ``set``, never its value, by name and in the full listing (which GetConfiguration leaves it out of)."""
        store = self._service.store
        known, unknown = store.get(keys)
        rows: list[dict[str, Any]] = []
        for kv in known:
            spec = store.spec(kv.key)
            if spec is not None and spec.secret:
                rows.append(self._secret_row(kv.key, kv.readonly))
            else:
                rows.append({"key": kv.key, "readonly": kv.readonly,
                             **({"value": kv.value} if kv.value is not None else {})})
        if keys is None:
            rows += [self._secret_row(name, readonly) for name, readonly in store.secret_keys()]
        return {"configurationKey": rows, "unknownKey": unknown}

    def _secret_row(self, key: str, readonly: bool) -> dict[str, Any]:
        row: dict[str, Any] = {"key": key, "readonly": readonly, "secret": True,
                               "set": bool(self._service.store.get_str(key))}
        if not row["set"] and key == "AuthorizationKey" and self._service.config.ocpp.password:
            row["note"] = "[ocpp] password used"
        return row

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
