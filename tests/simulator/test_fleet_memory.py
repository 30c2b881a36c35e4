"""Per-station memory of cpsim fleet: what a station makes only when used."""

from __future__ import annotations

import random

from simulator.fleet.fleet import FleetStation


def test_a_station_makes_its_random_stream_when_first_used_and_keeps_it() -> None:
    fs = FleetStation(7, "CP-000007", {})
    fs.seed = "1/CP-000007"
    assert fs._rng is None
    first = [fs.rng.random() for _ in range(3)]
    assert fs._rng is not None
    expected = random.Random("1/CP-000007")
    assert first == [expected.random() for _ in range(3)]
    assert fs.rng.random() == expected.random()  # the same stream goes on


async def test_a_readers_taps_come_out_in_order_and_a_waiting_reader_wakes() -> None:
    import asyncio

    from simulator.fleet.devices import Taps

    taps = Taps()
    taps.put_nowait("A")
    taps.put_nowait("B")
    assert [await taps.get(), await taps.get()] == ["A", "B"]
    waiting = asyncio.create_task(taps.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    taps.put_nowait("C")
    assert await asyncio.wait_for(waiting, 1) == "C"
