"""OCPP 2.0.1 authorization (C01-C16) for the station's token decisions.

Online: AuthCtrlr.LocalPreAuthorize lets an Accepted local-list / cache entry start at once; otherwise an
AuthorizeRequest asks the CSMS and its idTokenInfo goes into the Authorization Cache (AuthCacheCtrlr.Enabled)
with expiry cacheExpiryDateTime, else now + AuthCacheCtrlr.LifeTime. Offline (or no answer):
AuthCtrlr.LocalAuthorizeOffline consults the local list (the authority for its ids), then the cache;
an id known to neither is accepted only with AuthCtrlr.OfflineTxForUnknownIdEnabled (C15).
AuthCtrlr.Enabled false accepts every token (C02-like free vend, reported as type NoAuthorization).

Stopping (C01/C09/C16): the token that started it, any token of the same groupIdToken (C09), or a token
whose group is AuthCtrlr.MasterPassGroupId (C16, stoppedReason MasterPass; such a token never starts a
transaction).

The cache and local list are the version-neutral stores of ``agent.authcache`` (status strings kept as
given, so a 2.0.1 status such as Unknown or NotAtThisTime reads as not accepted under either version);
the groupIdToken is stored in their parent column.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from ocpp.v201 import call

from agent.authcache import AuthorizationCache, IdTagInfo, LocalAuthList
from agent.authorize import AuthDecision
from agent.sessions import Session

log = logging.getLogger("cpagent.ocpp.v201.authorization")

STATUSES = frozenset({"Accepted", "Blocked", "ConcurrentTx", "Expired", "Invalid", "NoCredit",
                      "NotAllowedTypeEVSE", "NotAtThisLocation", "NotAtThisTime", "Unknown"})
READER_TYPE = "ISO14443"  # what the station's RFID reader reads
ID_TOKEN_TYPES = frozenset(
    {"Central", "eMAID", "ISO14443", "ISO15693", "KeyCode", "Local", "MacAddress", "NoAuthorization"}
)


@dataclass(frozen=True)
class IdToken:
    id_token: str
    type: str = "ISO14443"

    def __post_init__(self) -> None:
        if self.type not in ID_TOKEN_TYPES:
            raise ValueError(f"idToken type {self.type!r} is not an IdTokenEnumType")
        if not isinstance(self.id_token, str) or len(self.id_token) > 36:
            raise ValueError("idToken is not a string of at most 36 characters")

    def to_ocpp(self) -> dict[str, str]:
        return {"idToken": self.id_token, "type": self.type}

    @classmethod
    def from_ocpp(cls, value: Mapping[str, Any]) -> IdToken:
        """From an IdTokenType object, wire form (``idToken``) or the library's (``id_token``)."""
        if not isinstance(value, Mapping):
            raise ValueError(f"idToken is not an object: {type(value).__name__}")
        token = value.get("idToken", value.get("id_token"))
        return cls(str(token) if token is not None else "", str(value.get("type", "")))

    def same(self, other: IdToken | None) -> bool:
        """idTokens compare case-insensitively (IdToken is a CiString36 / identifier string)."""
        return other is not None and other.id_token.upper() == self.id_token.upper()




class Variables(Protocol):
    """The part of the device model this module reads."""

    def boolean(self, component: str, variable: str, *, evse: int | None = None,
                instance: str | None = None) -> bool: ...

    def integer(self, component: str, variable: str, *, evse: int | None = None,
                instance: str | None = None) -> int: ...

    def text(self, component: str, variable: str, *, evse: int | None = None,
             instance: str | None = None) -> str: ...


def id_token_info(info: Any, now_wall: float, lifetime_s: float | None) -> IdTagInfo:
    """An idTokenInfo (wire or library form) -> the cache's record: status, expiry (cacheExpiryDateTime,
    else ``now + lifetime_s``), groupIdToken. ValueError names the unreadable field."""
    if not isinstance(info, Mapping):
        raise ValueError(f"idTokenInfo is not an object: {type(info).__name__}")
    status = info.get("status")
    if status not in STATUSES:
        raise ValueError(f"idTokenInfo status {status!r} is not an AuthorizationStatusEnumType")
    expiry_text = info.get("cacheExpiryDateTime", info.get("cache_expiry_date_time"))
    expiry: float | None = None
    if expiry_text is not None:
        try:
            parsed = datetime.fromisoformat(str(expiry_text).replace("Z", "+00:00"))
            expiry = parsed.timestamp()
        except (ValueError, OverflowError) as exc:
            raise ValueError(f"idTokenInfo cacheExpiryDateTime {str(expiry_text)[:40]!r} unreadable: {exc}") from None
    elif lifetime_s is not None:
        expiry = now_wall + lifetime_s
    group = info.get("groupIdToken", info.get("group_id_token"))
    parent = None
    if group is not None:
        parent = IdToken.from_ocpp(group).id_token
    return IdTagInfo(str(status), expiry, parent)


def decision(info: IdTagInfo) -> AuthDecision:
    return AuthDecision(info.accepted, info.status, info.parent_id_tag)


class Authorizer201:
    """The station's token authority under OCPP 2.0.1 (``StationPort.register_authority``)."""

    def __init__(
        self,
        variables: Variables,
        local_list: LocalAuthList,
        cache: AuthorizationCache,
        *,
        online: Callable[[], bool],
        request: Callable[[Any], Awaitable[Any]],
        wall: Callable[[], float],
    ) -> None:
        self._vars = variables
        self._local_list = local_list
        self._cache = cache
        self._online = online
        self._request = request
        self._wall = wall
        self._groups: dict[str, str | None] = {}  # idToken -> groupIdToken learnt from any answer
        self.types: dict[str, str] = {}  # idToken -> its IdTokenEnumType, when not the reader's
        # Called with (idToken, idTokenInfo as received) for every answer that carries one (pricing.py: the
        # personalMessage of I01); a listener's failure is logged and never changes the decision.
        self.info_listeners: list[Callable[[str, Any], None]] = []

    def _flag(self, component: str, variable: str, default: bool) -> bool:
        try:
            return self._vars.boolean(component, variable)
        except Exception:
            return default

    def token(self, id_tag: str) -> IdToken:
        """The IdToken for an id the station knows as a string (the reader's type unless told otherwise)."""
        return IdToken(id_tag, self.types.get(id_tag.upper(), READER_TYPE))

    def learn(self, id_tag: str, info: Any) -> IdTagInfo | None:
        """An idTokenInfo from any CSMS answer (Authorize, TransactionEvent): cache it; None if unusable."""
        for listener in self.info_listeners:
            try:
                listener(id_tag, info)
            except Exception:
                log.exception("idTokenInfo listener failed")
        try:
            lifetime = float(self._vars.integer("AuthCacheCtrlr", "LifeTime"))
        except Exception:
            lifetime = None
        try:
            record = id_token_info(info, self._wall(), lifetime)
        except ValueError as exc:
            log.warning("idTokenInfo ignored: %s", exc)
            return None
        if record.parent_id_tag is not None or id_tag.upper() not in self._groups:
            self._groups[id_tag.upper()] = record.parent_id_tag
        if self._flag("AuthCacheCtrlr", "Enabled", True):
            try:
                self._cache.update(id_tag, record)
            except Exception:
                log.exception("the authorization cache could not be updated")
        return record

    def _local(self, id_tag: str) -> IdTagInfo | None:
        if not self._flag("LocalAuthListCtrlr", "Enabled", True):
            return None
        return self._local_list.lookup(id_tag)

    def _cached(self, id_tag: str) -> IdTagInfo | None:
        if not self._flag("AuthCacheCtrlr", "Enabled", True):
            return None
        return self._cache.lookup(id_tag)

    def _master_pass(self, group: str | None) -> bool:
        try:
            master = self._vars.text("AuthCtrlr", "MasterPassGroupId")
        except Exception:
            master = ""
        return bool(master) and group is not None and group.upper() == master.upper()

    async def authorize(self, id_tag: str) -> AuthDecision:
        """May ``id_tag`` start a transaction?"""
        if not self._flag("AuthCtrlr", "Enabled", True):
            return AuthDecision(True)
        answer = await self._decide(id_tag)
        if answer.accepted and self._master_pass(answer.parent_id_tag):
            log.info("a master pass token does not start a transaction (C16)")
            return AuthDecision(False, "Invalid", answer.parent_id_tag)
        return answer

    async def _decide(self, id_tag: str) -> AuthDecision:
        if self._flag("AuthCtrlr", "DisableRemoteAuthorization", False):
            # No AuthorizeRequest at all: the local list and the cache decide, an id they lack is refused
            # (AuthCtrlr.DisableRemoteAuthorization, TC_E_52_CS).
            known = self._local(id_tag) or self._cached(id_tag)
            return decision(known) if known is not None else AuthDecision(False, "Invalid")
        if self._online():
            if self._flag("AuthCtrlr", "LocalPreAuthorize", False):
                local = self._local(id_tag)  # the list has precedence over the cache (C14, D01)
                known = local or self._cached(id_tag)
                # A known id that is not Accepted is asked of the CSMS unless its store's DisablePostAuthorize.
                store = "LocalAuthListCtrlr" if local is not None else "AuthCacheCtrlr"
                if known is not None and (known.accepted or self._flag(store, "DisablePostAuthorize", False)):
                    return decision(known)
            try:
                conf = await self._request(call.Authorize(id_token=self.token(id_tag).to_ocpp()))
            except Exception as exc:  # no answer, CALLERROR, connection lost: decide offline
                log.info("Authorize failed (%s); deciding offline", type(exc).__name__)
            else:
                info = getattr(conf, "id_token_info", None)
                record = self.learn(id_tag, info) if info is not None else None
                if record is not None:
                    return decision(record)
        return self._offline(id_tag)

    def _offline(self, id_tag: str) -> AuthDecision:
        if self._flag("AuthCtrlr", "LocalAuthorizeOffline", True):
            local = self._local(id_tag)
            if local is not None:
                return decision(local)  # the list is the authority for its ids
            cached = self._cached(id_tag)
            if cached is not None:
                return decision(cached)
        if self._flag("AuthCtrlr", "OfflineTxForUnknownIdEnabled", False):
            log.info("offline: unknown idToken allowed by OfflineTxForUnknownIdEnabled")
            return AuthDecision(True, "Accepted")
        return AuthDecision(False, "Invalid")

    def group_of(self, id_tag: str) -> str | None:
        local = self._local(id_tag)
        if local is not None and local.parent_id_tag is not None:
            return local.parent_id_tag
        known = self._groups.get(id_tag.upper())
        if known is not None:
            return known
        cached = self._cached(id_tag)
        return cached.parent_id_tag if cached is not None else None

    async def may_stop(self, session: Session, id_tag: str) -> bool:
        """Another token stops ``session`` if it shares the session token's groupIdToken (C09) or belongs
        to the MasterPassGroupId (C16)."""
        answer = await self._decide(id_tag)
        if not answer.accepted:
            return False
        group = answer.parent_id_tag or self.group_of(id_tag)
        if self._master_pass(group):
            return True
        own = self.group_of(session.id_tag)
        return own is not None and group is not None and own.upper() == group.upper()

    def is_master_pass(self, id_tag: str) -> bool:
        return self._master_pass(self.group_of(id_tag))
