"""The bundled CSMS speaking OCPP 2.0.1, driven by a raw websockets client playing the station (127.0.0.1)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from simulator.csms import Csms, CsmsCallError
from simulator.csms201 import CsrSigner
from tests.agent.ocpp.conftest import eventually
from tests.simulator.test_csms import WAIT, RawChargePoint, csms_process

OCPP201 = [Subprotocol("ocpp2.0.1")]
BOTH = [Subprotocol("ocpp1.6"), Subprotocol("ocpp2.0.1")]
T = "2026-01-01T00:00:00Z"
BOOT = {"chargingStation": {"vendorName": "V", "model": "M"}, "reason": "PowerUp"}


@pytest.fixture
async def csms(tmp_path: Path) -> AsyncIterator[Csms]:
    server = Csms(log_path=tmp_path / "frames.jsonl", boot_status="Pending", heartbeat_interval=60,
                  accept=["TAG1"], auth_list={"BLOCKED": "Blocked"}, version="2.0.1")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def station(csms: Csms) -> AsyncIterator[RawChargePoint]:
    async with connect(csms.url + "/CS1", subprotocols=OCPP201) as connection:
        assert connection.subprotocol == "ocpp2.0.1"
        yield RawChargePoint(connection)


def _tx(event: str, seq: object, **extra: object) -> dict[str, object]:
    return {"eventType": event, "timestamp": T, "triggerReason": "Authorized", "seqNo": seq,
            "transactionInfo": {"transactionId": "tx-1"}, **extra}


async def test_answers_station_messages_with_schema_valid_results(csms: Csms, station: RawChargePoint) -> None:
    boot = await station.call("BootNotification", BOOT)
    assert boot[2]["status"] == "Pending" and boot[2]["interval"] == 60 and boot[2]["currentTime"].endswith("Z")
    await csms.wait_connected("CS1")
    assert csms.version_of("CS1") == "2.0.1"
    token = {"idToken": "TAG1", "type": "ISO14443"}
    assert (await station.call("Authorize", {"idToken": token}))[2] == {"idTokenInfo": {"status": "Accepted"}}
    unknown = await station.call("Authorize", {"idToken": {"idToken": "WHO", "type": "ISO14443"}})
    assert unknown[2] == {"idTokenInfo": {"status": "Invalid"}}
    blocked = await station.call("Authorize", {"idToken": {"idToken": "BLOCKED", "type": "ISO14443"}})
    assert blocked[2]["idTokenInfo"]["status"] == "Blocked"
    csms.id_token_infos["GROUP1"] = {"status": "Accepted", "groupIdToken": {"idToken": "G", "type": "Central"}}
    grouped = await station.call("Authorize", {"idToken": {"idToken": "GROUP1", "type": "ISO14443"}})
    assert grouped[2]["idTokenInfo"]["groupIdToken"] == {"idToken": "G", "type": "Central"}
    started = await station.call("TransactionEvent", _tx("Started", 0, idToken=token, evse={"id": 1}))
    assert started[2] == {"idTokenInfo": {"status": "Accepted"}}
    updated = await station.call("TransactionEvent", _tx("Updated", 1, triggerReason="MeterValuePeriodic"))
    assert updated[2] == {}
    free = await station.call("TransactionEvent", _tx("Ended", 2, idToken={"idToken": "", "type": "NoAuthorization"}))
    assert free[2] == {"idTokenInfo": {"status": "Accepted"}}
    empty_results = {
        "Heartbeat": None,
        "StatusNotification": {"timestamp": T, "connectorStatus": "Available", "evseId": 1, "connectorId": 1},
        "MeterValues": {"evseId": 1, "meterValue": [{"timestamp": T, "sampledValue": [{"value": 1.5}]}]},
        "NotifyReport": {"requestId": 1, "generatedAt": T, "seqNo": 0, "tbc": False},
        "NotifyEvent": {"generatedAt": T, "seqNo": 0, "eventData": [{
            "eventId": 1, "timestamp": T, "trigger": "Delta", "actualValue": "1", "eventNotificationType":
            "HardWiredNotification", "component": {"name": "EVSE"}, "variable": {"name": "Available"}}]},
        "SecurityEventNotification": {"type": "StartupOfTheDevice", "timestamp": T},
        "LogStatusNotification": {"status": "Idle"},
        "FirmwareStatusNotification": {"status": "Idle"},
        "NotifyCustomerInformation": {"data": "x", "seqNo": 0, "generatedAt": T, "requestId": 3},
        "NotifyChargingLimit": {"chargingLimit": {"chargingLimitSource": "EMS"}},
    }
    for action, payload in empty_results.items():
        reply = await station.call(action, payload or {})
        assert reply[0] == 3, (action, reply)
        if action == "Heartbeat":
            assert reply[2]["currentTime"].endswith("Z")
        else:
            assert reply[2] == {}, action
    assert (await station.call("DataTransfer", {"vendorId": "acme"}))[2] == {"status": "Accepted"}
    assert (await station.call("SignCertificate", {"csr": "x"}))[2] == {"status": "Accepted"}
    # Strict schemas: a 1.6-shaped StatusNotification, an unknown field, a seqNo of the wrong type.
    bad: tuple[str, dict[str, Any]]
    for bad in (("StatusNotification", {"connectorId": 0, "errorCode": "NoError", "status": "Available"}),
                ("Heartbeat", {"extra": 1}),
                ("TransactionEvent", _tx("Updated", "3"))):
        reply = await station.call(*bad)
        assert reply[0] == 4, bad
    assert csms.messages("CS1", "TransactionEvent")[0].payload["transactionInfo"]["transactionId"] == "tx-1"
    assert len(csms.messages("CS1", "TransactionEvent")) == 4  # recorded as received, even the refused one


async def test_sends_2_0_1_calls_as_given(csms: Csms, station: RawChargePoint) -> None:
    await csms.wait_connected("CS1")
    variables = {"getVariableData": [{"component": {"name": "OCPPCommCtrlr"},
                                      "variable": {"name": "HeartbeatInterval"}}]}
    sending = asyncio.create_task(csms.send("CS1", "GetVariables", variables))
    result = {"getVariableResult": [{"attributeStatus": "Accepted", "attributeValue": "60",
                                     "component": {"name": "OCPPCommCtrlr"},
                                     "variable": {"name": "HeartbeatInterval"}}]}
    request = await station.answer_next(result)
    assert request[2:] == ["GetVariables", variables]
    assert await asyncio.wait_for(sending, WAIT) == result

    sending = asyncio.create_task(csms.send("CS1", "RequestStopTransaction", {"transactionId": "tx-1"}))
    await station.answer_next(error="SecurityError")
    with pytest.raises(CsmsCallError) as caught:
        await asyncio.wait_for(sending, WAIT)
    assert caught.value.code == "SecurityError"
    with pytest.raises(ValueError):
        await csms.send("CS1", "RemoteStartTransaction", {"idTag": "TAG1"})  # a 1.6 action
    with pytest.raises(ValueError, match=r"breaks the 2\.0\.1 schema"):  # refused before sending
        await csms.send("CS1", "Reset", {"type": "Hard"})
    # validate=False puts a schema-breaking request on the wire (for tests of the station's errors).
    sending = asyncio.create_task(csms.send("CS1", "Reset", {"type": "Hard"}, validate=False))
    request = await station.answer_next(error="FormatViolation")
    assert request[3] == {"type": "Hard"}
    with pytest.raises(CsmsCallError):
        await asyncio.wait_for(sending, WAIT)
    # A station answer the result schema refuses is an error, never a result.
    sending = asyncio.create_task(csms.send("CS1", "Reset", {"type": "Immediate"}))
    await station.answer_next({"status": "Done"})
    with pytest.raises(ValueError, match="answer breaks"):
        await asyncio.wait_for(sending, WAIT)


async def test_subprotocol_selection_per_version() -> None:
    for version, offered, expected in (("auto", BOTH, "ocpp2.0.1"), ("auto", [Subprotocol("ocpp1.6")], "ocpp1.6"),
                                       ("1.6", BOTH, "ocpp1.6"), ("2.0.1", BOTH, "ocpp2.0.1")):
        csms = Csms(version=version)
        await csms.start()
        try:
            async with connect(csms.url + "/CS1", subprotocols=offered) as connection:
                assert connection.subprotocol == expected, (version, offered)
                await csms.wait_connected("CS1")
                assert csms.version_of("CS1") == expected.removeprefix("ocpp")
            if version == "2.0.1":
                with pytest.raises(InvalidStatus) as caught:
                    async with connect(csms.url + "/CS1", subprotocols=[Subprotocol("ocpp1.6")]):
                        pass
                assert caught.value.response.status_code == 400
        finally:
            await csms.stop()
    with pytest.raises(ValueError):
        Csms(version="2.1")


def _ca() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CSMS CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


async def test_signs_the_csr_and_sends_certificate_signed(csms: Csms, station: RawChargePoint) -> None:
    ca_pem, ca_key = _ca()
    csms.certificate_signer = CsrSigner(ca_pem, ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CS1"),
                                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cpsim")]))
           .sign(key, hashes.SHA256()))
    pem = csr.public_bytes(serialization.Encoding.PEM).decode()
    reply = await station.call("SignCertificate", {"csr": pem, "certificateType": "ChargingStationCertificate"})
    assert reply[2] == {"status": "Accepted"}
    request = await station.answer_next({"status": "Accepted"})
    assert request[2] == "CertificateSigned"
    assert request[3]["certificateType"] == "ChargingStationCertificate"
    chain = x509.load_pem_x509_certificates(request[3]["certificateChain"].encode())
    assert chain[0].subject == csr.subject and chain[1].subject == chain[0].issuer
    chain[0].verify_directly_issued_by(chain[1])
    await eventually(lambda: csms.certificate_signed_results, WAIT, "CertificateSigned answered")
    assert csms.certificate_signed_results == [{"status": "Accepted"}]
    with pytest.raises(ValueError):
        CsrSigner(ca_pem, ca_key)("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")


async def test_process_speaks_the_version_asked_for(tmp_path: Path) -> None:
    async with csms_process("-m", "simulator.cli", "csms", "--port", "0", "--ocpp", "auto", "--accept", "TAG1") as csms:
        command = csms.command
        async with connect(csms.url + "/CS1", subprotocols=BOTH) as connection:
            station = RawChargePoint(connection)
            assert connection.subprotocol == "ocpp2.0.1"
            assert (await station.call("BootNotification", BOOT))[2]["status"] == "Accepted"
            assert (await command({"cmd": "status"}))["versions"] == {"CS1": "2.0.1"}
            answering = asyncio.create_task(station.answer_next({"status": "Accepted"}))
            reply = await command({"cmd": "send", "cp": "CS1", "action": "Reset", "payload": {"type": "OnIdle"}})
            assert reply == {"ok": True, "result": {"status": "Accepted"}}
            assert (await answering)[2:] == ["Reset", {"type": "OnIdle"}]
            refused = await command({"cmd": "send", "cp": "CS1", "action": "Reset", "payload": {"type": "Hard"}})
            assert refused["ok"] is False and "schema" in refused["error"]
        assert (await command({"cmd": "set", "ocpp": "1.6"})) == {"ok": True}
        assert (await command({"cmd": "set", "ocpp": "3"}))["ok"] is False
        async with connect(csms.url + "/CS1", subprotocols=BOTH) as connection:
            assert connection.subprotocol == "ocpp1.6"
        assert await csms.stop() == 0


async def test_hostile_replies_and_answers_to_raw_calls(csms: Csms, station: RawChargePoint) -> None:
    await station.call("BootNotification", BOOT)
    csms.hostile_reply = lambda cp, action, uid, payload: (
        json_text([4, uid, "SecurityError", "no", {}]) if action == "Heartbeat" else None)
    assert (await station.call("Heartbeat", {}))[2:] == ["SecurityError", "no", {}]
    assert (await station.call("StatusNotification", {"timestamp": T, "connectorStatus": "Available", "evseId": 1,
                                                      "connectorId": 1}))[0] == 3  # None: answered normally
    assert [m.action for m in csms.messages("CS1")] == ["BootNotification", "Heartbeat", "StatusNotification"]
    await csms.send_raw("CS1", json_text([2, "raw-1", "Reset", {"type": "Hard"}]))
    await csms.send_raw("CS1", json_text([7, "raw-2", "Heartbeat", {}]))
    first = json.loads(await asyncio.wait_for(station.connection.recv(), WAIT))
    second = json.loads(await asyncio.wait_for(station.connection.recv(), WAIT))
    assert (first[1], second[1]) == ("raw-1", "raw-2")
    await station.connection.send(json_text([4, "raw-1", "FormatViolation", "", {}]))
    await station.connection.send(json_text([4, "raw-2", "MessageTypeNotSupported", "", {}]))
    await station.connection.send(json_text([4, "-1", "RpcFrameworkError", "", {}]))
    await eventually(lambda: len(csms.raw_answers) == 3, WAIT, "the answers")
    assert csms.raw_answers["raw-1"] == [[4, "raw-1", "FormatViolation", "", {}]]
    assert csms.raw_answers["raw-2"][0][2] == "MessageTypeNotSupported"
    assert csms.raw_answers["-1"][0][2] == "RpcFrameworkError"


def json_text(frame: list[Any]) -> str:
    return json.dumps(frame)
