"""Hardware abstraction: one small typed interface per hardware role, plus frozen value types.

Nothing in here does I/O. Drivers (``drivers/``) implement these roles over real buses; the agent
(``agent/``) only ever sees these types.
"""

from hal.device import Device, DeviceError, DeviceFactory, Listener
from hal.roles import (
    ConnectorLock,
    ControlPilot,
    Display,
    Meter,
    PowerSwitch,
    SiteMeter,
    TokenReader,
)
from hal.types import (
    CpState,
    DeviceFault,
    DeviceFaultChanged,
    Fault,
    FaultFlagsChanged,
    GridSample,
    HalEvent,
    IdToken,
    LockFeedback,
    MeterSample,
    PilotStateChanged,
    ProximityChanged,
    RelayFeedback,
    Role,
    Screen,
    ScreenState,
)

__all__ = [
    "ConnectorLock",
    "ControlPilot",
    "CpState",
    "Device",
    "DeviceError",
    "DeviceFactory",
    "DeviceFault",
    "DeviceFaultChanged",
    "Display",
    "Fault",
    "FaultFlagsChanged",
    "GridSample",
    "HalEvent",
    "IdToken",
    "Listener",
    "LockFeedback",
    "Meter",
    "MeterSample",
    "PilotStateChanged",
    "PowerSwitch",
    "ProximityChanged",
    "RelayFeedback",
    "Role",
    "Screen",
    "ScreenState",
    "SiteMeter",
    "TokenReader",
]
