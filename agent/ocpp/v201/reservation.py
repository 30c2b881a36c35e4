"""OCPP 2.0.1 Reservation (H01 ReserveNow, H02 CancelReservation, H03 use a reserved EVSE, H04
ReservationStatusUpdate).

The storage, the holds, the expiry timers and the use by a session are the version-neutral
``agent.ocpp.reservations.ReservationBook`` shared with 1.6 (table ``ocpp201_reservations``). The hold is
the station's own (``StationPort.set_reservation``): the EVSE reports Reserved and the station's reader path
(``begin_authorized``) refuses every idToken but the reserved one or one of the reservation's groupIdToken
(the 2.0.1 authorizer gives each token's group: local list, Authorize answer, cache).

ReserveNow:
- ReservationCtrlr.Enabled false: Rejected; no evseId ("any EVSE"): Rejected unless
  ReservationCtrlr.NonEvseSpecific, then the last idle EVSEs are kept free as in 1.6 connector 0;
- an unknown evseId, an expiryDateTime not in the future, or a connectorType no (chosen) EVSE has
  (ConnectorType of the device model; "Unknown" matches any): Rejected;
- the EVSE Faulted / Unavailable / Occupied (or reserved for another id): that status; the same id
  replaces the earlier reservation (H01.FR.02).
The transaction event that carries the idToken of the session that used a reservation carries its
reservationId (H03). Expiry sends ReservationStatusUpdate Expired (H04); a reservation whose EVSE is taken
out of service (Unavailable) is removed with ReservationStatusUpdate Removed. Both go through the durable
outbox. Every request's cost is one row and one timer.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from agent.db import StorageError
from agent.events import ConnectorStatus, StationEvent, StatusChanged
from agent.ocpp.reservations import Held, ReservationBook, parse_expiry
from agent.ocpp.v201.authorization import IdToken
from agent.station_api import ConnectorView

if TYPE_CHECKING:
    from agent.ocpp.v201.service import OcppService

log = logging.getLogger("cpagent.ocpp.v201.reservation")

COMPONENT = "ocpp201_reservation"
TABLE = "ocpp201_reservations"
CONTROLLER = "ReservationCtrlr"
ANY_TYPE = "Unknown"


def _rejected(reason: str, detail: str) -> dict[str, Any]:
    return {"status": "Rejected", "statusInfo": {"reasonCode": reason[:20], "additionalInfo": detail[:512]}}


class Reservation:
    def __init__(self, service: OcppService) -> None:
        self._svc = service
        self._station = service.station
        self.book = ReservationBook(
            service.station, service.db, service.clock, service.wall, table=TABLE, component=COMPONENT,
            on_expired=lambda held: self._report(held.reservation_id, "Expired"),
        )
        service.station.subscribe(self._on_event)

    async def run(self) -> None:
        # Every feature exists now: the transactions feature's TransactionEvent payloads get reservationId.
        extras = getattr(self._svc.features.get("Transactions"), "payload_extras", None)
        if extras is not None and self._transaction_fields not in extras:
            extras.append(self._transaction_fields)
        self.book.restore()

    def _flag(self, variable: str, default: bool) -> bool:
        try:
            return bool(self._svc.variables.boolean(CONTROLLER, variable))
        except Exception:
            return default

    def connector_type(self, evse_id: int) -> str:
        try:
            return str(self._svc.variables.value("Connector", "ConnectorType", evse=evse_id, connector=1))
        except Exception:
            return ANY_TYPE

    # -- CSMS -> station -----------------------------------------------------------------------------

    async def on_reserve_now(
        self,
        id: int,  # the library's name for ReserveNowRequest.id
        expiry_date_time: str,
        id_token: dict[str, Any],
        connector_type: str | None = None,
        evse_id: int | None = None,
        group_id_token: dict[str, Any] | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        if not self._flag("Enabled", True):
            return _rejected("NotEnabled", "ReservationCtrlr.Enabled is false")
        if not -(2**63) <= id < 2**63:  # a row id of the state database (SQLite INTEGER)
            return _rejected("InvalidValue", "id out of range")
        evses = self._station.connector_ids()
        if evse_id is None:
            if not self._flag("NonEvseSpecific", True):
                return _rejected("MissingParam", "evseId is required (ReservationCtrlr.NonEvseSpecific false)")
            target = 0
        elif evse_id not in evses:
            return _rejected("UnknownEvse", f"no EVSE {evse_id}")
        else:
            target = evse_id
        if connector_type is not None and connector_type != ANY_TYPE:
            candidates = [target] if target else list(evses)
            if not any(self.connector_type(e) == connector_type for e in candidates):
                return _rejected("UnknownConnectorType", f"no connector of type {connector_type}")
        try:
            token = IdToken.from_ocpp(id_token)
            group = IdToken.from_ocpp(group_id_token).id_token if group_id_token is not None else None
            expiry = parse_expiry(expiry_date_time)
        except ValueError as exc:
            return _rejected("InvalidValue", str(exc))
        if expiry <= self._svc.wall():
            return _rejected("InvalidValue", "expiryDateTime is not in the future")
        replaced = self.book.active.get(id)
        status = self.book.availability(target, replacing=replaced)
        if status != "Accepted":
            log.info("reservation %d for EVSE %s refused: %s", id, evse_id, status)
            return {"status": status}
        try:
            self.book.put(Held(id, target, token.id_token, group, expiry))
        except StorageError as exc:
            log.error("reservation %d could not be stored: %s", id, exc)
            return _rejected("InternalError", "the reservation could not be stored")
        log.info("reservation %d: EVSE %s held until %.0f", id, evse_id if evse_id is not None else "any", expiry)
        return {"status": "Accepted"}

    async def on_cancel_reservation(self, reservation_id: int, **_: Any) -> dict[str, Any]:
        if self.book.remove(reservation_id) is None:
            return _rejected("UnknownReservation", f"no reservation {reservation_id}")
        log.info("reservation %d cancelled by the CSMS", reservation_id)
        return {"status": "Accepted"}

    # -- station -> CSMS -----------------------------------------------------------------------------

    def _report(self, reservation_id: int, status: str) -> None:
        try:
            self._svc.enqueue("ReservationStatusUpdate",
                              {"reservationId": reservation_id, "reservationUpdateStatus": status})
        except StorageError as exc:
            log.error("ReservationStatusUpdate %s for %d not queued: %s", status, reservation_id, exc)

    def _on_event(self, event: StationEvent) -> None:
        self.book.on_event(event)
        if isinstance(event, StatusChanged) and event.status is ConnectorStatus.UNAVAILABLE:
            for held in list(self.book.active.values()):
                if held.connector_id == event.connector_id:
                    log.info("reservation %d removed: EVSE %d is unavailable", held.reservation_id, held.connector_id)
                    self.book.remove(held.reservation_id)
                    self._report(held.reservation_id, "Removed")

    def _transaction_fields(self, view: ConnectorView | None, payload: dict[str, Any]) -> None:
        """H03: the TransactionEvent that reports the idToken of a session that used a reservation names it."""
        if view is None or view.session is None or "idToken" not in payload:
            return
        used = view.used_reservation
        if used is not None and used[0] == view.session.ref:
            payload["reservationId"] = used[1].ref
