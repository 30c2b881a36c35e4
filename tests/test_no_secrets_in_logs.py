"""Secrets (the Basic password, AuthorizationKeys old/new/refused, the charge point's private key) never
reach the logs, cpctl output, the event log, the security log or a diagnostics archive. Only the CSMS's
own frame log may hold the ChangeConfiguration frame, and files that must hold secrets are 0600."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import stat
import tarfile
from pathlib import Path

import pytest

from agent.ocpp.v16 import diag_archive
from agent.ocpp.v16.service import OcppService
from tests.integration.conftest import start_bench, stop_bench
from tests.integration.test_cpctl import cpctl

CP = "CP001"
PASSWORD = "Initial-Secret-4711"
NEW_PASSWORD = "Rotated-Secret-0815"
NEW_KEY_HEX = NEW_PASSWORD.encode().hex()
REFUSED_KEY = "TooShort99"  # below the 16-character minimum: Rejected, and still a secret


async def _until(predicate: object, what: str, within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_no_secrets_anywhere(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # frames are logged at DEBUG: the worst case
    bench = await start_bench(tmp_path / "rig", bundled_csms=True, security_profile=1, password=PASSWORD,
                              charge_point_id=CP)
    csms = bench.rig.csms
    assert csms is not None
    service = OcppService(bench.station, bench.station.config)
    task = asyncio.create_task(service.run())
    try:
        await _until(lambda: service.online, "boot accepted")
        security = service.features["Security"]
        csms.password = NEW_PASSWORD
        answer = await csms.send(CP, "ChangeConfiguration", {"key": "AuthorizationKey", "value": NEW_KEY_HEX})
        assert answer == {"status": "Accepted"}
        await _until(lambda: security.confirmed.key == NEW_KEY_HEX and service.online, "reconnect with the new key")
        refused = await csms.send(CP, "ChangeConfiguration", {"key": "AuthorizationKey", "value": REFUSED_KEY})
        assert refused == {"status": "Rejected"}
        assert await security.sign_charge_point_certificate() == "Accepted"
        private_key = security.certs.private_key_pems()[0]

        outputs = [
            (await cpctl(bench, "--json", "config", "get"))[1],
            (await cpctl(bench, "config", "get", "AuthorizationKey"))[1],
            (await cpctl(bench, "--json", "status"))[1],
            (await cpctl(bench, "status"))[1],
        ]
        archive = diag_archive.write_archive(diag_archive.collect(service, None, None), tmp_path, "diag.tar.gz")
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                extracted = tar.extractfile(member)
                if extracted is not None:
                    outputs.append(extracted.read().decode("utf-8", "replace"))
                    outputs.append(member.name)
        state_dir = service.config.state_dir
        outputs.append((state_dir / "security.log").read_text())
        outputs.append(json.dumps([e.as_dict() for e in bench.station.eventlog.query(limit=10_000)]))
        # Everything the agent logged; the in-process CSMS's own loggers see the frames it sends.
        agent_records = [r for r in caplog.records if not r.name.startswith(("cpsim", "websockets.server"))]
        outputs.extend(r.getMessage() for r in agent_records)
        outputs.extend(r.exc_text or "" for r in agent_records)

        secrets = {PASSWORD, NEW_PASSWORD, NEW_KEY_HEX, REFUSED_KEY}
        secrets |= {base64.b64encode(f"{CP}:{s}".encode()).decode() for s in (PASSWORD, NEW_PASSWORD)}
        secrets |= {line for line in private_key.splitlines() if "-----" not in line and len(line) >= 16}
        everything = "\n".join(outputs)
        leaked = sorted(s for s in secrets if s in everything)
        assert leaked == [], f"secrets found in logs/output: {len(leaked)}"
        # The one place the new key legitimately appears is the CSMS's own frame log.
        assert NEW_KEY_HEX in (bench.rig.dir / "csms.jsonl").read_text()

        for path in (state_dir / "security-state.json", state_dir / "security.log", bench.rig.dir / "agent.toml",
                     security.certs.pending_key_path):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert len(io.StringIO(everything).getvalue()) > 1000  # we did look at something
    finally:
        await service.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await stop_bench(bench)
