"""StationProxy.stopping(): when the network side is stopping (SIGTERM, which systemd's default KillMode and a
terminal's Ctrl-C send the control side at the same moment), the control side's closing connection is not
reported as every connector Faulted (InternalError). Before, `systemctl stop` / a restart showed the CSMS a
StatusNotification Faulted "An internal software task failed" each time (seen in the contract audit, 1.6).
A control side lost while this side runs on is still reported (test_station_proxy, restart test)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.events import ConnectorStatus, StatusChanged
from agent.ipc.station_proxy import LOST_REPORT_DELAY_S
from tests.agent.ipc.test_station_proxy import running_ipc


async def test_a_stopping_network_side_reports_no_fault_when_the_control_side_closes(tmp_path: Path) -> None:
    async with running_ipc(tmp_path) as ipc:
        assert ipc.proxy.connector_view(1).status is ConnectorStatus.AVAILABLE
        await ipc.server.stop()  # the control side handles the common signal first (the network side is niced)
        await asyncio.sleep(0.05)
        ipc.proxy.stopping()  # ... and this side's handler runs a moment later
        await asyncio.sleep(LOST_REPORT_DELAY_S + 0.3)
        assert ipc.proxy.connector_view(1).status is ConnectorStatus.AVAILABLE
        assert not [e for e in ipc.events if isinstance(e, StatusChanged) and e.status is ConnectorStatus.FAULTED]
