"""A full charging session in the rig with every meter model, and the rig's shared RS-485 mode (all
meters on one pty, device ids 1..N) with the agent's shared bus scheduler on the other end."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.events import SessionStopped
from drivers.modbus.bus import BusReader
from drivers.modbus.meter import ModbusMeter
from drivers.modbus.ocmf import parse_ocmf, verify_ocmf
from tests.integration.conftest import Bench, start_bench, stop_bench

TAG = "DEADBEEF01"
RESOLUTION_WH = {"sdm630": 1.0, "sdm120": 1.0, "abb_b23": 10.0, "em340": 100.0, "ocmf": 1.0}


async def charge_once(bench: Bench, connector: int = 1) -> SessionStopped:
    c = bench.station.connectors[connector]
    bench.ctl(cmd="plug", connector=connector)
    await bench.station.present_token(TAG, connector)
    await bench.wait_for(lambda: c.controller.relay_feedback_closed is True, 8, "relay closed")
    await bench.wait_for(lambda: c.last_sample is not None and c.last_sample.power_w > 5000, 8, "power flowing")
    bench.ctl(cmd="unplug", connector=connector)
    await bench.wait_for(lambda: any(isinstance(e, SessionStopped) for e in bench.events), 8, "session stop")
    return next(e for e in bench.events if isinstance(e, SessionStopped))


@pytest.mark.parametrize("model", sorted(RESOLUTION_WH))
async def test_full_session_with_each_meter_model(tmp_path: Path, model: str) -> None:
    bench = await start_bench(tmp_path / "rig", meter_model=model)
    try:
        assert f'model = "{model}"' in (tmp_path / "rig" / "agent.toml").read_text()
        meter = bench.station.devices["meter1"]
        assert isinstance(meter, ModbusMeter) and meter.register_map.model == model
        stop = await charge_once(bench)
        plant_energy = bench.rig.connectors[1].plant.energy_wh
        assert plant_energy > 0
        assert stop.session.stop_energy_wh is not None
        assert abs(stop.session.stop_energy_wh - plant_energy) < 50 + RESOLUTION_WH[model]
        if model == "ocmf":  # the driver's signing calls work against the rig's meter too
            record = await meter.start_signed("rig-session")
            assert verify_ocmf(record, await meter.public_key())
            assert parse_ocmf(record).reading["RV"] == pytest.approx(plant_energy / 1000, abs=0.001)
    finally:
        await stop_bench(bench)


async def test_rtu_mode_puts_every_meter_on_one_bus(tmp_path: Path) -> None:
    bench = await start_bench(tmp_path / "rig", connectors=3, meter_transport="rtu", meter_model="em340")
    try:
        ports = {c.meter.port_path for c in bench.rig.connectors.values()}
        assert len(ports) == 1 and None not in ports
        assert [c.meter.device_id for c in bench.rig.connectors.values()] == [1, 2, 3]
        toml = (tmp_path / "rig" / "agent.toml").read_text()
        assert toml.count(f'serial_port = "{ports.pop()}"') == 3 and "device_id = 3" in toml
        meters = [bench.station.devices[f"meter{n}"] for n in (1, 2, 3)]
        readers = [m.reader for m in meters if isinstance(m, ModbusMeter)]
        assert len(readers) == 3 and all(isinstance(r, BusReader) for r in readers)
        assert len({id(r.bus) for r in readers if isinstance(r, BusReader)}) == 1

        bench.rig.connectors[2].plant.energy_wh = 50_000.0  # each meter reads its own connector's plant
        await bench.wait_for(
            lambda: all(m.latest is not None for m in meters)
            and meters[1].latest is not None
            and meters[1].latest.energy_import_wh == 50_000.0,
            8,
            "every meter answering on the shared line",
        )
        stop = await charge_once(bench, 3)
        assert stop.session.connector_id == 3
        assert all(m.latest is not None for m in meters)
        assert meters[0].latest is not None and meters[0].latest.energy_import_wh == 0.0
    finally:
        await stop_bench(bench)
