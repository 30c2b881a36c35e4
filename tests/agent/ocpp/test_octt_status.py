"""StatusNotification timing (MinimumStatusDuration) and how `cpagent run` ends when OCPP breaks."""

from __future__ import annotations

import asyncio
import logging

import pytest

from agent.config import load
from agent.ocpp.v16.link import Backoff
from agent.ocpp.v16.service import OcppService, run_until_stopped
from agent.station import Station
from tests.agent.ocpp.conftest import Octt, eventually


def connector_statuses(octt: Octt) -> list[str]:
    return [m.payload["status"] for m in octt.msgs("StatusNotification") if m.payload["connectorId"] == 1]


async def test_status_shorter_than_minimum_status_duration_is_not_reported(octt: Octt) -> None:
    await octt.start_agent(MinimumStatusDuration="2")
    await octt.booted()
    await octt.wait_status("Available")
    octt.ctl("plug")
    await asyncio.sleep(0.5)
    octt.ctl("unplug")  # Preparing lasted 0.5 s < 2 s: the CSMS never hears of it
    await asyncio.sleep(3)
    assert "Preparing" not in connector_statuses(octt)
    octt.ctl("plug")  # now it lasts: reported once the 2 s have passed, not before
    await asyncio.sleep(1)
    assert "Preparing" not in connector_statuses(octt)
    await octt.wait_status("Preparing", within=4)
    # A triggered status is an answer, not a change: it is not held back.
    sent = len(octt.msgs("StatusNotification"))
    answer = await octt.csms.send("CP1", "TriggerMessage", {"requestedMessage": "StatusNotification",
                                                            "connectorId": 1})
    assert answer == {"status": "Accepted"}
    await eventually(lambda: len(octt.msgs("StatusNotification")) > sent, 1.5, "triggered status")


async def test_every_change_is_reported_with_the_default_zero(octt: Octt) -> None:
    await octt.start_agent()
    await octt.booted()
    await octt.wait_status("Available")
    octt.ctl("plug")
    await octt.wait_status("Preparing", within=2)
    octt.ctl("unplug")
    await eventually(lambda: connector_statuses(octt)[-1:] == ["Available"], 3, "Available again")


async def test_ocpp_service_that_ends_by_itself_makes_cpagent_exit_1(octt: Octt, caplog: pytest.LogCaptureFixture
                                                                    ) -> None:
    config = load(octt.rig.dir / "agent.toml")
    station = Station(config)
    service = OcppService(station, config, backoff=Backoff(base=0.05, cap=0.3, jitter=0.0))

    async def broken_sampler() -> None:
        await asyncio.sleep(0.2)
        raise RuntimeError("sampler bug")

    service.tx.aligned_sampler = broken_sampler  # type: ignore[method-assign]
    station_task = asyncio.create_task(station.run())
    try:
        with caplog.at_level(logging.CRITICAL):
            status = await asyncio.wait_for(run_until_stopped(station, config, asyncio.Event(), service), 10)
        assert status == 1
        assert any("ended unexpectedly" in r.getMessage() and r.exc_info for r in caplog.records)
    finally:
        station_task.cancel()
        await asyncio.gather(station_task, return_exceptions=True)
        station.close()
