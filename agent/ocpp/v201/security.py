"""OCPP 2.0.1 security (A01, A04, A05) and network connection profiles (B09, B10).

Network connection profiles: ``SetNetworkProfile`` stores ``connectionData`` in a configuration slot
(table ``ocpp201_network_profiles`` of the network side's state.db; slot 1 is the ``[ocpp]`` endpoint of
the TOML unless the CSMS has stored another there). ``OCPPCommCtrlr.NetworkConfigurationPriority`` (reboot
required) orders the slots the station dials: the first at start; a slot that fails
``NetworkProfileConnectionAttempts`` dials in a row makes way for the next one of the list (B10), and the
last slot that connected (``<state_dir>/security201-state.json``, 0600) is tried when the list is used up.
A slot whose ``securityProfile`` the station cannot use (2/3 without ``wss://`` or a trust anchor, 3 without
a client certificate) is skipped. The profile of the slot in use is ``SecurityCtrlr.SecurityProfile``;
``SetNetworkProfile`` with a lower ``securityProfile`` (no downgrade, A05) or for the slot in use is Rejected.
Security profile upgrade (A05) = a new slot with the higher profile first in the priority list + Reset;
if it cannot connect the station falls back to the previous slot as above.

BasicAuthPassword (A01): a new ``SecurityCtrlr.BasicAuthPassword`` set over SetVariables is used from a new
connection opened once the SetVariablesResponse is on the wire; if it cannot connect
``NetworkProfileConnectionAttempts`` times in a row, the previous (last working) password is restored and
used again. Passwords are never logged (the device model reports the variable as write-only).

Security events (A04) go through the service's outbox (``service.security_event``) and into the persistent
security log ``<state_dir>/security.log`` (JSON lines, 0600, the same file and form as the 1.6 side's),
which GetLog SecurityLog uploads (firmware.py) and ClearCustomerInformation leaves alone (it holds no idToken).

Certificates (A02, A03, M-blocks for CSMS/Manufacturer roots) are in certificates.py, mixed in here."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.certificates import CENTRAL_SYSTEM_ROOT, CertificateStore
from agent.db import StorageError, migrate, transaction
from agent.ocpp.security_log import SecurityLog
from agent.ocpp.v16.tls import (
    FAILED_TO_AUTHENTICATE,
    INVALID_CENTRAL_SYSTEM_CERTIFICATE,
    TlsSetupError,
    build_client_context,
    classify_dial_failure,
)
from agent.ocpp.v201.certificates import CertificateHandlers
from agent.ocpp.v201.device_model import DeviceModelError

if TYPE_CHECKING:
    from agent.ocpp.v201.service import OcppService

log = logging.getLogger("cpagent.ocpp.v201.security")

COMPONENT = "ocpp201_network_profiles"
MIGRATIONS = ["CREATE TABLE ocpp201_network_profiles (slot INTEGER PRIMARY KEY, data TEXT NOT NULL)"]

RECONFIGURED = "ReconfigurationOfSecurityParameters"
# The 1.6 names agent/ocpp/v16/tls.py gives a failed dial -> the 2.0.1 security event (Part 2, Appendix 1).
DIAL_EVENTS: Mapping[str, str] = {
    FAILED_TO_AUTHENTICATE: "FailedToAuthenticateAtCsms",
    INVALID_CENTRAL_SYSTEM_CERTIFICATE: "InvalidCsmsCertificate",
    "InvalidTLSVersion": "InvalidTLSVersion",
    "InvalidTLSCipherSuite": "InvalidTLSCipherSuite",
}
WATCH_TRIAL_S = 0.05  # how often the link is looked at while new settings are on trial
WATCH_STEADY_S = 1.0
REDIAL_GRACE_S = 0.3  # after the answer went out, before the connection is closed for new settings
DEFAULT_ATTEMPTS = 3


@dataclass(frozen=True)
class Connection:
    """What one dial uses: the slot, its URL and security profile."""

    slot: int
    url: str
    security_profile: int


def connection_of(slot: int, data: Mapping[str, Any]) -> Connection:
    """A stored connectionData (wire form) as a Connection."""
    return Connection(slot, str(data["ocppCsmsUrl"]), int(data["securityProfile"]))


def profile_problem(data: Mapping[str, Any], *, current_profile: int, active_slot: int | None, slot: int,
                    slots: Sequence[str]) -> str | None:
    """Why a SetNetworkProfile cannot be taken (None: it can). Pure: B09.FR.xx checks."""
    if str(slot) not in slots:
        return f"configurationSlot {slot} is not one of NetworkConfigurationPriority's {','.join(slots)}"
    if slot == active_slot:
        return f"configurationSlot {slot} is the network profile in use"
    if data.get("ocppVersion") != "OCPP20" or data.get("ocppTransport") != "JSON":
        return "only ocppVersion OCPP20 over JSON is supported"
    url = str(data.get("ocppCsmsUrl", ""))
    if not url.startswith(("ws://", "wss://")):
        return "ocppCsmsUrl must be ws:// or wss://"
    profile = int(data.get("securityProfile", -1))
    if profile < current_profile:
        return f"securityProfile {profile} is below the current {current_profile} (no downgrade)"
    if profile >= 2 and not url.startswith("wss://"):
        return f"securityProfile {profile} needs a wss:// URL"
    if profile == 0 and url.startswith("wss://"):
        return "securityProfile 0 uses ws://"
    return None


def dial_order(priority: Sequence[str], usable: Sequence[int], confirmed: int | None) -> list[int]:
    """The slots to try, in order: the usable ones of NetworkConfigurationPriority, then the last one
    that connected if it is not among them."""
    order = [int(s) for s in priority if s.isdigit() and int(s) in usable]
    order = list(dict.fromkeys(order))
    if confirmed is not None and confirmed not in order and confirmed in usable:
        order.append(confirmed)
    return order


class NetworkSlots:
    """connectionData per configuration slot, persisted."""

    def __init__(self, db: Any) -> None:
        self._db = db
        migrate(db, COMPONENT, MIGRATIONS)

    def get(self, slot: int) -> dict[str, Any] | None:
        row = self._db.execute("SELECT data FROM ocpp201_network_profiles WHERE slot = ?", (slot,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def put(self, slot: int, data: Mapping[str, Any]) -> None:
        try:
            with transaction(self._db):
                self._db.execute(
                    "INSERT INTO ocpp201_network_profiles(slot, data) VALUES (?, ?) "
                    "ON CONFLICT(slot) DO UPDATE SET data = excluded.data",
                    (slot, json.dumps(dict(data))),
                )
        except Exception as exc:
            raise StorageError(f"cannot store network profile {slot}: {exc}") from exc

    def slots(self) -> list[int]:
        return [int(r[0]) for r in self._db.execute("SELECT slot FROM ocpp201_network_profiles ORDER BY slot")]


def _write_private(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, json.dumps(dict(data)).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class Security(CertificateHandlers):
    def __init__(self, service: OcppService) -> None:
        self._svc = service
        state_dir = service.config.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.certs = CertificateStore(state_dir / "certificates")
        self.security_log = SecurityLog(state_dir / "security.log")
        self.slots = NetworkSlots(service.db)
        self._state_path = state_dir / "security201-state.json"
        state = self._load_state()
        self.confirmed_slot: int | None = state.get("slot")
        self._confirmed_password: str | None = state.get("password")
        self.active: Connection | None = None
        self._order: list[int] = []
        self._trial = False  # settings (slot or password) that never connected yet
        self._trial_failures = 0
        self._password: str | None = None
        self._pending_password: str | None = None
        self._stale_link: object | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_failure_kind: str | None = None
        # AdditionalRootCertificateCheck (M05): the CSMS roots a new one replaces, trusted again if a connection
        # trusting the new one alone fails NetworkProfileConnectionAttempts times, removed once it succeeded
        self._superseded: list[str] = []
        self._root_trial = False
        self._pending_rollover = False
        service.security_sinks.append(self.security_log.append)
        service.connection_listeners.append(self._connected)
        service.variables.on_change(self._on_variable)
        self.init_certificates()

    # -- state --------------------------------------------------------------------------------------

    def _load_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self._state_path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save_state(self) -> None:
        try:
            _write_private(self._state_path, {"slot": self.confirmed_slot, "password": self._confirmed_password})
        except OSError as exc:
            log.error("cannot save the working network settings: %s", exc)

    @property
    def in_trial(self) -> bool:
        """Settings (a slot or a password) in use that have not connected yet."""
        return self._trial

    def _attempts(self) -> int:
        return max(1, self._svc.setting("OCPPCommCtrlr", "NetworkProfileConnectionAttempts", DEFAULT_ATTEMPTS))

    def _current_password(self) -> str | None:
        try:
            password = self._svc.variables.text("SecurityCtrlr", "BasicAuthPassword")
        except DeviceModelError:
            password = ""
        return password or self._svc.config.ocpp.password

    def password(self) -> str | None:
        """The Basic-auth password of the next dial (the service's password_source)."""
        return self._password

    # -- connection profiles ------------------------------------------------------------------------

    def slot_data(self, slot: int) -> Connection | None:
        data = self.slots.get(slot)
        if data is not None:
            try:
                return connection_of(slot, data)
            except (KeyError, ValueError, TypeError):
                log.error("network profile %d unreadable; ignored", slot)
                return None
        ocpp = self._svc.config.ocpp
        if slot == 1 and ocpp.endpoint:
            return Connection(1, ocpp.endpoint, ocpp.security_profile)
        return None

    def context_for(self, connection: Connection) -> ssl.SSLContext | None:
        """The TLS context of a connection; TlsSetupError if its profile cannot be used here."""
        ocpp = self._svc.config.ocpp
        profile = connection.security_profile
        if not connection.url.startswith("wss://"):
            if profile >= 2:
                raise TlsSetupError(f"profile {profile} needs a wss:// URL")
            return None
        ca_pem = self._roots_pem()
        if profile < 2 and not ca_pem and ocpp.ca_file is None:
            context = ssl.create_default_context()
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            return context
        client = self.client_files() if profile == 3 else None
        if profile == 3 and client is None:
            raise TlsSetupError("profile 3 needs a ChargingStationCertificate (or ocpp.client_cert)")
        context = build_client_context(ca_pem=ca_pem, ca_file=ocpp.ca_file,
                                       client_cert=client[0] if client else None,
                                       client_key=client[1] if client else None)
        # An installed CSMSRootCertificate is a trust anchor even when another CA issued it (a root's successor
        # under AdditionalRootCertificateCheck): OpenSSL's partial-chain verification.
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        return context

    def _roots_pem(self) -> str:
        """The installed CSMS roots to trust (during a root trial: without the superseded ones)."""
        if not self._root_trial:
            return self.certs.pem_bundle(CENTRAL_SYSTEM_ROOT)
        from cryptography.hazmat.primitives import serialization

        from agent.certificates import fingerprint

        return "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii")
                       for c in self.certs.installed(CENTRAL_SYSTEM_ROOT) if fingerprint(c) not in self._superseded)

    def root_rollover(self, new_root: Any) -> None:
        from agent.certificates import fingerprint

        new = fingerprint(new_root)
        old = [fingerprint(c) for c in self.certs.installed(CENTRAL_SYSTEM_ROOT) if fingerprint(c) != new]
        tls = self.active is not None and self.active.url.startswith("wss://")
        if old and tls:
            self._superseded = old
            self._pending_rollover = True

    async def after_install_certificate(self, **_: Any) -> None:
        if not self._pending_rollover or self.active is None:
            return
        self._pending_rollover = False
        self._root_trial = True
        try:
            context = self.context_for(self.active)
        except TlsSetupError as exc:
            log.error("new CSMS root not usable alone: %s", exc)
            self._root_trial, self._superseded = False, []
            return
        log.warning("reconnecting trusting the new CSMSRootCertificate only (the old one is the fallback)")
        self._svc.ssl_context = context
        self._trial = True
        self._trial_failures = 0
        self._spawn(self._relink())

    def client_files(self) -> tuple[Path, Path] | None:
        ocpp = self._svc.config.ocpp
        return self.certs.client_files(ocpp.client_cert, ocpp.client_key)

    def _usable(self, slot: int) -> Connection | None:
        connection = self.slot_data(slot)
        if connection is None:
            return None
        try:
            self.context_for(connection)
        except TlsSetupError as exc:
            log.error("network profile %d not usable: %s", slot, exc)
            return None
        if connection.security_profile in (1, 2) and not self._password:
            log.error("network profile %d not usable: no BasicAuthPassword", slot)
            return None
        return connection

    def _slot_names(self) -> tuple[str, ...]:
        spec = self._svc.variables.spec("OCPPCommCtrlr", "NetworkConfigurationPriority")
        return (spec.values if spec is not None else None) or ("1",)

    def _priority(self) -> tuple[str, ...]:
        try:
            value = self._svc.variables.value("OCPPCommCtrlr", "NetworkConfigurationPriority")
        except DeviceModelError:
            return ("1",)
        return tuple(value) if isinstance(value, tuple) else (str(value),)

    def configure_transport(self) -> None:
        """Called by the service before its first link: choose the slot and password to dial with."""
        self._password = self._current_password()
        if self._confirmed_password is None:
            self._confirmed_password = self._password
        elif self._password != self._confirmed_password:
            self._trial = True  # a new password was set and the agent restarted before it connected
        candidates = [int(s) for s in self._slot_names() if s.isdigit() and self._usable(int(s)) is not None]
        self._order = dial_order(self._priority(), candidates, self.confirmed_slot)
        if not self._order:
            log.error("no usable network profile; dialling the [ocpp] endpoint as configured")
            self.active = None
            return
        self._use(self._order[0])

    def _use(self, slot: int) -> None:
        connection = self._usable(slot)
        if connection is None:
            return
        svc = self._svc
        self.active = connection
        svc.endpoint = connection.url
        svc.security_profile = connection.security_profile
        svc.ssl_context = self.context_for(connection)
        svc.password_source = self.password
        svc.active_network_profile = slot  # type: ignore[attr-defined]  # read by OCPPCommCtrlr.ActiveNetworkProfile
        self._trial = slot != self.confirmed_slot or self._password != self._confirmed_password
        self._trial_failures = 0
        with contextlib.suppress(DeviceModelError):
            svc.variables.set("SecurityCtrlr", "SecurityProfile", str(connection.security_profile),
                              source="internal")

    async def on_set_network_profile(self, configuration_slot: int, connection_data: dict[str, Any],
                                     **_: Any) -> dict[str, Any]:
        data = _camel(connection_data)
        problem = profile_problem(
            data, current_profile=self._svc.security_profile,
            active_slot=self.active.slot if self.active else None, slot=configuration_slot,
            slots=self._slot_names(),
        )
        if problem is None:  # A05.FR.02/03: a profile the station cannot use (no root, no certificate)
            try:
                self.context_for(connection_of(configuration_slot, data))
            except TlsSetupError as exc:
                problem = str(exc)
        if problem is None and int(data["securityProfile"]) in (1, 2) and not self._password:
            problem = f"securityProfile {data['securityProfile']} needs a BasicAuthPassword"

        if problem is not None:
            log.info("SetNetworkProfile slot %d rejected: %s", configuration_slot, problem)
            return {"status": "Rejected", "statusInfo": {"reasonCode": "InvalidNetworkConf",
                                                         "additionalInfo": problem[:512]}}
        try:
            self.slots.put(configuration_slot, data)
        except StorageError as exc:
            log.error("%s", exc)
            return {"status": "Failed"}
        log.info("network profile %d stored (%s, security profile %s)", configuration_slot,
                 data.get("ocppCsmsUrl"), data.get("securityProfile"))
        self.event(RECONFIGURED, f"network profile {configuration_slot} set")
        return {"status": "Accepted"}

    # -- BasicAuthPassword --------------------------------------------------------------------------

    def _on_variable(self, component: str, variable: str, value: object) -> None:
        if component == "SecurityCtrlr" and variable == "BasicAuthPassword" and isinstance(value, str):
            self._pending_password = value

    async def after_set_variables(self, **_: Any) -> None:
        if self._pending_password is None:
            return
        new, self._pending_password = self._pending_password, None
        if new == self._password:
            return
        self.event(RECONFIGURED, "BasicAuthPassword changed")
        self._password = new
        if self._svc.security_profile not in (1, 2):  # no Basic auth on this connection: nothing to try now
            self._confirmed_password = new
            self._save_state()
            return
        self._trial = True
        self._trial_failures = 0
        log.warning("reconnecting with the new BasicAuthPassword")
        self._spawn(self._relink())

    def certificate_changed(self) -> None:
        if self.active is not None:
            try:
                self._svc.ssl_context = self.context_for(self.active)
            except TlsSetupError as exc:
                log.error("new ChargingStationCertificate not usable: %s", exc)
                return
            self._spawn(self._relink())

    async def _relink(self) -> None:
        await asyncio.sleep(REDIAL_GRACE_S)
        self._stale_link = self._svc.link
        await self._svc.relink()

    def _spawn(self, coroutine: Any) -> None:
        # Not in the session's task: a redial cancels the session and what it spawned.
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- watching the link --------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await asyncio.gather(self._watch_link(), self.watch_certificates())
        finally:
            for task in list(self._tasks):
                task.cancel()

    async def _watch_link(self) -> None:
        link: Any = None
        failures = 0
        while True:
            await asyncio.sleep(WATCH_TRIAL_S if self._trial else WATCH_STEADY_S)
            if self._svc.link is not link:
                link, failures = self._svc.link, 0
            if link is self._stale_link:
                continue
            while link.counters.failures > failures and self._svc.link is link:
                failures += 1
                await self._dial_failed(link.last_error)

    def _connected(self) -> None:
        """The link is up with the settings in use (called by the service on each new connection)."""
        self._last_failure_kind = None
        self._trial_failures = 0
        if self._root_trial:
            self._root_trial = False
            self._remove_superseded_roots()
        if not self._trial:
            return
        self._trial = False
        slot = self.active.slot if self.active else None
        log.info("connected with network profile %s: the settings are confirmed", slot)
        if slot is not None and self.confirmed_slot is not None and slot != self.confirmed_slot:
            old = self.slot_data(self.confirmed_slot)
            if old is not None and self.active is not None and self.active.security_profile > old.security_profile:
                self.event(RECONFIGURED, f"security profile {self.active.security_profile} in use")
                self._drop_lower_profiles(self.active.security_profile)
        self.confirmed_slot = slot
        self._confirmed_password = self._password
        self._save_state()

    def _remove_superseded_roots(self) -> None:
        removed = 0
        for fp in self._superseded:
            with contextlib.suppress(FileNotFoundError):
                (self.certs.root / CENTRAL_SYSTEM_ROOT / f"{fp}.pem").unlink()
                removed += 1
        self._superseded = []
        if removed:
            log.info("connected trusting the new CSMSRootCertificate: %d old one(s) removed", removed)
            self.event(RECONFIGURED, f"CSMSRootCertificate replaced ({removed} old removed)")

    def _drop_lower_profiles(self, profile: int) -> None:
        """A05.FR.05/06: once connected with a higher security profile, slots of a lower one leave
        NetworkConfigurationPriority (no way back down)."""
        keep = [s for s in self._priority()
                if s.isdigit() and (c := self.slot_data(int(s))) is not None and c.security_profile >= profile]
        if keep and list(keep) != list(self._priority()):
            result = self._svc.variables.set("OCPPCommCtrlr", "NetworkConfigurationPriority", ",".join(keep),
                                             source="internal")
            log.info("NetworkConfigurationPriority now %s (%s)", ",".join(keep), result.status)
        self._order = [s for s in self._order if (c := self.slot_data(s)) is not None and c.security_profile >= profile]

    async def _dial_failed(self, description: str | None) -> None:
        kind = classify_dial_failure(description)
        if kind is not None and kind != self._last_failure_kind:
            self._last_failure_kind = kind
            self.event(DIAL_EVENTS.get(kind, kind), description)
        if not self._trial:
            return
        self._trial_failures += 1
        if self._trial_failures < self._attempts():
            return
        await self._fall_back()

    async def _fall_back(self) -> None:
        """The settings on trial failed NetworkProfileConnectionAttempts dials: the old password, or the next
        slot of the priority list (then the last one that worked), or the superseded CSMS root."""
        if self._root_trial and self.active is not None:
            log.error("the new CSMSRootCertificate alone failed %d dials: the old one is trusted again",
                      self._trial_failures)
            self.event(RECONFIGURED, "new CSMSRootCertificate could not connect; the old one kept as fallback")
            self._root_trial, self._superseded = False, []
            self._svc.ssl_context = self.context_for(self.active)
            self._trial = self._password != self._confirmed_password or self.active.slot != self.confirmed_slot
        elif self._password != self._confirmed_password:
            log.error("the new BasicAuthPassword failed %d dials: back to the previous one", self._trial_failures)
            self.event(RECONFIGURED, "new BasicAuthPassword could not connect; previous one restored")
            self._password = self._confirmed_password
            if self._password and len(self._password) >= 16:
                with contextlib.suppress(DeviceModelError):
                    self._svc.variables.set("SecurityCtrlr", "BasicAuthPassword", self._password, source="internal")
            self._pending_password = None
            # a slot that never connected stays on trial (with the old password)
            self._trial = self.active is not None and self.active.slot != self.confirmed_slot
        else:
            current = self.active.slot if self.active else None
            later = self._order[self._order.index(current) + 1:] if current in self._order else []
            following = later[0] if later else self.confirmed_slot
            if following is None or following == current:
                self._trial_failures = 0
                return
            log.error("network profile %s failed %d dials: trying profile %d", current, self._trial_failures,
                      following)
            self.event(RECONFIGURED, f"network profile {current} could not connect; using profile {following}")
            self._use(following)
        self._trial_failures = 0
        self._stale_link = self._svc.link
        await self._svc.relink()

    # -- events -------------------------------------------------------------------------------------

    def event(self, kind: str, tech_info: str | None = None) -> None:
        self._svc.security_event(kind, tech_info)


def _camel(data: Mapping[str, Any]) -> dict[str, Any]:
    """connectionData as the handler gets it (snake_case) back in its wire form."""
    from ocpp.charge_point import snake_to_camel_case

    result: dict[str, Any] = snake_to_camel_case(dict(data))
    return result
