"""`cpctl status`, `sessions`, `outbox` and `config get/set` against a real `cpagent run` speaking OCPP 2.0.1
to the bundled CSMS (real websockets, the simulator's hardware underneath, the diag socket of the real
process): the OCPP version in use, the station's string transactionId, queued TransactionEvents by
eventType / seqNo / transactionId (during a real outage), device model variables by Component/Variable."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from agent.ctl import main as cpctl
from tests.agent.ocpp.v201.conftest import TAG, Octt201


async def run_cpctl(capsys: pytest.CaptureFixture[str], socket: str, *argv: str) -> tuple[int, str]:
    """The CLI's own main() (argument parsing, socket client, rendering), off the event loop."""
    capsys.readouterr()
    code = await asyncio.to_thread(cpctl, ["--socket", socket, *argv])
    return code, capsys.readouterr().out


async def as_json(capsys: pytest.CaptureFixture[str], socket: str, *argv: str) -> Any:
    code, out = await run_cpctl(capsys, socket, "--json", *argv)
    assert code in (0, 1), out
    return json.loads(out)


async def test_cpctl_status_sessions_outbox_config_on_201(octt: Octt201, capsys: pytest.CaptureFixture[str]) -> None:
    socket = str(octt.rig.dir / "diag.sock")
    octt.csms.transaction_event_answers["Ended"] = {"totalCost": 4.7}  # I03: kept with the session
    octt.start_process({"OCPPCommCtrlr/OfflineThreshold": 600})
    await octt.wait("BootNotification", within=20)
    await octt.wait_status("Available", within=10)

    octt.ctl("plug")
    octt.ctl("tap", id_tag=TAG)
    started = await octt.wait_tx_event("Started", within=10)
    tx = started["transactionInfo"]["transactionId"]
    assert isinstance(tx, str) and len(tx) == 36

    status = await as_json(capsys, socket, "status")
    assert status["station"]["ocpp"]["version"] == "2.0.1"
    code, text = await run_cpctl(capsys, socket, "status")
    assert "CSMS (OCPP 2.0.1): Connected" in text and f"session tx {tx}" in text, text

    await octt.csms.outage(3.0)  # what happens now is queued: the outbox shows it
    octt.ctl("unplug")

    async def queued() -> list[dict[str, Any]]:
        return [e for e in (await as_json(capsys, socket, "outbox"))["entries"] if e["action"] == "TransactionEvent"]

    rows: list[dict[str, Any]] = []
    for _ in range(40):
        rows = await queued()
        if any(r["event_type"] == "Ended" for r in rows):
            break
        await asyncio.sleep(0.1)
    assert rows and all(r["transaction_id"] == tx and isinstance(r["seq_no"], int) for r in rows), rows
    assert [r["seq_no"] for r in rows] == sorted(r["seq_no"] for r in rows) and rows[-1]["event_type"] == "Ended"
    code, text = await run_cpctl(capsys, socket, "outbox")
    assert code == 0 and f"Ended   seqNo {rows[-1]['seq_no']:<4} tx {tx}" in text, text

    await octt.wait_tx_event("Ended", within=15)  # delivered after the reconnect
    sessions = await as_json(capsys, socket, "sessions")
    assert sessions[0]["transaction_id"] == tx and sessions[0]["reason"]
    for _ in range(50):  # the answer's totalCost is kept once the Ended is acknowledged
        if (await as_json(capsys, socket, "sessions"))[0]["cost"]:
            break
        await asyncio.sleep(0.1)
    code, text = await run_cpctl(capsys, socket, "sessions")
    assert f"tx {tx}  cost 4.70 EUR" in text.splitlines()[0], text

    code, text = await run_cpctl(capsys, socket, "config", "set", "OCPPCommCtrlr/HeartbeatInterval", "77")
    assert code == 0 and "Accepted" in text, text
    answer = await as_json(capsys, socket, "config", "get", "OCPPCommCtrlr/HeartbeatInterval")
    assert answer["configurationKey"][0]["value"] == "77"
