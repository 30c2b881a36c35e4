"""A monitor on a real temperature (issue 14, N04/N07): the pilot board's temperature sensor (its telemetry
frames over the real serial driver on a pty) is the device model's TemperatureSensor.Temperature of the EVSE;
an UpperThreshold monitor fires when the board heats up (the simulated over-temperature: 85.0 degC) and
reports cleared when it cools down."""

from __future__ import annotations

import asyncio

from tests.agent.ocpp.v201.conftest import Octt201
from tests.agent.ocpp.v201.test_tc_n_monitoring import monitor_item, wait_event

SENSOR = {"name": "TemperatureSensor", "evse": {"id": 1}}


async def test_upper_threshold_on_the_board_temperature(octt: Octt201) -> None:
    await octt.start_agent()
    await octt.booted()

    async def temperature() -> str | None:
        got = await octt.send("GetVariables", {"getVariableData": [
            {"component": SENSOR, "variable": {"name": "Temperature"}}]})
        result = got["getVariableResult"][0]
        return result.get("attributeValue") if result["attributeStatus"] == "Accepted" else None

    readings: list[str | None] = []

    async def reads(value: str) -> bool:
        readings.append(await temperature())
        return readings[-1] == value

    for _ in range(50):  # the board's telemetry comes with its periodic status
        if await reads("25"):
            break
        await asyncio.sleep(0.1)
    assert readings[-1] == "25", readings
    answer = await octt.send("SetVariableMonitoring", {"setMonitoringData": [
        monitor_item(SENSOR, "Temperature", "UpperThreshold", 60, 2)]})
    assert answer["setMonitoringResult"][0]["status"] == "Accepted"
    monitor_id = answer["setMonitoringResult"][0]["id"]
    octt.ctl("fault", name="overtemp")
    hot = await wait_event(octt, "temperature above 60", variableMonitoringId=monitor_id)
    assert hot["trigger"] == "Alerting" and float(hot["actualValue"]) == 85.0 and not hot.get("cleared")
    assert hot["component"] == SENSOR and hot["eventNotificationType"] == "CustomMonitor"
    octt.ctl("clear")
    back = await wait_event(octt, "temperature back", variableMonitoringId=monitor_id, cleared=True)
    assert float(back["actualValue"]) == 25.0


def test_can_pilot_board_temperature_from_its_telemetry_frame() -> None:
    from drivers.can.pilot_board import CanPilotBoard
    from drivers.can.pilot_codec import TelemetryLevels

    board = CanPilotBoard.__new__(CanPilotBoard)  # only the telemetry state (the bus is tested elsewhere)
    board.telemetry_levels = None
    assert board.temperature_c is None
    board.telemetry_levels = TelemetryLevels(12_000, -12_000, 473, 2300)
    assert board.temperature_c == 47.3
