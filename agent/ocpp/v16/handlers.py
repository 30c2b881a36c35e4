"""CS -> CP Core handlers (OCPP 1.6 section 5): on_<action> answers, after_<action> acts once the .conf
is on the wire (a remote start begins, a reset restarts, availability changes after the answer)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ocpp.exceptions import PropertyConstraintViolationError

from agent.events import ConnectorStatus, StopReason
from agent.ocpp.v16.configuration import TooManyKeys
from agent.station_api import ConnectorView, StationPort

if TYPE_CHECKING:
    from agent.ocpp.v16.service import OcppService

log = logging.getLogger("cpagent.ocpp.v16.handlers")

UNLOCK_WAIT_S = 3.0
RESET_DRAIN_WAIT_S = 10.0

# A feature's DataTransfer handler for its vendorId: (messageId, data) -> the .conf payload.
DataTransferHandler = Callable[[str | None, str | None], Awaitable[dict[str, Any]]]


class CoreHandlers:
    def __init__(self, service: OcppService) -> None:
        self._svc = service
        self._remote_start: dict[str, int] = {}  # idTag -> connector chosen in on_, used in after_
        self.data_transfer: dict[str, DataTransferHandler] = {}  # vendorId -> handler, filled by features
        # Features veto ChangeConfiguration values the store alone cannot judge: (key, value) -> reason or None.
        self.change_guards: list[Callable[[str, str], str | None]] = []

    @property
    def _station(self) -> StationPort:
        return self._svc.station

    def _view(self, connector_id: int) -> ConnectorView | None:
        try:
            return self._station.connector_view(connector_id)
        except KeyError:
            return None

    # -- configuration ------------------------------------------------------------------------------

    async def on_get_configuration(self, key: list[str] | None = None, **_: Any) -> dict[str, Any]:
        try:
            known, unknown = self._svc.store.get(key or None)
        except TooManyKeys as exc:
            raise PropertyConstraintViolationError(description=str(exc)) from None
        out: dict[str, Any] = {}
        if known:
            out["configurationKey"] = [
                {"key": k.key, "readonly": k.readonly, **({"value": k.value} if k.value is not None else {})}
                for k in known
            ]
        if unknown:
            out["unknownKey"] = unknown
        return out

    async def on_change_configuration(self, key: str, value: str, **_: Any) -> dict[str, Any]:
        for guard in self.change_guards:
            reason = guard(key, value)
            if reason is not None:
                log.info("ChangeConfiguration %s rejected: %s", key, reason)
                return {"status": "Rejected"}
        return {"status": self._svc.store.change(key, value, source="ocpp")}

    async def on_clear_cache(self, **_: Any) -> dict[str, Any]:
        self._svc.cache.clear()
        return {"status": "Accepted"}

    async def on_data_transfer(
        self, vendor_id: str, message_id: str | None = None, data: str | None = None, **_: Any
    ) -> dict[str, Any]:
        handler = self.data_transfer.get(vendor_id)
        if handler is None:
            return {"status": "UnknownVendorId"}
        return await handler(message_id, data)

    # -- remote start / stop ------------------------------------------------------------------------

    def _can_start(self, connector: ConnectorView) -> bool:
        return (
            connector.available
            and connector.session is None
            and connector.pending_id_tag is None
            and connector.status is not ConnectorStatus.FAULTED
        )

    def _may_admit(self, connector: ConnectorView, id_tag: str) -> bool:
        """The connector admits the idTag, or may: it is reserved with a parentIdTag and the idTag's parent
        is unknown here, so after_remote_start_transaction asks the CSMS (1.6 section 5.13)."""
        authorizer = self._svc.authorizer
        if connector.admits(id_tag, authorizer.parent_of(id_tag)):
            return True
        hold = connector.reservation
        return hold is not None and hold.parent_id_tag is not None and not authorizer.parent_known(id_tag)

    def _pick(self, connector_id: int | None, id_tag: str) -> ConnectorView | None:
        parent = self._svc.authorizer.parent_of(id_tag)
        if connector_id is not None:
            connector = self._view(connector_id)
            ok = connector is not None and self._can_start(connector) and self._may_admit(connector, id_tag)
            return connector if ok else None
        views = self._station.connector_views().values()
        free = [c for c in views if self._can_start(c) and self._may_admit(c, id_tag)]
        free.sort(key=lambda c: not c.admits(id_tag, parent))  # surely admitting ones first
        plugged = [c for c in free if c.plugged_in]
        candidates = plugged or free
        return candidates[0] if candidates else None

    async def on_remote_start_transaction(
        self, id_tag: str, connector_id: int | None = None, charging_profile: dict[str, Any] | None = None, **_: Any
    ) -> dict[str, Any]:
        if not self._svc.accepted or connector_id == 0:
            return {"status": "Rejected"}
        connector = self._pick(connector_id, id_tag)
        if connector is None:
            return {"status": "Rejected"}
        if charging_profile is not None:  # a TxProfile for the transaction about to start (SmartCharging)
            smart = self._svc.features.get("SmartCharging")
            if smart is None or not smart.hold_for_remote_start(connector.id, id_tag, charging_profile):
                return {"status": "Rejected"}
        self._remote_start[id_tag.upper()] = connector.id
        return {"status": "Accepted"}

    async def after_remote_start_transaction(self, id_tag: str, **_: Any) -> None:
        connector_id = self._remote_start.pop(id_tag.upper(), None)
        connector = self._view(connector_id) if connector_id is not None else None
        if connector is None:
            return
        if self._svc.store.get_bool("AuthorizeRemoteTxRequests"):
            answer = await self._svc.authorizer.authorize(id_tag)
            if not answer.accepted:
                log.info("remote start for connector %d refused: idTag %s", connector.id, answer.status)
                return
        connector = self._station.connector_view(connector.id)  # the authorization may have taken a while
        if self._can_start(connector):
            parent = self._svc.authorizer.parent_of(id_tag)
            hold = connector.reservation
            if hold is not None and hold.parent_id_tag is not None and not connector.admits(id_tag, parent):
                parent = await self._svc.authorizer.learn_parent(id_tag)  # Authorize.req if unknown here
            if self._can_start(self._station.connector_view(connector.id)):
                self._station.begin_authorized(connector.id, id_tag, parent)

    def _by_transaction(self, transaction_id: int) -> ConnectorView | None:
        for connector in self._station.connector_views().values():
            session = connector.session
            if session is not None and self._svc.outbox.transaction_id(session.ref) == transaction_id:
                return connector
        return None

    async def on_remote_stop_transaction(self, transaction_id: int, **_: Any) -> dict[str, Any]:
        if not self._svc.accepted:
            return {"status": "Rejected"}
        return {"status": "Accepted" if self._by_transaction(transaction_id) else "Rejected"}

    async def after_remote_stop_transaction(self, transaction_id: int, **_: Any) -> None:
        connector = self._by_transaction(transaction_id)
        if connector is not None:
            self._station.stop_session(connector.id, StopReason.REMOTE)

    # -- reset --------------------------------------------------------------------------------------

    async def on_reset(self, type: str, **_: Any) -> dict[str, Any]:
        return {"status": "Accepted"}

    async def after_reset(self, type: str, **_: Any) -> None:
        reason = StopReason.HARD_RESET if type == "Hard" else StopReason.SOFT_RESET
        refs = []
        for cid in self._station.connector_ids():
            stopped = self._station.stop_session(cid, reason)
            if stopped is not None:
                refs.append(stopped.ref)
        # Give the StopTransactions a chance to leave before we go (they are durable anyway).
        await self._svc.wait_delivered(RESET_DRAIN_WAIT_S)
        self._svc.request_restart(type)

    # -- unlock / availability ----------------------------------------------------------------------

    async def on_unlock_connector(self, connector_id: int, **_: Any) -> dict[str, Any]:
        connector = self._view(connector_id)
        if connector is None or not connector.has_lock:
            return {"status": "NotSupported"}
        if connector.session is not None:
            self._station.stop_session(connector_id, StopReason.UNLOCK_COMMAND)
        if not await self._station.unlock(connector_id):
            return {"status": "UnlockFailed"}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + UNLOCK_WAIT_S
        # The lock reports its position through the board's periodic status: poll it, bounded.
        while self._station.connector_view(connector_id).locked is not False and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        return {"status": "Unlocked" if self._station.connector_view(connector_id).locked is False else "UnlockFailed"}

    async def on_change_availability(self, connector_id: int, type: str, **_: Any) -> dict[str, Any]:
        ids = self._station.connector_ids()
        if connector_id != 0 and connector_id not in ids:
            return {"status": "Rejected"}
        operative = type == "Operative"
        views = self._station.connector_views()
        targets = list(views.values()) if connector_id == 0 else [views[connector_id]]
        for target in ([0, *ids] if connector_id == 0 else [connector_id]):
            self._svc.availability.set(target, operative)
        if not operative and any(c.session is not None for c in targets):
            return {"status": "Scheduled"}
        return {"status": "Accepted"}

    async def after_change_availability(self, connector_id: int, type: str, **_: Any) -> None:
        self._svc.apply_availability()
