"""Checks for a driver's ``create(name, settings)``: each error names the key as ``devices.<name>.<key>``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hal.device import DeviceError


class DeviceSettings:
    def __init__(self, name: str, settings: Mapping[str, Any], known: tuple[str, ...]) -> None:
        """Rejects the first unknown key (in the order given) at once."""
        self.name = name
        self.settings = settings
        for k in settings:
            if k not in known:
                raise DeviceError(f"{self.key(k)}: unknown setting (known: {', '.join(known)})")

    def key(self, k: str) -> str:
        return f"devices.{self.name}.{k}"

    def serial_port(self) -> str:
        port = self.settings.get("port")
        if not isinstance(port, str) or not port.strip():
            raise DeviceError(f"{self.key('port')}: expected a serial device path or pyserial URL (required)")
        return port

    def text(self, k: str, default: str) -> str:
        value = self.settings.get(k, default)
        if not isinstance(value, str) or not value.strip():
            raise DeviceError(f"{self.key(k)}: expected a non-empty string, got {value!r}")
        return value

    def integer(self, k: str, default: int, low: int, high: int, *, noun: str = "an integer") -> int:
        value = self.settings.get(k, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise DeviceError(f"{self.key(k)}: expected {noun} from {low} to {high}, got {value!r}")
        return value

    def seconds(self, k: str, default: float, low: float, high: float) -> float:
        value = self.settings.get(k, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise DeviceError(f"{self.key(k)}: expected a number of seconds from {low} to {high}, got {value!r}")
        return float(value)
