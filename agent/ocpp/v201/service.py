"""The OCPP 2.0.1 charging-station service: the station as a 2.0.1 charging station, sibling of
agent/ocpp/v16/service.py over the same ``StationPort``, outbox and state database.

Per connection (``Link`` hands us each new ``OcppSession``): BootNotification until Accepted (B01-B03:
Pending keeps the connection and sends nothing else; Rejected answers every CSMS request with CALLERROR
SecurityError until ``interval`` has passed), then the status of the connectors (all after a boot or an
offline period longer than OfflineThreshold, else the ones that changed), one sender loop (outbox entries in
order, then StatusNotifications; one outstanding CALL) and Heartbeats every HeartbeatInterval.

What features get (see features.py): ``station``, ``variables`` (the device model), ``clock``, ``db``,
``outbox``, ``online``, ``accepted``, ``request()``, ``enqueue()``, ``security_event()``, ``wall()``,
``register_trigger()`` (TriggerMessage for their messages), ``deliverers`` (how an outbox action is sent).

    service = OcppService(station, config)
    task = asyncio.create_task(service.run())
    await service.restart_requested.wait()     # Reset: the caller restarts the agent
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ocpp.charge_point import camel_to_snake_case
from ocpp.exceptions import SecurityError
from ocpp.v201 import call
from websockets.asyncio.client import ClientConnection

from agent.config import AgentConfig, ConfigError
from agent.db import StorageError
from agent.events import ConnectorStatus, SessionStopped, StationEvent, StatusChanged
from agent.ocpp.service_base import (
    BOOT_RETRY_S,
    BootStatus,
    OcppServiceBase,
    WrappedHandlers,
    compact_handlers,
    merge_handlers,
)
from agent.ocpp.v16.meter_values import ocpp_time
from agent.ocpp.v16.tls import TlsSetupError, build_client_context
from agent.ocpp.v201.availability import AvailabilityStore
from agent.ocpp.v201.boot_record import BootRecord
from agent.ocpp.v201.device_model import DeviceModel, DeviceModelError
from agent.ocpp.v201.features import load_feature_classes
from agent.ocpp.v201.handlers import CoreHandlers
from agent.ocpp.v201.link import SUBPROTOCOL, Link, RetryBackOff
from agent.ocpp.v201.rpc import (
    ACTIONS,
    CallErrorReceived,
    CallTimeout,
    ConnectionLost,
    Handler,
    InvalidPayload,
    OcppSession,
    handlers_from_object,
)
from agent.outbox import Outbox, OutboxEntry
from agent.sdnotify import EXIT_RESTART_REQUESTED
from agent.station_api import StationPort
from hal.clock import Clock
from hal.flag import Flag

log = logging.getLogger("cpagent.ocpp.v201.service")

MESSAGE_ATTEMPTS = 3  # a non-transaction outbox message (SecurityEventNotification) is sent at most this often
MESSAGE_RETRY_S = 30.0
DELIVERER_RETRY_S = 30.0  # a deliverer that raised (a bug) tries its entry again after this
RESTART_EXIT_STATUS = EXIT_RESTART_REQUESTED

# StatusNotification.connectorStatus from the station's (1.6-grained) connector status.
CONNECTOR_STATUS: Mapping[ConnectorStatus, str] = {
    ConnectorStatus.AVAILABLE: "Available",
    ConnectorStatus.PREPARING: "Occupied",
    ConnectorStatus.CHARGING: "Occupied",
    ConnectorStatus.SUSPENDED_EV: "Occupied",
    ConnectorStatus.SUSPENDED_EVSE: "Occupied",
    ConnectorStatus.FINISHING: "Occupied",
    ConnectorStatus.RESERVED: "Reserved",
    ConnectorStatus.UNAVAILABLE: "Unavailable",
    ConnectorStatus.FAULTED: "Faulted",
}


# TriggerMessage hooks: ``accept(evse)`` says Accepted / Rejected / NotImplemented before the answer goes
# out, ``send(evse)`` runs once it has. evse: the request's {"id", "connector_id"} (snake_case, as handlers
# get it) or None.
TriggerAccept = Callable[[Mapping[str, Any] | None], str]
TriggerSend = Callable[[Mapping[str, Any] | None], Awaitable[None]]
# Sends one outbox entry; returns normally once acked/deferred/dropped, raises ConnectionLost.
Deliverer = Callable[[OcppSession, OutboxEntry], Awaitable[None]]


@dataclass(frozen=True)
class Trigger:
    accept: TriggerAccept
    send: TriggerSend


def connector_status(status: ConnectorStatus) -> str:
    return CONNECTOR_STATUS[status]


class OcppService(OcppServiceBase):
    # Slots for the attributes set at start (a __dict__ past 30 keys is a full table per instance: ~1.2 kB more per
    # station in cpsim fleet); the base's __dict__ keeps everything else (new attributes, tests' patches) working.
    __slots__ = ("_accepted_event", "_boot_record", "_clock_refusal_logged", "_control_started",
                 "_heartbeat_changed", "_link_after", "_link_handlers", "_offline_since", "_relink", "_reported",
                 "_status_queue", "_stopping", "_wake_event", "active_network_profile", "availability",
                 "boot_resumed", "boot_retry_s", "boot_status", "clock", "clock_offset_s", "config",
                 "connection_listeners", "data_transfer_handlers", "db", "deliverers", "endpoint", "features",
                 "firmware_hold", "handlers", "link", "on_other_version", "outbox", "password_source",
                 "restart_kind", "restart_requested", "security_profile", "security_sinks", "ssl_context",
                 "startup_reported", "station", "subprotocols", "triggers", "variables")

    version = "2.0.1"
    _log = log
    _task_prefix = "ocpp201"

    def __init__(
        self,
        station: StationPort,
        config: AgentConfig,
        clock: Clock | None = None,
        *,
        variables: DeviceModel | None = None,
        boot_retry_s: float = BOOT_RETRY_S,
        subprotocols: Sequence[str] = (SUBPROTOCOL,),
        on_other_version: Callable[[str, ClientConnection], None] | None = None,
    ) -> None:
        self._init_shared(station, config, clock, subprotocols, on_other_version)
        self.db = station.shared.db
        self.boot_retry_s = boot_retry_s
        presets: Mapping[str, object] = getattr(config.ocpp, "variables", None) or {}
        self.variables = variables or DeviceModel(self.db, presets, station=station, clock=self.clock)
        self.outbox = Outbox(self.db, self.clock)
        self.outbox.on_full = lambda detail: self.security_event("MemoryExhaustion", detail)
        self.availability = AvailabilityStore(self.db)
        self.firmware_hold = False  # L01.FR.07: free EVSEs Unavailable while an install waits (firmware.py)
        self.boot_status = BootStatus.NONE
        self._boot_record = BootRecord(self.db)
        self._control_started = station.facts().started_wall
        self.boot_resumed = self._boot_record.accepted_for(self._control_started, self._boot_fields())
        # The runner sets this when the CSMS made it switch versions: the other side already queued this run's
        # StartupOfTheDevice (it reaches the CSMS through the shared outbox).
        self.startup_reported = False
        if self.boot_resumed:
            self.boot_status = BootStatus.ACCEPTED
        self._accepted_event = Flag()
        # (evse, connector) -> connectorStatus the CSMS last acknowledged on this connection's watch
        self._reported: dict[tuple[int, int], str] = {}
        # (evse, connectorStatus, forced: sent even if the CSMS has it, e.g. TriggerMessage)
        self._status_queue: list[tuple[int, str, bool]] = []  # a few: a list, not a 760 B deque
        self._offline_since: float | None = None  # monotonic, when the last connection ended
        self.connection_listeners: list[Callable[[], None]] = []  # each new connection, first thing (security.py)
        self.triggers: dict[str, Trigger] = {}
        self.deliverers: dict[str, Deliverer] = {}
        self.data_transfer_handlers: dict[str, Callable[[str | None, Any], Awaitable[dict[str, Any]]]] = {}
        self.handlers = CoreHandlers(self)
        self.features: dict[str, Any] = {cls.__name__: cls(self) for cls in load_feature_classes()}
        on, after = merge_handlers(handlers_from_object, self.handlers, self.features.values())
        # each gate made per request, each method bound per request (the action table shared by the process)
        self._link_handlers = WrappedHandlers(compact_handlers(on, (self.handlers, *self.features.values())),
                                              self._gated)
        self._link_after = after
        # Transport security (A00): profile 0-3 from [ocpp]; TLS trusts ocpp.ca_file, profile 3 presents
        # ocpp.client_cert; the Basic-auth password is SecurityCtrlr.BasicAuthPassword once set, else
        # ocpp.password. A security feature may replace these and call relink().
        self.security_profile = config.ocpp.security_profile
        self.ssl_context: ssl.SSLContext | None = self._tls_context()
        self.password_source: Callable[[], str | None] = self._configured_password
        assert config.ocpp.endpoint is not None  # _init_shared refuses a configuration without one
        self.endpoint: str = config.ocpp.endpoint
        for feature in self.features.values():  # network profiles (security.py) may choose another transport
            configure = getattr(feature, "configure_transport", None)
            if configure is not None:
                configure()
        self.link = self._make_link()
        self.variables.on_change(self._on_variable_change)
        station.subscribe(self._on_event)

    # -- state -------------------------------------------------------------------------------------

    def session_idle(self) -> bool:
        """Online with nothing to send and no CALL outstanding (everything so far was answered)."""
        session = self.link.session
        return (self.online and session is not None and not session.busy and not self._status_queue
                and self.outbox.depth() == 0)

    def setting(self, component: str, variable: str, default: int) -> int:
        """An integer setting of the device model (``default`` if it has none)."""
        try:
            return self.variables.integer(component, variable)
        except (DeviceModelError, TypeError):
            return default

    def message_timeout(self) -> float:
        return float(self.setting("OCPPCommCtrlr", "MessageTimeout.Default", 30))

    def backoff(self) -> RetryBackOff:
        return RetryBackOff(
            wait_minimum=float(self.setting("OCPPCommCtrlr", "RetryBackOffWaitMinimum", 3)),
            random_range=float(self.setting("OCPPCommCtrlr", "RetryBackOffRandomRange", 10)),
            repeat_times=self.setting("OCPPCommCtrlr", "RetryBackOffRepeatTimes", 5),
            cap=self.config.ocpp.reconnect_cap_s,
        )

    def _configured_password(self) -> str | None:
        try:
            password = self.variables.text("SecurityCtrlr", "BasicAuthPassword")
        except DeviceModelError:
            password = ""
        return password or self.config.ocpp.password

    def _tls_context(self) -> ssl.SSLContext | None:
        ocpp = self.config.ocpp
        if not (ocpp.endpoint or "").startswith("wss://"):
            return None
        if self.security_profile < 2 and ocpp.ca_file is None:
            context = ssl.create_default_context()  # wss:// under profile 0/1: the system trust store
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            return context
        if self.security_profile == 3 and ocpp.client_cert is None:
            raise ConfigError("ocpp.client_cert", "security profile 3 needs a client certificate and key")
        if ocpp.ca_file is None:
            context = ssl.create_default_context()
            context.minimum_version = ssl.TLSVersion.TLSv1_2
        else:
            try:
                context = build_client_context(ca_file=ocpp.ca_file)
            except TlsSetupError as exc:
                raise ConfigError("ocpp.ca_file", str(exc)) from None
        if self.security_profile == 3 and ocpp.client_cert is not None:
            try:
                context.load_cert_chain(str(ocpp.client_cert), str(ocpp.client_key) if ocpp.client_key else None)
            except (ssl.SSLError, OSError) as exc:  # names the file, never its content
                raise ConfigError("ocpp.client_cert", f"cannot load {ocpp.client_cert}: {exc}") from None
        return context

    def _make_link(self) -> Link:
        ping = self.setting("OCPPCommCtrlr", "WebSocketPingInterval", 60)
        return Link(
            self.endpoint,
            self.config.station.charge_point_id,
            on_connected=self._connected,
            on_disconnected=self._disconnected,
            handlers=self._link_handlers,
            after=self._link_after,
            security_profile=self.security_profile,
            password=self._password,
            ssl_context=self.ssl_context,
            ping_interval=float(ping) if ping > 0 else None,
            message_timeout=self.message_timeout(),
            backoff=self.backoff(),
            clock=self.clock,
            subprotocols=self.subprotocols,
            speaks=SUBPROTOCOL,
            on_other_version=self.on_other_version,
            request_budget_ms_per_s=self.config.ocpp.request_budget_ms_per_s,
        )

    # -- lifecycle ---------------------------------------------------------------------------------

    def _starting(self) -> None:
        self.apply_availability()
        # a restart of the network side alone is not a startup of the device (A04), nor is a version switch
        if not self.boot_resumed and not self.startup_reported:
            self.security_event("StartupOfTheDevice", f"firmware {self.config.station.firmware_version}")

    def request_restart(self, kind: str, boot_reason: str = "RemoteReset") -> None:
        log.warning("%s reset requested by the CSMS: restarting the agent", kind)
        self.security_event("ResetOrReboot", f"{kind} reset requested by the CSMS")
        try:
            self._boot_record.set_next_reason(boot_reason)
        except StorageError as exc:
            log.error("%s", exc)
        self.restart_kind = kind
        self.restart_requested.set()

    def apply_availability(self) -> None:
        """Bring each EVSE to its persisted operative state; Inoperative waits for a running transaction."""
        for cid, connector in self.station.connector_views().items():
            want = self.availability.operative(cid) and not self.firmware_hold
            if connector.available != want and (want or connector.session is None):
                self.station.set_available(cid, want)

    # -- events ------------------------------------------------------------------------------------

    def _on_event(self, event: StationEvent) -> None:
        if isinstance(event, StatusChanged):
            self._queue_status(event.connector_id, self._status_201(event.connector_id, event.status))
            if self.handlers.scheduled_reset is not None:  # a transaction without a session may have ended
                asyncio.get_running_loop().call_soon(self.handlers.idle_check)
        elif isinstance(event, SessionStopped):
            # A scheduled change of availability takes effect once the transaction has ended (G03.FR.05);
            # so does a scheduled Reset (B11/B12 OnIdle).
            asyncio.get_running_loop().call_soon(self.apply_availability)
            asyncio.get_running_loop().call_soon(self.handlers.idle_check)

    def _on_variable_change(self, component: str, variable: str, value: object) -> None:
        if component != "OCPPCommCtrlr":
            return
        if variable == "HeartbeatInterval":
            self._heartbeat_changed.set()
        elif variable == "MessageTimeout.Default" or variable == "MessageTimeout":
            self.link.message_timeout = self.message_timeout()
        elif variable == "WebSocketPingInterval" and isinstance(value, int):
            self.link.ping_interval = float(value) if value > 0 else None  # from the next connection
        elif variable.startswith("RetryBackOff"):
            self.link.backoff = self.backoff()

    def _gated(self, action: str, handler: Handler) -> Handler:
        """While the boot is Rejected every CSMS request is answered with SecurityError (B03.FR.xx); until it
        is Accepted (Pending) no transaction starts on request (B02, TC_B_02_CS step 12)."""

        async def gated(**kwargs: Any) -> Any:
            if self.boot_status is BootStatus.REJECTED:
                raise SecurityError(description=f"{action}: the CSMS rejected our BootNotification")
            if action == "RequestStartTransaction" and not self.accepted:
                return {"status": "Rejected", "statusInfo": {"reasonCode": "BootPending"}}
            return await handler(**kwargs)

        return gated

    # -- status notifications ----------------------------------------------------------------------

    def status_of(self, evse: int) -> str:
        return self._status_201(evse, self.station.connector_view(evse).status)

    def _status_201(self, evse: int, status: ConnectorStatus) -> str:
        """connectorStatus; a cable fixed to the station that the EV left while its transaction goes on
        (StopTxOnEVSideDisconnect false) is Available again (E10, TC_E_27_CS step 3)."""
        text = connector_status(status)
        if text != "Occupied":
            return text
        try:
            view = self.station.connector_view(evse)
        except KeyError:
            return text
        if view.fixed_cable and view.session is not None and not view.plugged_in and not view.ev_connected:
            return "Available"
        return text

    def _queue_status(self, evse: int, status: str | None = None, *, force: bool = False) -> None:
        status = status or self.status_of(evse)
        if not force and not self.online and self._queue_all_messages():
            # OCPPCommCtrlr.QueueAllMessages: a change while offline is kept in the durable outbox with the
            # time it happened and sent in order after the reconnect (ahead of the status refresh, which then
            # skips what the queued ones already reported).
            payload = {"timestamp": ocpp_time(self.wall()), "connectorStatus": status, "evseId": evse,
                       "connectorId": 1}
            try:
                self.outbox.append("StatusNotification", payload)
                return
            except StorageError as exc:
                log.error("StatusNotification for EVSE %d not queued: %s", evse, exc)
        self._status_queue.append((evse, status, force))
        self._wake()

    def _queue_all_messages(self) -> bool:
        try:
            return self.variables.boolean("OCPPCommCtrlr", "QueueAllMessages")
        except (DeviceModelError, TypeError):
            return False

    def queue_all_statuses(self, evse: int | None = None, *, force: bool = True) -> None:
        """Queue the StatusNotification of every connector (or one EVSE's); ``force`` sends it even if the
        CSMS knows it (TriggerMessage)."""
        for cid in self.station.connector_ids() if evse is None else [evse]:
            self._queue_status(cid, force=force)

    def _refresh_statuses(self, fresh_boot: bool) -> None:
        """On a new connection: every connector after a boot or after being offline longer than
        OfflineThreshold (G01.FR.?, B04), else the ones whose status changed meanwhile."""
        threshold = float(self.setting("OCPPCommCtrlr", "OfflineThreshold", 60))
        offline = None if self._offline_since is None else self.clock.monotonic() - self._offline_since
        if fresh_boot or offline is None or offline > threshold:
            self._reported.clear()
        self._status_queue.clear()
        for cid in self.station.connector_ids():
            self._queue_status(cid)

    async def _send_status(self, session: OcppSession, evse: int, status: str, force: bool = False) -> None:
        if not force and self._reported.get((evse, 1)) == status:
            return
        request = call.StatusNotification(timestamp=ocpp_time(self.wall()), connector_status=status,
                                          evse_id=evse, connector_id=1)
        try:
            await session.request(request)
        except (CallErrorReceived, CallTimeout, InvalidPayload) as exc:
            log.warning("StatusNotification for EVSE %d failed: %s", evse, exc)
            return
        self._reported[(evse, 1)] = status

    # -- per connection ----------------------------------------------------------------------------

    def _boot_fields(self) -> dict[str, object]:
        s = self.config.station
        return {"model": s.model[:20], "vendor_name": s.vendor[:50], "serial_number": s.serial_number[:25],
                "firmware_version": s.firmware_version[:50]}

    def boot_reason(self) -> str:
        return self._boot_record.next_reason() or "PowerUp"

    def _disconnected(self, reason: str) -> None:
        self._offline_since = self.clock.monotonic()

    def _on_connection(self) -> None:
        for listener in self.connection_listeners:
            listener()

    async def _boot(self, session: OcppSession) -> bool:
        """BootNotification until Accepted. True if this was a (new) boot, False for a reconnect."""
        if self.accepted:
            return False
        while True:
            try:
                conf = await session.request(self.boot_request())
            except (CallErrorReceived, CallTimeout, InvalidPayload) as exc:
                log.warning("BootNotification failed (%s); retry in %.0f s", exc, self.boot_retry_s)
                await asyncio.sleep(self.boot_retry_s)
                continue
            if self._boot_answer(conf):
                return True
            wait = float(conf.interval) if int(conf.interval) > 0 else self.boot_retry_s
            self._accepted_event.clear()
            await self._accepted_event.wait_for(wait)  # a triggered BootNotification may be Accepted meanwhile
            if self.accepted:
                return True
            self.boot_status = BootStatus.PENDING if self.boot_status is BootStatus.PENDING else BootStatus.NONE

    def boot_request(self, reason: str | None = None) -> Any:
        fields = self._boot_fields()
        station = {camel: fields[snake] for snake, camel in (
            ("model", "model"), ("vendor_name", "vendorName"), ("serial_number", "serialNumber"),
            ("firmware_version", "firmwareVersion")) if fields[snake]}
        return call.BootNotification(charging_station=station, reason=reason or self.boot_reason())

    def _boot_answer(self, conf: Any) -> bool:
        """Take a BootNotificationResponse; True when Accepted."""
        self._sync_clock(conf.current_time)
        interval = int(conf.interval)
        status = BootStatus(conf.status)
        log.info("BootNotification: %s (interval %d s)", status.value, interval)
        self.boot_status = status
        if status is not BootStatus.ACCEPTED:
            return False
        try:
            self._boot_record.save(self._control_started, self._boot_fields())
        except StorageError as exc:  # then a restart of this side boots again: harmless
            log.error("%s", exc)
        if interval > 0 and interval != self.setting("OCPPCommCtrlr", "HeartbeatInterval", 0):
            result = self.variables.set("OCPPCommCtrlr", "HeartbeatInterval", str(interval), source="internal")
            if result.status not in ("Accepted", "RebootRequired"):
                log.warning("HeartbeatInterval %d s from the CSMS not taken: %s", interval, result.status)
        self._accepted_event.set()
        self._wake()
        return True

    async def _sender(self, session: OcppSession) -> None:
        """One loop, one outstanding CALL: outbox entries first (in order), then status notifications."""
        while not session.closed:
            self._wake_event.clear()
            entry, wait = self._ready_head()
            if entry is not None:
                await self._deliver(session, entry)
                continue
            if self._status_queue:
                evse, status, force = self._status_queue.pop(0)
                await self._send_status(session, evse, status, force)
                continue
            await self._wake_event.wait_for(wait)

    def _ready_head(self) -> tuple[OutboxEntry | None, float | None]:
        head = self.outbox.head()
        if head is None:
            return None, None
        if head.not_before_mono is not None:
            wait = head.not_before_mono - self.clock.monotonic()
            if wait > 0:
                return None, wait
        return head, None

    async def _deliver(self, session: OcppSession, entry: OutboxEntry) -> None:
        """Send the outbox head; never raises but ConnectionLost (a poison entry must not take the connection
        down again and again): a deliverer that fails is logged and its entry held back DELIVERER_RETRY_S."""
        deliverer = self.deliverers.get(entry.action)
        if deliverer is not None:
            try:
                await deliverer(session, entry)
            except (ConnectionLost, asyncio.CancelledError):
                raise
            except Exception:
                log.exception("delivering %s #%d failed; retry in %.0f s", entry.action, entry.id, DELIVERER_RETRY_S)
                self.outbox.defer(entry.id, DELIVERER_RETRY_S)
            return
        try:
            if entry.action not in ACTIONS:
                raise ValueError(f"{entry.action} was queued under OCPP 1.6 and has no 2.0.1 form")
            request = getattr(call, entry.action)(**camel_to_snake_case(self.outbox.payload_for_send(entry)))
        except Exception as exc:
            # e.g. queued by the 1.6 side in its shape and no 2.0.1 form registered for it: given up on loudly
            # (in the outbox's dropped list and the log), never silently, and never blocking the queue.
            self.outbox.drop(entry.id, f"no OCPP 2.0.1 form: {exc}"[:200])
            log.error("outbox entry #%d (%s) has no OCPP 2.0.1 form (%s): dropped", entry.id, entry.action, exc)
            return
        attempts = self.outbox.record_attempt(entry.id)
        try:
            await session.request(request)
        except (CallErrorReceived, CallTimeout, InvalidPayload) as exc:
            if attempts >= MESSAGE_ATTEMPTS:
                self.outbox.drop(entry.id, f"{exc} (after {attempts} attempts)")
                log.error("gave up on %s #%d after %d attempts: %s", entry.action, entry.id, attempts, exc)
            else:
                self.outbox.defer(entry.id, Outbox.retry_delay(attempts, MESSAGE_RETRY_S))
            return
        self.outbox.ack(entry.id)
        if entry.action == "StatusNotification":  # queued offline (QueueAllMessages): the CSMS knows it now
            sent = entry.payload
            self._reported[(sent["evseId"], sent["connectorId"])] = sent["connectorStatus"]

    def _heartbeat_interval(self) -> int:
        return self.setting("OCPPCommCtrlr", "HeartbeatInterval", 3600)

    async def _send_heartbeat(self, session: OcppSession) -> None:
        await self.heartbeat(session)

    async def heartbeat(self, session: OcppSession | None = None) -> None:
        try:
            conf = await (session or self._current_session()).request(call.Heartbeat())
        except (CallErrorReceived, CallTimeout, InvalidPayload, ConnectionLost) as exc:
            log.warning("Heartbeat failed: %s", exc)
            return
        self._sync_clock(conf.current_time)

    # -- for features ------------------------------------------------------------------------------

    def _current_session(self) -> OcppSession:
        session = self.link.session
        if session is None or session.closed:
            raise ConnectionLost("not connected to the CSMS")
        return session

    async def triggered(self, payload: Any) -> Any:
        """A CALL the CSMS asked for with TriggerMessage: allowed while Pending too (B02)."""
        return await self._current_session().request(payload)

    async def request_payload(self, action: str, payload: Mapping[str, Any], *, while_pending: bool = False) -> Any:
        """``request`` (``triggered`` with ``while_pending``) for a payload built as camelCase JSON, such as the
        large reports: sent as it is, without the round trip through a dataclass and back (issue 14 budget)."""
        session = self._current_session() if while_pending else self.link.session
        if session is None or session.closed or not (while_pending or self.accepted):
            raise ConnectionLost("not connected to the CSMS")
        return await session.request_payload(action, payload)

    def enqueue(self, action: str, payload: dict[str, Any], tx_ref: str | None = None) -> int:
        """Queue a message (camelCase payload) in the durable outbox; sent in order once accepted."""
        entry = self.outbox.append(action, payload, tx_ref=tx_ref)
        self._wake()
        return entry

    def register_trigger(self, message: str, accept: TriggerAccept, send: TriggerSend) -> None:
        """TriggerMessage for ``message`` (MessageTriggerEnum) is answered by ``accept`` and then ``send``."""
        self.triggers[message] = Trigger(accept, send)

    async def data_transfer(
        self, vendor_id: str, message_id: str | None = None, data: Any = None
    ) -> tuple[str, Any]:
        """Station -> CSMS DataTransfer (P01): the CSMS's (status, data)."""
        conf = await self.request(call.DataTransfer(vendor_id=vendor_id, message_id=message_id, data=data))
        return str(conf.status), conf.data

    async def trigger_boot(self) -> None:
        """A triggered BootNotification (F06 while Pending)."""
        try:
            conf = await self.triggered(self.boot_request("Triggered"))
        except (CallErrorReceived, CallTimeout, InvalidPayload, ConnectionLost) as exc:
            log.warning("triggered BootNotification failed: %s", exc)
            return
        self._boot_answer(conf)
