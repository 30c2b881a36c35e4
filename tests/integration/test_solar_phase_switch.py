"""Solar mode with phase switching end to end (issue 15): the real Station and its SiteController in
`[site] mode = "solar"` against cpsim's site (PV, the site meter as an SDM630 over Modbus TCP) and its pilot
board emulator on a pty. A 3-phase EV charges on the sun on three phases; the PV drops below 3 x 6 A of
surplus but still covers 1 x 6 A: the solar rules switch the board to one phase (through the real
pilot-board protocol, never under load) and the EV goes on charging on one phase instead of stopping.
The solar delays are shortened (seconds, not minutes) so the story fits in a test."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from agent.config import load
from agent.station import Station
from simulator.rig import Rig, RigOptions
from tests.agent.test_site_controller import Harness
from tests.agent.test_site_controller import load as connector_load
from tests.integration.conftest import Bench, stop_bench

TAG = "DEADBEEF01"
FAST_SOLAR = {"solar_start_delay_s": 0.5, "solar_stop_delay_s": 1.0, "solar_min_run_s": 1.0,
              "solar_min_pause_s": 0.5, "solar_import_margin_w": 200.0}


async def test_surplus_below_three_times_6_a_switches_the_3_phase_ev_to_one_phase(tmp_path: Path) -> None:
    rig = Rig(RigOptions(directory=tmp_path, site_fuse_a=25.0, site_meter="tcp", site_mode="solar"))
    await rig.start()
    path = tmp_path / "agent.toml"
    path.write_text(path.read_text().replace("[[connectors]]\nid = 1\n",
                                             "[[connectors]]\nid = 1\nphase_switch_settle_s = 1.0\n"))
    config = load(path)
    assert config.site.mode == "solar"
    config = dataclasses.replace(config, site=dataclasses.replace(config.site, phase_switching=True, **FAST_SOLAR))
    station = Station(config)
    bench = Bench(rig, station, asyncio.create_task(station.run()))
    loop = asyncio.get_running_loop()
    try:
        c = station.connectors[1]
        plant = rig.connectors[1].plant
        site = rig.site
        assert site is not None
        bench.ctl(cmd="site", action="load", value=0.3)
        bench.ctl(cmd="site", action="pv", value=7.0)  # 6.7 kW of surplus: 3 x 9.7 A
        await bench.wait_for(lambda: c.phase_switcher.supported, 5, "the board reports its phase contactor")
        await bench.wait_for(lambda: station.site is not None and station.site.last_capacity is not None, 5,
                             "the first site-meter reading")  # else the session starts at the failsafe 6 A
        duties: list[float] = []

        async def first_pwm() -> None:
            while not duties:
                if plant.pwm_duty is not None:
                    duties.append(plant.pwm_duty)
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(first_pwm())
        bench.ctl(cmd="plug", connector=1)
        assert (await station.present_token(TAG, 1)).accepted
        await bench.wait_for(lambda: plant.relay_closed and min(plant.phase_currents()) > 5.5, 15,
                             "charging on three phases from the sun")
        assert c.view().binding_limit == "solar" and plant.supply_phases == 3
        await watcher
        assert duties[0] < 17.0, "the first PWM offers the solar current (9.7 A = 16.2 %), not what the fuse leaves"

        # A cloud: 2.5 kW of PV leaves 2.2 kW of surplus, enough for 1 x 9.5 A, not for 3 x 6 A.
        bench.ctl(cmd="site", action="pv", value=2.5)
        await bench.wait_for(lambda: plant.supply_phases == 1, 15, "the switch to one phase")
        assert c.phase_switcher.active_phases() == 1
        await bench.wait_for(lambda: plant.relay_closed and plant.phase_currents()[0] > 5.5, 15,
                             "charging again, on one phase")
        currents = plant.phase_currents()
        assert currents[1] == 0.0 and currents[2] == 0.0, currents
        assert plant.phase_switches == 1 and plant.phase_switches_under_load == 0
        assert c.view().binding_limit == "solar" and c.session is not None  # the session went on
        # On one phase the EV uses the surplus (2.2 kW) without importing more than a ramp's worth.
        assert sum(site.grid_currents(loop.time())) * 230.0 < 1000.0
    finally:
        await stop_bench(bench)


def test_in_solar_mode_a_connector_without_a_session_is_offered_nothing() -> None:
    """So a new session does not start a PWM at what the fuse leaves before the solar rules decide."""
    h = Harness([connector_load(1, active=False)], mode="solar", fuse=25.0)
    h.run(1.0, answer=(-10.0, -10.0, -10.0))  # 6.9 kW of export
    assert h.applied[1] == (0.0, "solar")
    h = Harness([connector_load(1, active=False)], mode="grid-limit", fuse=25.0)
    h.run(1.0, answer=(-10.0, -10.0, -10.0))
    assert h.applied[1] == (34.0, "site-fuse")  # grid-limit: what is free (25 - 1 + 10 A exported), as before
