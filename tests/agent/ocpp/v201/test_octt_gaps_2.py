"""OCTT 2.0.1 charging-station cases that were still missing (docs/octt-201-coverage.md): transaction
message retries when the CSMS never answers (E_41/E_42), MaxEnergyOnInvalidId after an offline start
(C_15/C_18) ... Real websockets to the bundled CSMS, the simulator rig underneath (tests/agent/ocpp/v201/
conftest.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from simulator.csms import Csms
from simulator.rig import Rig, RigOptions
from tests.agent.ocpp.fileservers import http_server
from tests.agent.ocpp.test_octt_security import Pki
from tests.agent.ocpp.test_octt_security import pki as pki  # the fixture
from tests.agent.ocpp.v201.conftest import CP, TAG, Octt201, eventually


async def test_tc_e_42_e_41_cs_transaction_event_unanswered_until_message_attempts(octt: Octt201) -> None:
    """E13.FR.xx (spec 2.0.1 Part 2 E13): a TransactionEventRequest without a response within MessageTimeout
    is sent again after MessageAttemptInterval x (previous sends), at most MessageAttempts sends in all, then
    dropped. TC_E_42: answered at the second send -> no third; TC_E_41: never answered -> exactly
    MessageAttempts sends, then none."""
    silent: dict[str, int] = {}  # eventType -> how many more sends to leave unanswered

    def never_answer(_cp: str, action: str, _uid: str, payload: dict[str, Any]) -> str | None:
        key = str(payload.get("eventType"))
        if action != "TransactionEvent" or not silent.get(key):
            return None
        silent[key] -= 1
        return ""  # no CALLRESULT, no CALLERROR

    octt.csms.hostile_reply = never_answer
    octt.rig.connectors[1].plant.ev.pwm_reaction_s = 0.2
    agent = await octt.start_agent({"OCPPCommCtrlr/MessageTimeout.Default": 1,
                                    "OCPPCommCtrlr/MessageAttempts.TransactionEvent": 3,
                                    "OCPPCommCtrlr/MessageAttemptInterval.TransactionEvent": 1})
    await octt.booted()
    await octt.plugged()
    # TC_E_42_CS: the first Started is never answered; resent 1 s (timeout) + 1 s (interval x 1) later
    silent["Started"] = 1
    assert (await agent.tap(TAG)).accepted
    first = await octt.wait("TransactionEvent")
    tx = first.payload["transactionInfo"]["transactionId"]
    second = await octt.wait("TransactionEvent", count=2, within=6)
    assert second.payload == first.payload  # the same message (same seqNo), not a new one
    assert second.at - first.at >= 1.7
    await eventually(lambda: agent.service.outbox.queued_for(tx) == 0, what="the Started acknowledged")
    await octt.wait_charging_state("Charging")
    # TC_E_41_CS: the Ended is never answered: sent MessageAttempts times (set to 2 now, at run time: the
    # test's budget), 1 s timeout + 1 x interval apart, then given up
    answer = await octt.send("SetVariables", {"setVariableData": [{
        "component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "MessageAttempts", "instance": "TransactionEvent"},
        "attributeValue": "2"}]})
    assert answer["setVariableResult"][0]["attributeStatus"] == "Accepted"
    silent["Ended"] = 99
    await agent.tap(TAG)
    sends = [await octt.wait_tx_event("Ended", count=n, within=8) for n in (1, 2)]
    assert sends[0] == sends[1]
    at = [m.at for m in octt.msgs("TransactionEvent") if m.payload["eventType"] == "Ended"]
    assert at[1] - at[0] >= 1.7
    await eventually(lambda: any(a == "TransactionEvent" for a, _, _ in agent.service.outbox.dropped()),
                     within=4, what="the Ended given up")
    assert agent.service.outbox.queued_for(tx) == 0
    assert len([p for p in octt.tx_events(tx) if p["eventType"] == "Ended"]) == 2
    # the connection stayed usable: a request after the give-up is answered
    assert (await octt.send("GetTransactionStatus", {"transactionId": tx})) == {
        "ongoingIndicator": False, "messagesInQueue": False}


async def test_tc_c_18_c_15_cs_offline_start_from_the_cache_then_invalid_with_max_energy_on_invalid_id(
        octt: Octt201) -> None:
    """C12 (cache Accepted, CSMS Invalid) with MaxEnergyOnInvalidId > 0, the transaction started offline.
    TC_C_18_CS (StopTxOnInvalidId true): the answer Invalid deauthorizes it at once (Deauthorized, offline
    false), energy stops. TC_C_15_CS (StopTxOnInvalidId false): the transaction goes on and energy flows
    until MaxEnergyOnInvalidId (counted from the start of the transaction, E05.FR.xx / the variable's
    definition) is delivered, then stops (SuspendedEVSE) with the transaction kept. Part 6's main scenario of
    C_15 names a Deauthorized event at step 5, its tool validations forbid one: the spec (StopTxOnInvalidId
    false = the transaction is not stopped) is followed, no Deauthorized while energy may still flow."""
    from agent.authcache import IdTagInfo

    LIMIT_WH = 8
    octt.csms.id_token_infos[TAG] = {"status": "Invalid"}
    plant = octt.rig.connectors[1].plant
    plant.ev.pwm_reaction_s = 0.2
    agent = await octt.start_agent({"AuthCtrlr/LocalPreAuthorize": True, "AuthCtrlr/LocalAuthorizeOffline": True,
                                    "TxCtrlr/StopTxOnInvalidId": True, "TxCtrlr/MaxEnergyOnInvalidId": 500})
    cache = agent.service.features["Transactions"].cache
    await octt.booted()

    async def offline_start() -> dict[str, Any]:
        cache.update(TAG, IdTagInfo("Accepted"))  # memory state: the card cached Accepted
        known = len(octt.transaction_ids())
        await octt.csms.outage(1.0)
        await eventually(lambda: not agent.service.online, what="offline")
        await octt.plugged()
        assert (await agent.tap(TAG)).accepted
        await eventually(lambda: plant.relay_closed, what="energy offered offline")
        started = await octt.wait_tx_event("Started", count=known + 1, within=10)
        assert started["offline"] is True and started["idToken"]["idToken"] == TAG
        return started

    # TC_C_18_CS
    started = await offline_start()
    tx = started["transactionInfo"]["transactionId"]
    deauthorized = await octt.wait_tx_event("Ended", where=lambda p: p["transactionInfo"]["transactionId"] == tx)
    offline = [p for p in octt.tx_events(tx) if p.get("offline")]
    assert any(p["triggerReason"] == "ChargingStateChanged" for p in offline)
    assert not any(p["triggerReason"] == "Deauthorized" for p in offline)
    assert deauthorized["triggerReason"] == "Deauthorized" and deauthorized.get("offline") is not True
    await eventually(lambda: not plant.relay_closed, what="energy stopped on Invalid")
    octt.ctl("unplug", connector=1)
    await octt.wait_status("Available", count=2)

    # TC_C_15_CS: StopTxOnInvalidId false; MaxEnergyOnInvalidId small enough to be reached within the test
    for name, value in (("StopTxOnInvalidId", "false"), ("MaxEnergyOnInvalidId", str(LIMIT_WH))):
        answer = await octt.send("SetVariables", {"setVariableData": [{
            "component": {"name": "TxCtrlr"}, "variable": {"name": name}, "attributeValue": value}]})
        assert answer["setVariableResult"][0]["attributeStatus"] == "Accepted"
    start_wh = plant.energy_wh
    started = await offline_start()
    tx = started["transactionInfo"]["transactionId"]
    await octt.wait_tx_event("Started", where=lambda p: p["transactionInfo"]["transactionId"] == tx)
    await eventually(lambda: agent.service.outbox.queued_for(tx) == 0, what="the Started answered Invalid")
    assert plant.relay_closed and plant.energy_wh - start_wh < LIMIT_WH  # still below the limit: energy goes on
    suspended = await octt.wait_tx_event(
        "Updated", within=15, where=lambda p: p["transactionInfo"]["transactionId"] == tx
        and p["transactionInfo"].get("chargingState") == "SuspendedEVSE")
    assert suspended.get("offline") is not True
    await eventually(lambda: plant.pwm_duty is None, what="energy withdrawn at MaxEnergyOnInvalidId")
    delivered = plant.energy_wh - start_wh
    # energy flowed past the Invalid answer up to the limit; the PWM goes off within the meter's poll (0.5 s)
    # of reaching it (22 kW: about 6 Wh/s; margin for a loaded machine). The EV then ramps down (its side).
    assert LIMIT_WH <= delivered < LIMIT_WH + 9, delivered
    assert not any(p["triggerReason"] == "Deauthorized" or p["eventType"] == "Ended" for p in octt.tx_events(tx))
    assert agent.connector.session is not None  # the transaction goes on


async def test_tc_e_27_cs_tethered_cable_ev_gone_until_the_connection_timeout(tmp_path: Path, csms: Csms) -> None:
    """TC_E_27_CS (E10, a cable fixed to the station, StopTxOnEVSideDisconnect false, TxStopPoint Authorized):
    the EV leaves -> Updated EVCommunicationLost (chargingState Idle), the connector Available; the EV does not
    come back within EVConnectionTimeOut -> the transaction is deauthorized: Ended, triggerReason
    EVConnectTimeout, stoppedReason Timeout. Part 6's main scenario reconnects the EV "before the timeout"
    and still expects EVConnectTimeout at step 5; its purpose (and the spec: the timeout deauthorizes) is
    followed: the EV stays away."""
    rig = Rig(RigOptions(directory=tmp_path / "tethered", csms_url=csms.url, charge_point_id=CP,
                         ocpp_version="2.0.1", fixed_cable=True))
    await rig.start()
    octt = Octt201(csms, rig)
    try:
        rig.connectors[1].plant.ev.pwm_reaction_s = 0.2
        agent = await octt.start_agent({"TxCtrlr/TxStopPoint": "Authorized", "TxCtrlr/EVConnectionTimeOut": 2,
                                        "TxCtrlr/StopTxOnEVSideDisconnect": False,
                                        "OCPPCommCtrlr/UnlockOnEVSideDisconnect": False})
        assert agent.connector.config.fixed_cable
        await octt.booted()
        started = await octt.charging(TAG)
        tx = started["transactionInfo"]["transactionId"]
        octt.ctl("unplug", connector=1)
        lost = await octt.wait_tx_event("Updated", where=lambda p: p["triggerReason"] == "EVCommunicationLost")
        assert lost["transactionInfo"]["transactionId"] == tx and lost["transactionInfo"]["chargingState"] == "Idle"
        # step 3: the connector is Available again while the transaction waits for the EV
        available = await octt.wait_status("Available", count=2)
        assert agent.connector.session is not None and not octt.tx_events(tx)[-1]["eventType"] == "Ended"
        ended = await octt.wait_tx_event("Ended", within=8)
        assert next(m for m in octt.msgs("TransactionEvent") if m.payload["eventType"] == "Ended").at > available.at
        assert ended["transactionInfo"]["transactionId"] == tx
        assert ended["triggerReason"] == "EVConnectTimeout"
        assert ended["transactionInfo"]["stoppedReason"] == "Timeout"
        at = {m.payload["triggerReason"]: m.at for m in octt.msgs("TransactionEvent")}
        assert at["EVConnectTimeout"] - at["EVCommunicationLost"] >= 1.8  # EVConnectionTimeOut (2 s) ran out
        await eventually(lambda: agent.connector.session is None, what="the station's session ended too")
    finally:
        if octt.agent is not None:
            await octt.agent.stop()
        await rig.stop()


async def test_tc_n_26_n_36_f_16_f_19_l_08_cs_log_upload_failed_then_second_request(
        octt: Octt201, tmp_path: Path) -> None:
    """TC_N_26_CS: GetLog with retries, every upload refused (HTTP 500): Uploading, then UploadFailure after
    1 + retries attempts (same requestId). Part 6 asks for retries 3; 1 here (attempts are at least 1 s apart
    in agent/ocpp/v16/transfer.py, the test budget is seconds). TC_N_36_CS: a second GetLog while the first
    is uploading (retrying) -> AcceptedCanceled; LogStatusNotification AcceptedCanceled (first requestId),
    then the second's Uploading and Uploaded. TC_F_16_CS / TC_F_19_CS: TriggerMessage LogStatusNotification /
    FirmwareStatusNotification while an upload / a download (of a firmware the file server does not have,
    retried) runs -> Uploading / Downloading with the requestId. TC_L_08_CS: a signed firmware whose installer
    (a real process) exits 1 -> Installing, InstallationFailed, no restart."""
    import json
    import sys

    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.agent.ocpp.firmware_support import FIRMWARE, INSTALLER
    from tests.agent.ocpp.test_octt_signed_firmware import Manufacturer
    from tests.agent.ocpp.v201.test_tc_l_n_firmware_logs import install_root, update

    script = tmp_path / "install.py"  # [firmware] installer: fails (exit 1) without installing anything
    script.write_text(INSTALLER)
    argv = [sys.executable, str(script), "{file}", str(tmp_path / "installed.bin"), "1"]
    toml = octt.rig.dir / "agent.toml"
    toml.write_text(toml.read_text() + "\n[firmware]\ninstaller = " + json.dumps(argv) + "\n")
    def log_statuses() -> list[tuple[str, int]]:
        return [(m.payload["status"], m.payload["requestId"]) for m in octt.msgs("LogStatusNotification")]

    def firmware_statuses() -> list[dict[str, Any]]:
        return [m.payload for m in octt.msgs("FirmwareStatusNotification")]

    maker = Manufacturer(ec.generate_private_key(ec.SECP256R1()))
    install_root(octt, maker)
    await octt.start_agent()
    await octt.booted()
    with http_server() as web:
        # TC_F_19_CS (while TC_N_26_CS runs): the download fails (404) and is retried 1 s later
        answer = await octt.send("UpdateFirmware", update(web.url("/missing.bin"), maker, maker.sign(b"fw"), 20))
        assert answer["status"] == "Accepted"
        await eventually(lambda: firmware_statuses() == [{"status": "Downloading", "requestId": 20}], 5,
                         "Downloading")
        answer = await octt.send("TriggerMessage", {"requestedMessage": "FirmwareStatusNotification"})
        assert answer["status"] == "Accepted"
        await eventually(lambda: len(firmware_statuses()) == 2, 5, "the triggered FirmwareStatusNotification")
        assert firmware_statuses()[1] == {"status": "Downloading", "requestId": 20}
        web.upload_status = 500
        answer = await octt.send("GetLog", {"logType": "DiagnosticsLog", "requestId": 10, "retries": 1,
                                            "retryInterval": 0, "log": {"remoteLocation": web.url("/logs/")}})
        assert answer["status"] == "Accepted"
        await eventually(lambda: log_statuses() == [("Uploading", 10), ("UploadFailure", 10)], 8, "UploadFailure")
        assert web.upload_attempts == 2  # the first attempt and 1 retry
        # TC_N_36_CS: the first upload keeps failing and retrying (1 s apart) when the second request comes
        answer = await octt.send("GetLog", {"logType": "DiagnosticsLog", "requestId": 11, "retries": 3,
                                            "retryInterval": 1, "log": {"remoteLocation": web.url("/logs/")}})
        assert answer["status"] == "Accepted"
        await eventually(lambda: log_statuses()[2:] == [("Uploading", 11)], 8, "the first upload running")
        # TC_F_16_CS: triggered while it runs -> Uploading, its requestId
        answer = await octt.send("TriggerMessage", {"requestedMessage": "LogStatusNotification"})
        assert answer["status"] == "Accepted"
        await eventually(lambda: log_statuses()[2:] == [("Uploading", 11), ("Uploading", 11)], 5, "triggered")
        web.upload_status = None
        answer = await octt.send("GetLog", {"logType": "DiagnosticsLog", "requestId": 12,
                                            "log": {"remoteLocation": web.url("/logs/")}})
        assert answer["status"] == "AcceptedCanceled"
        await eventually(lambda: log_statuses()[4:] == [("AcceptedCanceled", 11), ("Uploading", 12),
                                                         ("Uploaded", 12)], 8, "the second uploaded")
        assert len(web.uploads) == 1
        await eventually(lambda: firmware_statuses()[-1:] == [{"status": "DownloadFailed", "requestId": 20}], 5,
                         "DownloadFailed")
        # TC_L_08_CS: the installer fails
        web.files["/fw.bin"] = FIRMWARE
        answer = await octt.send("UpdateFirmware", update(web.url("/fw.bin"), maker, maker.sign(FIRMWARE), 21))
        assert answer["status"] == "Accepted"
        await eventually(lambda: firmware_statuses()[-1:] == [{"status": "InstallationFailed", "requestId": 21}],
                         8, "InstallationFailed")
    assert [p["status"] for p in firmware_statuses()[3:]] == [
        "Downloading", "Downloaded", "SignatureVerified", "Installing", "InstallationFailed"]
    assert not (tmp_path / "installed.bin").exists() and not octt.agent.service.restart_requested.is_set()


async def test_tc_a_06_b_49_cs_tls_version_too_low_then_fallback(
        tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    """TC_A_06_CS (A00.FR.314/316/416): security profile 2, NetworkProfileConnectionAttempts 1. The first
    endpoint (slot 2, first in NetworkConfigurationPriority) answers the TLS handshake with TLS 1.1 only (a
    blocking TLS server that sends the protocol_version alert): the station ends that connection, connects
    with TLS 1.2+ to the CSMS (slot 1), boots and reports InvalidTLSVersion. Part 6 replays the second
    handshake on the same address; one endpoint per behaviour here. TC_B_49_CS (same CSMS root): the new
    profile (slot 2) fails its NetworkProfileConnectionAttempts (1), the station goes back to the previous one
    (slot 1), whose first dial is refused too (the CSMS is down for 1 s), waits RetryBackOffWaitMinimum (1 s)
    and connects to slot 1 again (not to slot 2: slot 1 is the confirmed one)."""
    from tests.agent.ocpp.test_octt_security import PASSWORD, unagreeable_tls_endpoint
    from tests.agent.ocpp.v201.test_tc_a_b_security import network_profile, security_events, set_variable

    csms = Csms(accept=[TAG], password=PASSWORD, version="2.0.1", ssl_context=pki.server_context())
    await csms.start()
    rig = Rig(RigOptions(directory=tmp_path / "rig", csms_url=csms.url, charge_point_id=CP, ocpp_version="2.0.1",
                         security_profile=2, password=PASSWORD, ca_file=pki.ca_file))
    await rig.start()
    octt = Octt201(csms, rig)
    try:
        with unagreeable_tls_endpoint(pki, "version") as old_tls:
            first = await octt.start_agent({"OCPPCommCtrlr/NetworkProfileConnectionAttempts": 1})
            await octt.booted()
            await eventually(lambda: not first.service.features["Security"].in_trial, 5, "slot 1 confirmed")
            answer = await octt.send("SetNetworkProfile", {"configurationSlot": 2,
                                                           "connectionData": network_profile(old_tls, 2)})
            assert answer["status"] == "Accepted"
            assert await set_variable(octt, "OCPPCommCtrlr", "NetworkConfigurationPriority", "2,1") == \
                "RebootRequired"
            await csms.outage(1.0)  # TC_B_49_CS step 10: the fallback's first dial is refused as well
            caplog.set_level(logging.WARNING, logger="cpagent")
            caplog.clear()
            agent = await octt.restart_agent()
            await eventually(lambda: agent.service.online and agent.service.endpoint == csms.url, 10,
                             "connected over TLS 1.2+ to slot 1")
            dials = [r.getMessage() for r in caplog.records if "cannot connect to" in r.getMessage()]
            assert any("TLSV1_ALERT_PROTOCOL_VERSION" in d for d in dials), dials  # slot 2
            refused = [d for d in dials if csms.url.rstrip("/") in d and "ConnectionRefused" in d]
            assert refused, dials  # slot 1 refused once, then reached after the back-off
            assert sum("TLSV1_ALERT_PROTOCOL_VERSION" in d for d in dials) == 1  # slot 2 not tried again
            await octt.wait("BootNotification", count=2)
            await eventually(lambda: "InvalidTLSVersion" in security_events(octt), 8, "InvalidTLSVersion")
    finally:
        if octt.agent is not None:
            await octt.agent.stop()
        await rig.stop()
        await csms.stop()
