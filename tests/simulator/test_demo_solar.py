"""`cpagent sim --scenario solar` (simulator/demo_solar.py): the day it plays (a profile cpsim's site accepts,
clouds and appliances as steps), the solar-share arithmetic its verdict rests on, the plot file, the
compressed solar delays it gives the agent, and the CLI choice. The demo itself takes ~80 s: not run here."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import _parser
from agent.config import parse
from simulator.demo_solar import (
    CLOUDS,
    DAY_START_S,
    DEMO_SOLAR,
    MIN_SOLAR_SHARE,
    SPEED,
    Sample,
    demo_config,
    house_kw,
    plot,
    profile_csv,
    pv_kw,
    solar_share,
    uncontrolled_share,
)
from simulator.site import parse_profiles
from tests.agent.test_config import MINIMAL


def test_the_profile_is_one_cpsim_accepts_with_clouds_and_the_oven_as_steps() -> None:
    load, pv = parse_profiles(profile_csv(), source="demo")
    assert pv is not None and load.duration_s == 10 * 3600
    for hour in (9, 12, 14, 17):
        t = hour * 3600.0
        assert pv.at(t - DAY_START_S) == pytest.approx(pv_kw(t), abs=0.01)
        assert load.at(t - DAY_START_S) == pytest.approx(house_kw(t), abs=0.01)
    start, _end, left = CLOUDS[1]
    before, inside = pv.at(start - 1 - DAY_START_S), pv.at(start + 60 - DAY_START_S)
    assert inside == pytest.approx(pv_kw(start + 60), abs=0.05) and inside < before * (left + 0.05)
    assert load.at(12 * 3600 - DAY_START_S) == pytest.approx(3.5)  # base 0.5 + the oven
    assert max(pv.kw) == pytest.approx(11.0, abs=0.1) and min(pv.kw) > 0


def _samples(ev_w: float, pv: float, house: float, n: int = 11) -> list[Sample]:
    step = SPEED  # one real second apart
    return [Sample(i * step, pv, house, 0.0, (0.0, 0.0), (ev_w / 2, ev_w / 2), (0.0, 0.0), (0.0, 0.0))
            for i in range(n)]


def test_solar_share_counts_only_the_surplus_after_the_house() -> None:
    wh, share = solar_share(_samples(4000.0, pv=3.0, house=1.0))  # 2 kW surplus for 4 kW of EVs
    assert wh == pytest.approx(4000.0 * 10 / 3600) and share == pytest.approx(0.5)
    assert solar_share(_samples(4000.0, pv=9.0, house=1.0))[1] == pytest.approx(1.0)
    assert solar_share(_samples(4000.0, pv=0.5, house=1.0))[1] == 0.0  # the house takes all of it
    assert solar_share(_samples(0.0, pv=5.0, house=1.0)) == (0.0, 0.0)  # no EV energy: no share
    # The threshold must beat charging the two EVs at full current over the same day.
    day = [Sample(t - DAY_START_S, pv_kw(t), house_kw(t), 0.0, (0.0, 0.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0))
           for t in range(DAY_START_S, 18 * 3600 + 1, 60)]
    assert uncontrolled_share(day) < MIN_SOLAR_SHARE - 0.4


def test_the_plot_is_a_png_with_the_day(tmp_path: Path) -> None:
    day = [Sample(t - DAY_START_S, pv_kw(t), house_kw(t), (house_kw(t) - pv_kw(t)) * 1000 + 3000.0,
                  (6.0, 8.0), (1380.0, 1620.0), (0.0, 0.0), (6.0, 8.0)) for t in range(DAY_START_S, 18 * 3600, 300)]
    path = tmp_path / "solar-day.png"
    plot(path, day)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_the_agent_gets_the_compressed_solar_delays_and_the_cli_offers_the_scenario() -> None:
    config = parse(MINIMAL)
    site = demo_config(config).site
    assert all(getattr(site, key) == value for key, value in DEMO_SOLAR.items())
    assert site.phase_switching and site.solar_start_delay_s < config.site.solar_start_delay_s
    args = _parser().parse_args(["sim", "--scenario", "solar"])
    assert args.scenario == "solar"
