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
from typing import Any

import pytest

from agent.logsetup import PLAIN_FORMAT
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


# -- AuthorizationKey in any spelling (issue 11 item 16) ---------------------------------------------------

SPELLED_KEYS = {  # accepted: each one becomes the Basic password, so each one is a live secret
    "value-first": "Value-First-Key-0001",
    "lower-case": "Lower-Case-Key-000002",
    "escaped-name": "Escaped-Name-Key-0003",
    "escaped-value": "Escaped-Value-Key-004",
}
REFUSED_SPELLED = "UPPER-short-5"  # AUTHORIZATIONKEY, below 16 characters: Rejected, still a secret
UNPARSEABLE_KEY = "Unparseable-Key-00006"  # a frame that is not JSON: answered FormationViolation
BAD_FRAME_KEY = "Bad-Frame-Key-0000007"  # valid JSON, not a valid CALL (5 elements): ProtocolError
TOO_LONG_KEY = "Too-Long-Key-00000008-" * 24  # 528 characters, over the schema's maxLength 500


def _escaped(text: str) -> str:
    return "".join(f"\\u{ord(ch):04x}" for ch in text)


def _frames_in(path: Path) -> list[Any]:
    return [json.loads(line)["frame"] for line in path.read_text().splitlines() if '"dir":"in"' in line]


async def _answer_to(csms_log: Path, unique_id: str) -> Any:
    found: list[Any] = []

    def answered() -> bool:
        found[:] = [f for f in _frames_in(csms_log) if isinstance(f, list) and f[0] in (3, 4) and f[1] == unique_id]
        return bool(found)

    await _until(answered, f"the answer to {unique_id}")
    return found[0]


async def test_authorization_key_in_any_spelling_never_logged(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """The CSMS sends ChangeConfiguration AuthorizationKey with the value first, a lower-case and an
    upper-case name, a \\u-escaped name and value, in a frame that is not JSON and in a malformed CALL, over
    a real websocket with every logger at DEBUG: no key reaches a log line, the agent's log file or the
    GetDiagnostics archive (Security whitepaper 1.6 ed. 2, AuthorizationKey is write-only)."""
    caplog.set_level(logging.DEBUG)
    log_file = tmp_path / "agent.log"
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    logging.getLogger().addHandler(handler)  # as setup_logging would, before the service starts
    bench = await start_bench(tmp_path / "rig", bundled_csms=True, security_profile=1, password=PASSWORD,
                              charge_point_id=CP, extra_toml=f'\n[firmware]\nlog_file = "{log_file}"\n')
    csms = bench.rig.csms
    assert csms is not None
    csms_log = bench.rig.dir / "csms.jsonl"
    service = OcppService(bench.station, bench.station.config)
    task = asyncio.create_task(service.run())
    try:
        await _until(lambda: service.online, "boot accepted")
        security = service.features["Security"]
        members = {  # the payload's members exactly as sent (order, case, escapes)
            "value-first": f'"value":"{SPELLED_KEYS["value-first"]}","key":"AuthorizationKey"',
            "lower-case": f'"key":"authorizationkey","value":"{SPELLED_KEYS["lower-case"]}"',
            "escaped-name": f'"key":"AuthorizationKe\\u0079","value":"{SPELLED_KEYS["escaped-name"]}"',
            "escaped-value": f'"key":"AuthorizationKey","value":"{_escaped(SPELLED_KEYS["escaped-value"])}"',
        }
        for n, (spelling, text) in enumerate(members.items()):
            key = SPELLED_KEYS[spelling]
            csms.password = key
            await csms.send_raw(CP, f'[2,"spelled-{n}","ChangeConfiguration",{{{text}}}]')
            assert await _answer_to(csms_log, f"spelled-{n}") == [3, f"spelled-{n}", {"status": "Accepted"}]
            await _until(lambda key=key: security.confirmed.key == key and service.online,  # type: ignore[misc]
                         f"reconnect with the {spelling} key")
        upper = f'{{"key":"AUTHORIZATIONKEY","value":"{REFUSED_SPELLED}"}}'
        await csms.send_raw(CP, f'[2,"upper","ChangeConfiguration",{upper}]')
        assert await _answer_to(csms_log, "upper") == [3, "upper", {"status": "Rejected"}]
        plain = '{"key":"AuthorizationKey","value":"%s"}'
        await csms.send_raw(CP, '[2,"garbled","ChangeConfiguration",' + plain.replace("%s", UNPARSEABLE_KEY))
        assert (await _answer_to(csms_log, "garbled"))[2] == "FormationViolation"
        await csms.send_raw(CP, '[2,"five","ChangeConfiguration",' + plain.replace("%s", BAD_FRAME_KEY) + ",{}]")
        assert (await _answer_to(csms_log, "five"))[2] == "ProtocolError"
        # Longer than the schema's 500 characters: the schema's own message would quote it (to the CSMS, to the log).
        await csms.send_raw(CP, '[2,"too-long","ChangeConfiguration",' + plain.replace("%s", TOO_LONG_KEY) + "]")
        assert (await _answer_to(csms_log, "too-long"))[2] == "TypeConstraintViolation"  # CiString500Type
        assert service.online

        archive = diag_archive.write_archive(diag_archive.collect(service, None, None), tmp_path, "diag.tar.gz")
        with tarfile.open(archive) as tar:
            names = tar.getnames()
            members = {m.name: tar.extractfile(m).read().decode("utf-8", "replace")  # type: ignore[union-attr]
                       for m in tar.getmembers() if m.isfile()}
        assert "agent.log" in names
        handler.flush()
        outputs = [log_file.read_text("utf-8"), *members.values()]
        csms_side = ("cpsim", "simulator", "websockets.server")  # the in-process CSMS logs what it sends
        agent_records = [r for r in caplog.records if not r.name.startswith(csms_side)]
        outputs.extend(r.getMessage() for r in agent_records)
        outputs.extend(r.exc_text or "" for r in agent_records)
        everything = "\n".join(outputs)

        secrets = {*SPELLED_KEYS.values(), REFUSED_SPELLED, UNPARSEABLE_KEY, BAD_FRAME_KEY, PASSWORD,
                   TOO_LONG_KEY[:24]}
        secrets |= {_escaped(s) for s in secrets}
        secrets |= {base64.b64encode(f"{CP}:{s}".encode()).decode() for s in SPELLED_KEYS.values()}
        leaked = sorted(s for s in secrets if s in everything)
        assert leaked == [], f"secrets found in logs/archive: {leaked}"
        # The frames were logged (redacted), so the check above looked at them.
        assert '"ChangeConfiguration",{"value":"***","key":"AuthorizationKey"}' in members["agent.log"]
        assert '{"key":"AuthorizationKey","value":"***"}' in members["agent.log"]  # the escaped name, decoded
        assert "unparseable frame" in members["agent.log"]
    finally:
        await service.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await stop_bench(bench)
        logging.getLogger().removeHandler(handler)
        handler.close()
