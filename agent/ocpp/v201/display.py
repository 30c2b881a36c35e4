"""OCPP 2.0.1 Advanced User Interface (O01-O06): SetDisplayMessage, GetDisplayMessages ->
NotifyDisplayMessages in chunks, ClearDisplayMessage; DisplayMessageCtrlr variables.

What the driver sees is the station's business: each connector gets its current messages through the
protocol-neutral ``StationPort.set_operator_messages`` (``agent.station_api.OperatorMessage``) and the control
side composes them with its own guidance screens (``agent.operator_messages``): the most urgent applicable
message on the display's free line, AlwaysFront in place of the guidance text, never over a fault screen.
This module decides which messages are *current*:

- ``state`` (Charging, Faulted, Idle, Unavailable) becomes the screen states the message admits;
- ``startDateTime`` / ``endDateTime``: a message is given to the station only inside its window (a timer at
  the next boundary); once past ``endDateTime`` it is removed (O01.FR.09/10 behaviour);
- ``transactionId``: an unknown (not running) transaction is answered UnknownTransaction; the message is
  shown only on that transaction's EVSE and removed when the transaction ends (O02);
- ``display`` with an ``evse``: only that EVSE's display; without: every connector;
- NormalCycle messages of a connector take turns every ``CYCLE_S`` (the order given to the station rotates);
- a message with the id of a stored one replaces it; past ``DisplayMessages`` (``MAX_MESSAGES``) messages a
  new id is Rejected; format HTML / URI / QRCODE: NotSupportedMessageFormat (a text display);
  DisplayMessageCtrlr.Enabled false: Rejected.

Messages persist (table ``ocpp201_display_messages``, the MessageInfo as received): an Accepted message is
a promise to show it in its window, and nothing tells the CSMS that a reboot lost it (no NotifyDisplayMessages
at boot), so a restart of the network side or of the station shows them again; the window and the
transaction rule are applied again then (a message whose transaction did not survive the restart goes).
A message that cannot be stored is still shown until the restart (logged). Every request's cost is bounded
by ``MAX_MESSAGES``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from agent.db import Migration, StorageError, migrate
from agent.events import SessionStopped, StationEvent, StatusChanged
from agent.ocpp.v201.reports import send_report
from agent.station_api import MessagePriority, OperatorMessage
from hal.clock import TimerHandle
from hal.types import ScreenState

if TYPE_CHECKING:
    from agent.ocpp.v201.service import OcppService

log = logging.getLogger("cpagent.ocpp.v201.display")

CONTROLLER = "DisplayMessageCtrlr"
COMPONENT = "ocpp201_display_messages"
MIGRATIONS: list[Migration] = [
    # seq: the order of first setting (a replaced message keeps its place), as the in-memory dict keeps it
    "CREATE TABLE ocpp201_display_messages (id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, info TEXT NOT NULL)",
]
MAX_MESSAGES = 32  # DisplayMessageCtrlr.DisplayMessages (the device model's maxLimit)
ITEMS_PER_NOTIFY = 10  # messageInfo entries per NotifyDisplayMessages
CYCLE_S = 5.0  # each NormalCycle message is shown this long in turn
TEXT_FORMATS = ("ASCII", "UTF8")
PRIORITIES = {"AlwaysFront": MessagePriority.ALWAYS_FRONT, "InFront": MessagePriority.IN_FRONT,
              "NormalCycle": MessagePriority.NORMAL}
STATES: dict[str, tuple[ScreenState, ...]] = {
    "Charging": (ScreenState.CHARGING, ScreenState.PAUSED),
    "Faulted": (ScreenState.FAULT,),
    "Idle": (ScreenState.IDLE, ScreenState.AUTHORIZING, ScreenState.FINISHED),
    "Unavailable": (ScreenState.UNAVAILABLE,),
}


def parse_time(text: object) -> float:
    """An OCPP dateTime -> POSIX seconds (ValueError if unreadable or without a zone)."""
    if not isinstance(text, str):
        raise ValueError(f"not a dateTime: {text!r}")
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"dateTime without a time zone: {text[:40]!r}")
    return moment.timestamp()


@dataclass(frozen=True)
class StoredMessage:
    info: dict[str, Any]  # the MessageInfoType as received (camelCase), reported back by GetDisplayMessages
    id: int
    priority: str
    state: str | None
    start: float | None
    end: float | None
    transaction_id: str | None
    evse: int | None

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> StoredMessage:
        display = info.get("display") or {}
        evse = display.get("evse") if isinstance(display, dict) else None
        return cls(
            info=info,
            id=int(info["id"]),
            priority=str(info["priority"]),
            state=info.get("state"),
            start=parse_time(info["startDateTime"]) if info.get("startDateTime") else None,
            end=parse_time(info["endDateTime"]) if info.get("endDateTime") else None,
            transaction_id=info.get("transactionId"),
            evse=int(evse["id"]) or None if isinstance(evse, dict) and "id" in evse else None,  # 0: the station
        )

    def operator_message(self) -> OperatorMessage:
        content = self.info["message"]
        return OperatorMessage(self.id, str(content.get("content", "")), PRIORITIES[self.priority],
                               STATES.get(self.state or "", ()))

    def matches(self, ids: list[int] | None, priority: str | None, state: str | None) -> bool:
        return ((not ids or self.id in ids) and (priority is None or self.priority == priority)
                and (state is None or self.state == state))


def _camel(value: Any) -> Any:
    """The library hands nested objects over with snake_case keys; report and store them as sent."""
    if isinstance(value, dict):
        return {_camel_key(k): _camel(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_camel(v) for v in value]
    return value


def _camel_key(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


class DisplayMessages:
    def __init__(self, service: OcppService) -> None:
        self._svc = service
        self._station = service.station
        self.messages: dict[int, StoredMessage] = {}
        self._timer: TimerHandle | None = None
        self._cycle = 0  # NormalCycle turn
        self._cycle_timer: TimerHandle | None = None
        self._given: dict[int, tuple[OperatorMessage, ...]] = {}
        self._pending_reports: dict[int, list[dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._db: sqlite3.Connection = service.db
        migrate(self._db, COMPONENT, MIGRATIONS)
        self._load()
        service.variables.bind("display_message_entries", lambda: len(self.messages))
        service.station.subscribe(self._on_event)

    async def run(self) -> None:
        # Once every feature exists and the transactions feature has recovered its machines (its run() began
        # first): each connector gets what is current now, nothing stale from an earlier network side.
        await asyncio.sleep(0)
        self.refresh()

    # -- storage -------------------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            rows = self._db.execute("SELECT id, info FROM ocpp201_display_messages ORDER BY seq LIMIT ?",
                                    (MAX_MESSAGES,)).fetchall()
        except sqlite3.Error as exc:
            log.error("stored display messages not read: %s", exc)
            return
        for message_id, text in rows:
            try:
                info = json.loads(text)
                stored = StoredMessage.from_info(info)
                stored.operator_message()
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                log.warning("stored display message %s unreadable, dropped: %s", message_id, str(exc)[:200])
                self._forget(int(message_id))
                continue
            self.messages[stored.id] = stored
        if self.messages:
            log.info("%d display message(s) restored", len(self.messages))

    def _store(self, stored: StoredMessage) -> None:
        try:
            self._db.execute(
                "INSERT INTO ocpp201_display_messages(id, seq, info) VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 "
                "FROM ocpp201_display_messages), ?) ON CONFLICT(id) DO UPDATE SET info = excluded.info",
                (stored.id, json.dumps(stored.info, separators=(",", ":"))))
        except (sqlite3.Error, StorageError, TypeError, ValueError) as exc:
            log.warning("display message %d not stored (shown until a restart): %s", stored.id, exc)

    def _forget(self, message_id: int) -> None:
        try:
            self._db.execute("DELETE FROM ocpp201_display_messages WHERE id = ?", (message_id,))
        except (sqlite3.Error, StorageError) as exc:
            log.warning("display message %d not removed from storage: %s", message_id, exc)

    # -- the running transactions (the transactions feature's state machines) ------------------------

    def _running(self) -> dict[str, int]:
        """transactionId -> EVSE id of every running transaction."""
        feature = self._svc.features.get("Transactions")
        machines = getattr(feature, "machines", {}) if feature is not None else {}
        return {m.transaction_id: evse for evse, m in machines.items() if m.transaction_id is not None}

    # -- CSMS -> station -----------------------------------------------------------------------------

    async def on_set_display_message(self, message: dict[str, Any], **_: Any) -> dict[str, Any]:
        if not self._enabled():
            return {"status": "Rejected", "statusInfo": {"reasonCode": "Disabled"}}
        info = _camel(message)
        fmt = info.get("message", {}).get("format")
        if fmt not in TEXT_FORMATS:
            return {"status": "NotSupportedMessageFormat"}
        if info.get("priority") not in PRIORITIES:
            return {"status": "NotSupportedPriority"}
        if info.get("state") is not None and info["state"] not in STATES:
            return {"status": "NotSupportedState"}
        try:
            stored = StoredMessage.from_info(info)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("SetDisplayMessage refused: %s", str(exc)[:200])
            return {"status": "Rejected", "statusInfo": {"reasonCode": "InvalidValue",
                                                         "additionalInfo": str(exc)[:500]}}
        if stored.transaction_id is not None and stored.transaction_id not in self._running():
            return {"status": "UnknownTransaction"}
        if stored.evse is not None and stored.evse not in self._station.connector_ids():
            return {"status": "Rejected", "statusInfo": {"reasonCode": "UnknownEvse"}}
        if stored.end is not None and stored.end <= self._svc.wall():
            return {"status": "Rejected", "statusInfo": {"reasonCode": "InvalidValue",
                                                         "additionalInfo": "endDateTime is past"}}
        if stored.id not in self.messages and len(self.messages) >= MAX_MESSAGES:
            return {"status": "Rejected", "statusInfo": {"reasonCode": "OutOfMemory"}}
        self.messages[stored.id] = stored
        self._store(stored)
        log.info("display message %d (%s%s) set", stored.id, stored.priority,
                 f", transaction {stored.transaction_id}" if stored.transaction_id else "")
        self.refresh()
        return {"status": "Accepted"}

    async def on_clear_display_message(self, id: int, **_: Any) -> dict[str, Any]:
        if self.messages.pop(id, None) is None:
            return {"status": "Unknown"}
        self._forget(id)
        log.info("display message %d cleared", id)
        self.refresh()
        return {"status": "Accepted"}

    async def on_get_display_messages(self, request_id: int, id: list[int] | None = None,
                                      priority: str | None = None, state: str | None = None,
                                      **_: Any) -> dict[str, Any]:
        self._expire()
        found = [m.info for m in sorted(self.messages.values(), key=lambda m: m.id)
                 if m.matches(id, priority, state)]
        if not found:
            return {"status": "Unknown"}
        if len(self._pending_reports) >= 4 and request_id not in self._pending_reports:
            return {"status": "Unknown", "statusInfo": {"reasonCode": "Busy"}}
        self._pending_reports[request_id] = found
        return {"status": "Accepted"}

    async def after_get_display_messages(self, request_id: int, **_: Any) -> None:
        found = self._pending_reports.pop(request_id, None)
        if not found:
            return
        chunks = [found[i:i + ITEMS_PER_NOTIFY] for i in range(0, len(found), ITEMS_PER_NOTIFY)]
        if await send_report(self._svc, "NotifyDisplayMessages", request_id, [
                {"requestId": request_id, "messageInfo": chunk, "tbc": n < len(chunks) - 1}
                for n, chunk in enumerate(chunks)]):
            log.info("display messages reported for request %d: %d in %d messages", request_id, len(found),
                     len(chunks))

    # -- what each connector shows -------------------------------------------------------------------

    def _enabled(self) -> bool:
        try:
            return self._svc.variables.boolean(CONTROLLER, "Enabled")
        except Exception:
            return True

    def _expire(self) -> None:
        now = self._svc.wall()
        running = self._running()
        gone = [m.id for m in self.messages.values()
                if (m.end is not None and m.end <= now) or (m.transaction_id is not None
                                                             and m.transaction_id not in running)]
        for message_id in gone:
            log.info("display message %d removed (%s)", message_id,
                     "transaction ended" if self.messages[message_id].transaction_id else "endDateTime passed")
            del self.messages[message_id]
            self._forget(message_id)

    def refresh(self) -> None:
        """Give every connector its current messages (most urgent first, the newest set first within a
        priority) and set a timer at the next validity boundary."""
        self._expire()
        now = self._svc.wall()
        running = self._running()
        per: dict[int, list[StoredMessage]] = {cid: [] for cid in self._station.connector_ids()}
        boundaries: list[float] = []
        for m in reversed(list(self.messages.values())):
            if m.start is not None and m.start > now:
                boundaries.append(m.start)
                continue
            if m.end is not None:
                boundaries.append(m.end)
            evse = running.get(m.transaction_id) if m.transaction_id is not None else m.evse
            for cid in per:
                if evse is None or evse == cid:
                    per[cid].append(m)
        cycling = False
        for cid, messages in per.items():
            given = [m.operator_message() for m in messages]
            urgent = [m for m in given if m.priority is not MessagePriority.NORMAL]
            normal = [m for m in given if m.priority is MessagePriority.NORMAL]
            if len(normal) > 1:  # NormalCycle: each in turn (the control side shows the first that applies)
                cycling = True
                turn = self._cycle % len(normal)
                normal = normal[turn:] + normal[:turn]
            self._give(cid, tuple(urgent + normal))
        if cycling and self._cycle_timer is None:
            self._cycle_timer = self._svc.clock.call_later(CYCLE_S, self._next_cycle)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if boundaries:
            delay = max(0.05, min(boundaries) - now + 0.05)
            self._timer = self._svc.clock.call_later(min(delay, 3600.0), self.refresh)

    def _next_cycle(self) -> None:
        self._cycle_timer = None
        self._cycle += 1
        self.refresh()

    def _give(self, connector_id: int, messages: tuple[OperatorMessage, ...]) -> None:
        if self._given.get(connector_id) == messages:
            return
        self._given[connector_id] = messages
        try:
            self._station.set_operator_messages(connector_id, messages)
        except Exception:  # the display is not worth a network-side failure
            log.exception("connector %d: operator messages not given to the station", connector_id)

    def _on_event(self, event: StationEvent) -> None:
        # A transaction ends (or starts) with a status change; transaction-bound messages follow it.
        if isinstance(event, StatusChanged | SessionStopped) and any(m.transaction_id for m in self.messages.values()):
            loop = asyncio.get_running_loop()
            loop.call_soon(self.refresh)  # after the transactions feature has seen the same event
