"""The fixed list of faults `cpsim ctl fault N NAME` can inject, each with the OCPP 1.6 errorCode the
agent must then report for the connector. README and tests read this table."""

from __future__ import annotations

FAULTS: dict[str, str] = {
    "rcd": "GroundFailure",
    "ground": "GroundFailure",
    "diode": "EVCommunicationError",
    "overtemp": "HighTemperature",
    "overcurrent": "OverCurrentFailure",
    "undervoltage": "UnderVoltage",
    "overvoltage": "OverVoltage",
    "weld": "PowerSwitchFailure",
    "lock": "ConnectorLockFailure",
    "meter-silent": "PowerMeterFailure",
    "board-silent": "EVCommunicationError",
    "reader-silent": "ReaderFailure",
}
