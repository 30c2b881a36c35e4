"""Drivers are registered by name in the ``cpagent.drivers`` entry-point group and imported lazily,
only when a configuration names them."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import cast

from hal.device import DeviceError, DeviceFactory

GROUP = "cpagent.drivers"


def available_drivers() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=GROUP))


def load_driver(name: str) -> DeviceFactory:
    matches = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not matches:
        known = ", ".join(available_drivers()) or "none"
        raise DeviceError(f"unknown driver {name!r} (installed drivers: {known})")
    try:
        factory = matches[0].load()
    except ImportError as exc:
        missing = exc.name or str(exc)
        raise DeviceError(
            f"driver {name!r} needs the Python module {missing!r}, which is not installed"
        ) from exc
    return cast(DeviceFactory, factory)
