"""Value types shared by drivers and the agent. All frozen; all cheap to compare."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    PILOT = "pilot"
    POWER_SWITCH = "power_switch"
    METER = "meter"
    LOCK = "lock"
    TOKEN_READER = "token_reader"
    DISPLAY = "display"
    SITE_METER = "site_meter"
    PHASE_SWITCH = "phase_switch"


class CpState(StrEnum):
    """Control-pilot state as seen by the EVSE (IEC 61851-1 Annex A).

    The digit says whether the EVSE's PWM is on: 1 = steady +12 V source (X1), 2 = PWM.
    """

    A = "A"
    B1 = "B1"
    B2 = "B2"
    C1 = "C1"
    C2 = "C2"
    D1 = "D1"
    D2 = "D2"
    E = "E"
    F = "F"

    @property
    def letter(self) -> str:
        return self.value[0]

    @property
    def pwm(self) -> bool:
        return self.value.endswith("2")

    @property
    def ev_connected(self) -> bool:
        return self.letter in "BCD"

    @property
    def requests_energy(self) -> bool:
        return self.letter in "CD"


class Fault(StrEnum):
    """Hardware and communication faults. The agent maps each to an OCPP errorCode."""

    RCD = "rcd"
    GROUND = "ground"
    DIODE = "diode"
    OVERTEMP = "overtemp"
    OVERCURRENT = "overcurrent"
    UNDERVOLTAGE = "undervoltage"
    OVERVOLTAGE = "overvoltage"
    WELD = "weld"
    LOCK = "lock"
    VENTILATION = "ventilation"
    METER_SILENT = "meter-silent"
    METER_IMPLAUSIBLE = "meter-implausible"
    BOARD_SILENT = "board-silent"
    READER_SILENT = "reader-silent"
    INTERNAL = "internal"
    SITE_METER = "site-meter"  # the grid connection point's meter is silent or implausible (station-level)


@dataclass(frozen=True, slots=True)
class PilotStateChanged:
    state: CpState


@dataclass(frozen=True, slots=True)
class ProximityChanged:
    """PP-PE resistance and the cable rating derived from it (None: no cable / not applicable)."""

    resistance_ohm: float | None
    ampacity_a: float | None


@dataclass(frozen=True, slots=True)
class RelayFeedback:
    """Mirror-contact reading of the contactor."""

    closed: bool


@dataclass(frozen=True, slots=True)
class LockFeedback:
    locked: bool


@dataclass(frozen=True, slots=True)
class FaultFlagsChanged:
    """The set of faults a board reports as active right now (flags from its MCU)."""

    active: frozenset[Fault]


@dataclass(frozen=True, slots=True)
class DeviceFaultChanged:
    """A device-level condition (communication lost, implausible data) started or ended."""

    fault: Fault
    active: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class MeterSample:
    """One consistent reading of a meter. ``timestamp`` is when the meter answered (UTC epoch s)."""

    energy_import_wh: float
    power_w: float
    voltage_v: tuple[float | None, float | None, float | None] = (None, None, None)
    current_a: tuple[float | None, float | None, float | None] = (None, None, None)
    timestamp: float = 0.0
    signed_data: str | None = None
    soc_percent: float | None = None


@dataclass(frozen=True, slots=True)
class GridSample:
    """One reading of the site (grid connection point) meter, per phase L1, L2, L3.

    Signed: positive = import from the grid, negative = export. ``timestamp`` is when the meter
    answered (UTC epoch s).
    """

    current_a: tuple[float, float, float]
    power_w: tuple[float, float, float]
    timestamp: float


@dataclass(frozen=True, slots=True)
class IdToken:
    """An identifier presented at the reader. ``uid`` is upper-case hex or the reader's native text."""

    uid: str
    kind: str = "ISO14443"


HalEvent = (
    PilotStateChanged
    | ProximityChanged
    | RelayFeedback
    | LockFeedback
    | FaultFlagsChanged
    | DeviceFaultChanged
    | MeterSample
)


@dataclass(frozen=True, slots=True)
class DeviceFault:
    fault: Fault
    detail: str = ""


class ScreenState(StrEnum):
    IDLE = "idle"
    AUTHORIZING = "authorizing"
    CHARGING = "charging"
    PAUSED = "paused"
    FINISHED = "finished"
    FAULT = "fault"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class Screen:
    """What the driver of the car should see. The display driver decides the layout."""

    connector_id: int
    state: ScreenState
    power_w: float = 0.0
    energy_wh: float = 0.0
    duration_s: float = 0.0
    message: str = ""
    fault_code: str = ""
    support_contact: str = ""
    extra: tuple[tuple[str, str], ...] = field(default_factory=tuple)
