"""OCPP 2.0.1 Local Authorization List (D01 SendLocalList, D02 GetLocalListVersion).

The list is the version-neutral store of ``agent.authcache.LocalAuthList`` (the same SQLite table and
version as 1.6, so it survives restarts and a change of protocol version); the 2.0.1 authorizer
(authorization.py) reads it: with LocalAuthListCtrlr.Enabled it is the authority for its ids offline
(before the Authorization Cache) and, with AuthCtrlr.LocalPreAuthorize, lets an Accepted id start online at
once; a listed id that is not Accepted is asked of the CSMS unless LocalAuthListCtrlr.DisablePostAuthorize.

An entry is an idToken with an idTokenInfo: its status, cacheExpiryDateTime (the entry reads Expired after
it) and groupIdToken (kept in the parent column, used for reservations and stopping by group). SendLocalList:

- updateType Full replaces the list (an absent or empty localAuthorizationList empties it); Differential
  adds/replaces the entries with an idTokenInfo and removes those without one, and needs a versionNumber
  newer than the list's (else VersionMismatch);
- versionNumber must be > 0 (0 is what GetLocalListVersion answers for "no list");
- the request must respect LocalAuthListCtrlr.ItemsPerMessage and BytesPerMessage, the resulting list
  LocalAuthListCtrlr.Entries' maxLimit, and list each idToken once with a readable idTokenInfo; any of those
  failing answers Failed with a statusInfo naming the reason, and nothing changes (one transaction);
- LocalAuthListCtrlr.Enabled false answers Failed (the list is not used).

GetLocalListVersion answers the version, 0 while the list is empty or disabled. Every request's cost is
bounded by ItemsPerMessage (at most 1000 entries) and the 36-character idTokens.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ocpp.charge_point import snake_to_camel_case

from agent.authcache import IdTagInfo, LocalAuthList
from agent.db import StorageError
from agent.ocpp.v201.authorization import IdToken, id_token_info

if TYPE_CHECKING:
    from agent.ocpp.v201.service import OcppService

log = logging.getLogger("cpagent.ocpp.v201.local_list")

MAX_ENTRIES = 1000  # LocalAuthListCtrlr.Entries maxLimit (device_model.py)
CONTROLLER = "LocalAuthListCtrlr"


class InvalidList(ValueError):
    """A SendLocalListRequest whose entries cannot be used; the message is the statusInfo's additionalInfo."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def parse_entries(items: list[Mapping[str, Any]], *, full: bool, now_wall: float) -> dict[str, IdTagInfo | None]:
    """localAuthorizationList (wire form, camelCase AuthorizationData) -> idToken -> its record; None removes
    the idToken (Differential without idTokenInfo). A Full entry without idTokenInfo adds nothing. Pure."""
    out: dict[str, IdTagInfo | None] = {}
    seen: set[str] = set()
    for n, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise InvalidList("InvalidValue", f"entry {n} is not an object")
        try:
            token = IdToken.from_ocpp(item.get("idToken"))  # type: ignore[arg-type]
        except ValueError as exc:
            raise InvalidList("InvalidValue", f"entry {n}: {exc}") from None
        if not token.id_token:
            raise InvalidList("InvalidValue", f"entry {n}: empty idToken")
        key = token.id_token.upper()
        if key in seen:
            raise InvalidList("DuplicateIdToken", f"idToken listed twice (entry {n})")
        seen.add(key)
        info = item.get("idTokenInfo")
        if info is None:
            if not full:
                out[token.id_token] = None
            continue
        try:
            out[token.id_token] = id_token_info(info, now_wall, None)
        except ValueError as exc:
            raise InvalidList("InvalidValue", f"entry {n}: {exc}") from None
    return out


def _failed(reason: str, detail: str) -> dict[str, Any]:
    return {"status": "Failed", "statusInfo": {"reasonCode": reason[:20], "additionalInfo": detail[:512]}}


class LocalAuthListManagement:
    """SendLocalList / GetLocalListVersion on the shared local list; binds LocalAuthListCtrlr.Entries."""

    def __init__(self, service: OcppService) -> None:
        self._svc = service
        self.list = LocalAuthList(service.db, service.clock, max_length=self._max_entries())
        service.variables.bind("local_list_entries", lambda: len(self.list))

    def _max_entries(self) -> int:
        spec = self._svc.variables.spec(CONTROLLER, "Entries")
        limit = spec.max if spec is not None and spec.max is not None else MAX_ENTRIES
        return int(limit)

    def _setting(self, variable: str, default: int) -> int:
        try:
            return int(self._svc.variables.integer(CONTROLLER, variable))
        except Exception:
            return default

    @property
    def enabled(self) -> bool:
        try:
            return bool(self._svc.variables.boolean(CONTROLLER, "Enabled"))
        except Exception:
            return True

    def version(self) -> int:
        return self.list.version() if self.enabled and len(self.list) else 0

    async def on_get_local_list_version(self, **_: Any) -> dict[str, Any]:
        return {"versionNumber": self.version()}

    async def on_send_local_list(
        self,
        version_number: int,
        update_type: str,
        local_authorization_list: list[dict[str, Any]] | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        if not self.enabled:
            return _failed("NotEnabled", "LocalAuthListCtrlr.Enabled is false")
        if not 0 < version_number < 2**63:
            return _failed("InvalidValue", "versionNumber must be greater than 0 (and a 64-bit integer)")
        # The RPC layer hands nested objects over in snake_case; work on the wire form.
        items: list[Mapping[str, Any]] = snake_to_camel_case(local_authorization_list or [])
        per_message = self._setting("ItemsPerMessage", 100)
        if len(items) > per_message:
            log.info("SendLocalList with %d entries refused: ItemsPerMessage is %d", len(items), per_message)
            return _failed("TooManyElements", f"{len(items)} entries, ItemsPerMessage is {per_message}")
        size = len(json.dumps(items, separators=(",", ":")))
        per_bytes = self._setting("BytesPerMessage", 65000)
        if size > per_bytes:
            log.info("SendLocalList of %d bytes refused: BytesPerMessage is %d", size, per_bytes)
            return _failed("TooLargeElement", f"list of {size} bytes, BytesPerMessage is {per_bytes}")
        full = update_type == "Full"
        try:
            entries = parse_entries(items, full=full, now_wall=self._svc.wall())
            status = self.list.update(version_number, entries, full=full)
        except InvalidList as exc:
            log.warning("SendLocalList refused: %s", exc)
            return _failed(exc.reason, str(exc))
        except StorageError as exc:
            log.error("SendLocalList could not be stored: %s", exc)
            return _failed("InternalError", "the list could not be stored")
        log.info("SendLocalList %s version %d (%d entries): %s", update_type, version_number, len(items), status)
        if status == "Failed":
            return _failed("TooManyElements", f"the list would exceed {self.list.max_length} entries")
        if status == "VersionMismatch":
            return {"status": status, "statusInfo": {"reasonCode": "VersionMismatch",
                                                     "additionalInfo": f"list version is {self.list.version()}"}}
        return {"status": status}
