"""Every fault the station can raise, with the OCPP 1.6 errorCode it is reported as, a plain-words
explanation and the remedy a technician (or the driver, on the display) should try."""

from __future__ import annotations

from dataclasses import dataclass

from hal.types import Fault


@dataclass(frozen=True)
class FaultInfo:
    fault: Fault
    ocpp_error_code: str
    vendor_error_code: str
    explanation: str
    remedy: str
    driver_text: str


_TABLE = [
    FaultInfo(Fault.RCD, "GroundFailure", "RCD", "The residual-current device tripped: current leaked to earth.",
              "Unplug, inspect cable and vehicle inlet for damage or water; clear the fault once checked.",
              "Safety cut-off. Unplug your car and call support."),
    FaultInfo(Fault.GROUND, "GroundFailure", "CP_SHORT", "Control pilot shorted to earth (state E).",
              "Check the cable and the vehicle inlet for damage or moisture.",
              "Cable problem detected. Unplug and check the cable."),
    FaultInfo(Fault.DIODE, "EVCommunicationError", "DIODE", "The vehicle's pilot diode check failed.",
              "Try another cable or vehicle; if it persists, check the pilot circuit of the board.",
              "Cannot talk to your car. Unplug and plug in again."),
    FaultInfo(Fault.OVERTEMP, "HighTemperature", "OVERTEMP", "The board reports over-temperature.",
              "Let the charger cool down; check ventilation and fans.",
              "Charger too hot. Charging will resume when it cools down."),
    FaultInfo(Fault.OVERCURRENT, "OverCurrentFailure", "OVERCURRENT",
              "The vehicle drew more current than offered for too long.",
              "Check the vehicle's on-board charger; clear the fault to retry.",
              "Your car drew too much current. Unplug and try again."),
    FaultInfo(Fault.UNDERVOLTAGE, "UnderVoltage", "UNDERVOLTAGE", "Supply voltage below limits.",
              "Check the grid supply and the upstream breaker.",
              "Power supply problem. Please try again later."),
    FaultInfo(Fault.OVERVOLTAGE, "OverVoltage", "OVERVOLTAGE", "Supply voltage above limits.",
              "Check the grid supply.", "Power supply problem. Please try again later."),
    FaultInfo(Fault.WELD, "PowerSwitchFailure", "WELDED",
              "The contactor did not open when commanded (welded contacts).",
              "Isolate the charger at the breaker and replace the contactor before clearing.",
              "Charger out of order. Please use another charger."),
    FaultInfo(Fault.LOCK, "ConnectorLockFailure", "LOCK", "The connector lock did not reach its position.",
              "Check the lock actuator and that the plug is fully inserted.",
              "Plug not locked. Push the plug in fully."),
    FaultInfo(Fault.VENTILATION, "OtherError", "VentilationNotAvailable",
              "The vehicle requests ventilation (state D), which this site does not provide.",
              "Nothing to repair: this vehicle cannot charge here.",
              "Your car needs ventilation, not available here."),
    FaultInfo(Fault.METER_SILENT, "PowerMeterFailure", "METER_SILENT", "The energy meter stopped answering.",
              "Check the meter's bus wiring, address and supply.",
              "Meter problem. Please use another charger."),
    FaultInfo(Fault.METER_IMPLAUSIBLE, "PowerMeterFailure", "METER_IMPLAUSIBLE",
              "The energy meter reported an implausible value (energy went backwards).",
              "Check the meter; it may have been replaced or reset.",
              "Meter problem. Please use another charger."),
    FaultInfo(Fault.BOARD_SILENT, "EVCommunicationError", "BOARD_SILENT",
              "The control-pilot board stopped answering.", "Check the board's serial cable and power.",
              "Charger out of order. Please use another charger."),
    FaultInfo(Fault.READER_SILENT, "ReaderFailure", "READER_SILENT", "The card reader stopped answering.",
              "Check the reader's cable; charging by app still works.",
              "Card reader out of order. Start charging with the app."),
    FaultInfo(Fault.SITE_METER, "PowerMeterFailure", "SITE_METER",
              "The site (grid connection) meter is silent or implausible: every session runs at the failsafe current.",
              "Check the site meter's wiring, address and supply ([site] meter); charging goes on at the safe current.",
              "Reduced charging power: site meter problem."),
    FaultInfo(Fault.INTERNAL, "InternalError", "INTERNAL", "An internal software task failed repeatedly.",
              "See `cpctl events`; restart the service.", "Charger out of order. Please use another charger."),
]

FAULTS: dict[Fault, FaultInfo] = {info.fault: info for info in _TABLE}


def info(fault: Fault) -> FaultInfo:
    return FAULTS[fault]
