"""Reservation (OCPP 1.6 sections 3.13, 5.4, 5.13): ReserveNow / CancelReservation.

A reservation holds one connector (or, with ReserveConnectorZeroSupported, "any connector": the last
idle one is kept free) for an idTag, or any idTag with the same parentIdTag, until its expiryDate, a
CancelReservation, or the session that uses it. Reservations are stored in the state database and
survive restarts; the StartTransaction of the session that used one carries its reservationId.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.authcache import IdTagInfo
from agent.db import Migration, StorageError, migrate
from agent.events import ConnectorStatus, SessionStarted, SessionStopped, StationEvent, StatusChanged
from agent.sessions import Session
from agent.station_api import ConnectorReservation, ConnectorView, StationPort
from hal.clock import TimerHandle

if TYPE_CHECKING:
    from agent.ocpp.v16.service import OcppService

log = logging.getLogger("cpagent.ocpp.v16.reservation")

COMPONENT = "ocpp16_reservation"
MIGRATIONS: list[Migration] = [
    """
    CREATE TABLE ocpp16_reservations (
        reservation_id INTEGER PRIMARY KEY,
        connector_id INTEGER NOT NULL,
        id_tag TEXT NOT NULL,
        parent_id_tag TEXT,
        expiry_wall REAL NOT NULL
    )
    """,
]


@dataclass(frozen=True)
class Held:
    reservation_id: int
    connector_id: int  # 0 = any connector
    id_tag: str
    parent_id_tag: str | None
    expiry_wall: float  # CSMS time

    @property
    def hold(self) -> ConnectorReservation:
        return ConnectorReservation(self.reservation_id, self.id_tag, self.parent_id_tag)


def parse_expiry(text: str) -> float:
    """expiryDate -> epoch seconds (no zone means UTC); ValueError if unreadable."""
    info = IdTagInfo.from_ocpp({"status": "Accepted", "expiryDate": text})
    assert info.expiry_wall is not None
    return info.expiry_wall


class Reservation:
    profile = "Reservation"

    def __init__(self, service: OcppService) -> None:
        self._svc = service
        self._conn: sqlite3.Connection = service.station.shared.db
        self._station: StationPort = service.station
        migrate(self._conn, COMPONENT, MIGRATIONS)
        self._active: dict[int, Held] = {}
        self._timers: dict[int, TimerHandle] = {}
        self._applying = False
        for row in self._conn.execute(
            "SELECT reservation_id, connector_id, id_tag, parent_id_tag, expiry_wall FROM ocpp16_reservations"
        ).fetchall():
            held = Held(*row)
            self._active[held.reservation_id] = held
        service.tx.start_extras.append(self._start_fields)
        service.station.subscribe(self._on_event)

    async def run(self) -> None:
        """Restored reservations: drop the expired ones, re-arm the timers, hold the connectors."""
        for held in list(self._active.values()):
            self._arm(held)
        self._apply()

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
        replaced = self._active.get(reservation_id)
        status = self._availability(connector_id, replacing=replaced)
        if status != "Accepted":
            return {"status": status}
        held = Held(reservation_id, connector_id, id_tag, parent_id_tag, expiry)
        try:
            self._store(held)
        except StorageError as exc:
            log.error("reservation %d could not be stored: %s", reservation_id, exc)
            return {"status": "Rejected"}
        if replaced is not None:
            self._forget(reservation_id, persist=False)
        self._active[reservation_id] = held
        self._arm(held)
        self._apply()
        log.info("reservation %d: connector %d held until %.0f", reservation_id, connector_id, expiry)
        return {"status": "Accepted"}

    async def on_cancel_reservation(self, reservation_id: int, **_: Any) -> dict[str, Any]:
        if reservation_id not in self._active:
            return {"status": "Rejected"}
        self._forget(reservation_id)
        self._apply()
        log.info("reservation %d cancelled by the CSMS", reservation_id)
        return {"status": "Accepted"}

    # -- rules ---------------------------------------------------------------------------------------

    def _availability(self, connector_id: int, *, replacing: Held | None) -> str:
        """Accepted, or why not: Faulted / Unavailable / Occupied (section 5.13)."""
        if connector_id != 0:
            c = self._station.connector_view(connector_id)
            status = c.status
            if status is ConnectorStatus.FAULTED:
                return "Faulted"
            if status is ConnectorStatus.UNAVAILABLE:
                return "Unavailable"
            if status is ConnectorStatus.RESERVED:
                held_ref = c.reservation.ref if c.reservation is not None else None
                mine = replacing is not None and held_ref == replacing.reservation_id
                return "Accepted" if mine else "Occupied"
            if status is not ConnectorStatus.AVAILABLE or self._specific(connector_id, replacing) is not None:
                return "Occupied"
            return "Accepted"
        views = self._station.connector_views().values()
        statuses = [c.status for c in views]
        free = sum(1 for c in views if self._idle(c) and self._specific(c.id, replacing) is None)
        zero = sum(1 for h in self._active.values() if h.connector_id == 0 and h != replacing)
        if free > zero:
            return "Accepted"
        if all(s is ConnectorStatus.FAULTED for s in statuses):
            return "Faulted"
        if all(s is ConnectorStatus.UNAVAILABLE for s in statuses):
            return "Unavailable"
        return "Occupied"

    def _specific(self, connector_id: int, excluding: Held | None) -> Held | None:
        for held in self._active.values():
            if held.connector_id == connector_id and held != excluding:
                return held
        return None

    @staticmethod
    def _idle(c: ConnectorView) -> bool:
        return (
            c.session is None
            and c.pending_id_tag is None
            and c.status in (ConnectorStatus.AVAILABLE, ConnectorStatus.RESERVED)
        )

    def _apply(self) -> None:
        """Put each reservation's hold on its connector; a connector-0 reservation holds the last idle ones."""
        if self._applying:
            return
        self._applying = True
        try:
            views = self._station.connector_views()
            want: dict[int, ConnectorReservation | None] = {cid: None for cid in views}
            for held in self._active.values():
                if held.connector_id in want:
                    want[held.connector_id] = held.hold
            zero = sorted((h for h in self._active.values() if h.connector_id == 0), key=lambda h: h.reservation_id)
            idle = [c for c in views.values() if want[c.id] is None and self._idle(c)]
            if zero and len(idle) <= len(zero):
                for c, held in zip(idle, zero, strict=False):
                    want[c.id] = held.hold
            for cid, hold in want.items():
                if self._station.connector_view(cid).reservation != hold:
                    self._station.set_reservation(cid, hold)
        finally:
            self._applying = False

    def _arm(self, held: Held) -> None:
        timer = self._timers.pop(held.reservation_id, None)
        if timer is not None:
            timer.cancel()
        delay = held.expiry_wall - self._svc.wall()
        if delay <= 0:
            self._expire(held.reservation_id)
            return
        self._timers[held.reservation_id] = self._svc.clock.call_later(
            delay, lambda: self._expire(held.reservation_id)
        )

    def _expire(self, reservation_id: int) -> None:
        if reservation_id in self._active:
            log.info("reservation %d expired", reservation_id)
            self._forget(reservation_id)
            self._apply()

    def _forget(self, reservation_id: int, *, persist: bool = True) -> None:
        self._active.pop(reservation_id, None)
        timer = self._timers.pop(reservation_id, None)
        if timer is not None:
            timer.cancel()
        if persist:
            try:
                self._conn.execute("DELETE FROM ocpp16_reservations WHERE reservation_id = ?", (reservation_id,))
            except sqlite3.Error as exc:
                log.error("reservation %d could not be removed from storage: %s", reservation_id, exc)

    def _store(self, held: Held) -> None:
        try:
            self._conn.execute(
                "INSERT INTO ocpp16_reservations(reservation_id, connector_id, id_tag, parent_id_tag, expiry_wall) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(reservation_id) DO UPDATE SET connector_id = excluded.connector_id,"
                " id_tag = excluded.id_tag, parent_id_tag = excluded.parent_id_tag, expiry_wall = excluded.expiry_wall",
                (held.reservation_id, held.connector_id, held.id_tag, held.parent_id_tag, held.expiry_wall),
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot store reservation {held.reservation_id}: {exc}") from exc

    # -- station side --------------------------------------------------------------------------------

    def _used_by(self, session: Session) -> int | None:
        try:
            used = self._station.connector_view(session.connector_id).used_reservation
        except KeyError:
            used = None
        return used[1].ref if used is not None and used[0] == session.ref else None

    def _start_fields(self, session: Session) -> dict[str, Any]:
        reservation_id = self._used_by(session)
        return {"reservationId": reservation_id} if reservation_id is not None else {}

    def _on_event(self, event: StationEvent) -> None:
        if isinstance(event, SessionStarted):
            reservation_id = self._used_by(event.session)
            if reservation_id is not None:
                log.info("reservation %d used by session %s", reservation_id, event.session.ref)
                self._forget(reservation_id)
            self._apply()
        elif isinstance(event, SessionStopped | StatusChanged):
            self._apply()
