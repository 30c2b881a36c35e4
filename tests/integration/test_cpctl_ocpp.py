"""cpctl's OCPP commands against an agent connected to the bundled CSMS."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.ocpp.v16.service import OcppService
from tests.integration.conftest import Bench, start_bench, stop_bench
from tests.integration.test_cpctl import cpctl


@pytest.fixture
async def online(tmp_path: Path) -> AsyncIterator[tuple[Bench, OcppService]]:
    bench = await start_bench(tmp_path / "rig", bundled_csms=True)
    service = OcppService(bench.station, bench.station.config)
    task = asyncio.create_task(service.run())
    try:
        await bench.wait_for(lambda: service.accepted, 10, "boot accepted")
        yield bench, service
    finally:
        await service.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await stop_bench(bench)


async def test_status_shows_the_link(online: tuple[Bench, OcppService]) -> None:
    bench, _ = online
    code, out, _ = await cpctl(bench, "--json", "status")
    ocpp = json.loads(out)["station"]["ocpp"]
    assert code == 0 and ocpp["link"] == "Connected" and ocpp["boot_status"] == "Accepted"
    assert ocpp["outbox_depth"] == 0 and ocpp["last_contact_age_s"] is not None
    code, out, _ = await cpctl(bench, "status")
    assert "CSMS (OCPP 1.6): Connected" in out and "boot Accepted" in out


async def test_config_get_set_same_rules_as_change_configuration(online: tuple[Bench, OcppService]) -> None:
    bench, service = online
    code, out, _ = await cpctl(bench, "config", "get", "HeartbeatInterval")
    assert code == 0 and "HeartbeatInterval = " in out
    code, out, _ = await cpctl(bench, "config", "get", "NoSuchKey")
    assert code == 1 and "NoSuchKey: unknown key" in out
    code, _, _ = await cpctl(bench, "config", "set", "HeartbeatInterval", "120")
    assert code == 0 and service.store.get_int("HeartbeatInterval") == 120
    code, _, err = await cpctl(bench, "config", "set", "WebSocketPingInterval", "-5")
    assert code == 1 and "Rejected" in err
    code, _, err = await cpctl(bench, "config", "set", "NoSuchKey", "1")
    assert code == 1 and "NotSupported" in err
    code, out, err = await cpctl(bench, "config", "set", "AuthorizationKey", "0123456789abcdef0123")
    assert code == 0 and "config set AuthorizationKey -" in err  # works, and says how to keep it out of ps
    code, out, _ = await cpctl(bench, "--json", "config", "get")
    listing = json.loads(out)
    assert "0123456789abcdef0123" not in out  # write-only
    assert [k for k in listing["configurationKey"] if k["key"] == "AuthorizationKey"] == [
        {"key": "AuthorizationKey", "readonly": False, "secret": True, "set": True}]
    # from stdin: never on the command line
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.ctl", "--socket", str(bench.station.config.diag_socket),
        "config", "set", "AuthorizationKey", "-", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out_b, _ = await asyncio.wait_for(proc.communicate(b"fedcba9876543210fedc\n"), 30)
    assert proc.returncode == 0 and out_b.decode().strip() == "AuthorizationKey: Accepted"
    assert service.store.get_str("AuthorizationKey") == "fedcba9876543210fedc"
    code, out, _ = await cpctl(bench, "config", "get", "AuthorizationKey")
    assert code == 0 and out.strip() == "AuthorizationKey = <set, not shown>"


async def test_trigger_and_outbox(online: tuple[Bench, OcppService]) -> None:
    bench, _ = online
    csms = bench.rig.csms
    assert csms is not None
    before = len(csms.messages("CP001", "Heartbeat"))
    code, out, _ = await cpctl(bench, "trigger", "heartbeat")
    assert code == 0 and "Accepted" in out
    assert len(csms.messages("CP001", "Heartbeat")) == before + 1
    code, out, _ = await cpctl(bench, "--json", "outbox")
    assert code == 0 and json.loads(out)["depth"] == 0
    code, out, _ = await cpctl(bench, "outbox")
    assert code == 0 and out.startswith("outbox: 0 queued, oldest -")


async def test_trigger_without_the_csms_is_a_problem(online: tuple[Bench, OcppService]) -> None:
    bench, service = online
    code, out, _ = await cpctl(bench, "trigger", "boot")
    assert code == 0 and out.strip() == "trigger boot: Accepted"
    await service.stop()  # the link is down: nothing can be sent now
    code, out, _ = await cpctl(bench, "trigger", "heartbeat")
    assert code == 1 and "failed" in out
    code, out, _ = await cpctl(bench, "--json", "trigger", "heartbeat")
    assert code == 1 and json.loads(out)["result"].startswith("failed")
