"""A device is one physical part on one bus. It may provide several roles (a pilot board is
ControlPilot, PowerSwitch and ConnectorLock at once)."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

from hal.types import HalEvent, Role

Listener = Callable[[HalEvent], None]


class DeviceError(Exception):
    """A device could not be set up (bad settings, missing optional dependency)."""


class Device(abc.ABC):
    """Base of every driver. ``run()`` owns the transport for the device's whole life.

    Events are delivered synchronously to listeners from inside the device's own task, so the
    safety path (board event -> agent decision -> board command) is one direct call chain.

    A device with no transport of its own to serve (``needs_task = False``: cpsim fleet's in-process devices,
    driven by a shared ticker) is started with ``start()`` and ended with ``stop()`` instead of a task running
    ``run()``; every bus driver keeps ``needs_task = True``.
    """

    needs_task: ClassVar[bool] = True

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

    def start(self) -> None:
        """(``needs_task = False`` only) what ``run()`` does before it waits: set up, first reports."""
        raise NotImplementedError(f"device {self.name!r} runs in a task of its own (needs_task)")

    def stop(self) -> None:
        """(``needs_task = False`` only) what ``run()`` does when it is cancelled."""
        raise NotImplementedError(f"device {self.name!r} runs in a task of its own (needs_task)")

    def role(self, role: Role) -> Any:
        if role not in self.roles:
            raise DeviceError(f"device {self.name!r} does not provide role {role.value!r}")
        return self

    def counters(self) -> Mapping[str, int]:
        """Frame/error counters for diagnostics."""
        return {}


class DeviceFactory(Protocol):
    def __call__(self, name: str, settings: Mapping[str, Any]) -> Device: ...
