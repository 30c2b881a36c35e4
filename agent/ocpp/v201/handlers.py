"""The CSMS requests the 2.0.1 service answers itself: ChangeAvailability (G03/G04), Reset (B11/B12),
TriggerMessage (F06, for the messages registered with ``OcppService.register_trigger`` and its own),
UnlockConnector (F05) and DataTransfer (P01). They act on the station only through ``StationPort``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agent.events import StopReason

if TYPE_CHECKING:
    from agent.ocpp.v201.service import OcppService

log = logging.getLogger("cpagent.ocpp.v201.handlers")

RESET_DRAIN_WAIT_S = 5.0  # a Reset waits this long for the TransactionEvents (durable anyway) to leave
UNLOCK_WAIT_S = 5.0
EVSE_RESET_OFF_S = 1.0  # an EVSE reset keeps the EVSE out of service this long


class CoreHandlers:
    def __init__(self, service: OcppService) -> None:
        self._svc = service
        self._station = service.station
        # A Reset OnIdle waiting for transactions to end: (type, evse id or None for the station)
        self.scheduled_reset: tuple[str, int | None] | None = None
        # EVSEs a ChangeAvailability left as they were: their status is reported anyway (G03.FR.04, TC_G_10_CS)
        self._unchanged: list[int] = []
        self._tasks: set[asyncio.Task[None]] = set()
        service.register_trigger("BootNotification", self._accept_boot, self._send_boot)
        service.register_trigger("Heartbeat", lambda evse: "Accepted", self._send_heartbeat)
        service.register_trigger("StatusNotification", self._accept_status, self._send_status)
        # Nothing in progress: the status is Idle (F06.FR.xx); firmware and logs are not handled over 2.0.1 yet.
        service.register_trigger("FirmwareStatusNotification", lambda evse: "Accepted", self._send_firmware_idle)
        service.register_trigger("LogStatusNotification", lambda evse: "Accepted", self._send_log_idle)

    # -- availability (G03, G04) --------------------------------------------------------------------

    async def on_change_availability(
        self, operational_status: str, evse: Mapping[str, Any] | None = None, **_: Any
    ) -> dict[str, Any]:
        operative = operational_status == "Operative"
        ids = self._station.connector_ids()
        if evse is None or int(evse.get("id", 0)) == 0:
            level, targets = (0, 0), list(ids)
        else:
            evse_id, connector_id = int(evse["id"]), evse.get("connector_id")
            if evse_id not in ids or connector_id not in (None, 1):
                return {"status": "Rejected", "statusInfo": {"reasonCode": "UnknownEvse"}}
            level, targets = (evse_id, 0 if connector_id is None else 1), [evse_id]
        was = self._svc.availability.own(*level)
        self._svc.availability.set(*level, operative)
        self._unchanged = targets if was == operative else []
        busy = [cid for cid in targets if self._station.connector_view(cid).session is not None]
        if not operative and busy and was:
            return {"status": "Scheduled"}
        return {"status": "Accepted"}

    async def after_change_availability(self, **_: Any) -> None:
        self._svc.apply_availability()
        unchanged, self._unchanged = self._unchanged, []
        for cid in unchanged:
            self._svc.queue_all_statuses(cid, force=True)

    # -- reset (B11, B12) ---------------------------------------------------------------------------

    async def on_reset(self, type: str, evse_id: int | None = None, **_: Any) -> dict[str, Any]:
        ids = self._station.connector_ids()
        if evse_id is not None and evse_id not in ids:
            return {"status": "Rejected", "statusInfo": {"reasonCode": "UnknownEvse"}}
        targets = list(ids) if evse_id is None else [evse_id]
        busy = any(self.transaction_running(cid) for cid in targets)
        if type == "OnIdle" and busy:
            self.scheduled_reset = (type, evse_id)
            return {"status": "Scheduled"}
        return {"status": "Accepted"}

    async def after_reset(self, type: str, evse_id: int | None = None, **_: Any) -> None:
        if self.scheduled_reset is not None and type == "OnIdle":
            return  # idle_check() does it once the transactions have ended
        await self._reset(type, evse_id)

    def idle_check(self) -> None:
        """A transaction ended: a scheduled OnIdle reset goes ahead once its EVSEs are idle."""
        if self.scheduled_reset is None:
            return
        kind, evse_id = self.scheduled_reset
        targets = list(self._station.connector_ids()) if evse_id is None else [evse_id]
        if any(self.transaction_running(cid) for cid in targets):
            return
        self.scheduled_reset = None
        self._spawn(self._reset(kind, evse_id))

    def transaction_running(self, cid: int) -> bool:
        """A charging session, or a 2.0.1 transaction without one (e.g. TxStartPoint EVConnected), on ``cid``
        (B11.FR.01: OnIdle waits for every transaction; TC_B_41_CS)."""
        if self._station.connector_view(cid).session is not None:
            return True
        features = getattr(self._svc, "features", None)
        transactions = features.get("Transactions") if isinstance(features, dict) else None
        machine = getattr(transactions, "machines", {}).get(cid)
        return machine is not None and machine.transaction_id is not None

    async def _reset(self, kind: str, evse_id: int | None) -> None:
        targets = list(self._station.connector_ids()) if evse_id is None else [evse_id]
        for cid in targets:
            self._station.stop_session(cid, StopReason.HARD_RESET if kind == "Immediate" else StopReason.SOFT_RESET)
        await self._svc.wait_delivered(RESET_DRAIN_WAIT_S)
        if evse_id is None:
            self._svc.request_restart(kind)
            return
        # B12: the EVSE alone goes through a reset: out of service for a moment, then its persisted state.
        log.warning("EVSE %d reset (%s) requested by the CSMS", evse_id, kind)
        self._station.set_available(evse_id, False)
        await asyncio.sleep(EVSE_RESET_OFF_S)
        self._svc.apply_availability()

    # -- trigger (F06) -------------------------------------------------------------------------------

    async def on_trigger_message(
        self, requested_message: str, evse: Mapping[str, Any] | None = None, **_: Any
    ) -> dict[str, Any]:
        trigger = self._svc.triggers.get(requested_message)
        if trigger is None:
            return {"status": "NotImplemented"}
        if evse is not None and int(evse.get("id", 0)) not in (0, *self._station.connector_ids()):
            return {"status": "Rejected", "statusInfo": {"reasonCode": "UnknownEvse"}}
        return {"status": trigger.accept(evse)}

    async def after_trigger_message(
        self, requested_message: str, evse: Mapping[str, Any] | None = None, **_: Any
    ) -> None:
        trigger = self._svc.triggers.get(requested_message)
        if trigger is None:
            return
        if evse is not None and int(evse.get("id", 0)) not in (0, *self._station.connector_ids()):
            return
        if trigger.accept(evse) == "Accepted":
            await trigger.send(evse)

    def _accept_boot(self, evse: Mapping[str, Any] | None) -> str:
        return "Rejected" if self._svc.accepted else "Accepted"  # F06.FR.17

    async def _send_boot(self, evse: Mapping[str, Any] | None) -> None:
        await self._svc.trigger_boot()

    async def _send_heartbeat(self, evse: Mapping[str, Any] | None) -> None:
        await self._svc.heartbeat()

    def _accept_status(self, evse: Mapping[str, Any] | None) -> str:
        if evse is not None and evse.get("connector_id") not in (None, 1):
            return "Rejected"
        return "Accepted"

    async def _send_status(self, evse: Mapping[str, Any] | None) -> None:
        evse_id = None if evse is None or int(evse.get("id", 0)) == 0 else int(evse["id"])
        self._svc.queue_all_statuses(evse_id, force=True)

    async def _send_firmware_idle(self, evse: Mapping[str, Any] | None) -> None:
        from ocpp.v201 import call

        await self._svc.triggered(call.FirmwareStatusNotification(status="Idle"))

    async def _send_log_idle(self, evse: Mapping[str, Any] | None) -> None:
        from ocpp.v201 import call

        await self._svc.triggered(call.LogStatusNotification(status="Idle"))

    # -- unlock (F05) ---------------------------------------------------------------------------------

    async def on_unlock_connector(self, evse_id: int, connector_id: int, **_: Any) -> dict[str, Any]:
        if evse_id not in self._station.connector_ids() or connector_id != 1:
            return {"status": "UnknownConnector"}
        view = self._station.connector_view(evse_id)
        if view.session is not None:
            return {"status": "OngoingAuthorizedTransaction"}  # F05.FR.02: no unlock under a transaction
        if not view.has_lock:
            return {"status": "UnlockFailed", "statusInfo": {"reasonCode": "NoLock"}}
        if not await self._station.unlock(evse_id):
            return {"status": "UnlockFailed"}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + UNLOCK_WAIT_S
        # The lock reports its position through the board's periodic status: poll it, bounded.
        while self._station.connector_view(evse_id).locked is not False and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        return {"status": "Unlocked" if self._station.connector_view(evse_id).locked is False else "UnlockFailed"}

    # -- data transfer (P01, P02) ---------------------------------------------------------------------

    async def on_data_transfer(
        self, vendor_id: str, message_id: str | None = None, data: Any = None, **_: Any
    ) -> dict[str, Any]:
        handler = self._svc.data_transfer_handlers.get(vendor_id)
        if handler is None:
            return {"status": "UnknownVendorId"}
        return await handler(message_id, data)

    # -- helpers --------------------------------------------------------------------------------------

    def _spawn(self, coroutine: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

