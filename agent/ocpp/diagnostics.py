"""What both OCPP services show `cpctl` in common (agent.station_api.NetworkDiagnostics): the link and boot
state and the outbox. Each version's ``diagnostics`` module adds its configuration and trigger commands."""

from __future__ import annotations

import time
from typing import Any


class OcppDiagnosticsBase:
    version = ""  # the OCPP version the service speaks, as cpctl prints it

    def __init__(self, service: Any) -> None:
        self._service = service

    def diag_status(self) -> dict[str, Any]:
        s = self._service
        last = s.link.last_contact_wall
        return {
            "version": self.version,
            "link": s.link.state.value,
            "endpoint": s.config.ocpp.endpoint,
            "last_contact_wall": last,
            "last_contact_age_s": round(time.time() - last, 1) if last else None,
            "last_error": s.link.last_error,
            "boot_status": s.boot_status.value,
            "outbox_depth": s.outbox.depth(),
            "outbox_oldest_wall": s.outbox.oldest_wall(),
            "clock_offset_s": round(s.clock_offset_s, 3),
            "request_budget": s.link.budget_stats.as_dict(),
        }

    def diag_outbox(self, limit: int) -> dict[str, Any]:
        s = self._service
        return {
            "depth": s.outbox.depth(),
            "oldest_wall": s.outbox.oldest_wall(),
            "entries": [
                {"id": e.id, "action": e.action, "tx_ref": e.tx_ref, "attempts": e.attempts,
                 "created_wall": e.created_wall, **self.entry_fields(e.payload)}
                for e in s.outbox.entries(limit)
            ],
        }

    def entry_fields(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Version-specific fields `cpctl outbox` shows of a queued message (none by default)."""
        return {}

    def diag_session_cost(self, transaction_id: str) -> str | None:
        """The cost kept with a transaction, as `cpctl sessions` shows it (none by default)."""
        return None
