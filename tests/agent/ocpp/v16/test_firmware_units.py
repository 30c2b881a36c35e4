"""Pure parts of the firmware/diagnostics features: [firmware] config validation, installer argv, secret
removal and time filters of the diagnostics archive."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from agent.config import ConfigError, parse
from agent.ocpp.v16.diag_archive import filter_json_lines, filter_log_lines, without_secrets
from agent.ocpp.v16.firmware import installer_argv, run_installer

BASE: dict[str, Any] = {"station": {"id": "CP"}, "devices": {"b": {"driver": "d"}}, "connectors": [{"pilot": "b"}]}


def test_firmware_table_is_optional_and_validated() -> None:
    assert parse(BASE).firmware.installer is None
    ok = parse({**BASE, "firmware": {"installer": ["rauc", "install", "{file}"], "log_file": "/var/log/a"}})
    assert ok.firmware.installer == ("rauc", "install", "{file}")
    assert ok.firmware.log_file == Path("/var/log/a")
    for bad, why in [("rauc install {file}", "list"), (["rauc", "install"], "{file}"), ([], "non-empty"),
                     (["rauc", 3, "{file}"], "strings")]:
        with pytest.raises(ConfigError, match=why) as info:
            parse({**BASE, "firmware": {"installer": bad}})
        assert info.value.key == "firmware.installer"
    with pytest.raises(ConfigError, match="unknown key"):
        parse({**BASE, "firmware": {"shell": "x"}})


def test_installer_argv_is_a_list_with_the_file_substituted() -> None:
    argv = installer_argv(("inst", "--image={file}", "; rm -rf /"), Path("/s/fw.bin"))
    assert argv == ["inst", "--image=/s/fw.bin", "; rm -rf /"]  # no shell: the ';' is just an argument


async def test_installer_missing_or_absent(tmp_path: Path) -> None:
    assert await run_installer(None, tmp_path / "f") == (False, "no installer configured")
    ok, why = await run_installer((str(tmp_path / "no-such-binary"), "{file}"), tmp_path / "f")
    assert not ok and "cannot start" in why


def test_secrets_are_removed_from_the_config_tree() -> None:
    tree = {"ocpp": {"endpoint": "ws://x", "password": "p", "keys": {"AuthorizationKey": "k", "HeartbeatInterval": 5}},
            "devices": {"m": {"driver": "d", "tls_private_key": "/k.pem", "api-secret": "s"}}}
    assert without_secrets(tree) == {"ocpp": {"endpoint": "ws://x", "keys": {"HeartbeatInterval": 5}},
                                     "devices": {"m": {"driver": "d"}}}


def test_log_lines_filtered_by_time_with_continuations() -> None:
    def stamp(wall: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall)) + ",123"

    now = time.time()
    lines = [f"{stamp(now - 7200)} ERROR old\n", "Traceback old\n", f"{stamp(now)} INFO new\n", "  continued\n"]
    assert list(filter_log_lines(lines, now - 60, None)) == lines[2:]
    assert list(filter_log_lines(lines, None, now - 60)) == lines[:2]
    json_lines = ['{"wall": 10}\n', '{"timestamp": "2020-01-01T00:00:00Z"}\n', "not json\n"]
    assert list(filter_json_lines(json_lines, 100, None)) == json_lines[1:]
