"""Agent side of bench/safety_latency.py: the real Station (real board and meter drivers) plus a
stand-in for the driver who keeps tapping a card and the technician who clears latched faults, so the
board player can trip the connector again and again. Not on the measured path."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from agent.charge_control import ChargeState
from agent.config import load
from agent.events import ConnectorStatus
from agent.station import Station


async def main(config_path: Path, tag: str) -> None:
    station = Station(load(config_path))
    task = asyncio.create_task(station.run())
    while not task.done():
        for c in station.connectors.values():
            if c.session is None and c.status() is ConnectorStatus.PREPARING and c.pending_id_tag is None:
                await station.present_token(tag, c.id)
            elif c.controller.state is ChargeState.FAULT:
                c.controller.clear_faults()
        await asyncio.sleep(0.05)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
