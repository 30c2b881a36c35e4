"""OCPP 2.0.1 customer information (N09 get, N10 clear): CustomerInformationRequest for an idToken (a
customerIdentifier or customerCertificate: this AC station keeps neither, so "no data" for them), answered
Accepted, then NotifyCustomerInformation messages (``data`` at most 512 characters each, ``tbc`` on all but
the last, ``seqNo`` from 0).

What the network side keeps about an idToken, all in its state.db: its Local Authorization List entry, its
authorization cache entry, and the session records (this side's ``sessions`` table: the idTag that started
and the one that stopped each charging session). The report lists them (times in UTC, energy in Wh); clear
removes the list and cache entries and replaces the idTag of *finished* sessions by ``CLEARED`` (the energy
records stay for billing; a running session keeps its idTag until it ends, as it is needed to stop it). The
event log and the security log hold no idTokens (masked when written), the outbox keeps queued transaction
messages unchanged (the CSMS is owed them). Reports never log the idToken itself (masked).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ocpp.v201 import call

from agent.authcache import AuthorizationCache, LocalAuthList
from agent.db import StorageError, transaction
from agent.ocpp.v201.rpc import CallErrorReceived, CallTimeout, ConnectionLost, InvalidPayload
from agent.redact import mask

if TYPE_CHECKING:
    from agent.ocpp.v201.service import OcppService

log = logging.getLogger("cpagent.ocpp.v201.customer_information")

CHUNK = 512  # NotifyCustomerInformationRequest.data maxLength
CLEARED = "CLEARED"
NO_DATA = "No data stored for this customer"


def chunks(text: str, size: int = CHUNK) -> list[str]:
    """``text`` cut into pieces of at most ``size`` characters (one empty piece for an empty text). Pure."""
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def _iso(wall: float | None) -> str:
    if wall is None:
        return "-"
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class CustomerInformation:
    def __init__(self, service: OcppService) -> None:
        self._svc = service
        self._local_list = LocalAuthList(service.db, service.clock)
        self._cache = AuthorizationCache(service.db, service.clock, self._local_list)
        self._accepted: dict[int, str | None] = {}
        self._sending = asyncio.Lock()

    async def on_customer_information(self, request_id: int, report: bool, clear: bool,
                                      id_token: dict[str, Any] | None = None, customer_identifier: str | None = None,
                                      customer_certificate: dict[str, Any] | None = None,
                                      **_: Any) -> dict[str, Any]:
        if id_token is None and customer_identifier is None and customer_certificate is None:
            return {"status": "Invalid", "statusInfo": {"reasonCode": "MissingParam",
                                                        "additionalInfo": "idToken, customerIdentifier or "
                                                                          "customerCertificate is required"}}
        if not report and not clear:
            return {"status": "Rejected", "statusInfo": {"reasonCode": "InvalidValue",
                                                         "additionalInfo": "neither report nor clear"}}
        self._accepted[request_id] = str(id_token["id_token"]) if id_token else None
        return {"status": "Accepted"}

    async def after_customer_information(self, request_id: int, report: bool, clear: bool, **_: Any) -> None:
        if request_id not in self._accepted:
            return
        token = self._accepted.pop(request_id)
        async with self._sending:
            text = self.describe(token) if report else ""
            if clear and token is not None:
                self.clear(token)
            if report:
                await self._send(request_id, text or NO_DATA)
            elif clear:
                await self._send(request_id, "Cleared" if token is not None else NO_DATA)

    # -- the data -----------------------------------------------------------------------------------

    def describe(self, token: str | None) -> str:
        """What we keep about ``token`` as report text ("" when nothing)."""
        if token is None:
            return ""
        lines: list[str] = []
        try:
            listed = self._local_list.lookup(token)
            if listed is not None:
                lines.append(f"LocalAuthorizationList: {listed.status}, expiry {_iso(listed.expiry_wall)}")
            cached = self._cache.lookup(token)
            if cached is not None:
                lines.append(f"AuthorizationCache: {cached.status}, expiry {_iso(cached.expiry_wall)}")
            rows = self._svc.db.execute(
                "SELECT ref, connector_id, start_wall, stop_wall, start_energy_wh, "
                "COALESCE(stop_energy_wh, last_energy_wh), id_tag = ?, stop_id_tag = ? FROM sessions "
                "WHERE id_tag = ? OR stop_id_tag = ? ORDER BY start_wall", (token, token, token, token),
            ).fetchall()
        except (StorageError, Exception) as exc:  # a missing table (no session yet) is "no data"
            log.warning("customer information: %s", exc)
            rows = []
        for ref, connector, start, stop, e0, e1, started, stopped in rows:
            role = "started and stopped" if started and stopped else "started" if started else "stopped"
            lines.append(f"Session {ref} on EVSE {connector}: {_iso(start)} - {_iso(stop)}, "
                         f"{max(0.0, (e1 or 0) - (e0 or 0)):.0f} Wh ({role})")
        return "\n".join(lines)

    def clear(self, token: str) -> None:
        """Remove ``token`` from the local list and the cache; anonymise the finished sessions."""
        db = self._svc.db
        try:
            with transaction(db):
                db.execute("DELETE FROM auth_cache WHERE id_tag = ?", (token,))
                db.execute("DELETE FROM local_auth_list WHERE id_tag = ?", (token,))
                with_sessions = db.execute(
                    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'sessions'").fetchone()[0]
                if with_sessions:
                    db.execute("UPDATE sessions SET id_tag = ? WHERE id_tag = ? AND stop_wall IS NOT NULL",
                               (CLEARED, token))
                    db.execute("UPDATE sessions SET stop_id_tag = ? WHERE stop_id_tag = ? AND stop_wall IS NOT NULL",
                               (CLEARED, token))
        except Exception as exc:
            log.error("customer information of %s not cleared: %s", mask(token), exc)
            return
        log.info("customer information of %s cleared", mask(token))

    async def _send(self, request_id: int, text: str) -> None:
        pieces = chunks(text)
        generated = _iso(self._svc.wall())
        for seq, piece in enumerate(pieces):
            message = call.NotifyCustomerInformation(data=piece, seq_no=seq, generated_at=generated,
                                                     request_id=request_id, tbc=seq < len(pieces) - 1)
            try:
                await self._svc.request(message)
            except (CallErrorReceived, CallTimeout, InvalidPayload, ConnectionLost) as exc:
                log.warning("customer information report %d not completed: %s", request_id, exc)
                return
