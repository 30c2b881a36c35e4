"""The OCPP 1.6 service on the network side of the station socket: OcppService runs on a StationProxy (its
own database connection, no Station object) while the Station on the simulator rig runs behind a
ControlServer; one whole transaction reaches the bundled CSMS over a real websocket."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.config import load
from agent.ipc.control_server import ControlServer
from agent.ipc.station_proxy import StationProxy
from agent.ocpp.v16.link import Backoff
from agent.ocpp.v16.service import OcppService
from agent.station import Station
from hal.tasks import cancel_and_wait
from simulator.csms import Csms
from simulator.rig import Rig, RigOptions
from tests.agent.ocpp.conftest import CP, FAST_KEYS, TAG, eventually


@pytest.fixture
async def csms() -> AsyncIterator[Csms]:
    server = Csms(accept=[TAG], heartbeat_interval=300)
    await server.start()
    yield server
    await server.stop()


async def test_a_transaction_through_the_station_socket_reaches_the_csms(tmp_path: Path, csms: Csms) -> None:
    rig = Rig(RigOptions(directory=tmp_path, csms_url=csms.url, charge_point_id=CP))
    await rig.start()
    config = load(tmp_path / "agent.toml")
    config = dataclasses.replace(config, ocpp=dataclasses.replace(config.ocpp, keys=dict(FAST_KEYS)),
                                 allowed_tokens=frozenset())
    short = Path(tempfile.mkdtemp(prefix="cpipc", dir="/tmp"))
    station = Station(config)  # the control side: its allow-list is empty, only the CSMS can accept TAG
    station_task = asyncio.create_task(station.run())
    server = ControlServer(station, short / "station.sock", refresh_s=0.2)
    await server.start()
    proxy = StationProxy(short / "station.sock", config.state_dir / "state.db")
    service: OcppService | None = None
    service_task: asyncio.Task[None] | None = None
    try:
        await proxy.start(timeout_s=5)
        service = OcppService(proxy, config, backoff=Backoff(base=0.05, cap=0.3, jitter=0.0))
        service_task = asyncio.create_task(service.run())
        await csms.wait_for(CP, "BootNotification", within=8)

        rig.control({"cmd": "plug", "connector": 1})
        await eventually(lambda: proxy.connector_view(1).plugged_in, 5, "EV plugged in (proxy)")
        rig.control({"cmd": "tap", "id_tag": TAG})  # the station asks the proxy, the proxy asks the CSMS
        start = await csms.wait_for(CP, "StartTransaction", within=8)
        assert start.payload["connectorId"] == 1 and start.payload["idTag"] == TAG
        await eventually(lambda: any(m.payload["status"] == "Charging"
                                     for m in csms.messages(CP, "StatusNotification")), 8, "Charging at the CSMS")
        assert any(m.payload["idTag"] == TAG for m in csms.messages(CP, "Authorize"))
        await eventually(lambda: proxy.connector_view(1).session_energy_wh >= 2, 10, "energy in the mirrored view")

        rig.control({"cmd": "unplug", "connector": 1})
        stop = await csms.wait_for(CP, "StopTransaction", within=8)
        assert stop.payload["reason"] == "EVDisconnected"
        assert stop.payload["transactionId"] == 1  # the id the CSMS gave the Start
        assert stop.payload["meterStop"] > start.payload["meterStart"]
        await eventually(lambda: service is not None and service.outbox.depth() == 0, 5, "outbox drained")
        await asyncio.sleep(0.3)
        assert len(csms.messages(CP, "StartTransaction")) == 1 and len(csms.messages(CP, "StopTransaction")) == 1
    finally:
        if service_task is not None:
            await cancel_and_wait(service_task)
        if service is not None:
            await asyncio.wait_for(service.stop(), 10)
        await proxy.close()
        await server.stop()
        await cancel_and_wait(station_task)
        station.close()
        await rig.stop()
        shutil.rmtree(short, ignore_errors=True)
