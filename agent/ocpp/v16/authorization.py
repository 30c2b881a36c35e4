"""The OCPP 1.6 authorizer the station uses once OCPP is up (section 3.5 and 5.2).

Online: LocalPreAuthorize lets a valid local-list / cache entry start at once; otherwise Authorize.req
asks the CSMS and its idTagInfo updates the cache. Offline (or when the CSMS does not answer):
LocalAuthorizeOffline consults the local list (authoritative for its ids) then the cache, and
AllowOfflineTxForUnknownId decides for ids known to neither.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ocpp.v16 import call

from agent.authcache import AuthorizationCache, IdTagInfo, LocalAuthList
from agent.authorize import AuthDecision
from agent.ocpp.v16.configuration import ConfigurationStore
from agent.ocpp.v16.rpc import CallErrorReceived, CallTimeout, ConnectionLost, InvalidPayload
from agent.sessions import Session

log = logging.getLogger("cpagent.ocpp.v16.authorization")

# Sends one CALL if the CSMS is reachable and booted; None when offline.
Requester = Callable[[Any], Awaitable[Any]]
OnlineCheck = Callable[[], bool]


def decision(info: IdTagInfo) -> AuthDecision:
    return AuthDecision(info.accepted, info.status, info.parent_id_tag)


class OcppAuthorizer:
    def __init__(
        self,
        store: ConfigurationStore,
        local_list: LocalAuthList,
        cache: AuthorizationCache,
        *,
        online: OnlineCheck,
        request: Requester,
    ) -> None:
        self._store = store
        self._local_list = local_list
        self._cache = cache
        self._online = online
        self._request = request
        # idTag -> parentIdTag learnt from any idTagInfo, to allow a stop by a sibling tag (OCTT 069).
        self._parents: dict[str, str | None] = {}

    def _flag(self, key: str, default: bool) -> bool:
        return self._store.get_bool(key) if self._store.spec(key) is not None else default

    def learn(self, id_tag: str, info: IdTagInfo) -> None:
        """Remember an idTagInfo from any CSMS answer (Authorize / Start / Stop .conf). parentIdTag is
        optional: an answer without it keeps the parent an earlier answer gave (here and in the cache)."""
        self._remember_parent(id_tag, info.parent_id_tag)
        if self._flag("AuthorizationCacheEnabled", True):
            self._cache.update(id_tag, info)

    def _remember_parent(self, id_tag: str, parent: str | None) -> None:
        key = id_tag.upper()
        if parent is not None or key not in self._parents:
            self._parents[key] = parent

    def _local(self, id_tag: str) -> IdTagInfo | None:
        if not self._flag("LocalAuthListEnabled", True):
            return None
        return self._local_list.lookup(id_tag)

    def _cached(self, id_tag: str) -> IdTagInfo | None:
        if not self._flag("AuthorizationCacheEnabled", True):
            return None
        return self._cache.lookup(id_tag)

    async def authorize(self, id_tag: str) -> AuthDecision:
        if self._online():
            if self._flag("LocalPreAuthorize", False):
                known = self._local(id_tag) or self._cached(id_tag)
                if known is not None and known.accepted:
                    self._remember_parent(id_tag, known.parent_id_tag)
                    return decision(known)
            try:
                conf = await self._request(call.Authorize(id_tag=id_tag))
            except (ConnectionLost, CallTimeout) as exc:
                log.info("Authorize for an idTag failed (%s); deciding offline", exc)
            except (CallErrorReceived, InvalidPayload) as exc:
                log.warning("Authorize answered with an error (%s); deciding offline", exc)
            else:
                try:
                    info = IdTagInfo.from_ocpp(conf.id_tag_info)
                except ValueError as exc:
                    log.warning("Authorize.conf with an unusable idTagInfo (%s); deciding offline", exc)
                else:
                    self.learn(id_tag, info)
                    return decision(info)
        return self._offline(id_tag)

    def _offline(self, id_tag: str) -> AuthDecision:
        if self._flag("LocalAuthorizeOffline", True):
            local = self._local(id_tag)
            if local is not None:
                return decision(local)  # the list is the authority for its ids: not Accepted -> refused
            cached = self._cached(id_tag)
            if cached is not None:
                self._remember_parent(id_tag, cached.parent_id_tag)
                return decision(cached)
        if self._flag("AllowOfflineTxForUnknownId", False):
            log.info("offline: unknown idTag allowed by AllowOfflineTxForUnknownId")
            return AuthDecision(True)
        return AuthDecision(False, "Invalid")

    def _known_parent(self, id_tag: str) -> tuple[bool, str | None]:
        """(whether the idTag is known here, its parentIdTag): local list (the authority for its ids), then
        what CSMS answers gave (this run, then the persisted cache)."""
        local = self._local(id_tag)
        if local is not None:
            return True, local.parent_id_tag
        key = id_tag.upper()
        if self._parents.get(key) is not None:
            return True, self._parents[key]
        cached = self._cached(id_tag)
        if cached is not None:
            return True, cached.parent_id_tag
        return key in self._parents, None

    def parent_of(self, id_tag: str) -> str | None:
        return self._known_parent(id_tag)[1]

    def parent_known(self, id_tag: str) -> bool:
        """Is the idTag in the local list or cache, or answered by the CSMS since the start? If not, its
        parentIdTag can only be learnt with an Authorize.req (1.6 section 5.13)."""
        return self._known_parent(id_tag)[0]

    async def learn_parent(self, id_tag: str) -> str | None:
        """The idTag's parentIdTag, asking the CSMS with an Authorize.req when it is not known here (1.6
        section 5.13: a reservation's parentIdTag for an incoming idTag)."""
        if not self.parent_known(id_tag) and self._online():
            await self.authorize(id_tag)
        return self.parent_of(id_tag)

    async def may_stop(self, session: Session, id_tag: str) -> bool:
        """A different tag may stop a transaction if it shares the session tag's parentIdTag."""
        parent = self.parent_of(session.id_tag)
        if parent is None:
            return False
        answer = await self.authorize(id_tag)
        return answer.accepted and answer.parent_id_tag is not None and answer.parent_id_tag.upper() == parent.upper()
