"""A display for boards without one (and for the simulator): each changed screen becomes one log line."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TextIO

from hal import Device, DeviceError, Display, Role, Screen

log = logging.getLogger("cpagent.display")


def format_screen(screen: Screen) -> str:
    parts = [f"connector {screen.connector_id}: {screen.state.value}"]
    if screen.power_w:
        parts.append(f"{screen.power_w / 1000:.1f} kW")
    if screen.energy_wh:
        parts.append(f"{screen.energy_wh / 1000:.2f} kWh")
    if screen.duration_s:
        total = int(screen.duration_s)
        parts.append(f"{total // 3600:d}:{total // 60 % 60:02d}:{total % 60:02d}")
    if screen.message:
        parts.append(repr(screen.message))
    if screen.fault_code:
        parts.append(f"fault {screen.fault_code}")
    if screen.support_contact:
        parts.append(f"support {screen.support_contact}")
    parts.extend(f"{key}={value}" for key, value in screen.extra)
    return " | ".join(parts)


class ConsoleDisplay(Device, Display):
    def __init__(self, name: str, stream: TextIO | None = None) -> None:
        super().__init__(name)
        self._stream = stream  # None: the "cpagent.display" logger
        self._screens: dict[int, Screen] = {}
        self._lines = 0

    @property
    def roles(self) -> frozenset[Role]:
        return frozenset({Role.DISPLAY})

    @property
    def screens(self) -> Mapping[int, Screen]:
        """The last screen shown per connector."""
        return MappingProxyType(self._screens)

    def show(self, screen: Screen) -> None:
        if self._screens.get(screen.connector_id) == screen:
            return  # the agent may repeat a screen; the reader of the log wants changes only
        self._screens[screen.connector_id] = screen
        self._lines += 1
        line = format_screen(screen)
        if self._stream is None:
            log.info("%s", line)
        else:
            print(line, file=self._stream, flush=True)

    def counters(self) -> Mapping[str, int]:
        return {"lines": self._lines}

    async def run(self) -> None:
        await asyncio.Event().wait()  # nothing to drive: show() writes at once


def create(name: str, settings: Mapping[str, Any]) -> ConsoleDisplay:
    unknown = sorted(set(settings) - {"stream", "driver"})
    if unknown:
        raise DeviceError(f"devices.{name}.{unknown[0]}: unknown setting (known: stream)")
    stream = settings.get("stream", "log")
    if stream not in ("log", "stdout"):
        raise DeviceError(f"devices.{name}.stream: expected 'log' or 'stdout', got {stream!r}")
    return ConsoleDisplay(name, stream=sys.stdout if stream == "stdout" else None)
