"""A full charging session in cpsim's rig with the PN532 reader: the card is read over the HSU pty."""

from __future__ import annotations

from pathlib import Path

from agent.events import ConnectorStatus, SessionStarted, SessionStopped, StopReason
from simulator.pn532 import Pn532Emulator
from tests.integration.conftest import start_bench, stop_bench


async def test_session_started_by_a_pn532_card(tmp_path: Path) -> None:
    bench = await start_bench(tmp_path / "rig", reader="pn532")
    try:
        assert isinstance(bench.rig.reader, Pn532Emulator)
        c = bench.station.connectors[1]
        bench.ctl(cmd="plug", connector=1)
        await bench.wait_for(lambda: c.status() is ConnectorStatus.PREPARING, 5, "Preparing")
        bench.ctl(cmd="tap", id_tag="04A1B2C3D4E5F6")  # 7-byte ISO 14443A UID, polled by the driver
        await bench.wait_for(lambda: any(isinstance(e, SessionStarted) for e in bench.events), 5, "session start")
        started = next(e for e in bench.events if isinstance(e, SessionStarted))
        assert started.session.id_tag == "04A1B2C3D4E5F6"
        await bench.wait_for(lambda: c.last_sample is not None and c.last_sample.power_w > 5000, 8, "power flowing")
        bench.ctl(cmd="unplug", connector=1)
        await bench.wait_for(lambda: any(isinstance(e, SessionStopped) for e in bench.events), 5, "session stop")
        stop = next(e for e in bench.events if isinstance(e, SessionStopped))
        assert stop.reason is StopReason.EV_DISCONNECTED and stop.session.energy_wh > 0
    finally:
        await stop_bench(bench)
