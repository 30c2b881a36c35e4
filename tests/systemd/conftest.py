"""Finding (or, in CI as root, installing) systemd-analyze, and reading unit files."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "cpagent.service"
INSTALLER = REPO / "systemd" / "install.sh"


def _may_install() -> str | None:
    """None if this process may apt-get install systemd, else why not."""
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine"
    if os.geteuid() != 0:
        return "not root"
    if os.environ.get("CI") != "true" and os.environ.get("CPAGENT_TEST_APT") != "1":
        return "neither CI=true nor CPAGENT_TEST_APT=1 is set"
    return None


@pytest.fixture(scope="session")
def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found:
        return found
    refusal = _may_install()
    if refusal:
        pytest.skip(f"systemd-analyze is not installed and the test may not install it ({refusal}); "
                    "install Debian's systemd package or run as root with CPAGENT_TEST_APT=1")
    # pytest-xdist workers share the machine: one apt-get at a time, the others find it installed.
    with open("/tmp/cpagent-test-apt.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if shutil.which("systemd-analyze") is None:
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            apt = ["apt-get", "-q", "-o", "DPkg::Lock::Timeout=300"]
            for args in (["update"], ["install", "-y", "--no-install-recommends", "systemd"]):
                done = subprocess.run(apt + args, env=env, capture_output=True, text=True, timeout=600)
                if done.returncode != 0:
                    pytest.fail(f"apt-get {' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    found = shutil.which("systemd-analyze")
    if not found:
        pytest.fail("installed Debian's systemd package but systemd-analyze is still missing")
    return found


def unit_settings(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) in file order; unit files repeat keys (DeviceAllow=), so no dict."""
    section = ""
    settings = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        settings.append((section, key.strip(), value.strip()))
    return settings
