"""A full charging session in cpsim's rig with the Nextion display: the HMI model shows kW and kWh."""

from __future__ import annotations

import re
from pathlib import Path

from agent.events import ConnectorStatus, SessionStopped
from simulator.nextion import NextionEmulator
from tests.integration.conftest import start_bench, stop_bench

TAG = "DEADBEEF01"


async def test_charging_and_finished_screens(tmp_path: Path) -> None:
    bench = await start_bench(tmp_path / "rig", display="nextion")
    try:
        hmi = bench.rig.display
        assert isinstance(hmi, NextionEmulator)
        c = bench.station.connectors[1]
        await bench.wait_for(lambda: hmi.page_name == "idle" and "Tap card or plug in" in hmi.shown(), 5, "idle")
        bench.ctl(cmd="plug", connector=1)
        bench.ctl(cmd="tap", id_tag=TAG)
        await bench.wait_for(lambda: c.status() is ConnectorStatus.CHARGING, 8, "Charging")

        def charging_with_power() -> bool:
            match = re.fullmatch(r"Power: (\d+\.\d) kW", hmi.texts["t1"])
            return hmi.page_name == "charging" and match is not None and float(match.group(1)) > 5.0

        await bench.wait_for(charging_with_power, 8, "charging screen with kW")
        await bench.wait_for(lambda: hmi.texts["t2"] not in ("", "Energy: 0.00 kWh"), 8, "energy on the screen")
        assert re.fullmatch(r"Energy: \d+\.\d\d kWh", hmi.texts["t2"]) and hmi.texts["t5"] == "Tap your card to stop"
        await bench.station.present_token(TAG)  # the same card stops
        await bench.wait_for(lambda: any(isinstance(e, SessionStopped) for e in bench.events), 5, "session stop")
        await bench.wait_for(lambda: hmi.page_name == "finished" and hmi.texts["t5"], 5, "finished screen")
        assert re.fullmatch(r"Energy: \d+\.\d\d kWh", hmi.texts["t1"]) and hmi.texts["t1"] != "Energy: 0.00 kWh"
        assert hmi.texts["t2"] != "Duration: 0:00:00"
        assert "Unplug your car" in hmi.texts["t5"]
        bench.ctl(cmd="unplug", connector=1)
        await bench.wait_for(lambda: hmi.page_name == "idle", 5, "idle again")
        counters = bench.station.devices["display"].counters()
        assert counters["errors"] == 0 and counters["acks"] > 20
    finally:
        await stop_bench(bench)
