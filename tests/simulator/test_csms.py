"""The bundled CSMS, driven by a raw websockets client that plays the charge point (127.0.0.1 only)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from simulator.csms import Csms, CsmsCallError

WAIT = 5.0
OCPP16 = [Subprotocol("ocpp1.6")]
REPO = Path(__file__).resolve().parents[2]


class RawChargePoint:
    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self._next = 0

    async def call(self, action: str, payload: dict[str, Any]) -> list[Any]:
        self._next += 1
        unique_id = f"m{self._next}"
        await self.connection.send(json.dumps([2, unique_id, action, payload]))
        async with asyncio.timeout(WAIT):
            reply: list[Any] = json.loads(await self.connection.recv())
        assert reply[1] == unique_id
        return reply

    async def answer_next(self, payload: dict[str, Any] | None = None, error: str | None = None) -> list[Any]:
        async with asyncio.timeout(WAIT):
            request: list[Any] = json.loads(await self.connection.recv())
        if error:
            await self.connection.send(json.dumps([4, request[1], error, "nope", {}]))
        else:
            await self.connection.send(json.dumps([3, request[1], payload or {}]))
        return request


@dataclass
class CsmsProcess:
    """The bundled CSMS as its own process: its websocket URL (no path) and its control socket."""

    process: asyncio.subprocess.Process
    url: str
    control: Path
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def command(self, request: Any) -> dict[str, Any]:
        """One control-socket request (a JSON object, or raw text) and its reply."""
        self.writer.write((request if isinstance(request, str) else json.dumps(request)).encode() + b"\n")
        reply: dict[str, Any] = json.loads(await asyncio.wait_for(self.reader.readline(), WAIT))
        return reply

    async def stop(self) -> int:
        """SIGTERM; the exit status."""
        self.writer.close()
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), WAIT)


@contextlib.asynccontextmanager
async def csms_process(*args: str) -> AsyncIterator[CsmsProcess]:
    """``python ARGS... --control SOCKET`` (a CSMS command line announcing its port as JSON), killed at the end
    if still running."""
    control = Path(tempfile.mkdtemp(dir="/tmp")) / "csms.sock"  # Unix socket paths must stay short
    process = await asyncio.create_subprocess_exec(
        sys.executable, *args, "--control", str(control), stdout=asyncio.subprocess.PIPE, cwd=REPO)
    try:
        assert process.stdout is not None
        announced = json.loads(await asyncio.wait_for(process.stdout.readline(), 20))
        reader, writer = await asyncio.open_unix_connection(str(control))
        yield CsmsProcess(process, f"ws://127.0.0.1:{announced['port']}", control, reader, writer)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        if control.exists():
            os.unlink(control)
        control.parent.rmdir()


@pytest.fixture
async def csms(tmp_path: Path) -> AsyncIterator[Csms]:
    server = Csms(log_path=tmp_path / "frames.jsonl", boot_status="Pending", heartbeat_interval=60,
                  accept=["TAG1"], auth_list={"BLOCKED": "Blocked"})
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def charge_point(csms: Csms) -> AsyncIterator[RawChargePoint]:
    async with connect(csms.url + "/CP1", subprotocols=OCPP16) as connection:
        assert connection.subprotocol == "ocpp1.6"
        yield RawChargePoint(connection)


async def test_answers_every_charge_point_message(csms: Csms, charge_point: RawChargePoint,
                                                  tmp_path: Path) -> None:
    boot = await charge_point.call("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"})
    assert boot[2]["status"] == "Pending" and boot[2]["interval"] == 60 and boot[2]["currentTime"].endswith("Z")
    assert (await charge_point.call("Heartbeat", {}))[2]["currentTime"].endswith("Z")
    assert (await charge_point.call("Authorize", {"idTag": "TAG1"}))[2] == {"idTagInfo": {"status": "Accepted"}}
    assert (await charge_point.call("Authorize", {"idTag": "WHO"}))[2] == {"idTagInfo": {"status": "Invalid"}}
    assert (await charge_point.call("Authorize", {"idTag": "BLOCKED"}))[2]["idTagInfo"]["status"] == "Blocked"
    start = {"connectorId": 1, "idTag": "TAG1", "meterStart": 0, "timestamp": "2026-01-01T00:00:00Z"}
    first = await charge_point.call("StartTransaction", start)
    second = await charge_point.call("StartTransaction", {**start, "idTag": "WHO"})
    assert first[2] == {"transactionId": 1, "idTagInfo": {"status": "Accepted"}}
    assert second[2] == {"transactionId": 2, "idTagInfo": {"status": "Invalid"}}
    stop = {"transactionId": 1, "meterStop": 1200, "timestamp": "2026-01-01T01:00:00Z"}
    assert (await charge_point.call("StopTransaction", stop))[2] == {}
    assert (await charge_point.call("StopTransaction", {**stop, "idTag": "TAG1"}))[2] == {
        "idTagInfo": {"status": "Accepted"}}
    empty_confs = {
        "MeterValues": {"connectorId": 1, "meterValue": [
            {"timestamp": "2026-01-01T00:30:00Z", "sampledValue": [{"value": "600"}]}]},
        "StatusNotification": {"connectorId": 0, "errorCode": "NoError", "status": "Available"},
        "FirmwareStatusNotification": {"status": "Idle"},
        "DiagnosticsStatusNotification": {"status": "Idle"},
        "SecurityEventNotification": {"type": "StartupOfTheDevice", "timestamp": "2026-01-01T00:00:00Z"},
    }
    for action, payload in empty_confs.items():
        reply = await charge_point.call(action, payload)
        assert reply[0] == 3 and reply[2] == {}, action
    assert (await charge_point.call("DataTransfer", {"vendorId": "acme"}))[2] == {"status": "Accepted"}
    bad = await charge_point.call("StatusNotification", {"connectorId": 0})
    assert bad[0] == 4  # the library validates: missing fields are refused

    actions = [m.action for m in csms.messages("CP1")]
    assert actions[:3] == ["BootNotification", "Heartbeat", "Authorize"] and len(actions) == 16
    assert csms.messages("CP1", "StartTransaction")[1].payload["idTag"] == "WHO"

    lines = [json.loads(line) for line in (tmp_path / "frames.jsonl").read_text().splitlines()]
    assert len(lines) == 32 and {line["dir"] for line in lines} == {"in", "out"}
    assert all(set(line) == {"t", "dir", "cp", "frame"} and line["cp"] == "CP1" for line in lines)
    assert lines[0]["frame"][2] == "BootNotification" and lines[1]["frame"][0] == 3
    assert lines[0]["t"].endswith("Z")


async def test_sends_calls_to_the_charge_point(csms: Csms, charge_point: RawChargePoint) -> None:
    await csms.wait_connected("CP1")
    sending = asyncio.create_task(csms.send("CP1", "ChangeConfiguration", {"key": "HeartbeatInterval",
                                                                           "value": "30"}))
    request = await charge_point.answer_next({"status": "Accepted"})
    assert request[2:] == ["ChangeConfiguration", {"key": "HeartbeatInterval", "value": "30"}]
    assert await asyncio.wait_for(sending, WAIT) == {"status": "Accepted"}

    sending = asyncio.create_task(csms.send("CP1", "RemoteStartTransaction", {"idTag": "TAG1", "connectorId": 1}))
    request = await charge_point.answer_next(error="NotSupported")
    assert request[3] == {"idTag": "TAG1", "connectorId": 1}
    with pytest.raises(CsmsCallError) as caught:
        await asyncio.wait_for(sending, WAIT)
    assert caught.value.code == "NotSupported"

    sending = asyncio.create_task(csms.send("CP1", "GetConfiguration", {"key": ["HeartbeatInterval"]}))
    await charge_point.answer_next({"configurationKey": [{"key": "HeartbeatInterval", "readonly": False,
                                                          "value": "30"}]})
    assert (await asyncio.wait_for(sending, WAIT))["configurationKey"][0]["value"] == "30"
    with pytest.raises(ValueError):
        await csms.send("CP1", "FlyToTheMoon", {})
    with pytest.raises(LookupError):
        await csms.send("CP9", "Reset", {"type": "Soft"})
    await csms.send_raw("CP1", "not json")
    assert await asyncio.wait_for(charge_point.connection.recv(), WAIT) == "not json"


async def test_rejects_clients_without_ocpp16_subprotocol(csms: Csms) -> None:
    with pytest.raises(InvalidStatus) as caught:
        async with connect(csms.url + "/CP1"):
            pass
    assert caught.value.response.status_code == 400


async def test_basic_auth_is_checked() -> None:
    csms = Csms(password="pw")
    await csms.start()
    try:
        with pytest.raises(InvalidStatus) as caught:
            async with connect(csms.url + "/CP1", subprotocols=OCPP16):
                pass
        assert caught.value.response.status_code == 401
        wrong_user = {"Authorization": "Basic " + base64.b64encode(b"CP2:pw").decode()}
        with pytest.raises(InvalidStatus):
            async with connect(csms.url + "/CP1", subprotocols=OCPP16, additional_headers=wrong_user):
                pass
        good = {"Authorization": "Basic " + base64.b64encode(b"CP1:pw").decode()}
        async with connect(csms.url + "/CP1", subprotocols=OCPP16, additional_headers=good) as connection:
            assert connection.subprotocol == "ocpp1.6"
    finally:
        await csms.stop()


async def test_outage_drops_connections_and_refuses_dials_for_a_while(csms: Csms,
                                                                      charge_point: RawChargePoint) -> None:
    await csms.wait_connected("CP1")
    await csms.outage(0.5)
    async with asyncio.timeout(WAIT):
        await charge_point.connection.wait_closed()
    with pytest.raises(OSError):
        async with connect(csms.url + "/CP1", subprotocols=OCPP16):
            pass
    await asyncio.sleep(0.6)
    async with connect(csms.url + "/CP1", subprotocols=OCPP16) as connection:
        await csms.wait_connected("CP1")
        assert connection.subprotocol == "ocpp1.6"


async def test_process_with_control_socket(tmp_path: Path) -> None:
    log = tmp_path / "frames.jsonl"
    async with csms_process(
        "-c", "import sys; from simulator.csms import main; sys.exit(main(sys.argv[1:]))",
        "csms", "--port", "0", "--boot", "Rejected", "--interval", "7", "--accept", "TAG1", "--log", str(log),
    ) as csms:
        command = csms.command
        async with connect(csms.url + "/CP1", subprotocols=OCPP16) as connection:
            charge_point = RawChargePoint(connection)
            boot = await charge_point.call("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"})
            assert boot[2]["status"] == "Rejected" and boot[2]["interval"] == 7
            assert (await command({"cmd": "status"}))["connected"] == ["CP1"]
            messages = (await command({"cmd": "messages", "cp": "CP1"}))["messages"]
            assert [m["action"] for m in messages] == ["BootNotification"]
            answering = asyncio.create_task(charge_point.answer_next({"status": "Accepted"}))
            reply = await command({"cmd": "send", "cp": "CP1", "action": "Reset", "payload": {"type": "Hard"}})
            assert reply == {"ok": True, "result": {"status": "Accepted"}}
            assert (await answering)[2:] == ["Reset", {"type": "Hard"}]
            assert (await command({"cmd": "set", "boot": "Accepted"})) == {"ok": True}
            boot = await charge_point.call("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"})
            assert boot[2]["status"] == "Accepted"
            assert (await command("{broken"))["ok"] is False
            assert (await command({"cmd": "send", "cp": "CP9", "action": "Reset", "payload": {}}))["ok"] is False
            assert (await command({"cmd": "outage", "seconds": 0.2})) == {"ok": True}
            async with asyncio.timeout(WAIT):
                await connection.wait_closed()
        assert await csms.stop() == 0
        assert not csms.control.exists()
        frames = [json.loads(line) for line in log.read_text().splitlines()]
        assert [f["dir"] for f in frames[:2]] == ["in", "out"] and frames[0]["frame"][2] == "BootNotification"
