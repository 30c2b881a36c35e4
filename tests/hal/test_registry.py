from __future__ import annotations

import pytest

from hal import DeviceError
from hal.registry import available_drivers, load_driver


def test_unknown_driver_is_a_clear_error() -> None:
    with pytest.raises(DeviceError, match="unknown driver 'flux-capacitor'"):
        load_driver("flux-capacitor")


def test_core_drivers_are_registered() -> None:
    names = available_drivers()
    for expected in ("pilot-board-serial", "modbus-meter", "rdm6300", "console-display"):
        assert expected in names


def test_missing_optional_dependency_names_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    class BrokenEntryPoint:
        name = "broken"

        def load(self) -> object:
            raise ModuleNotFoundError("No module named 'unobtainium'", name="unobtainium")

    monkeypatch.setattr("hal.registry.entry_points", lambda group: [BrokenEntryPoint()])
    with pytest.raises(DeviceError, match="driver 'broken' needs the Python module 'unobtainium'"):
        load_driver("broken")
    assert metadata is not None
