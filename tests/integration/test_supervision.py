"""One failing driver never takes the charger down: crashes and hangs injected into connector 1's board
driver while connector 2 keeps charging."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.events import ConnectorStatus
from hal.types import Fault
from tests.integration.conftest import Bench, start_bench, stop_bench

TAG = "DEADBEEF01"


async def _charge_both(b: Bench) -> None:
    """Plug an EV into connectors 1 and 2, tap the card on each, and wait until both relays are closed."""
    for n in (1, 2):
        b.ctl(cmd="plug", connector=n)
        c = b.station.connectors[n]
        await b.wait_for(lambda c=c: c.controller.cp_state is not None and c.controller.cp_state.ev_connected,
                         5, f"EV on {n}")
        await b.station.present_token(TAG, n)
    for n in (1, 2):
        c = b.station.connectors[n]
        await b.wait_for(lambda c=c: c.controller.relay_feedback_closed is True, 8, f"charging on {n}")


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[Bench]:
    b = await start_bench(tmp_path / "rig", connectors=2)
    try:
        await _charge_both(b)
        yield b
    finally:
        await stop_bench(b)


async def _keeps_charging(b: Bench, n: int, seconds: float) -> None:
    c = b.station.connectors[n]
    plant = b.rig.connectors[n].plant
    start_energy = plant.energy_wh
    for _ in range(int(seconds / 0.1)):
        assert c.status() is ConnectorStatus.CHARGING and plant.relay_closed
        await asyncio.sleep(0.1)
    assert plant.energy_wh > start_energy


async def test_driver_crash_faults_its_connector_only_and_recovers(two: Bench) -> None:
    board = two.station.devices["board1"]
    original = board._serve  # type: ignore[attr-defined]
    crashes = 0

    async def crash_once() -> None:
        nonlocal crashes
        crashes += 1
        board._serve = original  # type: ignore[attr-defined]
        raise RuntimeError("injected driver bug")

    board._serve = crash_once  # type: ignore[attr-defined]
    board._lose_port("test: force the serve loop round")  # type: ignore[attr-defined]
    c1 = two.station.connectors[1]
    await two.wait_for(lambda: Fault.INTERNAL in c1.faults, 3, "connector 1 faulted by the crash")
    assert crashes == 1 and c1.status() is ConnectorStatus.FAULTED
    assert not two.rig.connectors[1].plant.relay_closed or not c1.controller.relay_commanded_closed
    assert two.station.supervisor.tasks["device:board1"].restarts == 1
    await _keeps_charging(two, 2, 1.5)
    await two.wait_for(lambda: Fault.INTERNAL not in c1.faults, 5, "connector 1 back after the restart")
    events = [e.text for e in two.station.eventlog.query(limit=50)]
    assert any("crashed" in t for t in events) and any("running again" in t for t in events)


async def test_driver_that_keeps_crashing_stays_down(two: Bench) -> None:
    board = two.station.devices["board1"]
    sup = two.station.supervisor
    sup.base_delay_s = sup.max_delay_s = 0.05

    async def always_crash() -> None:
        raise RuntimeError("injected persistent bug")

    board._serve = always_crash  # type: ignore[attr-defined]
    board._lose_port("test")  # type: ignore[attr-defined]
    await two.wait_for(lambda: sup.tasks["device:board1"].gave_up, 10, "supervisor giving up")
    assert sup.tasks["device:board1"].restarts == sup.max_crashes
    assert two.station.connectors[1].status() is ConnectorStatus.FAULTED
    await _keeps_charging(two, 2, 1.0)


async def test_hung_driver_opens_its_relay_other_connector_unaffected(two: Bench) -> None:
    board: Any = two.station.devices["board1"]

    async def hang() -> None:
        await asyncio.Event().wait()  # no keep-alives any more: the board's own watchdog must act

    board._serve = hang
    board._lose_port("test")
    plant1 = two.rig.connectors[1].plant
    await two.wait_for(lambda: not plant1.relay_closed, 4, "board 1 opening its relay on keep-alive loss")
    await _keeps_charging(two, 2, 1.0)


async def test_driver_crash_reaches_the_csms_as_faulted_and_the_other_session_goes_on(tmp_path: Path) -> None:
    from agent.ocpp.v16.service import OcppService

    b = await start_bench(tmp_path / "rig", connectors=2, bundled_csms=True)
    service = OcppService(b.station, b.station.config)
    task = asyncio.create_task(service.run())
    try:
        await b.wait_for(lambda: service.accepted, 10, "boot accepted")
        csms = b.rig.csms
        assert csms is not None
        await _charge_both(b)
        await b.wait_for(lambda: len(csms.messages("CP001", "StartTransaction")) == 2, 10, "two Starts at the CSMS")
        seen = len(csms.messages("CP001", "StatusNotification"))
        board: Any = b.station.devices["board1"]
        original = board._serve

        async def crash_once() -> None:
            board._serve = original
            raise RuntimeError("injected driver bug")

        board._serve = crash_once
        board._lose_port("test: force the serve loop round")

        def faulted_note() -> bool:
            return any(m.payload["connectorId"] == 1 and m.payload["status"] == "Faulted"
                       and m.payload["errorCode"] == "InternalError"
                       for m in csms.messages("CP001", "StatusNotification")[seen:])

        await b.wait_for(faulted_note, 8, "StatusNotification Faulted/InternalError for connector 1")
        await _keeps_charging(b, 2, 1.0)
        assert not any(m.payload["connectorId"] == 2 and m.payload["status"] != "Charging"
                       for m in csms.messages("CP001", "StatusNotification")[seen:])
    finally:
        await service.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await stop_bench(b)
