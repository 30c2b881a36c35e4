"""LocalAuthListManagement (OCPP 1.6 sections 3.5.3, 5.10, 5.15): GetLocalListVersion and SendLocalList.

The list itself lives in ``agent.authcache.LocalAuthList`` (SQLite, survives restarts); the authorizer
consults it offline (LocalAuthorizeOffline) and online with LocalPreAuthorize. Entries past their
expiryDate read as Expired and are refused.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ocpp.charge_point import snake_to_camel_case

from agent.authcache import IdTagInfo
from agent.db import StorageError

if TYPE_CHECKING:
    from agent.ocpp.v16.service import OcppService

log = logging.getLogger("cpagent.ocpp.v16.local_list")

NOT_SUPPORTED_VERSION = -1  # GetLocalListVersion answer while the local list is disabled


class InvalidList(ValueError):
    """A SendLocalList.req whose entries cannot be used (duplicates, unreadable idTagInfo)."""


def parse_entries(items: list[dict[str, Any]], *, full: bool) -> dict[str, IdTagInfo | None]:
    """localAuthorizationList (wire form, camelCase) -> idTag -> idTagInfo (None = remove, Differential only)."""
    out: dict[str, IdTagInfo | None] = {}
    seen: set[str] = set()
    for item in items:
        id_tag = str(item["idTag"])
        if id_tag.upper() in seen:
            raise InvalidList(f"idTag listed twice: {id_tag}")
        seen.add(id_tag.upper())
        info = item.get("idTagInfo")
        if info is None:
            if not full:
                out[id_tag] = None  # Differential without idTagInfo: remove the entry
            continue  # Full without idTagInfo: nothing to store
        try:
            out[id_tag] = IdTagInfo.from_ocpp(info)
        except (KeyError, ValueError, TypeError) as exc:
            raise InvalidList(f"unreadable idTagInfo for {id_tag}: {exc}") from exc
    return out


class LocalAuthListManagement:
    profile = "LocalAuthListManagement"

    def __init__(self, service: OcppService) -> None:
        self._svc = service
        self._store = service.store
        self._list = service.local_list
        self._list.max_length = self._store.get_int("LocalAuthListMaxLength")

    @property
    def _enabled(self) -> bool:
        return self._store.get_bool("LocalAuthListEnabled")

    async def on_get_local_list_version(self, **_: Any) -> dict[str, Any]:
        if not self._enabled:
            return {"listVersion": NOT_SUPPORTED_VERSION}
        # 0 stands for an empty list, whatever version the CSMS last sent with it.
        return {"listVersion": self._list.version() if len(self._list) else 0}

    async def on_send_local_list(
        self,
        list_version: int,
        update_type: str,
        local_authorization_list: list[dict[str, Any]] | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        if not self._enabled:
            return {"status": "NotSupported"}
        # The RPC layer hands nested objects over in snake_case; parse the wire form.
        items: list[dict[str, Any]] = snake_to_camel_case(local_authorization_list or [])
        limit = self._store.get_int("SendLocalListMaxLength")
        if len(items) > limit:
            log.info("SendLocalList with %d entries refused: SendLocalListMaxLength is %d", len(items), limit)
            return {"status": "Failed"}
        full = update_type == "Full"
        try:
            status = self._list.update(list_version, parse_entries(items, full=full), full=full)
        except InvalidList as exc:
            log.warning("SendLocalList refused: %s", exc)
            return {"status": "Failed"}
        except StorageError as exc:
            log.error("SendLocalList could not be stored: %s", exc)
            return {"status": "Failed"}
        log.info("SendLocalList %s version %d (%d entries): %s", update_type, list_version, len(items), status)
        return {"status": status}
