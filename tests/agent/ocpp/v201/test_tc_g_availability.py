"""OCTT 2.0.1 Availability (TC_G_01_CS .. TC_G_21_CS): StatusNotification per EVSE/connector, Heartbeat (G02),
ChangeAvailability of an EVSE, a connector and the station (persisted, scheduled during a transaction), the
OfflineThreshold rule on reconnect; UnlockConnector (TC_F_05_CS, TC_F_06_CS, TC_F_10_CS) and DataTransfer
(TC_P_01_CS), over real websockets against the bundled CSMS with the simulator's hardware underneath."""

from __future__ import annotations

from tests.agent.ocpp.v201.conftest import Octt201, eventually


async def test_tc_g_01_g_02_cs_status_notification_on_change(octt: Octt201) -> None:
    """G01: plugging the EV in is reported as Occupied on EVSE 1 connector 1, unplugging as Available."""
    await octt.start_agent()
    await octt.booted()
    await octt.plugged()
    occupied = await octt.wait_status("Occupied", evse_id=1)
    assert set(occupied.payload) == {"timestamp", "connectorStatus", "evseId", "connectorId"}
    octt.ctl("unplug", connector=1)
    await octt.wait_status("Available", evse_id=1, count=2)


async def test_g02_heartbeat_every_interval(octt: Octt201) -> None:
    """G02: a Heartbeat every HeartbeatInterval (the interval of the accepted BootNotification)."""
    octt.csms.heartbeat_interval = 1
    await octt.start_agent()
    boot = await octt.wait("BootNotification")
    first = await octt.wait("Heartbeat", within=4)
    assert 0.8 <= first.at - boot.at <= 3.0


async def test_tc_g_03_g_04_g_10_g_18_cs_change_availability_evse(octt: Octt201) -> None:
    """G03: an EVSE to Inoperative -> Unavailable; Inoperative again -> Accepted and its status reported anyway
    (G_10); it persists across a restart (G_18); back to Operative -> Available (G_04); an unknown EVSE is
    Rejected. First TC_G_09_CS: Operative to an EVSE already Operative -> Accepted."""
    await octt.start_agent()
    await octt.booted()
    same = await octt.send("ChangeAvailability", {"operationalStatus": "Operative", "evse": {"id": 1}})
    assert same["status"] == "Accepted"
    answer = await octt.send("ChangeAvailability", {"operationalStatus": "Inoperative", "evse": {"id": 1}})
    assert answer["status"] == "Accepted"
    await octt.wait_status("Unavailable", evse_id=1)
    again = await octt.send("ChangeAvailability", {"operationalStatus": "Inoperative", "evse": {"id": 1}})
    assert again["status"] == "Accepted"
    await octt.wait_status("Unavailable", evse_id=1, count=2)
    await octt.restart_agent()
    await octt.wait("BootNotification", count=2, within=10)
    await octt.wait_status("Unavailable", evse_id=1, count=3)
    assert (await octt.send("ChangeAvailability", {"operationalStatus": "Operative", "evse": {"id": 1}}))[
        "status"] == "Accepted"
    await octt.wait_status("Available", evse_id=1, count=2)
    unknown = await octt.send("ChangeAvailability", {"operationalStatus": "Inoperative", "evse": {"id": 7}})
    assert unknown["status"] == "Rejected"


async def test_tc_g_05_g_06_g_12_cs_change_availability_station(octt: Octt201) -> None:
    """G04: the whole station Inoperative -> every EVSE Unavailable; Operative again -> Available. A change
    to the state the station is already in is Accepted (G_12)."""
    await octt.start_agent()
    await octt.booted()
    assert (await octt.send("ChangeAvailability", {"operationalStatus": "Inoperative"}))["status"] == "Accepted"
    await octt.wait_status("Unavailable", evse_id=1)
    assert (await octt.send("ChangeAvailability", {"operationalStatus": "Operative"}))["status"] == "Accepted"
    await octt.wait_status("Available", evse_id=1, count=2)
    assert (await octt.send("ChangeAvailability", {"operationalStatus": "Operative"}))["status"] == "Accepted"


async def test_offline_threshold_status_refresh(octt: Octt201) -> None:
    """B04 / OfflineThreshold: offline longer than the threshold (0 s here) -> the status of every connector
    again on reconnect, without a new BootNotification; RetryBackOff* gives the redial (at once here)."""
    await octt.start_agent({"OCPPCommCtrlr/OfflineThreshold": 0, "OCPPCommCtrlr/RetryBackOffWaitMinimum": 0})
    await octt.booted()
    await octt.csms.drop("CP1")
    await octt.wait_status("Available", evse_id=1, count=2, within=6)
    assert len(octt.msgs("BootNotification")) == 1


async def test_offline_shorter_than_threshold_reports_only_changes(octt: Octt201) -> None:
    """Offline shorter than OfflineThreshold: on reconnect only the connectors whose status changed."""
    agent = await octt.start_agent({"OCPPCommCtrlr/OfflineThreshold": 600,
                                    "OCPPCommCtrlr/RetryBackOffWaitMinimum": 0})
    await octt.booted()
    # The CSMS's answer has reached the station (else the status is rightly sent again).
    await eventually(lambda: agent.service.session_idle(), what="no CALL outstanding")
    before = len(octt.msgs("StatusNotification"))
    await octt.csms.drop("CP1")
    await eventually(lambda: agent.service.online and len(octt.csms.handshakes) >= 2, within=6,
                     what="reconnected")
    await octt.send("TriggerMessage", {"requestedMessage": "Heartbeat"})
    await octt.wait("Heartbeat")
    assert len(octt.msgs("StatusNotification")) == before


async def test_tc_f_06_f_10_cs_unlock_connector(octt: Octt201) -> None:
    """F05: UnlockConnector of the cable lock -> Unlocked (the lock really reports open); an unknown
    connector -> UnknownConnector."""
    await octt.start_agent()
    await octt.booted()
    answer = await octt.send("UnlockConnector", {"evseId": 1, "connectorId": 1})
    assert answer["status"] == "Unlocked"
    assert (await octt.send("UnlockConnector", {"evseId": 5, "connectorId": 1}))["status"] == "UnknownConnector"


async def test_tc_p_01_cs_data_transfer_both_ways(octt: Octt201) -> None:
    """P01/P02: the CSMS's DataTransfer to an unknown vendor -> UnknownVendorId; the station's DataTransfer
    gets the CSMS's answer."""
    agent = await octt.start_agent()
    await octt.booted()
    assert (await octt.send("DataTransfer", {"vendorId": "com.example"}))["status"] == "UnknownVendorId"
    status, _ = await agent.service.data_transfer("com.example", "ping", {"n": 1})
    assert status == "Accepted"
    sent = await octt.wait("DataTransfer")
    assert sent.payload == {"vendorId": "com.example", "messageId": "ping", "data": {"n": 1}}


async def test_tc_g_11_f_05_cs_change_availability_scheduled_during_transaction(octt: Octt201) -> None:
    """G03.FR.05: Inoperative while a transaction runs on the EVSE -> Scheduled; the EVSE becomes
    Unavailable once the transaction has ended, not before. UnlockConnector meanwhile ->
    OngoingAuthorizedTransaction (TC_F_05_CS)."""
    agent = await octt.start_agent()
    await octt.booted()
    await octt.charging()
    answer = await octt.send("ChangeAvailability", {"operationalStatus": "Inoperative", "evse": {"id": 1}})
    assert answer["status"] == "Scheduled"
    assert agent.connector.session is not None and not octt.msgs("StatusNotification")[-1].payload[
        "connectorStatus"] == "Unavailable"
    unlock = await octt.send("UnlockConnector", {"evseId": 1, "connectorId": 1})
    assert unlock["status"] == "OngoingAuthorizedTransaction"
    octt.ctl("unplug", connector=1)
    await octt.wait_tx_event("Ended")
    await octt.wait_status("Unavailable", evse_id=1)


async def test_tc_g_07_g_08_g_15_g_16_g_19_cs_change_availability_connector(octt: Octt201) -> None:
    """G03 for the connector of an EVSE: Inoperative -> Unavailable (G_07), again -> Accepted and reported
    (G_16), persisted across a restart (G_19), Operative -> Available (G_08), again -> Accepted (G_15); a
    connector the EVSE does not have is Rejected."""
    await octt.start_agent()
    await octt.booted()
    connector = {"id": 1, "connectorId": 1}
    inoperative = {"operationalStatus": "Inoperative", "evse": connector}
    assert (await octt.send("ChangeAvailability", inoperative))["status"] == "Accepted"
    await octt.wait_status("Unavailable", evse_id=1)
    assert (await octt.send("ChangeAvailability", inoperative))["status"] == "Accepted"
    await octt.wait_status("Unavailable", evse_id=1, count=2)
    await octt.restart_agent()
    await octt.wait_status("Unavailable", evse_id=1, count=3, within=10)
    operative = {"operationalStatus": "Operative", "evse": connector}
    assert (await octt.send("ChangeAvailability", operative))["status"] == "Accepted"
    await octt.wait_status("Available", evse_id=1, count=2)
    assert (await octt.send("ChangeAvailability", operative))["status"] == "Accepted"
    missing = {"operationalStatus": "Inoperative", "evse": {"id": 1, "connectorId": 2}}
    assert (await octt.send("ChangeAvailability", missing))["status"] == "Rejected"


async def test_tc_g_13_g_14_cs_change_availability_station_during_transaction(octt: Octt201) -> None:
    """G04: the station Inoperative while charging -> Scheduled (G_14), Unavailable once the transaction has
    ended; Inoperative again -> Accepted (G_13)."""
    await octt.start_agent()
    await octt.booted()
    await octt.charging()
    assert (await octt.send("ChangeAvailability", {"operationalStatus": "Inoperative"}))["status"] == "Scheduled"
    octt.ctl("unplug", connector=1)
    await octt.wait_tx_event("Ended")
    await octt.wait_status("Unavailable", evse_id=1)
    assert (await octt.send("ChangeAvailability", {"operationalStatus": "Inoperative"}))["status"] == "Accepted"
