"""Feature profiles beyond Core. Each is one module with one class, listed here as "module:Class" and
imported when the service starts. A feature class:

    class Reservation:
        profile = "Reservation"             # enables its configuration keys and SupportedFeatureProfiles
        def __init__(self, service: OcppService) -> None: ...
        async def on_reserve_now(self, ...) -> dict: ...        # CS -> CP handlers, as in CoreHandlers
        async def after_reserve_now(self, ...) -> None: ...     # optional: runs once the .conf is sent
        async def run(self) -> None: ...                        # optional: a background task while online or not

Handlers of two features must not share an action name.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

FEATURES: tuple[str, ...] = (
    "agent.ocpp.v16.local_list:LocalAuthListManagement",
    "agent.ocpp.v16.reservation:Reservation",
    "agent.ocpp.v16.pricing:CaliforniaPricing",
    "agent.ocpp.v16.firmware:FirmwareManagement",
    "agent.ocpp.v16.trigger:RemoteTrigger",
    "agent.ocpp.v16.signed_firmware:SignedFirmware",
    "agent.ocpp.v16.security:Security",
    "agent.ocpp.v16.smart_charging:SmartCharging",
)


def load_classes(paths: Iterable[str]) -> list[type[Any]]:
    """The classes named "module:Class", imported now (2.0.1's feature list uses it too)."""
    classes: list[type[Any]] = []
    for path in paths:
        module, _, name = path.partition(":")
        classes.append(getattr(importlib.import_module(module), name))
    return classes


def load_feature_classes() -> list[type[Any]]:
    return load_classes(FEATURES)
