"""The simulated site (simulator/site.py): profiles, per-phase grid current with the EVs on 1 or 3 phases,
and the rig's site meter read by the real modbus-meter driver over Modbus TCP and a shared RTU line."""

from __future__ import annotations

import asyncio
import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus.meter import create
from hal import Role, SiteMeter
from simulator.cli import main
from simulator.physics import Plant
from simulator.rig import Rig, RigOptions
from simulator.site import Profile, ProfileError, Site, parse_profiles
from tests.drivers.helpers import wait_for

V = 230.0


def charging(amps: float, *, ev_phases: int = 3, supply: int = 3, site_phases: tuple[int, ...] = (1, 2, 3)) -> Plant:
    plant = Plant(plugged=True, relay_commanded_closed=True, current_a=amps, supply_phases=supply)
    plant.ev.phases = ev_phases
    plant.site_phases = site_phases
    return plant


def test_profile_rows_header_clock_times_and_interpolation() -> None:
    load, pv = parse_profiles("time,kW\n# night\n00:00,1.0\n01:00,3.0\n02:00:00,3.0\n")
    assert pv is None and load.times_s == (0.0, 3600.0, 7200.0)
    assert load.at(-5) == 1.0 and load.at(1800) == pytest.approx(2.0) and load.at(99_999) == 3.0
    load, pv = parse_profiles("0,0.5,0\n600,0.5,4.2\n")
    assert pv is not None and pv.at(300) == pytest.approx(2.1) and load.at(300) == 0.5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0,1\n60,x\n", "row 2"),
        ("0,1\n0,2\n", "row 2: time 0 s is not after 0 s"),
        ("0,1\n60,1,2\n", "row 2: 3 columns"),
        ("0,-1\n", "must not be negative"),
        ("0,1,2,3\n", "expected time,kW"),
        ("time,kW\n", "no rows"),
        ("0,nan\n", "finite"),
    ],
)
def test_bad_profile_names_the_row(text: str, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        parse_profiles(text)


def test_grid_current_is_house_plus_evs_minus_pv_per_phase() -> None:
    three = charging(16.0)
    single = charging(10.0, ev_phases=1)
    rotated = charging(8.0, ev_phases=1, site_phases=(3, 1, 2))  # socket L1 on site L3
    switched = charging(6.0, supply=1)  # a 3-phase EV behind a board switched to 1 phase
    plants = [three, single, rotated, switched]
    site = Site(lambda: plants, fuse_a=35, house_kw=6.9, pv_kw=0.0)
    house = 6900 / 3 / V  # 10 A per phase
    assert site.grid_currents(0.0) == pytest.approx((house + 16 + 10 + 6, house + 16, house + 16 + 8))
    site.set_pv_kw(13.8)  # 20 A per phase back into the grid
    assert site.grid_currents(0.0)[1] == pytest.approx(house + 16 - 20)
    three.relay_commanded_closed = False  # an open contactor carries nothing
    assert site.ev_currents() == pytest.approx((16.0, 0.0, 8.0))
    values = site.meter_values(0.0)
    assert values["current_l2"] == pytest.approx(10.0) and values["power_l2"] == pytest.approx(-10.0 * V)


def test_profiles_play_compressed_and_energy_is_integrated() -> None:
    site = Site(list, house_kw=0.0)
    day = Profile((0.0, 43_200.0, 86_400.0), (0.0, 6.9, 0.0))
    site.set_profile(day, None, now=100.0, speed=1440.0)  # 24 h in 60 s
    assert site.house_kw_at(100.0) == 0.0 and site.house_kw_at(130.0) == pytest.approx(6.9)
    site.step(130.0)  # 30 s at noon's 6.9 kW (steps take the power at their end): 57.5 Wh
    site.step(130.0 + 3600.0)  # one real hour after the end of the day: 0 kW
    site.set_house_kw(2.3)  # a constant replaces the profile
    site.step(130.0 + 7200.0)
    assert site.import_wh == pytest.approx(57.5 + 2300.0, rel=1e-3)
    site.set_pv_kw(4.6)
    site.step(130.0 + 10_800.0)
    assert site.export_wh == pytest.approx(2300.0, rel=1e-3)
    with pytest.raises(ValueError, match="speed"):
        site.set_profile(day, None, now=0.0, speed=0.0)


async def _read_site_meter(config: dict[str, Any], check: Callable[[tuple[float, float, float]], bool]) -> None:
    grid = dict(config["devices"]["grid"])
    driver = grid.pop("driver")
    assert driver == "modbus-meter"
    meter = create("grid", {**grid, "poll_interval_s": 0.1})
    site = meter.role(Role.SITE_METER)
    assert isinstance(site, SiteMeter)
    task = asyncio.create_task(meter.run())
    try:
        await wait_for(lambda: (s := site.latest()) is not None and check(s.current_a), limit_s=15.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
async def test_rig_site_meter_read_by_the_driver(tmp_path: Path, transport: str) -> None:
    options = RigOptions(directory=tmp_path, connectors=2, meter_transport=transport, site_fuse_a=35.0,
                         site_meter=transport, site_mode="solar", ev_phases=1, site_rotation=True)
    rig = Rig(options)
    await rig.start()
    try:
        config = tomllib.loads((tmp_path / "agent.toml").read_text())
        assert config["site"] == {"meter": "grid", "main_fuse_a": 35, "phases": 3, "mode": "solar"}
        if transport == "rtu":  # on the connector meters' line, next device id
            assert config["devices"]["grid"]["serial_port"] == config["devices"]["meter1"]["serial_port"]
            assert config["devices"]["grid"]["device_id"] == 3
        assert [c["site_phases"] for c in config["connectors"]] == [[1, 2, 3], [2, 3, 1]]
        for n, amps in ((1, 16.0), (2, 10.0)):  # 1-phase EVs: site L1 and, rotated, site L2
            plant = rig.connectors[n].plant
            plant.plugged = plant.relay_commanded_closed = True
            plant.ev.ramp_a_per_s = 0.0  # no pilot here: the physics ticker would ramp the current down
            plant.current_a = amps
        assert rig.control({"cmd": "site", "action": "load", "value": 6.9})["ok"]
        reply = rig.control({"cmd": "site", "action": "pv", "value": 13.8})  # -10 A per phase net of the house
        assert reply["state"]["site"]["grid_current_a"] == pytest.approx([6.0, 0.0, -10.0])
        assert reply["state"]["connectors"]["2"]["phase_currents_a"] == [10.0, 0.0, 0.0]
        await _read_site_meter(config, lambda amps: amps == pytest.approx((6.0, 0.0, -10.0), abs=0.01))
    finally:
        await rig.stop()


async def test_cpsim_ctl_site_verbs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rig = Rig(RigOptions(directory=tmp_path, site_fuse_a=16.0))
    await rig.start()
    try:
        profile = tmp_path / "day.csv"
        profile.write_text("time,load_kW,pv_kW\n00:00,0.0,0.0\n12:00,3.45,6.9\n24:00,0.0,0.0\n")

        async def ctl(*argv: str) -> int:
            return await asyncio.to_thread(main, ["ctl", "--dir", str(tmp_path), *argv])

        assert await ctl("site", "profile", str(profile), "--speed", "86400") == 0  # the whole day in 1 s
        await asyncio.sleep(0.5)
        capsys.readouterr()
        assert await ctl("state") == 0
        site = json.loads(capsys.readouterr().out)["state"]["site"]
        assert site["house_kw"] == pytest.approx(3.45, abs=0.1) and site["pv_kw"] == pytest.approx(6.9, abs=0.2)
        assert site["grid_current_a"][0] == pytest.approx(-5.0, abs=0.2)
        assert await ctl("site", "silent", "on") == 0
        assert rig.site_meter is not None and rig.site_meter.silent
        assert await ctl("ev", "1", "phases", "1") == 0 and rig.connectors[1].plant.ev.phases == 1
        assert await ctl("ev", "1", "phases", "2") == 1  # refused by the rig
        bad = tmp_path / "bad.csv"
        bad.write_text("0,1\n0,2\n")
        assert await ctl("site", "profile", str(bad)) == 1
        assert "row 2" in capsys.readouterr().out
    finally:
        await rig.stop()


def test_cpsim_up_site_flags_reach_the_rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    import simulator.rig

    seen: list[RigOptions] = []

    async def capture(options: RigOptions) -> int:  # the rig itself runs in the tests above
        seen.append(options)
        return 0

    monkeypatch.setattr(simulator.rig, "run_rig", capture)
    assert main(["up", "--dir", str(tmp_path), "--no-csms", "--site-fuse", "35", "--site-meter", "rtu",
                 "--site-mode", "solar+min", "--ev-phases", "1", "--site-rotation"]) == 0
    (o,) = seen
    assert (o.site_fuse_a, o.site_meter, o.site_mode, o.ev_phases, o.site_rotation) == (35.0, "rtu", "solar+min", 1,
                                                                                        True)
    assert main(["up", "--dir", str(tmp_path), "--site-fuse", "3"]) == 2
    assert "--site-fuse must be 6..1000 A" in capsys.readouterr().err
