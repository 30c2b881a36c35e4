"""How a connector decides whether an idTag may charge. The station core ships a local allow-list;
the OCPP adapter provides an authorizer that asks the CSMS, the cache and the local list."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class AuthDecision:
    accepted: bool
    status: str = "Accepted"  # OCPP AuthorizationStatus vocabulary
    parent_id_tag: str | None = None


class Authorizer(Protocol):
    async def authorize(self, id_tag: str) -> AuthDecision: ...


class AllowList:
    def __init__(self, tags: Iterable[str]) -> None:
        self._tags = {t.upper() for t in tags}

    async def authorize(self, id_tag: str) -> AuthDecision:
        if id_tag.upper() in self._tags:
            return AuthDecision(True)
        return AuthDecision(False, "Invalid")
