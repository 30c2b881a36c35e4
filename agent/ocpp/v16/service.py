"""The OCPP 1.6J Core charge-point service: turns the station into an OCPP charge point.

Per connection (``Link`` hands us each new ``OcppSession``): the boot state machine, then one sender
loop (Outbox entries in order, then status notifications; one outstanding CALL) and a heartbeat.
Station events become Outbox entries (transactions) or queued StatusNotifications. The service also
installs itself as the station's token authority and answers the Core CS->CP requests (``handlers``).
It and its features see the station only as an ``agent.station_api.StationPort``.

    service = OcppService(station, config)
    task = asyncio.create_task(service.run())
    await service.restart_requested.wait()     # Reset.req: the caller restarts the agent
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ocpp.v16 import call

from agent.authcache import AuthorizationCache, LocalAuthList
from agent.config import AgentConfig
from agent.db import StorageError
from agent.events import (
    ConnectorStatus,
    MeterUpdate,
    SessionStarted,
    SessionStopped,
    StationEvent,
    StatusChanged,
)
from agent.faults import info as fault_info
from agent.ocpp.service_base import (
    BOOT_RETRY_S,
    BootStatus,
    OcppServiceBase,
    WrappedHandlers,
    compact_handlers,
    merge_handlers,
)
from agent.ocpp.service_base import parse_time as parse_time  # re-exported: the smart-charging modules use it
from agent.ocpp.v16.authorization import OcppAuthorizer
from agent.ocpp.v16.availability import AvailabilityStore
from agent.ocpp.v16.boot_record import BootRecord
from agent.ocpp.v16.configuration import CORE, SECURITY, ConfigurationStore
from agent.ocpp.v16.diagnostics import OcppDiagnosticsAdapter
from agent.ocpp.v16.features import load_feature_classes
from agent.ocpp.v16.handlers import CoreHandlers
from agent.ocpp.v16.link import SUBPROTOCOL, Backoff, Link, OtherVersionHook
from agent.ocpp.v16.meter_values import SUPPORTED_MEASURANDS, ocpp_time
from agent.ocpp.v16.rpc import (
    CallErrorReceived,
    CallTimeout,
    Handler,
    InvalidPayload,
    OcppSession,
    handlers_from_object,
)
from agent.ocpp.v16.transactions import TransactionMessages
from agent.outbox import Outbox
from agent.sdnotify import EXIT_RESTART_REQUESTED
from agent.station_api import NON_BLOCKING_FAULTS, ConnectorSettings, StationPort
from hal.clock import Clock
from hal.flag import Flag
from hal.tasks import cancel_and_wait
from hal.types import Fault

log = logging.getLogger("cpagent.ocpp.v16.service")

# OCPP keys that live on each Connector (see _apply_connector_keys).
CONNECTOR_KEYS = frozenset({"ConnectionTimeOut", "StopTransactionOnEVSideDisconnect",
                            "UnlockConnectorOnEVSideDisconnect"})

RESTART_EXIT_STATUS = EXIT_RESTART_REQUESTED  # `cpagent run` exits with this after Reset.req; systemd restarts it


class OcppService(OcppServiceBase):
    # Slots for the attributes set at start (a __dict__ past 30 keys is a full table per instance: ~1.2 kB more per
    # station in cpsim fleet); the base's __dict__ keeps everything else (new attributes, tests' patches) working.
    __slots__ = ("_backoff", "_boot_record", "_booted_fields", "_clock_refusal_logged", "_control_started",
                 "_heartbeat_changed", "_link_after", "_link_handlers", "_not_rejected", "_relink", "_reported",
                 "_status_queue", "_stopping", "_wake_event", "authorizer", "availability", "boot_resumed",
                 "boot_retry_s", "boot_status", "cache", "clock", "clock_offset_s", "config", "features", "handlers",
                 "link", "local_list", "on_other_version", "outbox", "password_source", "restart_kind",
                 "restart_requested", "security_profile", "security_sinks", "ssl_context", "startup_reported",
                 "station", "store", "subprotocols", "tx")

    _log = log
    _task_prefix = "ocpp"

    def __init__(
        self,
        station: StationPort,
        config: AgentConfig,
        clock: Clock | None = None,
        *,
        backoff: Backoff | None = None,
        boot_retry_s: float = BOOT_RETRY_S,
        subprotocols: Sequence[str] = (SUBPROTOCOL,),
        on_other_version: OtherVersionHook | None = None,
    ) -> None:
        self._init_shared(station, config, clock, subprotocols, on_other_version)
        self.boot_retry_s = boot_retry_s
        db = station.shared.db
        feature_classes = load_feature_classes()
        self.store = ConfigurationStore(
            db,
            config.ocpp.keys,
            number_of_connectors=len(station.connector_ids()),
            enabled_profiles=(CORE, SECURITY, *(cls.profile for cls in feature_classes)),
            clock=self.clock,
            supported_measurands=SUPPORTED_MEASURANDS,
        )
        self.outbox = Outbox(db, self.clock)
        self.outbox.on_full = lambda detail: self.security_event("MemoryExhaustion", detail)
        self.local_list = LocalAuthList(db, self.clock)
        self.cache = AuthorizationCache(db, self.clock, self.local_list)
        self.availability = AvailabilityStore(db)
        self.boot_status = BootStatus.NONE
        # A restart of this (network) side while the station goes on is a reconnect, not a boot (boot_record.py).
        self._boot_record = BootRecord(db)
        self._control_started = station.facts().started_wall
        self.boot_resumed = self._boot_record.accepted_for(self._control_started, self._boot_fields())
        self.startup_reported = False  # set by the runner on a version switch (see the 2.0.1 service)
        self._booted_fields: dict[str, str] | None = None
        if self.boot_resumed:
            self.boot_status = BootStatus.ACCEPTED
            self._booted_fields = self._boot_fields()
        self._not_rejected = Flag()
        self._not_rejected.set()
        self._reported: dict[int, tuple[str, str]] = {}
        # (connector id, payload, monotonic time queued, held: a change that must last MinimumStatusDuration)
        self._status_queue: list[tuple[int, dict[str, Any], float, bool]] = []  # a few: a list, not a 760 B deque

        self.authorizer = OcppAuthorizer(
            self.store, self.local_list, self.cache, online=lambda: self.online, request=self._request
        )
        self.tx = TransactionMessages(
            self.outbox,
            self.store,
            station.shared.sessions,
            station,
            self.clock,
            wall=self.wall,
            wake=self._wake,
            on_id_tag_info=self.authorizer.learn,
        )
        self.handlers = CoreHandlers(self)
        # Transport security; the Security feature raises the profile, gives TLS and the live password.
        self.security_profile = config.ocpp.security_profile
        self.ssl_context: ssl.SSLContext | None = None
        self.password_source: Callable[[], str | None] = self._configured_password
        self._backoff = backoff or Backoff(cap=config.ocpp.reconnect_cap_s)
        self._link_handlers: Mapping[str, Handler] = {}
        self._link_after: dict[str, Handler] = {}
        self.features: dict[str, Any] = {cls.__name__: cls(self) for cls in feature_classes}
        station.attach_network_diagnostics(OcppDiagnosticsAdapter(self))
        on, after = merge_handlers(handlers_from_object, self.handlers, self.features.values())
        # each gate made per request, each method bound per request (the action table shared by the process)
        self._link_handlers = WrappedHandlers(compact_handlers(on, (self.handlers, *self.features.values())),
                                              self._gated)
        self._link_after = after
        self.link = self._make_link()
        station.register_authority(self.authorizer)
        self._apply_connector_keys()
        self.store.subscribe(self._on_config_change)
        station.subscribe(self._on_event)

    # -- state -------------------------------------------------------------------------------------

    def _configured_password(self) -> str | None:
        key = self.store.get_str("AuthorizationKey")
        return key or self.config.ocpp.password

    def _make_link(self) -> Link:
        assert self.config.ocpp.endpoint is not None
        ping = self.store.get_int("WebSocketPingInterval")
        return Link(
            self.config.ocpp.endpoint,
            self.config.station.charge_point_id,
            on_connected=self._connected,
            handlers=self._link_handlers,
            after=self._link_after,
            security_profile=self.security_profile,
            password=self._password,
            ssl_context=self.ssl_context,
            ping_interval=float(ping) if ping > 0 else None,
            message_timeout=float(self.store.get_int("MessageTimeout")),
            backoff=self._backoff,
            clock=self.clock,
            subprotocols=self.subprotocols,
            on_other_version=self.on_other_version,
            request_budget_ms_per_s=self.config.ocpp.request_budget_ms_per_s,
        )

    # -- lifecycle ---------------------------------------------------------------------------------

    def _starting(self) -> None:
        self.tx.recover()
        self.apply_availability()

    def _side_tasks(self) -> list[asyncio.Task[None]]:
        return [
            asyncio.create_task(self.tx.aligned_sampler(), name="ocpp-aligned"),
            *(
                asyncio.create_task(self.tx.periodic_sampler(cid), name=f"ocpp-sampler-{cid}")
                for cid in self.station.connector_ids()
            ),
        ]

    def request_restart(self, kind: str) -> None:
        log.warning("%s reset requested by the CSMS: restarting the agent", kind)
        self.restart_kind = kind
        # queued before anything wakes on the request (as 2.0.1 does; a watcher task per station cost more)
        self.security_event("ResetOrReboot", f"{kind} reset requested by the CSMS")
        self.restart_requested.set()

    def apply_availability(self) -> None:
        """Bring each connector to its persisted operative state; Inoperative waits for a running session."""
        for cid, connector in self.station.connector_views().items():
            want = self.availability.operative(cid)
            if connector.available != want and (want or connector.session is None):
                self.station.set_available(cid, want)
        self._queue_status(0)

    # -- events ------------------------------------------------------------------------------------

    def _on_event(self, event: StationEvent) -> None:
        if isinstance(event, SessionStarted):
            self.tx.on_session_started(event)
        elif isinstance(event, SessionStopped):
            self.tx.on_session_stopped(event)
            # Scheduled availability changes take effect once the transaction has ended.
            asyncio.get_running_loop().call_soon(self.apply_availability)
        elif isinstance(event, StatusChanged):
            self._queue_status(event.connector_id, event.status, event.faults, hold=True)
        elif isinstance(event, MeterUpdate):
            self.tx.on_meter_update(event)

    def _apply_connector_keys(self) -> None:
        """Hand the keys every connector follows from the store to the connectors (start and on change)."""
        settings = ConnectorSettings(
            connection_timeout_s=float(self.store.get_int("ConnectionTimeOut")),
            stop_on_ev_disconnect=self.store.get_bool("StopTransactionOnEVSideDisconnect"),
            unlock_on_ev_disconnect=self.store.get_bool("UnlockConnectorOnEVSideDisconnect"),
        )
        for cid in self.station.connector_ids():
            self.station.configure_connector(cid, settings)

    def _on_config_change(self, key: str, value: str) -> None:
        if key in CONNECTOR_KEYS:
            self._apply_connector_keys()
        elif key == "HeartbeatInterval":
            self._heartbeat_changed.set()
        elif key == "WebSocketPingInterval":
            self.link.ping_interval = float(value) if int(value) > 0 else None  # from the next connection
        elif key == "MessageTimeout":
            self.link.message_timeout = float(value)
        elif key == "MinimumStatusDuration":
            self._wake()  # held status changes are judged by the new duration now

    def _gated(self, action: str, handler: Handler) -> Handler:
        """After a Rejected boot the charge point answers nothing until the retry interval has passed."""
        return _Gated(self._not_rejected, handler)

    # -- status notifications ----------------------------------------------------------------------

    def _status_payload(
        self, cid: int, status: ConnectorStatus | None = None, faults: frozenset[Fault] | None = None
    ) -> dict[str, Any]:
        if cid == 0:
            status = ConnectorStatus.AVAILABLE if self.availability.operative(0) else ConnectorStatus.UNAVAILABLE
            faults = self.station.facts().reader_faults  # the reader serves the whole charge point
        elif status is None or faults is None:
            connector = self.station.connector_view(cid)
            status = connector.status if status is None else status
            faults = connector.faults if faults is None else faults
        payload: dict[str, Any] = {
            "connectorId": cid,
            "status": status.value,
            "errorCode": "NoError",
            "timestamp": ocpp_time(self.wall()),
        }
        # A fault that does not stop charging (silent meter or reader) is still reported, with the status.
        if status is ConnectorStatus.FAULTED or faults:
            # The fault that stops charging names the error, not a silent meter that happens to sort first.
            fi = fault_info(min(faults, key=lambda f: (f in NON_BLOCKING_FAULTS, f)) if faults else Fault.INTERNAL)
            payload.update(errorCode=fi.ocpp_error_code, vendorErrorCode=fi.vendor_error_code[:50],
                           info=fi.explanation[:50])
        return payload

    def _queue_status(
        self, cid: int, status: ConnectorStatus | None = None, faults: frozenset[Fault] | None = None,
        *, hold: bool = False,
    ) -> None:
        """Queue a StatusNotification; with ``hold`` (a status change, not a trigger or a reconnect) it waits
        MinimumStatusDuration (the value in force when it is judged, so a changed key applies to the changes
        already held) and is dropped if the connector changed again within that time."""
        self._status_queue.append((cid, self._status_payload(cid, status, faults), self.clock.monotonic(), hold))
        self._wake()

    def _next_status(self) -> tuple[tuple[int, dict[str, Any]] | None, float | None]:
        """The next StatusNotification to send, else (None, seconds until the head may be sent)."""
        # At most 18 digits (configuration rule): a float, schedulable by the event loop.
        minimum = float(max(0, self.store.get_int("MinimumStatusDuration")))
        while self._status_queue:
            cid, payload, since, held = self._status_queue[0]
            due = since + minimum if held else since
            wait = due - self.clock.monotonic()
            if wait > 0:
                return None, wait
            del self._status_queue[0]
            # A status that did not last MinimumStatusDuration is not reported (0: every change is).
            if not any(c == cid and queued < due for c, _, queued, _ in self._status_queue):
                return (cid, payload), None
        return None, None

    def _refresh_statuses(self, fresh_boot: bool) -> None:
        """On a new connection: the current status of every connector that changed (all after a boot);
        what happened while offline in between is not replayed."""
        if fresh_boot:
            self._reported.clear()
        self._status_queue.clear()
        now = self.clock.monotonic()
        for cid in [0, *self.station.connector_ids()]:
            payload = self._status_payload(cid)
            if self._reported.get(cid) != (payload["status"], payload["errorCode"]):
                self._status_queue.append((cid, payload, now, False))

    async def _send_status(self, session: OcppSession, cid: int, payload: dict[str, Any]) -> None:
        if self._reported.get(cid) == (payload["status"], payload["errorCode"]):
            return
        request = call.StatusNotification(
            connector_id=cid,
            error_code=payload["errorCode"],
            status=payload["status"],
            timestamp=payload["timestamp"],
            info=payload.get("info"),
            vendor_error_code=payload.get("vendorErrorCode"),
        )
        try:
            await session.request(request)
        except (CallErrorReceived, CallTimeout, InvalidPayload) as exc:
            log.warning("StatusNotification for connector %d failed: %s", cid, exc)
            return
        self._reported[cid] = (payload["status"], payload["errorCode"])

    # -- per connection ----------------------------------------------------------------------------

    def _boot_fields(self) -> dict[str, str]:
        s = self.config.station
        return {
            "charge_point_vendor": s.vendor,
            "charge_point_model": s.model,
            "charge_point_serial_number": s.serial_number,
            "firmware_version": s.firmware_version,
        }

    async def _boot(self, session: OcppSession) -> bool:
        """Run BootNotification until Accepted. Returns True if this was a (new) boot, False if a plain
        reconnect with the same fields skipped it."""
        fields = self._boot_fields()
        if self.accepted and self._booted_fields == fields:
            return False
        while True:
            try:
                conf = await session.request(call.BootNotification(**fields))
            except (CallErrorReceived, CallTimeout, InvalidPayload) as exc:
                log.warning("BootNotification failed (%s); retry in %.0f s", exc, self.boot_retry_s)
                await asyncio.sleep(self.boot_retry_s)
                continue
            self._sync_clock(conf.current_time)
            interval = int(conf.interval)
            status = BootStatus(conf.status)
            log.info("BootNotification: %s (interval %d s)", status.value, interval)
            if status is BootStatus.ACCEPTED:
                self.boot_status = status
                self._booted_fields = fields
                try:
                    self._boot_record.save(self._control_started, fields)
                except StorageError as exc:  # then a restart of this side boots again: harmless
                    log.error("%s", exc)
                if interval > 0 and interval != self.store.get_int("HeartbeatInterval"):
                    self.store.change("HeartbeatInterval", str(interval), source="local")
                return True
            self.boot_status = status
            wait = float(interval) if interval > 0 else self.boot_retry_s
            if status is BootStatus.REJECTED:
                self._not_rejected.clear()
                try:
                    await asyncio.sleep(wait)
                finally:
                    self._not_rejected.set()
            else:  # Pending: stay connected, answer the CSMS, send nothing but the next BootNotification
                await asyncio.sleep(wait)

    async def _sender(self, session: OcppSession) -> None:
        """One loop, one outstanding CALL: Outbox entries first (in order), then status notifications."""
        while not session.closed:
            self._wake_event.clear()
            entry, wait = self.tx.ready_head()
            if entry is not None:
                await self.tx.deliver(session, entry)
                continue
            status, status_wait = self._next_status()
            if status is not None:
                await self._send_status(session, *status)
                continue
            if status_wait is not None:
                wait = status_wait if wait is None else min(wait, status_wait)
            await self._wake_event.wait_for(wait)  # (Flag.wait_for, not asyncio.wait_for: no cancellation swallowed)

    def _heartbeat_interval(self) -> int:
        return self.store.get_int("HeartbeatInterval")

    async def _send_heartbeat(self, session: OcppSession) -> None:
        try:
            conf = await session.request(call.Heartbeat())
        except (CallErrorReceived, CallTimeout, InvalidPayload) as exc:
            log.warning("Heartbeat failed: %s", exc)
            return
        self._sync_clock(conf.current_time)

    # -- on demand (cpctl trigger; TriggerMessage) -------------------------------------------------

    async def trigger_heartbeat(self) -> str:
        conf = await self._request(call.Heartbeat())
        self._sync_clock(conf.current_time)
        return "Accepted"

    async def trigger_boot(self) -> str:
        conf = await self._request(call.BootNotification(**self._boot_fields()))
        self._sync_clock(conf.current_time)
        return str(conf.status)

    def trigger_statuses(self, connector_id: int | None = None) -> str:
        """Queue the current StatusNotification of one connector (or all, connector 0 included)."""
        for cid in [0, *self.station.connector_ids()] if connector_id is None else [connector_id]:
            self._reported.pop(cid, None)
            self._queue_status(cid)
        return "Accepted"

    async def data_transfer(
        self, vendor_id: str, message_id: str | None = None, data: str | None = None
    ) -> tuple[str, str | None]:
        """CP -> CS DataTransfer (Core goes both ways): the CSMS's (status, data). Raises ConnectionLost when
        not online, CallErrorReceived / CallTimeout / InvalidPayload when the CSMS fails to answer."""
        conf = await self._request(call.DataTransfer(vendor_id=vendor_id, message_id=message_id, data=data))
        return str(conf.status), conf.data

    _request = OcppServiceBase.request  # one CALL outside the sender loop (Authorize, features)


class _Gated:
    """A handler that waits for ``gate`` first: a small object, not a closure (~50 instead of ~300 bytes; a
    service wraps every handler, cpsim fleet holds ~30 per station)."""

    __slots__ = ("gate", "handler")

    def __init__(self, gate: asyncio.Event | Flag, handler: Handler) -> None:
        self.gate = gate
        self.handler = handler

    async def __call__(self, **kwargs: Any) -> Any:
        await self.gate.wait()
        return await self.handler(**kwargs)


async def run_until_stopped(
    station: StationPort, config: AgentConfig, stop: asyncio.Event, service: OcppService | None = None
) -> int:
    """For ``cpagent run``: run the OCPP service (when ``ocpp.endpoint`` is set) until ``stop`` is set or
    the CSMS asks for a Reset. Returns the exit status: RESTART_EXIT_STATUS after a Reset, 1 when the OCPP
    service ended by itself (a bug: systemd's Restart=on-failure brings the agent back), else 0."""
    if not config.ocpp.endpoint:
        await stop.wait()
        return 0
    service = service or OcppService(station, config)
    running = asyncio.create_task(service.run(), name="ocpp")
    waits = [asyncio.create_task(stop.wait()), asyncio.create_task(service.restart_requested.wait()), running]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        with contextlib.suppress(Exception):
            await service.stop()
        await cancel_and_wait(*waits)
    if service.restart_kind:
        return RESTART_EXIT_STATUS
    if not stop.is_set() and running.done():
        failure = None if running.cancelled() else running.exception()
        log.critical("the OCPP service ended unexpectedly (%r); exiting so that systemd restarts the agent",
                     failure, exc_info=failure)
        return 1
    return 0

