"""Security whitepaper feature: security profiles 1-3, AuthorizationKey, certificates, security events and
the persistent security log (``<state_dir>/security.log``, JSON lines, 0600).

Profiles: 0 none, 1 HTTP Basic, 2 TLS + Basic, 3 TLS client certificate. The profile in use is the
SecurityProfile key, never below ``ocpp.security_profile`` from the TOML. Raising it over OCPP (or
changing AuthorizationKey) is answered Accepted, then the link redials with the new setting; the
previous, proven setting is kept in ``<state_dir>/security-state.json`` (0600) until the new one has
connected once, and restored if the new one fails FALLBACK_AFTER_FAILURES dials in a row (the only way
down, never below the TOML's). Lowering it over OCPP or through cpctl is Rejected by the configuration
store (whitepaper: no downgrade); raising to 2/3 without a trust anchor (or to 3 without a
client certificate) is Rejected here.

AuthorizationKey on the wire: a key that is an even-length hex string whose bytes are printable UTF-8
is sent in its decoded form (the OCTT TC_085 convention: the hex is an encoding of the password);
any other key is sent as is.

Other features read the log through ``Security.read_log()`` and may clear it with ``clear_log()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.certificates import CENTRAL_SYSTEM_ROOT, CertificateStore
from agent.ocpp.security_log import SecurityLog
from agent.ocpp.v16.certificates import RECONFIGURED, CertificateHandlers
from agent.ocpp.v16.configuration import SECURITY
from agent.ocpp.v16.link import LinkState, basic_credentials
from agent.ocpp.v16.rpc import REDACTED_LOGGERS, RedactingFilter, install_redaction
from agent.ocpp.v16.tls import TlsSetupError, build_client_context, classify_dial_failure

if TYPE_CHECKING:
    from agent.ocpp.v16.service import OcppService

log = logging.getLogger("cpagent.ocpp.v16.security")

FALLBACK_AFTER_FAILURES = 3
WATCH_PERIOD_S = 0.1
# Connected and not trying new settings, the watch looks once a second (an idle station wakes less); every
# dial failure is still counted, however many fell between two looks.
WATCH_STEADY_S = 1.0
APPLY_LOCAL_CHANGE_AFTER_S = 1.0  # cpctl changes have no .conf to wait for
# After the .conf, before closing: a CSMS busy with a crossing CALL may not have read the .conf yet, and
# a close right behind it can make it drop the answer.
REDIAL_GRACE_S = 0.5
INVALID_MESSAGES_EVERY_S = 60.0
SECRET_KEYS = ("securityprofile", "authorizationkey")
SECRET_LOGGERS = (
    *REDACTED_LOGGERS,
    "cpagent.ocpp.v16.configuration",
    "cpagent.ocpp.v16.service",
    "cpagent.ocpp.v16.handlers",
    "cpagent.ocpp.v16.security",
    "cpagent.ocpp.v16.certificates",
    "cpagent.certificates",
    "cpagent.ctl",
)

_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")


def wire_password(authorization_key: str) -> str:
    """The Basic-auth password for an AuthorizationKey (see the module docstring)."""
    if _HEX.fullmatch(authorization_key):
        try:
            decoded = bytes.fromhex(authorization_key).decode("utf-8")
        except UnicodeDecodeError:
            return authorization_key
        if decoded.isprintable():
            return decoded
    return authorization_key


@dataclass(frozen=True)
class Settings:
    profile: int
    key: str  # raw AuthorizationKey; "" = none (then the TOML ocpp.password)


class SecretsFilter(RedactingFilter):
    """RedactingFilter that also hides ``AuthorizationKey=<value>`` as the configuration store logs it."""

    _KEY_ASSIGNMENT = re.compile(r"""(AuthorizationKey\s*=\s*)(['"]).*?\2""", re.IGNORECASE)
    # websockets' DEBUG frame lines ("< TEXT '[2,...' [140 bytes]") are cut in the middle, so the
    # key name may be gone while its value is not: hide their content (rpc logs frames, redacted).
    _WEBSOCKETS_FRAME = re.compile(r"^([<>] (?:TEXT|BINARY) ).*( \[\d+ bytes\])$", re.DOTALL)

    def redact(self, text: str) -> str:
        text = self._WEBSOCKETS_FRAME.sub(r"\g<1>'...'\g<2>", text)
        return self._KEY_ASSIGNMENT.sub(r"\g<1>***", super().redact(text))


class Security(CertificateHandlers):
    profile = SECURITY

    def __init__(self, service: OcppService) -> None:
        self._svc = service
        config = service.config
        state_dir = config.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = state_dir / "security.log"
        self._state_path = state_dir / "security-state.json"
        self.certs = CertificateStore(
            state_dir / "certificates", max_entries=service.store.get_int("CertificateStoreMaxLength")
        )
        store = service.store
        if store.get_int("SecurityProfile") < config.ocpp.security_profile:
            store.change("SecurityProfile", str(config.ocpp.security_profile), source="local")
        self.active = self._from_store()
        self.confirmed = self._load_confirmed() or self.active
        # A key lowered by an older agent's cpctl is the new truth; a fallback below the TOML's floor
        # (state saved before the TOML was raised) is never one.
        if not config.ocpp.security_profile <= self.confirmed.profile <= self.active.profile:
            self.confirmed = self.active
        try:
            context = self._context_for(self.active.profile)
        except TlsSetupError as exc:
            log.error("security profile %d unusable (%s); using %d", self.active.profile, exc, self.confirmed.profile)
            self.active = self.confirmed
            context = self._context_for(self.active.profile)
        self._trial_failures = 0
        self._stale_link: object | None = None  # the link being replaced: its connection proves nothing
        self._pending_change = False
        self._reverting = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_failure_kind: str | None = None
        self._last_invalid_messages = -INVALID_MESSAGES_EVERY_S
        service.security_profile = self.active.profile
        service.ssl_context = context
        service.password_source = self.password
        service.security_sinks.append(SecurityLog(self.log_path).append)
        service.handlers.change_guards.append(self._guard)
        store.subscribe(self._on_change)
        self.redaction = SecretsFilter(self.secrets)

    # -- settings -----------------------------------------------------------------------------------

    def _from_store(self) -> Settings:
        store = self._svc.store
        return Settings(store.get_int("SecurityProfile"), store.get_str("AuthorizationKey"))

    @property
    def in_trial(self) -> bool:
        return self.active != self.confirmed

    def password(self) -> str | None:
        if self.active.key:
            return wire_password(self.active.key)
        return self._svc.config.ocpp.password

    def _ca_available(self) -> bool:
        return bool(self.certs.installed(CENTRAL_SYSTEM_ROOT)) or self._svc.config.ocpp.ca_file is not None

    def _client_files(self) -> tuple[Path, Path] | None:
        ocpp = self._svc.config.ocpp
        return self.certs.client_files(ocpp.client_cert, ocpp.client_key)

    def _context_for(self, profile: int) -> ssl.SSLContext | None:
        endpoint = self._svc.config.ocpp.endpoint or ""
        if not endpoint.startswith("wss://"):
            if profile >= 2:
                raise TlsSetupError(f"profile {profile} needs a wss:// endpoint")
            return None
        if profile < 2 and not self._ca_available():
            context = ssl.create_default_context()  # wss:// under profile 0/1: the system trust store
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            return context
        client = self._client_files() if profile == 3 else None
        if profile == 3 and client is None:
            raise TlsSetupError("profile 3 needs a ChargePointCertificate (or ocpp.client_cert)")
        return build_client_context(
            ca_pem=self.certs.pem_bundle(CENTRAL_SYSTEM_ROOT),
            ca_file=self._svc.config.ocpp.ca_file,
            client_cert=client[0] if client else None,
            client_key=client[1] if client else None,
        )

    def _guard(self, key: str, value: str) -> str | None:
        """ChangeConfiguration SecurityProfile: refuse an upgrade the charge point cannot make."""
        if key.lower() != "securityprofile" or not value.strip().isdigit():
            return None
        wanted = int(value)
        if wanted <= self.active.profile or wanted > 3:
            return None  # lowering and range: the configuration store answers
        if wanted in (1, 2) and not (self.active.key or self._svc.config.ocpp.password):
            return f"profile {wanted} needs an AuthorizationKey"
        try:
            self._context_for(wanted)
        except TlsSetupError as exc:
            return str(exc)
        return None

    def _on_change(self, key: str, value: str) -> None:
        if self._reverting or key.lower() not in SECRET_KEYS:
            return
        self.event(RECONFIGURED, f"{key} changed")
        self._pending_change = True
        asyncio.get_running_loop().call_later(APPLY_LOCAL_CHANGE_AFTER_S, self._spawn_apply)

    async def after_change_configuration(self, key: str, **_: Any) -> None:
        if key.lower() in SECRET_KEYS:
            self._spawn_apply()  # the .conf is on the wire: now redial

    def _spawn_apply(self) -> None:
        if not self._pending_change:
            return
        self._pending_change = False
        self._spawn(self._apply(self._from_store()))

    def client_certificate_changed(self) -> None:
        if self.active.profile == 3:
            self._spawn(self._apply(self.active, force=True))

    def _spawn(self, coroutine: Any) -> None:
        # Not in the session's task: a redial cancels the session and everything it spawned.
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _apply(self, wanted: Settings, *, force: bool = False) -> None:
        if wanted == self.active and not force:
            return
        try:
            context = self._context_for(wanted.profile)
        except TlsSetupError as exc:
            log.error("cannot switch to security profile %d: %s", wanted.profile, exc)
            self._revert_store(self.active)
            return
        self._save_confirmed(self.confirmed)
        self._stale_link = self._svc.link
        self.active = wanted
        self._trial_failures = 0
        self._svc.security_profile = wanted.profile
        self._svc.ssl_context = context
        log.warning("reconnecting with security profile %d (new settings)", wanted.profile)
        await asyncio.sleep(REDIAL_GRACE_S)
        await self._svc.relink()

    async def _fall_back(self) -> None:
        old = self.confirmed
        log.error(
            "security profile %d / new AuthorizationKey failed %d dials: back to profile %d",
            self.active.profile, self._trial_failures, old.profile,
        )
        self.event(RECONFIGURED, f"new settings could not connect; fell back to profile {old.profile}")
        self._revert_store(old)
        self._stale_link = self._svc.link
        self.active = old
        self._svc.security_profile = old.profile
        self._svc.ssl_context = self._context_for(old.profile)
        await self._svc.relink()

    def _revert_store(self, settings: Settings) -> None:
        store = self._svc.store
        self._reverting = True
        try:
            # The one way down for SecurityProfile (whitepaper: back to the last working settings), and
            # never below the TOML's ocpp.security_profile.
            profile = max(settings.profile, self._svc.config.ocpp.security_profile)
            if store.get_int("SecurityProfile") != profile:
                store.change("SecurityProfile", str(profile), source="fallback")
            if store.get_str("AuthorizationKey") != settings.key:
                store.change("AuthorizationKey", settings.key, source="local")
        finally:
            self._reverting = False

    def _load_confirmed(self) -> Settings | None:
        try:
            data = json.loads(self._state_path.read_text())
            return Settings(int(data["profile"]), str(data["key"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _save_confirmed(self, settings: Settings) -> None:
        tmp = self._state_path.with_name(self._state_path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, json.dumps({"profile": settings.profile, "key": settings.key}).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._state_path)

    # -- secrets ------------------------------------------------------------------------------------

    def secrets(self) -> list[str]:
        """Everything that must never reach a log: keys (raw and as sent), passwords, Basic credentials,
        private keys."""
        cp_id = self._svc.config.station.charge_point_id
        values: set[str] = set()
        keys = {self.active.key, self.confirmed.key}
        with contextlib.suppress(Exception):
            keys.add(self._svc.store.get_str("AuthorizationKey"))
        for key in keys:
            if key:
                values.update((key, wire_password(key)))
        if self._svc.config.ocpp.password:
            values.add(self._svc.config.ocpp.password)
        values.update([basic_credentials(cp_id, v) for v in list(values)])
        for pem in self.certs.private_key_pems():
            values.add(pem)
            values.update(line for line in pem.splitlines() if len(line) >= 16 and "-----" not in line)
        return sorted(values)

    def _install_redaction(self) -> Callable[[], None]:
        return install_redaction(self.redaction, SECRET_LOGGERS, handlers=list(logging.getLogger().handlers))

    # -- security events and log --------------------------------------------------------------------

    def event(self, kind: str, tech_info: str | None = None) -> None:
        """Queue a SecurityEventNotification (guaranteed delivery) and append it to security.log."""
        self._svc.security_event(kind, tech_info)

    def read_log(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        for path in (self.log_path.with_name(self.log_path.name + ".1"), self.log_path):
            with contextlib.suppress(OSError):
                for line in path.read_text("utf-8").splitlines():
                    with contextlib.suppress(ValueError):
                        entries.append(json.loads(line))
        return entries

    def clear_log(self) -> None:
        for path in (self.log_path, self.log_path.with_name(self.log_path.name + ".1")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.event("SecurityLogWasCleared")

    # -- background ---------------------------------------------------------------------------------

    async def run(self) -> None:
        undo = self._install_redaction()
        # a restart of the network side alone is not a startup of the device, nor is a version switch
        if not self._svc.boot_resumed and not self._svc.startup_reported:
            self.event("StartupOfTheDevice", f"firmware {self._svc.config.station.firmware_version}")
        try:
            await self._watch_link()  # ResetOrReboot: queued by the service's request_restart
        finally:
            undo()
            for task in list(self._tasks):
                task.cancel()

    async def _watch_link(self) -> None:
        loop = asyncio.get_running_loop()
        link, failures, bad_frames, session = None, 0, 0, None
        period = WATCH_PERIOD_S
        while True:
            await asyncio.sleep(period)
            if self._svc.link is not link:  # a redial made a new Link: its counters start at 0
                link, failures = self._svc.link, 0
            if link is self._stale_link:
                continue
            if link.state is LinkState.CONNECTED and link.session is not None:
                self._connected()
                if link.session is not session:
                    session, bad_frames = link.session, 0
                if session.stats.bad_frames > bad_frames:
                    bad_frames = session.stats.bad_frames
                    if loop.time() - self._last_invalid_messages >= INVALID_MESSAGES_EVERY_S:
                        self._last_invalid_messages = loop.time()
                        self.event("InvalidMessages", f"{bad_frames} malformed frame(s) from the CSMS")
            while link.counters.failures > failures and self._svc.link is link:
                failures += 1
                await self._dial_failed(link.last_error)
            steady = link.state is LinkState.CONNECTED and not self.in_trial
            period = WATCH_STEADY_S if steady else WATCH_PERIOD_S

    def _connected(self) -> None:
        self._last_failure_kind = None
        if self.in_trial:
            log.info("connected with security profile %d: the new settings are confirmed", self.active.profile)
            self.confirmed = self.active
            self._save_confirmed(self.confirmed)
        self._trial_failures = 0

    async def _dial_failed(self, description: str | None) -> None:
        kind = classify_dial_failure(description)
        if kind is not None and kind != self._last_failure_kind:  # once per streak, not per redial
            self._last_failure_kind = kind
            log.error("security: %s (%s)", kind, description)
            self.event(kind, description)
        if self.in_trial:
            self._trial_failures += 1
            if self._trial_failures >= FALLBACK_AFTER_FAILURES:
                await self._fall_back()
