"""[ocpp] version: "auto" offers ocpp2.0.1 and ocpp1.6 and speaks what the CSMS selects (in both directions,
handing the open connection over, remembered for the next start); a CSMS that selects none is refused with
one clear log line. Real websockets, the bundled CSMS, the simulator's hardware underneath."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.server import ServerConnection, serve

from agent.config import load
from agent.ocpp.runner import V16, V201, VersionRunner, remembered
from agent.ocpp.v16.link import Link
from agent.station import Station
from simulator.schema_audit import check_payload
from tests.agent.ocpp.v201.conftest import CP, FAST_VARIABLES, Octt201, eventually, write_config


@contextlib.asynccontextmanager
async def auto_agent(octt: Octt201) -> AsyncIterator[tuple[Station, VersionRunner]]:
    path = write_config(octt.rig, FAST_VARIABLES, "agent-auto.toml")
    path.write_text(path.read_text().replace('version = "2.0.1"', 'version = "auto"'))
    config = load(path)
    assert config.ocpp.version == "auto"
    station = Station(config)
    runner = VersionRunner(station, config)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(station.run()), asyncio.create_task(runner.run_until_stopped(stop))]
    try:
        yield station, runner
    finally:
        stop.set()
        await asyncio.wait({tasks[1]}, timeout=10)
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=10)
        station.close()


async def test_auto_speaks_2_0_1_then_1_6_as_the_csms_selects(octt: Octt201) -> None:
    async with auto_agent(octt) as (station, runner):
        # Nothing remembered: the 1.6 side dials offering both; the CSMS selects ocpp2.0.1 and the 2.0.1 side
        # gets that very connection.
        boot = await octt.wait("BootNotification", within=10)
        assert "chargingStation" in boot.payload
        assert list(octt.csms.handshakes[0].subprotocols) == ["ocpp2.0.1", "ocpp1.6"]
        assert len(octt.csms.handshakes) == 1 and octt.csms.version_of(CP) == "2.0.1"
        await octt.wait_status("Available", evse_id=1)
        assert runner.speaks == V201 and remembered(station.shared.db) == V201
        # The CSMS speaks 1.6 from now on: the next connection is selected ocpp1.6 and the 1.6 side takes it.
        octt.csms.version = "1.6"
        await octt.csms.drop(CP)
        boot16 = await octt.wait("BootNotification", count=2, within=10)
        assert boot16.payload["chargePointVendor"] == "cpsim"
        await eventually(lambda: octt.csms.version_of(CP) == "1.6", what="1.6 connection")
        assert runner.speaks == V16 and remembered(station.shared.db) == V16
        await eventually(lambda: any(m.payload.get("connectorId") == 1 and m.payload.get("status") == "Available"
                                     for m in octt.msgs("StatusNotification")), what="1.6 status")
        # One start of the station, one StartupOfTheDevice, whichever side queued it: the sides a switch
        # hands over to do not report another (they did, once per switch).
        await asyncio.sleep(1.0)  # what the 1.6 side queued at its start is queued by now ...
        # ... and has left once the shared outbox is empty (a loaded machine may take longer than the 1 s)
        await eventually(lambda: runner.service.outbox.depth() == 0, 10, "the shared outbox drained")
        startups = [m for m in octt.msgs("SecurityEventNotification") if m.payload["type"] == "StartupOfTheDevice"]
        assert len(startups) == 1, startups
        # Every CALL the station sent, in either version, passes the official schema strictly (additional
        # properties, lengths, RFC 3339 times with Z: simulator/schema_audit.py).
        problems = [problem for m in octt.msgs() for problem in check_payload(
            "1.6" if m.at >= boot16.at else "2.0.1", "request", m.action, m.payload)]
        assert problems == []


async def test_auto_speaks_1_6_with_a_1_6_csms(octt: Octt201) -> None:
    octt.csms.version = "1.6"
    async with auto_agent(octt) as (_, runner):
        boot = await octt.wait("BootNotification", within=10)
        assert boot.payload["chargePointVendor"] == "cpsim"
        assert list(octt.csms.handshakes[0].subprotocols) == ["ocpp2.0.1", "ocpp1.6"]
        assert octt.csms.version_of(CP) == "1.6" and runner.speaks == V16


async def test_a_csms_selecting_no_subprotocol_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    """The server completes the upgrade without Sec-WebSocket-Protocol: closed at once, one warning naming
    what was offered, redialled with back-off; nothing is spoken on it."""
    frames: list[str | bytes] = []

    async def handler(connection: ServerConnection) -> None:
        with contextlib.suppress(Exception):
            async for frame in connection:
                frames.append(frame)

    async def connected(session: object) -> None:
        raise AssertionError("no session on a connection without a subprotocol")

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        link = Link(f"ws://127.0.0.1:{port}", CP, on_connected=connected, subprotocols=(V201, V16), speaks=V201)
        with caplog.at_level(logging.WARNING, logger="cpagent.ocpp.v16.link"):
            task = asyncio.create_task(link.run())
            await eventually(lambda: link.counters.failures >= 1, within=5, what="refused")
            await link.stop()
            await asyncio.wait({task}, timeout=5)
    assert link.counters.connects == 0 and not frames
    lines = [r.getMessage() for r in caplog.records if "subprotocol" in r.getMessage()]
    assert len(lines) == 1
    assert "selected none of the offered subprotocols ocpp2.0.1, ocpp1.6" in lines[0]
