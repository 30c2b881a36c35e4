"""idTags are personal data: the GetDiagnostics / GetLog archives carry them masked exactly as cpctl shows
them (``agent.diag.mask``), in sessions.json, events.jsonl and the agent's log file, including log lines
an older agent wrote with the idTag in clear (issue 11 item 16)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.logsetup import PLAIN_FORMAT
from agent.redact import mask
from tests.agent.ocpp.conftest import CP, TAG, Octt
from tests.agent.ocpp.fileservers import http_server
from tests.agent.ocpp.firmware_support import archive_members, configure, now_iso, wait_statuses

OLD_LINE = ('DEBUG agent.ocpp.v16.rpc: CP1 > [2,"0","Authorize",{"idTag":"%s"}] '
            "and parentIdTag=%s\n")


@pytest.fixture
def debug_log(tmp_path: Path) -> Iterator[Path]:
    """The agent's log file at DEBUG (every frame), as [firmware] log_file points the archive at it."""
    path = tmp_path / "agent.log"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S,000 ", time.localtime(time.time() - 5))  # logging's asctime
    path.write_text(stamp + OLD_LINE.replace("%s", TAG))  # written before masking existed, inside the window
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    # Only the agent's records: the CSMS runs in this process too, and its log is not the agent's.
    handler.addFilter(lambda record: not record.name.startswith(("cpsim", "simulator", "websockets.server")))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


def assert_masked(members: dict[str, bytes]) -> None:
    for name, content in members.items():
        assert TAG.encode() not in content, f"idTag in clear in {name}"


async def test_id_tags_masked_in_get_diagnostics_and_get_log(octt: Octt, tmp_path: Path, debug_log: Path) -> None:
    configure(octt, tmp_path, exit_code=None)
    toml = octt.rig.dir / "agent.toml"
    toml.write_text(toml.read_text() + f'\n[firmware]\nlog_file = "{debug_log}"\n')
    await octt.start_agent()
    await octt.booted()
    await octt.charging(TAG)  # Authorize + StartTransaction with the idTag; a session row; token events
    with http_server() as web:
        answer = await octt.csms.send(CP, "GetDiagnostics", {"location": web.url("/diag"),
                                                             "startTime": now_iso(-3600)})
        await wait_statuses(octt, "DiagnosticsStatusNotification", ["Uploading", "Uploaded"])
        diagnostics = archive_members(web.uploads[f"PUT /diag/{answer['fileName']}"])
        answer = await octt.csms.send(CP, "GetLog", {"logType": "DiagnosticsLog", "requestId": 3,
                                                     "log": {"remoteLocation": web.url("/logs")}})
        assert answer["status"] == "Accepted"
        await wait_statuses(octt, "LogStatusNotification", ["Uploading", "Uploaded"])
        get_log = archive_members(web.uploads[f"PUT /logs/{answer['filename']}"])

    for members in (diagnostics, get_log):
        assert_masked(members)
        sessions = json.loads(members["sessions.json"])
        assert [s["id_tag"] for s in sessions] == [mask(TAG)]
        log_text = members["agent.log"].decode()
        assert f'"idTag":"{mask(TAG)}"' in log_text  # the frames were there, masked
        assert f"parentIdTag={mask(TAG)}" in log_text  # the old line too
        assert mask(TAG).encode() in members["events.jsonl"]
