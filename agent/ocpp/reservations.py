"""Reservations, version-neutral (OCPP 1.6 ReserveNow / CancelReservation, OCPP 2.0.1 H01-H04).

A reservation holds one connector/EVSE (or, ``connector_id`` 0, "any": the last idle ones are kept free) for
an idTag/idToken, or any one with the same parent/group, until its expiry, a cancel, or the session that uses
it. The hold itself is the station's (``StationPort.set_reservation``: the connector shows Reserved and
``begin_authorized`` refuses any other token); this book decides which connector holds which reservation,
stores them in the state database (they survive restarts), arms the expiry timers and forgets a reservation
once a session used it. Each protocol module (agent/ocpp/v16/reservation.py, agent/ocpp/v201/reservation.py)
keeps its own table and its own wire rules and answers.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from agent.db import Migration, StorageError, migrate
from agent.events import ConnectorStatus, SessionStarted, SessionStopped, StationEvent, StatusChanged
from agent.sessions import Session
from agent.station_api import ConnectorReservation, ConnectorView, StationPort
from hal.clock import Clock, TimerHandle

log = logging.getLogger("cpagent.ocpp.reservations")


def table_migrations(table: str) -> list[Migration]:
    """The schema of one protocol's reservation table (the same columns for every version)."""
    return [
        f"""
    CREATE TABLE {table} (
        reservation_id INTEGER PRIMARY KEY,
        connector_id INTEGER NOT NULL,
        id_tag TEXT NOT NULL,
        parent_id_tag TEXT,
        expiry_wall REAL NOT NULL
    )
    """,
    ]


def parse_expiry(text: str) -> float:
    """An OCPP date-time -> epoch seconds (no zone means UTC); ValueError if unreadable."""
    if not isinstance(text, str):
        raise ValueError(f"expiry is not a date-time string: {text!r}")
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        parsed.astimezone(UTC)
        return parsed.timestamp()
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"expiry {text[:40]!r} unreadable: {exc}") from None


@dataclass(frozen=True)
class Held:
    reservation_id: int
    connector_id: int  # 0 = any connector / unspecified EVSE
    id_tag: str
    parent_id_tag: str | None
    expiry_wall: float  # CSMS time

    @property
    def hold(self) -> ConnectorReservation:
        return ConnectorReservation(self.reservation_id, self.id_tag, self.parent_id_tag)


class ReservationBook:
    """The reservations of one protocol service, applied to the station through ``StationPort``."""

    def __init__(
        self,
        station: StationPort,
        conn: sqlite3.Connection,
        clock: Clock,
        wall: Callable[[], float],
        *,
        table: str,
        component: str,
        on_expired: Callable[[Held], None] | None = None,
    ) -> None:
        self._station = station
        self._conn = conn
        self._clock = clock
        self._wall = wall
        self._table = table
        self.on_expired = on_expired
        migrate(conn, component, table_migrations(table))
        self.active: dict[int, Held] = {}
        self._timers: dict[int, TimerHandle] = {}
        self._applying = False
        for row in conn.execute(
            f"SELECT reservation_id, connector_id, id_tag, parent_id_tag, expiry_wall FROM {table}"
        ).fetchall():
            held = Held(*row)
            self.active[held.reservation_id] = held

    def restore(self) -> None:
        """Restored reservations: drop the expired ones, re-arm the timers, hold the connectors."""
        for held in list(self.active.values()):
            self._arm(held)
        self.apply()

    # -- rules ---------------------------------------------------------------------------------------

    def availability(self, connector_id: int, *, replacing: Held | None) -> str:
        """Accepted, or why not: Faulted / Unavailable / Occupied (1.6 section 5.13, 2.0.1 H01)."""
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
        zero = sum(1 for h in self.active.values() if h.connector_id == 0 and h != replacing)
        if free > zero:
            return "Accepted"
        if all(s is ConnectorStatus.FAULTED for s in statuses):
            return "Faulted"
        if all(s is ConnectorStatus.UNAVAILABLE for s in statuses):
            return "Unavailable"
        return "Occupied"

    def _specific(self, connector_id: int, excluding: Held | None) -> Held | None:
        for held in self.active.values():
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

    # -- changes -------------------------------------------------------------------------------------

    def put(self, held: Held) -> None:
        """Store ``held`` (replacing one of the same id) and hold its connector; StorageError if not stored."""
        self._store(held)
        if held.reservation_id in self.active:
            self.forget(held.reservation_id, persist=False)
        self.active[held.reservation_id] = held
        self._arm(held)
        self.apply()

    def remove(self, reservation_id: int) -> Held | None:
        """Cancel/remove one reservation; the reservation removed, or None if unknown."""
        held = self.active.get(reservation_id)
        if held is None:
            return None
        self.forget(reservation_id)
        self.apply()
        return held

    def apply(self) -> None:
        """Put each reservation's hold on its connector; a connector-0 reservation holds the last idle ones."""
        if self._applying:
            return
        self._applying = True
        try:
            views = self._station.connector_views()
            want: dict[int, ConnectorReservation | None] = {cid: None for cid in views}
            for held in self.active.values():
                if held.connector_id in want:
                    want[held.connector_id] = held.hold
            zero = sorted((h for h in self.active.values() if h.connector_id == 0), key=lambda h: h.reservation_id)
            idle = [c for c in views.values() if want[c.id] is None and self._idle(c)]
            if zero and len(idle) <= len(zero):
                for c, held in zip(idle, zero, strict=False):
                    want[c.id] = held.hold
            for cid, hold in want.items():  # set_reservation(cid) changes only cid's view: no second snapshot
                if views[cid].reservation != hold:
                    self._station.set_reservation(cid, hold)
        finally:
            self._applying = False

    def _arm(self, held: Held) -> None:
        timer = self._timers.pop(held.reservation_id, None)
        if timer is not None:
            timer.cancel()
        delay = held.expiry_wall - self._wall()
        if delay <= 0:
            self._expire(held.reservation_id)
            return
        self._timers[held.reservation_id] = self._clock.call_later(delay, lambda: self._expire(held.reservation_id))

    def _expire(self, reservation_id: int) -> None:
        held = self.active.get(reservation_id)
        if held is None:
            return
        log.info("reservation %d expired", reservation_id)
        self.forget(reservation_id)
        self.apply()
        if self.on_expired is not None:
            try:
                self.on_expired(held)
            except Exception:
                log.exception("reservation %d: the expiry could not be reported", reservation_id)

    def forget(self, reservation_id: int, *, persist: bool = True) -> None:
        self.active.pop(reservation_id, None)
        timer = self._timers.pop(reservation_id, None)
        if timer is not None:
            timer.cancel()
        if persist:
            try:
                self._conn.execute(f"DELETE FROM {self._table} WHERE reservation_id = ?", (reservation_id,))
            except sqlite3.Error as exc:
                log.error("reservation %d could not be removed from storage: %s", reservation_id, exc)

    def _store(self, held: Held) -> None:
        try:
            self._conn.execute(
                f"INSERT INTO {self._table}(reservation_id, connector_id, id_tag, parent_id_tag, expiry_wall) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(reservation_id) DO UPDATE SET connector_id = excluded.connector_id,"
                " id_tag = excluded.id_tag, parent_id_tag = excluded.parent_id_tag, expiry_wall = excluded.expiry_wall",
                (held.reservation_id, held.connector_id, held.id_tag, held.parent_id_tag, held.expiry_wall),
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot store reservation {held.reservation_id}: {exc}") from exc

    # -- station side --------------------------------------------------------------------------------

    def used_by(self, session: Session) -> int | None:
        """The reservation ``session`` used (its id), or None."""
        try:
            used = self._station.connector_view(session.connector_id).used_reservation
        except KeyError:
            used = None
        return used[1].ref if used is not None and used[0] == session.ref else None

    def on_event(self, event: StationEvent) -> None:
        if isinstance(event, SessionStarted):
            reservation_id = self.used_by(event.session)
            if reservation_id is not None:
                log.info("reservation %d used by session %s", reservation_id, event.session.ref)
                self.forget(reservation_id)
            self.apply()
        elif isinstance(event, SessionStopped | StatusChanged):
            self.apply()
