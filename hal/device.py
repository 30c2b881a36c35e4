"""A device is one physical part on one bus. It may provide several roles (a pilot board is
ControlPilot, PowerSwitch and ConnectorLock at once)."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from hal.types import HalEvent, Role

Listener = Callable[[HalEvent], None]


class DeviceError(Exception):
    """A device could not be set up (bad settings, missing optional dependency)."""


class Device(abc.ABC):
    """Base of every driver. ``run()`` owns the transport for the device's whole life.

    Events are delivered synchronously to listeners from inside the device's own task, so the
    safety path (board event -> agent decision -> board command) is one direct call chain.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def emit(self, event: HalEvent) -> None:
        for listener in list(self._listeners):
            listener(event)

    @property
    @abc.abstractmethod
    def roles(self) -> frozenset[Role]:
        """The roles this device provides."""

    @abc.abstractmethod
    async def run(self) -> None:
        """Open the transport and serve the device until cancelled. Must not return early on bad
        input from the bus; communication loss is reported as a DeviceFaultChanged event."""

    def role(self, role: Role) -> Any:
        if role not in self.roles:
            raise DeviceError(f"device {self.name!r} does not provide role {role.value!r}")
        return self

    def counters(self) -> Mapping[str, int]:
        """Frame/error counters for diagnostics."""
        return {}


class DeviceFactory(Protocol):
    def __call__(self, name: str, settings: Mapping[str, Any]) -> Device: ...
