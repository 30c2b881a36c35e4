"""systemd/install.sh into a temporary root: the files a device gets, and nothing touched outside it."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from agent.config import DEFAULT_DIAG_SOCKET, DEFAULT_STATE_DIR, load
from tests.systemd.conftest import INSTALLER, REPO, UNIT

MACHINE_TOOLS = ("useradd", "groupadd", "usermod", "chown", "systemctl", "pip", "python3")


@pytest.fixture
def tools_log(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """PATH with recording stand-ins for the tools that change a machine: --root must call none of them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "tools.log"
    for tool in MACHINE_TOOLS:
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\n')
        script.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin"}, log


def install(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(INSTALLER), "--root", str(root), *args], capture_output=True, text=True,
                          env=env, timeout=30)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_into_a_root(tmp_path: Path, tools_log: tuple[dict[str, str], Path]) -> None:
    env, log = tools_log
    root = tmp_path / "root"
    root.mkdir()
    done = install(root, env)
    assert done.returncode == 0, done.stderr
    assert "skipping useradd" in done.stdout and "skipping daemon-reload/enable" in done.stdout

    etc = root / "etc" / "cpagent"
    config = etc / "agent.toml"
    unit = root / "etc" / "systemd" / "system" / "cpagent.service"
    state = root / DEFAULT_STATE_DIR.relative_to("/")
    assert (mode(etc), mode(config), mode(unit), mode(state)) == (0o750, 0o640, 0o644, 0o750)
    assert config.read_bytes() == (REPO / "docs" / "agent.example.toml").read_bytes()
    assert unit.read_bytes() == UNIT.read_bytes()
    # The example the device starts from is valid and uses the directories the unit creates.
    agent = load(config)
    assert agent.state_dir == DEFAULT_STATE_DIR and agent.diag_socket.parent == DEFAULT_DIAG_SOCKET.parent
    assert not log.exists(), log.read_text()  # no useradd, chown, pip or systemctl on this machine
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == [
        "etc/cpagent/agent.toml", "etc/systemd/system/cpagent.service"]


def test_reinstall_keeps_the_devices_configuration(tmp_path: Path, tools_log: tuple[dict[str, str], Path]) -> None:
    env, _ = tools_log
    assert install(tmp_path, env).returncode == 0
    config = tmp_path / "etc" / "cpagent" / "agent.toml"
    config.write_text("# edited on the device\n")
    done = install(tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert "keeping existing /etc/cpagent/agent.toml" in done.stdout
    assert config.read_text() == "# edited on the device\n"


def test_unknown_argument_is_refused(tmp_path: Path, tools_log: tuple[dict[str, str], Path]) -> None:
    env, _ = tools_log
    done = install(tmp_path, env, "--force")
    assert done.returncode == 2 and "unknown argument: --force" in done.stderr
    assert not (tmp_path / "etc").exists()
