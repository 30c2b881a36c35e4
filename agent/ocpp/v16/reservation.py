"""Reservation (OCPP 1.6 sections 3.13, 5.4, 5.13): ReserveNow / CancelReservation.

A reservation holds one connector (or, with ReserveConnectorZeroSupported, "any connector": the last
idle one is kept free) for an idTag, or any idTag with the same parentIdTag, until its expiryDate, a
CancelReservation, or the session that uses it. Reservations are stored in the state database and
survive restarts; the StartTransaction of the session that used one carries its reservationId.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from agent.authcache import IdTagInfo
from agent.db import StorageError
from agent.ocpp.reservations import Held, ReservationBook
from agent.sessions import Session
from agent.station_api import StationPort

if TYPE_CHECKING:
    from agent.ocpp.v16.service import OcppService

log = logging.getLogger("cpagent.ocpp.v16.reservation")

COMPONENT = "ocpp16_reservation"
TABLE = "ocpp16_reservations"
__all__ = ["COMPONENT", "Held", "Reservation", "parse_expiry"]


def parse_expiry(text: str) -> float:
    """expiryDate -> epoch seconds (no zone means UTC); ValueError if unreadable."""
    info = IdTagInfo.from_ocpp({"status": "Accepted", "expiryDate": text})
    assert info.expiry_wall is not None
    return info.expiry_wall


class Reservation:
    profile = "Reservation"

    def __init__(self, service: OcppService) -> None:
        self._svc = service
        self._station: StationPort = service.station
        # The version-neutral part (storage, holds, expiry, use) is shared with 2.0.1: agent/ocpp/reservations.py
        self.book = ReservationBook(
            service.station, service.station.shared.db, service.clock, service.wall, table=TABLE, component=COMPONENT
        )
        service.tx.start_extras.append(self._start_fields)
        service.station.subscribe(self.book.on_event)

    async def run(self) -> None:
        """Restored reservations: drop the expired ones, re-arm the timers, hold the connectors."""
        self.book.restore()

    # -- CS -> CP ------------------------------------------------------------------------------------

    async def on_reserve_now(
        self,
        connector_id: int,
        expiry_date: str,
        id_tag: str,
        reservation_id: int,
        parent_id_tag: str | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        if connector_id == 0:
            if not self._svc.store.get_bool("ReserveConnectorZeroSupported"):
                return {"status": "Rejected"}
        elif connector_id not in self._station.connector_ids():
            return {"status": "Rejected"}
        try:
            expiry = parse_expiry(expiry_date)
        except ValueError:
            return {"status": "Rejected"}
        if expiry <= self._svc.wall():
            return {"status": "Rejected"}
        replaced = self.book.active.get(reservation_id)
        status = self.book.availability(connector_id, replacing=replaced)
        if status != "Accepted":
            return {"status": status}
        held = Held(reservation_id, connector_id, id_tag, parent_id_tag, expiry)
        try:
            self.book.put(held)
        except StorageError as exc:
            log.error("reservation %d could not be stored: %s", reservation_id, exc)
            return {"status": "Rejected"}
        log.info("reservation %d: connector %d held until %.0f", reservation_id, connector_id, expiry)
        return {"status": "Accepted"}

    async def on_cancel_reservation(self, reservation_id: int, **_: Any) -> dict[str, Any]:
        if self.book.remove(reservation_id) is None:
            return {"status": "Rejected"}
        log.info("reservation %d cancelled by the CSMS", reservation_id)
        return {"status": "Accepted"}

    # -- station side --------------------------------------------------------------------------------

    def _start_fields(self, session: Session) -> dict[str, Any]:
        reservation_id = self.book.used_by(session)
        return {"reservationId": reservation_id} if reservation_id is not None else {}
