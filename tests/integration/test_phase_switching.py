"""1p/3p switching end to end: the real Station and Connector against cpsim's pilot board emulator on a
pty and the SDM630 emulator over Modbus TCP. Mid-session 3 -> 1: PWM stops, the relay opens before the
board's phase contactor moves, the EV then draws on one phase and PWM resumes; past the per-session cap
the next switch is refused. Plus the refusal rules, pure."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agent.charge_control import ChargeState
from agent.config import ConfigError, load, parse
from agent.events import ConnectorStatus
from agent.phase_switch import PhaseSwitcher, PhaseSwitchRefused
from agent.station import Station
from hal.clock import FakeClock
from hal.roles import PhaseSwitch
from simulator.rig import Rig, RigOptions
from tests.integration.conftest import Bench, stop_bench

TAG = "DEADBEEF01"


async def start_bench_with(directory: Path, connector_keys: str) -> Bench:
    rig = Rig(RigOptions(directory=directory))
    await rig.start()
    path = directory / "agent.toml"
    path.write_text(path.read_text().replace("[[connectors]]\nid = 1\n", f"[[connectors]]\nid = 1\n{connector_keys}"))
    station = Station(load(path))
    bench = Bench(rig, station, asyncio.create_task(station.run()))
    station.subscribe(bench.events.append)
    await bench.wait_for(lambda: station.connectors[1].controller.cp_state is not None, 5, "first CP state")
    return bench


async def test_switch_3_to_1_mid_session_then_the_cap(tmp_path: Path) -> None:
    bench = await start_bench_with(tmp_path, "phase_switch_settle_s = 1.0\nmax_phase_switches = 1\n")
    try:
        c = bench.station.connectors[1]
        plant = bench.rig.connectors[1].plant
        await bench.wait_for(lambda: c.phase_switcher.supported, 3, "board reports its phase contactor")
        bench.ctl(cmd="plug", connector=1)
        await bench.station.present_token(TAG)
        await bench.wait_for(lambda: plant.current_a > 15 and plant.phase_currents()[2] > 15, 10, "3-phase charging")
        order: list[str] = []

        async def watch() -> None:  # what the plant saw, in order
            while True:
                if plant.relay_closed and order and order[-1] == "on 1 phase" and plant.current_a > 0:
                    order.append("drawing again")
                    return
                if not plant.relay_closed and "relay open" not in order:
                    order.append("relay open")
                if plant.supply_phases == 1 and "on 1 phase" not in order:
                    order.append("on 1 phase")
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        assert await c.switch_phases(1) is True
        assert c.phase_switcher.active_phases() == 1
        await bench.wait_for(lambda: watcher.done(), 10, "EV drawing again")
        assert order == ["relay open", "on 1 phase", "drawing again"]
        assert plant.phase_switches_under_load == 0 and bench.rig.connectors[1].board.phase_commands_refused == 0
        await bench.wait_for(lambda: plant.current_a > 15, 5, "EV back at full current")
        assert plant.phase_currents()[0] > 15 and plant.phase_currents()[1:] == (0.0, 0.0)
        assert c.controller.state is ChargeState.CHARGING and c.status() is ConnectorStatus.CHARGING
        with pytest.raises(PhaseSwitchRefused, match="max_phase_switches"):
            await c.switch_phases(3)
        assert plant.supply_phases == 1 and plant.relay_closed  # nothing moved, charging goes on
    finally:
        await stop_bench(bench)


class _Board(PhaseSwitch):
    def __init__(self, supported: bool) -> None:
        self.supported, self.now, self.sent = supported, 3, list[int]()

    def supports_phase_switching(self) -> bool:
        return self.supported

    def set_phases(self, phases: int) -> None:
        self.sent.append(phases)

    def phases(self) -> int | None:
        return self.now if self.supported else None


@pytest.mark.parametrize(
    ("board", "installed", "phases", "why"),
    [
        (None, 3, 1, "cannot switch"),
        (_Board(False), 3, 1, "cannot switch"),
        (_Board(True), 1, 1, "installed with 1 phase"),
        (_Board(True), 3, 2, "1 or 3"),
    ],
)
async def test_refusals(board: Any, installed: int, phases: int, why: str) -> None:
    controller: Any = object()  # never reached: a refusal touches nothing
    switcher = PhaseSwitcher(1, controller, board, installed_phases=installed, settle_s=1.0, max_switches=4,
                             monotonic=FakeClock().monotonic)
    with pytest.raises(PhaseSwitchRefused, match=why):
        await switcher.switch(phases)
    assert board is None or board.sent == []


def test_config_keys_default_and_errors_name_the_key() -> None:
    base: dict[str, Any] = {
        "station": {"id": "CP1", "state_dir": "/tmp/x"},
        "devices": {"b": {"driver": "pilot-board-serial", "port": "/dev/null"}},
    }
    default = parse({**base, "connectors": [{"id": 1, "pilot": "b"}]}).connectors[0]
    assert (default.phase_switch_settle_s, default.max_phase_switches) == (5.0, 4)
    for key, bad in (("phase_switch_settle_s", 0.5), ("max_phase_switches", -1), ("max_phase_switches", 2.5)):
        with pytest.raises(ConfigError) as err:
            parse({**base, "connectors": [{"id": 1, "pilot": "b", key: bad}]})
        assert err.value.key == f"connectors[0].{key}"
