"""Local energy management end to end (issue 15): the simulator's site (house load, the site meter as an
emulated SDM630 on Modbus TCP), two simulated EVs on a 16 A connection, the real agent Station with its
SiteController, and the technician's diagnostic socket."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from agent.ctl import Client, render_status
from tests.integration.conftest import start_bench, stop_bench

FUSE_A = 16.0


async def test_two_evs_share_a_16_a_site_fail_safe_and_recover(tmp_path: Path) -> None:
    bench = await start_bench(tmp_path / "rig", connectors=2, site_fuse_a=FUSE_A, site_meter="tcp")
    loop = asyncio.get_running_loop()
    station, site = bench.station, bench.rig.site
    assert site is not None and station.site is not None
    c1, c2 = station.connectors[1], station.connectors[2]

    def grid_max() -> float:
        return max(site.grid_currents(loop.time()))

    try:
        for n, tag in ((1, "DEADBEEF01"), (2, "04A1B2C3D4")):
            bench.ctl(cmd="plug", connector=n)
            assert (await station.present_token(tag, n)).accepted
        await bench.wait_for(lambda: c1.controller.relay_feedback_closed and c2.controller.relay_feedback_closed,
                             10, "both EVs charging")
        # Nothing else on the site: 16 A - 1 A margin shared fairly, 7.5 A each, the site limit binding.
        await bench.wait_for(lambda: all(c.view().site_limit_a == pytest.approx(7.5) for c in (c1, c2)), 10,
                             "fair share of 15 A")
        view = c1.view()
        assert view.binding_limit == "site-fuse" and view.effective_limit_a == pytest.approx(7.5)
        await bench.wait_for(lambda: grid_max() > 14.0, 10, "both EVs drawing their share")
        assert grid_max() <= FUSE_A

        # The house draws 4.6 kW (6.7 A per phase): 21.7 A at the connection point. Only one EV fits now
        # (8.3 A left, two would need 12 A): the later one pauses, the point is back under the fuse.
        bench.ctl(cmd="site", action="load", value=4.6)
        await bench.wait_for(lambda: grid_max() > FUSE_A, 3, "the overload")
        took = await bench.wait_for(lambda: grid_max() <= FUSE_A, 12, "the connection point under its fuse")
        assert took <= 10.0
        assert c2.view().site_limit_a == 0.0 and c1.view().site_limit_a is not None

        # The site meter goes silent: the failsafe current on both connectors within 3 s, and a fault.
        bench.ctl(cmd="site", action="silent", value=True)
        silenced = time.monotonic()
        await bench.wait_for(
            lambda: all(c.view().site_limit_a == 6.0 and c.view().binding_limit == "failsafe" for c in (c1, c2)),
            4, "failsafe current",
        )
        assert time.monotonic() - silenced <= 3.0
        client = Client(station.config.diag_socket)
        reply = await asyncio.to_thread(client.request, "faults")
        faults = [f for f in reply["data"] if f["fault"] == "site-meter"]
        assert faults and faults[0]["connector"] == 0 and faults[0]["error_code"] == "PowerMeterFailure"
        status = await asyncio.to_thread(client.request, "status")
        shown = status["data"]["connectors"][0]
        assert shown["binding_limit"] == "failsafe" and shown["site_limit_a"] == 6.0
        assert "limit 6.0 A set by failsafe  site allocation 6.0 A" in render_status(status["data"])

        # It answers again: the fault clears and the sharing takes over from the failsafe.
        bench.ctl(cmd="site", action="silent", value=False)
        await bench.wait_for(lambda: station.site is not None and not station.site.fault_raised, 4, "recovery")
        await bench.wait_for(lambda: c1.view().binding_limit != "failsafe", 2, "sharing again")
        reply = await asyncio.to_thread(client.request, "faults")
        assert not [f for f in reply["data"] if f["fault"] == "site-meter"]
    finally:
        await stop_bench(bench)
