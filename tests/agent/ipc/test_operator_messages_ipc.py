"""Operator messages cross the station socket: the network side's ``set_operator_messages`` reaches the
control side's connector and its display, with the control side's rules (a fault screen stays)."""

from __future__ import annotations

from pathlib import Path

from agent.station_api import MessagePriority, OperatorMessage
from hal.types import ScreenState
from tests.agent.ipc.test_station_proxy import running_ipc


async def test_operator_messages_over_the_station_socket(tmp_path: Path) -> None:
    async with running_ipc(tmp_path, display="nextion") as ipc:
        hmi = ipc.bench.rig.display
        assert hmi is not None
        message = OperatorMessage(4, "Across the socket", MessagePriority.ALWAYS_FRONT, (ScreenState.IDLE,))
        ipc.proxy.set_operator_messages(1, (message,))
        await ipc.until(lambda: hmi.texts["t1"] == "Across the socket" and hmi.texts["t4"] == "Across the socket",
                        what="AlwaysFront message on the control side's display")
        assert ipc.bench.station.connectors[1].operator_messages == (message,)
        ipc.proxy.set_operator_messages(1, ())
        await ipc.until(lambda: hmi.texts["t1"] == "Tap card or plug in" and hmi.texts["t4"] == "",
                        what="message withdrawn")
