"""Transaction messages: station session events -> durable Outbox entries, and their delivery.

StartTransaction / MeterValues / StopTransaction are appended to the Outbox (fsynced) the moment the
session event happens, and delivered strictly in order with one outstanding CALL once the CSMS has
accepted the boot. The CSMS transactionId is bound on StartTransaction.conf and filled into later
messages at send time. A CALLERROR (or no answer) is retried TransactionMessageAttempts times, waiting
TransactionMessageRetryInterval x previous sends; then the entry is dropped and the queue moves on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ocpp.v16 import call

from agent.authcache import IdTagInfo
from agent.events import MeterUpdate, SessionStarted, SessionStopped, StopReason
from agent.ocpp import outbox_convert as convert
from agent.ocpp.v16 import meter_values as mv
from agent.ocpp.v16.configuration import ConfigurationStore
from agent.ocpp.v16.rpc import CallErrorReceived, CallTimeout, ConnectionLost, InvalidPayload, OcppSession
from agent.outbox import (
    METER_VALUES,
    START,
    STOP,
    DuplicateStop,
    Outbox,
    OutboxEntry,
    UnboundTransaction,
    outbox_payload,
)
from agent.sessions import Session, SessionStore
from agent.station_api import ConnectorView, EnergyHold, StationPort
from hal.clock import Clock
from hal.flag import Flag

log = logging.getLogger("cpagent.ocpp.v16.transactions")

SIGNED_WAIT_S = 15.0  # how long a StopTransaction waits for the meter's signed end reading
MAX_ALIGNED_LATE_S = 60.0  # a clock-aligned reading later than this after its boundary is skipped (clock jump)

_CALLS: dict[str, Callable[..., Any]] = {
    START: call.StartTransaction,
    STOP: call.StopTransaction,
    METER_VALUES: call.MeterValues,
    "SecurityEventNotification": call.SecurityEventNotification,  # guaranteed delivery (whitepaper A04.FR.02)
}


DELIVERED_KEPT = 1000  # TransactionMessages.delivered


@dataclass
class _TxData:
    """meterValues collected for StopTransaction.transactionData (in memory: lost on a reboot)."""

    values: list[dict[str, Any]]


class TransactionMessages:
    def __init__(
        self,
        outbox: Outbox,
        store: ConfigurationStore,
        sessions: SessionStore,
        station: StationPort,
        clock: Clock,
        *,
        wall: Callable[[], float],
        wake: Callable[[], None],
        on_id_tag_info: Callable[[str, IdTagInfo], None],
    ) -> None:
        self.outbox = outbox
        self._store = store
        self._sessions = sessions
        self._station = station
        self._clock = clock
        self._wall = wall  # the CSMS-corrected wall clock
        self._wake = wake
        self._on_id_tag_info = on_id_tag_info
        self._tx_data: dict[str, _TxData] = {}
        # Recent actions delivered, for diagnostics: the last DELIVERED_KEPT (a list: an empty deque is 760 bytes)
        self.delivered: list[str] = []
        # Features add StartTransaction fields here (e.g. reservationId for a session that used a reservation).
        self.start_extras: list[Callable[[Session], Mapping[str, Any]]] = []
        self._signing_tasks: dict[str, asyncio.Task[None]] = {}  # session ref -> its signed Begin MeterValues
        # Session ref -> energy register (Wh) at which energy stops: MaxEnergyOnInvalidId after an invalid id.
        self._energy_caps: dict[str, float] = {}
        # One wake-up per running sampler: set when a sampling key changes or a transaction starts.
        self._sampler_events: dict[str, Flag] = {}
        store.subscribe(self._on_sampling_key)

    # -- events -> outbox -----------------------------------------------------------------------------

    def _view(self, connector_id: int) -> ConnectorView | None:
        try:
            return self._station.connector_view(connector_id)
        except KeyError:
            return None

    def offset(self, wall: float) -> float:
        """A local wall time corrected by the CSMS clock offset."""
        return wall + (self._wall() - self._clock.wall())

    def _known(self, ref: str) -> bool:
        ob = self.outbox
        return (
            ob.transaction_id(ref) is not None
            or ob.is_start_dropped(ref)
            or ob.has_stop(ref)
            or ref in ob.unstopped_transactions()
        )

    def queue_start(self, session: Session) -> None:
        payload = {
            "connectorId": session.connector_id,
            "idTag": session.id_tag,
            "meterStart": round(session.start_energy_wh),
            "timestamp": mv.ocpp_time(self.offset(session.start_wall)),
        }
        for extra in self.start_extras:
            try:
                payload.update(extra(session))
            except Exception:
                log.exception("a StartTransaction extension failed; sending the Start without it")
        self.outbox.append(START, payload, tx_ref=session.ref)
        if self._store.get_csl("StopTxnSampledData"):
            connector = self._view(session.connector_id)
            sample = connector.last_sample if connector else None
            begin = (
                mv.meter_value(self._wall(), sample, self._store.get_csl("StopTxnSampledData"), mv.TX_BEGIN)
                if sample is not None
                else mv.energy_only(self.offset(session.start_wall), session.start_energy_wh, mv.TX_BEGIN)
            )
            self._tx_data[session.ref] = _TxData([begin] if begin else [])
        self._wake()

    def queue_stop(self, session: Session, reason: str) -> None:
        if self.outbox.has_stop(session.ref):
            log.info("StopTransaction for %s already queued or sent; not sending it twice", session.ref)
            return
        if not self._known(session.ref):
            # The session began but its Start never reached the outbox (crash in between): queue it now.
            self.queue_start(session)
        stop_energy = session.stop_energy_wh if session.stop_energy_wh is not None else session.last_energy_wh
        stop_wall = session.stop_wall if session.stop_wall is not None else session.last_wall
        payload: dict[str, Any] = {
            "meterStop": round(stop_energy),
            "timestamp": mv.ocpp_time(self.offset(stop_wall)),
            "reason": reason,
        }
        if reason in (StopReason.LOCAL, StopReason.DEAUTHORIZED):
            # §6.49 (StopTransaction.req idTag): the identifier that requested the stop, e.g. another card
            # of the session's group (OCTT 069).
            payload["idTag"] = session.stop_id_tag or session.id_tag
        data = self._tx_data.pop(session.ref, None)
        values = list(data.values) if data else []
        if self._store.get_csl("StopTxnSampledData"):
            values.append(mv.energy_only(self.offset(stop_wall), stop_energy, mv.TX_END))
        limit = self._store.get_int("StopTransactionMaxMeterValues")
        if values and limit > 0:
            payload["transactionData"] = values[:1] + values[1:][-(limit - 1):] if limit > 1 else values[-1:]
        signed = self._signed_values(session.ref)
        if signed:  # the meter's own signed readings always go along, verbatim
            payload["transactionData"] = [*payload.get("transactionData", []), *signed]
        try:
            self.outbox.append(STOP, payload, tx_ref=session.ref)
        except DuplicateStop:
            log.info("StopTransaction for %s already queued", session.ref)
        self._wake()

    def on_session_started(self, event: SessionStarted) -> None:
        self.queue_start(event.session)
        self._poke_samplers()  # sampled values count from this transaction's start
        ref, cid = event.session.ref, event.session.connector_id
        if self._station.signed_reading_pending(cid, ref, "start"):
            signing = asyncio.ensure_future(self._station.signed_reading(cid, ref, "start"))
            self._signing_tasks[ref] = asyncio.create_task(self._queue_signed_begin(ref, signing))

    def on_session_stopped(self, event: SessionStopped) -> None:
        self._energy_caps.pop(event.session.ref, None)
        ref, cid = event.session.ref, event.session.connector_id
        if not self._station.signed_reading_pending(cid, ref, "stop"):
            self.queue_stop(event.session, event.reason.value)
            return
        signing = asyncio.ensure_future(self._station.signed_reading(cid, ref, "stop"))
        # The StopTransaction waits (bounded) for the signed end reading; a crash meanwhile is covered by
        # recover(), which queues the Stop of a closed session that has none.
        task = asyncio.create_task(self._queue_signed_stop(event.session, event.reason.value, signing))
        self._signing_tasks[event.session.ref + ":stop"] = task
        task.add_done_callback(lambda _t: self._signing_tasks.pop(event.session.ref + ":stop", None))

    async def _queue_signed_begin(self, ref: str, signing: asyncio.Task[str | None]) -> None:
        try:
            record = await signing
            session = self._sessions.get(ref)
            if record is None or session is None:
                return
            value = {"timestamp": mv.ocpp_time(self.offset(session.start_wall)),
                     "sampledValue": [signed_value(record, mv.TX_BEGIN)]}
            self.outbox.append(METER_VALUES, {"connectorId": session.connector_id, "meterValue": [value]},
                               tx_ref=ref)
            self._wake()
        except Exception:
            log.exception("session %s: the signed start reading could not be queued", ref)

    async def _queue_signed_stop(self, session: Session, reason: str, signing: asyncio.Task[str | None]) -> None:
        try:
            begin = self._signing_tasks.pop(session.ref, None)
            async with asyncio.timeout(SIGNED_WAIT_S):
                if begin is not None:
                    await asyncio.shield(begin)  # its MeterValues goes before the Stop
                await asyncio.shield(signing)
        except TimeoutError:
            log.warning("session %s: no signed end reading in time; StopTransaction goes without it", session.ref)
        except Exception:
            log.exception("session %s: waiting for the signed readings failed", session.ref)
        try:
            self.queue_stop(self._sessions.get(session.ref) or session, reason)
        except Exception:
            log.exception("session %s: StopTransaction could not be queued", session.ref)

    def _signed_values(self, ref: str) -> list[dict[str, Any]]:
        session = self._sessions.get(ref)
        if session is None:
            return []
        out = []
        for record, context, wall in (
            (session.start_signed, mv.TX_BEGIN, session.start_wall),
            (session.stop_signed, mv.TX_END, session.stop_wall),
        ):
            if record:
                stamp = mv.ocpp_time(self.offset(wall if wall is not None else session.last_wall))
                out.append({"timestamp": stamp, "sampledValue": [signed_value(record, context)]})
        return out

    def recover(self) -> None:
        """After a restart: an open session whose Start never got queued gets one; a closed session whose
        Start was queued but whose Stop was not gets its Stop (crash between the two writes)."""
        for connector in self._station.connector_views().values():
            session = connector.session
            if session is not None and not self._known(session.ref):
                log.warning("session %s was never announced to the CSMS; queueing its StartTransaction", session.ref)
                self.queue_start(session)
        unstopped = set(self.outbox.unstopped_transactions())
        for session in self._sessions.recent(50):
            if not session.open and session.ref in unstopped:
                log.warning("session %s closed without a queued StopTransaction; queueing it", session.ref)
                self.queue_stop(session, session.stop_reason or StopReason.OTHER.value)

    # -- meter values ---------------------------------------------------------------------------------

    def sample(self, connector: ConnectorView, context: str, *, wall: float | None = None) -> None:
        """One MeterValues for the connector's running session (periodic or clock-aligned); ``wall``: its
        timestamp (a clock-aligned value bears its boundary), else now."""
        session = connector.session
        sample = connector.last_sample
        if session is None or sample is None:
            return
        key, stop_key = (
            ("MeterValuesSampledData", "StopTxnSampledData")
            if context == mv.PERIODIC
            else ("MeterValuesAlignedData", "StopTxnAlignedData")
        )
        now = self._wall() if wall is None else wall
        offered = connector.offered_current_a
        value = mv.meter_value(now, sample, self._store.get_csl(key), context, offered_a=offered)
        if value is not None:
            self.outbox.append(
                METER_VALUES, {"connectorId": connector.id, "meterValue": [value]}, tx_ref=session.ref
            )
            self._wake()
        stop_measurands = self._store.get_csl(stop_key)
        data = self._tx_data.setdefault(session.ref, _TxData([]))
        if stop_measurands:
            extra = mv.meter_value(now, sample, stop_measurands, context, offered_a=offered)
            if extra is not None:
                data.values.append(extra)

    def _on_sampling_key(self, key: str, _value: str) -> None:
        if key in ("MeterValueSampleInterval", "ClockAlignedDataInterval"):
            self._poke_samplers()

    def _poke_samplers(self) -> None:
        """A key or a session changed: every sampler recomputes its next sample now."""
        for event in self._sampler_events.values():
            event.set()

    async def _nap(self, event: Flag, delay: float | None) -> bool:
        """Wait ``delay`` seconds (None: until poked; long waits in slices of a day). True if poked."""
        return await event.wait_for(None if delay is None else min(max(0.0, delay), mv.MAX_NAP_S))

    async def periodic_sampler(self, connector_id: int) -> None:
        """Sample.Periodic MeterValues of the connector's transaction every MeterValueSampleInterval seconds
        counted from the transaction's start; a changed interval (or a new transaction) is picked up at once
        and applies from the next sample. Runs online and offline alike (the outbox keeps the values)."""
        event = self._sampler_events.setdefault(f"periodic-{connector_id}", Flag())
        ref: str | None = None
        start_mono = 0.0
        due: tuple[int, float] | None = None  # (interval it was computed for, monotonic due time)
        failing = False
        while True:
            event.clear()
            try:
                connector = self._station.connector_view(connector_id)
                session = connector.session
                interval = mv.effective_interval(self._store.get_int("MeterValueSampleInterval"))
                if session is None or interval == 0:
                    await self._nap(event, None)
                    due = None
                    continue
                now = self._clock.monotonic()
                if session.ref != ref:  # a new transaction (or one resumed after a restart): anchor its start
                    ref = session.ref
                    start_mono = now - max(0.0, self._clock.wall() - session.start_wall)
                    due = None
                if due is None or due[0] != interval:
                    due = (interval, mv.next_sample_due(start_mono, interval, now))
                if now < due[1]:
                    await self._nap(event, due[1] - now)  # poked or not: look at session and interval again
                    continue
                due = (interval, mv.next_sample_due(start_mono, interval, max(now, due[1])))
                self.sample(connector, mv.PERIODIC)
                failing = False
                # Straight to the nap until the next sample (a new transaction or a changed interval pokes; an
                # ended one is seen when it wakes): one view of the connector per sample instead of two.
                await self._nap(event, due[1] - self._clock.monotonic())
            except Exception:
                if not failing:
                    log.exception("connector %d: periodic meter values failed", connector_id)
                failing = True
                due = None
                await asyncio.sleep(1.0)

    async def aligned_sampler(self) -> None:
        """Sample.Clock MeterValues at midnight UTC (CSMS clock) + k x ClockAlignedDataInterval; a changed
        interval recomputes the next boundary at once. Each value carries its boundary as timestamp."""
        event = self._sampler_events.setdefault("aligned", Flag())
        last: float | None = None  # the boundary sampled last (wall)
        failing = False
        while True:
            event.clear()
            try:
                interval = mv.effective_interval(self._store.get_int("ClockAlignedDataInterval"))
                if interval == 0:
                    await self._nap(event, None)
                    continue
                now = self._wall()
                # Never the same boundary twice; a clock set back by more than an interval starts afresh.
                after = max(now, last) if last is not None and last - now < interval else now
                boundary = mv.next_aligned_boundary(after, interval)
                if await self._nap(event, boundary - now) or self._wall() < boundary - 1.0:
                    continue  # poked, a long wait sliced, or the clock went back: recompute
                last = boundary
                if self._wall() - boundary > max(interval, MAX_ALIGNED_LATE_S):
                    continue  # the clock jumped ahead past the boundary: not a reading taken at it
                for connector in self._station.connector_views().values():
                    try:
                        self.sample(connector, mv.CLOCK, wall=boundary)
                    except Exception:
                        log.exception("connector %d: clock-aligned meter values failed", connector.id)
                failing = False
            except Exception:
                if not failing:
                    log.exception("clock-aligned meter values failed")
                failing = True
                await asyncio.sleep(1.0)

    # -- delivery -------------------------------------------------------------------------------------

    def ready_head(self) -> tuple[OutboxEntry | None, float | None]:
        """The head entry if it may be sent now, else (None, seconds until it may)."""
        head = self.outbox.head()
        if head is None:
            return None, None
        if head.not_before_mono is not None:
            wait = head.not_before_mono - self._clock.monotonic()
            if wait > 0:
                return None, wait
        return head, None

    async def deliver(self, session: OcppSession, entry: OutboxEntry) -> None:
        """Send one entry; ack, defer or drop it. Raises ConnectionLost when the link went away."""
        if entry.action == convert.TRANSACTION_EVENT or (entry.action == METER_VALUES and "evseId" in entry.payload):
            converted = self._from_201(entry)  # queued under OCPP 2.0.1 before a version change
            if converted is None:
                return
            entry = converted
        if entry.action not in _CALLS:  # queued under 2.0.1 (e.g. another message it queues): no 1.6 form
            self.outbox.drop(entry.id, f"{entry.action} has no OCPP 1.6 form")
            log.error("outbox entry #%d (%s) has no OCPP 1.6 form: dropped", entry.id, entry.action)
            return
        try:
            payload = self.outbox.payload_for_send(entry)
        except UnboundTransaction:
            # FIFO order means its Start is gone without being marked: the CSMS id can never be known.
            assert entry.tx_ref is not None
            self.outbox.start_dropped(entry.tx_ref)
            payload = self.outbox.payload_for_send(entry)
        attempts = self.outbox.record_attempt(entry.id)
        try:
            conf = await session.request_payload(entry.action, outbox_payload(payload, entry.may_hold_nulls))
        except ConnectionLost:
            raise
        except (CallErrorReceived, CallTimeout, InvalidPayload) as exc:
            self._failed(entry, attempts, str(exc))
            return
        self._delivered(entry, payload, conf)

    def _from_201(self, entry: OutboxEntry) -> OutboxEntry | None:
        """A 2.0.1 entry rewritten in place as its 1.6 equivalent (agent/ocpp/outbox_convert.py), or given
        up on with the reason when it has none (an Updated without meter values)."""
        later = [e.payload for e in self.outbox.entries(10_000) if e.tx_ref == entry.tx_ref and e.id != entry.id]
        converted = convert.to_16(entry.action, entry.payload, later)
        if converted is None:
            self.outbox.drop(entry.id, f"{entry.action} queued under OCPP 2.0.1 has no 1.6 form")
            return None
        self.outbox.rewrite(entry.id, *converted)
        head = self.outbox.head()
        return head if head is not None and head.id == entry.id else None

    def _failed(self, entry: OutboxEntry, attempts: int, why: str) -> None:
        limit = max(1, self._store.get_int("TransactionMessageAttempts"))
        if attempts >= limit:
            self.outbox.drop(entry.id, f"{why} (after {attempts} attempts)")
            log.error("gave up on %s #%d after %d attempts: %s", entry.action, entry.id, attempts, why)
            return
        delay = Outbox.retry_delay(attempts, self._store.get_int("TransactionMessageRetryInterval"))
        log.warning("%s #%d failed (%s); retry %d/%d in %.0f s", entry.action, entry.id, why, attempts + 1,
                    limit, delay)
        self.outbox.defer(entry.id, delay)

    def _delivered(self, entry: OutboxEntry, payload: dict[str, Any], conf: Any) -> None:
        self.delivered.append(entry.action)
        if len(self.delivered) > DELIVERED_KEPT:
            del self.delivered[0]
        if entry.action == START:
            assert entry.tx_ref is not None
            transaction_id = int(conf.transaction_id)
            self.outbox.ack(entry.id, transaction_id=transaction_id)
            self._sessions.set_transaction_id(entry.tx_ref, transaction_id)
            info = self._id_tag_info(entry, payload, conf)
            if info is not None and not info.accepted:
                self._invalid_id(entry.tx_ref, info)
            return
        self.outbox.ack(entry.id)
        if entry.action == STOP and getattr(conf, "id_tag_info", None) and payload.get("idTag"):
            self._id_tag_info(entry, payload, conf)

    def _id_tag_info(self, entry: OutboxEntry, payload: dict[str, Any], conf: Any) -> IdTagInfo | None:
        """The .conf's idTagInfo (parent and expiry included), handed to the authorizer; None (logged) when
        unusable: the message itself was delivered."""
        try:
            info = IdTagInfo.from_ocpp(conf.id_tag_info)
        except ValueError as exc:
            log.warning("%s #%d: idTagInfo of the answer ignored: %s", entry.action, entry.id, exc)
            return None
        self._on_id_tag_info(str(payload["idTag"]), info)
        return info

    def _invalid_id(self, tx_ref: str, info: IdTagInfo) -> None:
        for connector in self._station.connector_views().values():
            if connector.session is not None and connector.session.ref == tx_ref:
                if self._store.get_bool("StopTransactionOnInvalidId"):
                    log.warning("connector %d: idTag %s by the CSMS: stopping (DeAuthorized)", connector.id,
                                info.status)
                    self._station.stop_session(connector.id, StopReason.DEAUTHORIZED)
                else:
                    self._limit_energy(connector, info)

    def _limit_energy(self, connector: ConnectorView, info: IdTagInfo) -> None:
        """StopTransactionOnInvalidId false: the transaction stays; energy stops once the transaction has
        delivered MaxEnergyOnInvalidId Wh (at once when it already has, or the key is 0)."""
        session = connector.session
        assert session is not None
        limit_wh = self._store.get_int("MaxEnergyOnInvalidId")
        if limit_wh > 0 and connector.session_energy_wh < limit_wh:
            log.warning("connector %d: idTag %s by the CSMS: transaction kept, energy stops after %d Wh",
                        connector.id, info.status, limit_wh)
            self._energy_caps[session.ref] = session.start_energy_wh + limit_wh
            return
        log.warning("connector %d: idTag %s by the CSMS: energy stopped, transaction kept", connector.id, info.status)
        self._station.hold_energy(connector.id, EnergyHold.INVALID_ID)

    def on_meter_update(self, event: MeterUpdate) -> None:
        """Stop energy once a transaction with an invalidated idTag reaches MaxEnergyOnInvalidId."""
        ref = event.session_ref
        cap = self._energy_caps.get(ref) if ref is not None else None
        if ref is None or cap is None or event.sample.energy_import_wh < cap:
            return
        del self._energy_caps[ref]
        connector = self._view(event.connector_id)
        if connector is not None and connector.session is not None and connector.session.ref == ref:
            log.warning("connector %d: MaxEnergyOnInvalidId reached: energy stopped, transaction kept", connector.id)
            self._station.hold_energy(connector.id, EnergyHold.INVALID_ID)


def signed_value(record: str, context: str) -> dict[str, str]:
    """A sampledValue carrying a meter's signed record (OCMF) verbatim."""
    return {"value": record, "context": context, "format": "SignedData",
            "measurand": mv.ENERGY, "location": "Outlet", "unit": "Wh"}
