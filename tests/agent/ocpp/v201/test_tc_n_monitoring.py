"""OCTT 2.0.1 Advanced Device Management, monitoring (N02-N07): SetVariableMonitoring, ClearVariableMonitoring,
SetMonitoringBase, SetMonitoringLevel, GetMonitoringReport -> NotifyMonitoringReport, NotifyEvent raised by
real changes of the simulated hardware (an undervoltage the meter measures, the EVSE going Faulted, a meter
going silent), over real websockets against the bundled CSMS. Pure units for the evaluation rules."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agent.ocpp.v201.device_model import VARIABLES, Entry
from agent.ocpp.v201.monitoring import BUILTIN_ID, Monitor, MonitoringError, MonitorState, RateLimit, evaluate
from agent.ocpp.v201.monitoring import validate_value as check_monitor
from tests.agent.ocpp.v201.conftest import Octt201, eventually


def entry(component: str, name: str, evse: int | None = 1) -> Entry:
    spec = next(s for s in VARIABLES if s.component == component and s.name == name)
    return Entry(spec, evse)


VOLTAGE = entry("EVSE", "Voltage")
STATE = entry("EVSE", "AvailabilityState")


def test_evaluate_thresholds_delta_and_periods() -> None:
    upper, state = Monitor(1, VOLTAGE, "UpperThreshold", 250, 4), MonitorState()
    assert evaluate(upper, state, "230", 0) is None
    fired = evaluate(upper, state, "260.5", 1)
    assert fired is not None and fired.trigger == "Alerting" and not fired.cleared and fired.actual == "260.5"
    assert evaluate(upper, state, "262", 2) is None  # still above: one event, not one per sample
    back = evaluate(upper, state, "249", 3)
    assert back is not None and back.cleared
    assert evaluate(upper, state, None, 4) is None  # unknown now (meter silent): nothing
    lower, state = Monitor(2, VOLTAGE, "LowerThreshold", 200, 4), MonitorState()
    assert evaluate(lower, state, "180", 0) is not None and evaluate(lower, state, "181", 1) is None
    delta, state = Monitor(3, VOLTAGE, "Delta", 10, 4), MonitorState()
    assert evaluate(delta, state, "230", 0) is None  # reference taken when the monitor starts
    assert evaluate(delta, state, "239", 1) is None
    moved = evaluate(delta, state, "241", 2)
    assert moved is not None and moved.trigger == "Delta"
    assert evaluate(delta, state, "250", 3) is None  # measured from the last event (241)
    text, state = Monitor(4, STATE, "Delta", 0, 8), MonitorState()
    assert evaluate(text, state, "Available", 0) is None
    assert evaluate(text, state, "Available", 1) is None
    assert evaluate(text, state, "Faulted", 2) is not None  # non-numeric: any change
    periodic, state = Monitor(5, VOLTAGE, "Periodic", 10, 8), MonitorState()
    assert evaluate(periodic, state, "230", 100) is None
    assert evaluate(periodic, state, "230", 109.9) is None
    assert (p := evaluate(periodic, state, "230", 110)) is not None and p.trigger == "Periodic"
    aligned, state = Monitor(6, VOLTAGE, "PeriodicClockAligned", 60, 8), MonitorState()
    assert evaluate(aligned, state, "230", 1000) is None and state.due == 1020
    assert evaluate(aligned, state, "230", 1019) is None and evaluate(aligned, state, "230", 1021) is not None
    assert state.due == 1080


def test_monitor_validation_and_rate_limit() -> None:
    check_monitor(VOLTAGE, "LowerThreshold", 200)
    for entry_, type_, value, status in [
        (STATE, "UpperThreshold", 1, "UnsupportedMonitorType"),  # not a number (N04.FR.05)
        (VOLTAGE, "Periodic", 0.1, "Rejected"),  # bounded cost: at least 1 s
        (VOLTAGE, "Sometimes", 1, "UnsupportedMonitorType"),
        (entry("EVSE", "SupplyPhases"), "Delta", 1, "UnsupportedMonitorType"),  # supportsMonitoring false
        (VOLTAGE, "Delta", -1, "Rejected"),  # N04.FR.14
        (VOLTAGE, "UpperThreshold", float("nan"), "Rejected"),
    ]:
        with pytest.raises(MonitoringError) as info:
            check_monitor(entry_, type_, value)
        assert info.value.status == status
    limit = RateLimit(10, 3)
    assert [limit.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert limit.take(0.1) and not limit.take(0.1)  # 10 per second sustained


def monitor_item(component: dict[str, Any], variable: str, type_: str, value: float, severity: int,
                 **more: Any) -> dict[str, Any]:
    return {"component": component, "variable": {"name": variable}, "type": type_, "value": value,
            "severity": severity, **more}


def events(octt: Octt201) -> list[dict[str, Any]]:
    return [e for m in octt.msgs("NotifyEvent") for e in m.payload["eventData"]]


async def wait_event(octt: Octt201, what: str, **fields: Any) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        return next((e for e in events(octt) if all(e.get(k) == v for k, v in fields.items())), None)

    result: dict[str, Any] = await eventually(found, 10.0, what)
    return result


async def report(octt: Octt201, request_id: int, **criteria: Any) -> list[dict[str, Any]]:
    answer = await octt.send("GetMonitoringReport", {"requestId": request_id, **criteria})
    if answer["status"] != "Accepted":
        return []
    await eventually(lambda: [m for m in octt.msgs("NotifyMonitoringReport")
                              if m.payload["requestId"] == request_id and not m.payload.get("tbc")],
                     what=f"NotifyMonitoringReport {request_id}")
    return [v for m in octt.msgs("NotifyMonitoringReport") if m.payload["requestId"] == request_id
            for item in m.payload.get("monitor", []) for v in item["variableMonitoring"]]


EVSE1 = {"name": "EVSE", "evse": {"id": 1}}


async def test_tc_n_monitors_set_report_events_clear_base_level(octt: Octt201) -> None:
    await octt.start_agent({"MonitoringCtrlr/ItemsPerMessage.SetVariableMonitoring": 5})
    await octt.booted()
    # TC_N_04/05/06/07-ish: SetVariableMonitoring, each refusal with its status.
    answer = await octt.send("SetVariableMonitoring", {"setMonitoringData": [
        monitor_item(EVSE1, "Voltage", "LowerThreshold", 200, 3),
        monitor_item(EVSE1, "Power", "UpperThreshold", 20_000, 5, transaction=True),
        monitor_item({"name": "Connector", "evse": {"id": 1, "connectorId": 1}}, "AvailabilityState", "Delta", 0, 6),
        monitor_item(EVSE1, "Voltage", "LowerThreshold", 190, 3),  # same type and severity: Duplicate
        monitor_item({"name": "Nonsense"}, "Voltage", "Delta", 1, 3),
    ]})
    statuses = [r["status"] for r in answer["setMonitoringResult"]]
    assert statuses == ["Accepted", "Accepted", "Accepted", "Duplicate", "UnknownComponent"]
    ids = [r["id"] for r in answer["setMonitoringResult"][:3]]
    periodic = await octt.send("SetVariableMonitoring", {"setMonitoringData": [
        monitor_item(EVSE1, "Power", "Periodic", 1, 8)]})  # N08: every second, whatever the value
    periodic_id = periodic["setMonitoringResult"][0]["id"]
    refused = await octt.send("SetVariableMonitoring", {"setMonitoringData": [
        monitor_item(EVSE1, "SupplyPhases", "Delta", 1, 3), monitor_item(EVSE1, "Voltage", "Periodic", 0.2, 3),
        monitor_item(EVSE1, "Power", "UpperThreshold", 10_000_000, 3),  # beyond the EVSE's power (N04.FR.06)
        monitor_item(EVSE1, "Power", "Delta", 1, 3, id=ids[0]),  # id of a monitor on another variable (FR.16)
        monitor_item(EVSE1, "Power", "Delta", 1, 3, id=4242)]})  # no such id (N04.FR.13)
    assert [r["status"] for r in refused["setMonitoringResult"]] == [
        "UnsupportedMonitorType", "Rejected", "Rejected", "Rejected", "Rejected"]
    # TC_N_02-ish: the report lists hard-wired, preconfigured (base All) and custom monitors, by criteria.
    listed = await report(octt, 11, monitoringCriteria=["ThresholdMonitoring"])
    assert {v["id"] for v in listed} >= {ids[0], ids[1]} and ids[2] not in {v["id"] for v in listed}
    assert all(v["type"] in ("UpperThreshold", "LowerThreshold") for v in listed)
    everything = await report(octt, 12)
    assert BUILTIN_ID in {v["id"] for v in everything}  # the hard-wired ChargingStation Problem monitor
    # Real change: the supply sags (the meter measures 180 V) and the board faults the EVSE.
    octt.ctl("fault", name="undervoltage")
    low = await wait_event(octt, "custom voltage monitor", variableMonitoringId=ids[0])
    assert low["eventNotificationType"] == "CustomMonitor" and float(low["actualValue"]) < 200
    assert low["trigger"] == "Alerting" and low["component"] == {"name": "EVSE", "evse": {"id": 1}}
    hw = await wait_event(octt, "fault notification", eventNotificationType="HardWiredNotification",
                          techCode="UNDERVOLTAGE")
    assert hw["variable"] == {"name": "Problem"} and hw["actualValue"] == "true"
    faulted = await wait_event(octt, "hard-wired Problem monitor", eventNotificationType="HardWiredMonitor",
                               actualValue="true")
    assert faulted["component"]["name"] in ("EVSE", "ChargingStation")
    await wait_event(octt, "connector Faulted", variableMonitoringId=ids[2], actualValue="Faulted")
    await wait_event(octt, "preconfigured 207 V", eventNotificationType="PreconfiguredMonitor", trigger="Alerting")
    octt.ctl("clear")
    back = await wait_event(octt, "voltage back", variableMonitoringId=ids[0], cleared=True)
    assert float(back["actualValue"]) >= 200
    gone = await wait_event(octt, "fault cleared", techCode="UNDERVOLTAGE", cleared=True)
    assert gone["cause"] == hw["eventId"]
    # TC_N_05-ish: SetMonitoringLevel 3: the connector's severity-6 monitor is silent while the EV plugs in,
    # back at level 9 it reports the unplugging.
    assert (await octt.send("SetMonitoringLevel", {"severity": 3}))["status"] == "Accepted"
    octt.ctl("plug", connector=1)
    await octt.wait_status("Occupied")
    assert octt.agent is not None and octt.agent.service is not None
    monitoring = octt.agent.service.features["Monitoring"]  # type: ignore[attr-defined]
    await eventually(lambda: monitoring._states[ids[2]].reference == "Occupied", what="the monitor saw Occupied")
    await asyncio.sleep(0.3)  # its event (if it were sent) reaches the CSMS
    assert not [e for e in events(octt) if e["actualValue"] == "Occupied"]
    assert (await octt.send("SetMonitoringLevel", {"severity": 9}))["status"] == "Accepted"
    octt.ctl("unplug", connector=1)
    await wait_event(octt, "unplugged", variableMonitoringId=ids[2], actualValue="Available")
    # A meter going silent: a HardWiredNotification with its techCode.
    octt.ctl("fault", name="meter-silent")
    silent = await wait_event(octt, "meter silent", techCode="METER_SILENT")
    assert silent["eventNotificationType"] == "HardWiredNotification" and not silent.get("cleared")
    octt.ctl("clear")
    ticks = [e for e in events(octt) if e.get("variableMonitoringId") == periodic_id]
    assert len(ticks) >= 2 and all(e["trigger"] == "Periodic" for e in ticks)
    assert ticks[1]["timestamp"] > ticks[0]["timestamp"]
    assert (await octt.send("ClearVariableMonitoring", {"id": [periodic_id]}))["clearMonitoringResult"][0][
        "status"] == "Accepted"
    # TC_N_06-ish: ClearVariableMonitoring: a custom one goes, a hard-wired one stays, an unknown is NotFound.
    cleared = await octt.send("ClearVariableMonitoring", {"id": [ids[1], BUILTIN_ID, 999_999]})
    assert [r["status"] for r in cleared["clearMonitoringResult"]] == ["Accepted", "Rejected", "NotFound"]
    # Persisted: a restart keeps the custom monitor.
    await octt.restart_agent()
    await eventually(lambda: octt.agent is not None and octt.agent.service is not None and octt.agent.service.online,
                     what="online again")
    kept = {v["id"] for v in await report(octt, 13)}
    assert ids[0] in kept and ids[1] not in kept
    # TC_N_03-ish: HardWiredOnly clears custom and preconfigured monitors; the hard-wired remain.
    assert (await octt.send("SetMonitoringBase", {"monitoringBase": "HardWiredOnly"}))["status"] == "Accepted"
    left = await report(octt, 14)
    assert left and all(v["id"] >= BUILTIN_ID and v["type"] == "Delta" and v["severity"] == 1 for v in left)
    got = await octt.send("GetVariables", {"getVariableData": [
        {"component": {"name": "MonitoringCtrlr"}, "variable": {"name": "ActiveMonitoringBase"}}]})
    assert got["getVariableResult"][0]["attributeValue"] == "HardWiredOnly"
    too_many = [monitor_item(EVSE1, "Power", "Delta", n, 9) for n in range(6)]
    with pytest.raises(Exception, match="OccurrenceConstraint"):
        await octt.send("SetVariableMonitoring", {"setMonitoringData": too_many})


class FakeService:
    """What Monitoring uses of OcppService (a unit test of the one class): the device model on an in-memory
    database, a station with no connectors, a settable clock and link state, the queued messages."""

    def __init__(self, db: Any) -> None:
        from agent.ocpp.v201.device_model import DeviceModel

        self.db = db
        self.variables = DeviceModel(db, {}, evse_ids=(1,))
        self.station = self
        self.clock = self
        self.now = 1_000.0
        self.online = True
        self.queued: list[dict[str, Any]] = []

    def subscribe(self, listener: Any) -> None:
        pass

    def connector_views(self) -> dict[int, Any]:
        return {}

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now

    def enqueue(self, action: str, payload: dict[str, Any]) -> int:
        assert action == "NotifyEvent"
        self.queued.extend(payload["eventData"])
        return len(self.queued)


def test_offline_severity_level_rate_and_persistence() -> None:
    from agent.db import connect
    from agent.ocpp.v201.monitoring import Event, Monitoring

    service = FakeService(connect(":memory:", durable=False))
    monitoring = Monitoring(service)  # type: ignore[arg-type]
    dm = service.variables
    set_data = {"component": {"name": "EVSE", "evse": {"id": 1}}, "variable": {"name": "Power"},
                "type": "UpperThreshold", "value": 1000, "severity": 7}
    custom = monitoring.set_monitor(set_data)

    def events(*severities: int) -> list[Event]:
        return [Event(custom, custom.entry, "Alerting", "2000", s) for s in severities]

    service.online = False  # OfflineQueuingSeverity 4: a severity 7 event is dropped, a 2 queued
    monitoring._send(events(7, 2), service.now)
    assert [e["eventId"] for e in service.queued] == [1]
    service.online = True
    dm.set("MonitoringCtrlr", "MonitoringLevel", "5")  # SetVariables: same effect as SetMonitoringLevel
    assert dm.value("MonitoringCtrlr", "ActiveMonitoringLevel") == 5
    monitoring._send(events(7, 5), service.now)
    assert len(service.queued) == 2
    monitoring._send(events(*[0] * 30), service.now)  # burst 20, two of them used: 18 go, 12 dropped
    assert len(service.queued) == 2 + 18
    service.now += 1.0
    monitoring._send(events(0), service.now)  # tokens come back at 10 per second
    assert service.queued[-1]["eventId"] == service.queued[-2]["eventId"] + 1
    # Persisted: a new Monitoring on the same database has the custom monitor; HardWiredOnly by SetVariables
    # clears it.
    monitoring._remember_trip(custom.id, True)  # exceeded before the restart: cleared after it (N07.FR.14)
    again = Monitoring(service)  # type: ignore[arg-type]
    assert custom.id in {m.id for m in again.active()}
    back = evaluate(custom, again._states[custom.id], "500", service.now)
    assert back is not None and back.cleared
    # Replaced by a threshold of the same type, the exceeded state stays (N07.FR.11).
    again._states[custom.id].tripped = True
    replaced = again.set_monitor({**set_data, "id": custom.id, "value": 1500})
    assert replaced.value == 1500 and again._states[custom.id].tripped
    dm.set("MonitoringCtrlr", "MonitoringBase", "HardWiredOnly")
    assert dm.value("MonitoringCtrlr", "ActiveMonitoringBase") == "HardWiredOnly"
    assert all(m.kind == "HardWiredMonitor" for m in Monitoring(service).active())  # type: ignore[arg-type]


async def test_tc_n_events_from_the_two_process_agent(octt: Octt201) -> None:
    """``cpagent run`` as its two processes: the network side sees the control side's views over IPC; an
    over-temperature and an undervoltage of the simulated board reach the CSMS as NotifyEvent."""
    octt.start_process()
    await octt.wait("BootNotification", within=20)
    await octt.wait_status("Available", within=10)
    answer = await octt.send("SetVariableMonitoring", {"setMonitoringData": [
        monitor_item(EVSE1, "Voltage", "LowerThreshold", 215, 2)]})
    monitor_id = answer["setMonitoringResult"][0]["id"]
    octt.ctl("fault", name="overtemp")
    hot = await wait_event(octt, "over-temperature", techCode="OVERTEMP")
    assert hot["eventNotificationType"] == "HardWiredNotification" and hot["component"]["evse"] == {"id": 1}
    octt.ctl("clear")
    await wait_event(octt, "over-temperature gone", techCode="OVERTEMP", cleared=True)
    octt.ctl("fault", name="undervoltage")
    low = await wait_event(octt, "undervoltage", variableMonitoringId=monitor_id)
    assert float(low["actualValue"]) < 215


def test_presets_of_base_and_level_take_effect_once() -> None:
    from agent.db import connect
    from agent.ocpp.v201.device_model import DeviceModel
    from agent.ocpp.v201.monitoring import Monitoring

    service = FakeService(connect(":memory:", durable=False))
    service.variables = DeviceModel(service.db, {"MonitoringCtrlr/MonitoringBase": "FactoryDefault",
                                                 "MonitoringCtrlr/MonitoringLevel": 4}, evse_ids=(1,))
    monitoring = Monitoring(service)  # type: ignore[arg-type]
    assert service.variables.value("MonitoringCtrlr", "ActiveMonitoringBase") == "FactoryDefault"
    assert service.variables.value("MonitoringCtrlr", "ActiveMonitoringLevel") == 4
    kinds = {(m.kind, m.type) for m in monitoring.active()}
    assert ("PreconfiguredMonitor", "LowerThreshold") in kinds and ("PreconfiguredMonitor", "Delta") not in kinds
