"""cpsim fleet's in-process board: a settled plant is stepped only when something can change (its next meter
sample, its EV getting full), and readings between two steps are still the energy up to now."""

from __future__ import annotations

from typing import Any

import pytest

from hal.types import MeterSample, PilotStateChanged
from simulator.fleet import devices
from simulator.physics import Plant


def _charging_board(meter_period_s: float = 60.0) -> tuple[Plant, devices.SimBoard, list[Any]]:
    plant = Plant()
    plant.plugged = True
    ticker = devices.Ticker(period_s=3600.0, meter_period_s=meter_period_s)
    board = devices.SimBoard("board1", plant, ticker)
    meter = devices.SimMeter("meter1", plant, ticker)
    ticker.meters[id(plant)] = meter
    events: list[Any] = []
    board.subscribe(events.append)
    meter.subscribe(events.append)
    board.tick(0.0, force=True)
    board.set_duty(53.3)  # 32 A offered
    board.close_relay()
    for t in range(1, 6):  # S2 closes after 1 s, the current ramps to 32 A within 3 s
        board.tick(float(t))
    return plant, board, events


def test_a_settled_charging_plant_is_stepped_at_its_next_meter_sample_only() -> None:
    plant, board, events = _charging_board()
    assert plant.current_a == pytest.approx(31.98)
    board.tick(6.0)  # nothing moved: settled
    pushed = board._last_meter_push
    assert board.due == pytest.approx(pushed + 60.0)
    steps = 0
    step = plant.step

    def counting(now: float) -> None:
        nonlocal steps
        steps += 1
        step(now)

    plant.step = counting  # type: ignore[method-assign]
    events.clear()
    wh_before = plant.energy_wh
    t = 6.0
    while t < pushed + 60.0:  # the ticker's 1 s turns over one meter period
        t += 1.0
        if t >= board.due:
            board.tick(t)
    assert steps == 1  # was 6 (every 10 s)
    samples = [e for e in events if isinstance(e, MeterSample)]
    assert len(samples) == 1 and board._last_meter_push == t
    # the one long step integrated exactly: the power was constant since the step at 6 s
    assert plant.energy_wh == pytest.approx(wh_before + plant.power_w() * (t - 6.0) / 3600.0)
    assert board.due == pytest.approx(t + 60.0)


def test_an_ev_getting_full_is_stepped_when_it_is_full_and_stops_drawing() -> None:
    plant, board, events = _charging_board()
    plant.ev.soc_percent = 99.9  # 60 Wh left at ~22 kW: full ~9.8 s from now
    board.tick(6.0)
    full_in_s = (100.0 - plant.ev.soc_percent) / 100.0 * plant.ev.battery_wh * 3600.0 / plant.power_w()
    assert 5.0 < full_in_s < 60.0
    assert board.due == pytest.approx(6.0 + full_in_s, abs=0.1)
    t = board.due
    for _ in range(5):  # at that step the EV is full; it ramps down on the next ticks and opens S2
        board.tick(t)
        t += 1.0
    assert plant.ev.soc_percent == 100.0 and plant.current_a == 0.0
    assert any(isinstance(e, PilotStateChanged) for e in events)


def test_readings_between_steps_carry_the_energy_up_to_now() -> None:
    plant, board, _ = _charging_board()
    board.tick(6.0)
    stepped_wh = plant.energy_wh
    power_w = plant.power_w()
    assert devices.energy_now(plant, 36.0) == pytest.approx(stepped_wh + power_w * 30.0 / 3600.0)
    assert plant.energy_wh == stepped_wh  # a reading does not step the plant
    plant.relay_commanded_closed = False  # no current: nothing more flows
    assert devices.energy_now(plant, 36.0) == stepped_wh



@pytest.mark.parametrize("raw", [
    '[2,"a1","Heartbeat",{}]',
    ' [ 2 , "x-9" , "MeterValues", {"meterValue": [{"sampledValue": [{"value": "1"}]}]} ] ',
    '[3,"a1",{"currentTime":"2026-12-04T00:00:00Z"}]',
    '[3,"a1","unexpected"]',
    '[4,"a1","NotImplemented","",{}]',
    '[2,"a\\"b","Escaped",{}]',  # an escape in the id: decoded in full
    b'[3,"q",{}]',
])
def test_the_metrics_read_a_frames_head_as_the_full_decoding_does(raw: str | bytes) -> None:
    from simulator.fleet.metrics import _frame, _head

    full, head = _frame(raw), _head(raw)
    assert full is not None and head is not None
    assert head[:2] == full[:2]  # type and unique id
    assert full[0] == 3 or head[2] == full[2]  # the action of a CALL, the code of a CALLERROR


@pytest.mark.parametrize("raw", ['[3,"id",{}', "not json", "[]", '{"a": 1}', '[9,"id",{}]'])
def test_the_metrics_count_no_frame_that_is_not_one(raw: str) -> None:
    from simulator.fleet.metrics import _head

    head = _head(raw)
    assert head is None or head[0] not in (2, 3, 4)
