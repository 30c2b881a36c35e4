"""The cpagent.service unit: systemd accepts it, it is hardened, and it agrees with the installer and the
agent's default paths."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import DEFAULT_CONFIG_PATH, DEFAULT_DIAG_SOCKET, DEFAULT_STATE_DIR
from agent.ocpp.v16.service import RESTART_EXIT_STATUS
from agent.sdnotify import EXIT_RESTART_REQUESTED
from tests.systemd.conftest import INSTALLER, UNIT, unit_settings

pytestmark = pytest.mark.timeout(900)  # covers a first-time apt-get install of systemd in CI

SETTINGS = unit_settings(UNIT.read_text())


def values(key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in SETTINGS if s == section and k == key]


def one(key: str, section: str = "Service") -> str:
    found = values(key, section)
    assert len(found) == 1, f"{section}.{key}: {found}"
    return found[0]


def runnable_copy(directory: Path) -> Path:
    """The unit with ExecStart pointing at a program that exists here (the venv's cpagent)."""
    cpagent = Path(sys.executable).parent / "cpagent"
    assert cpagent.exists(), "the project is not installed in this venv"
    text = UNIT.read_text().replace("ExecStart=/opt/cpagent/bin/cpagent ", f"ExecStart={cpagent} ")
    assert text != UNIT.read_text()
    copy = directory / "cpagent.service"
    copy.write_text(text)
    return copy


def analyze(systemd_analyze: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([systemd_analyze, *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_LOG_COLOR": "0"})


def test_verify_accepts_the_unit(systemd_analyze: str, tmp_path: Path) -> None:
    done = analyze(systemd_analyze, "verify", "--man=no", str(runnable_copy(tmp_path)))
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if "cpagent" in line]
    assert done.returncode == 0 and complaints == [], done.stdout + done.stderr


def test_verify_of_the_shipped_unit_only_misses_the_installed_venv(systemd_analyze: str) -> None:
    # Proves verify really checks the file: its one complaint is the venv the installer creates.
    done = analyze(systemd_analyze, "verify", "--man=no", str(UNIT))
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert complaints == [
        "cpagent.service: Command /opt/cpagent/bin/cpagent is not executable: No such file or directory"
    ], complaints
    assert done.returncode != 0


def test_verify_rejects_a_broken_copy(systemd_analyze: str, tmp_path: Path) -> None:
    copy = runnable_copy(tmp_path)
    copy.write_text(copy.read_text().replace("ExecStart=", "ExecStart=relative/"))
    done = analyze(systemd_analyze, "verify", "--man=no", str(copy))
    assert done.returncode != 0
    assert "has a bad unit file setting" in done.stdout + done.stderr


def test_security_exposure_is_ok(systemd_analyze: str, tmp_path: Path) -> None:
    version = analyze(systemd_analyze, "--version").stdout.split()
    if int(version[1]) < 250:
        pytest.skip(f"systemd {version[1]} has no `security --offline` (needs 250+)")
    done = analyze(systemd_analyze, "security", "--offline=yes", "--no-pager", str(runnable_copy(tmp_path)))
    match = re.search(r"Overall exposure level for cpagent\.service: (\d+\.\d+) (\w+)", done.stdout)
    assert match, done.stdout + done.stderr
    score, verdict = float(match[1]), match[2]
    # 1.7 OK with systemd 252; the remaining points are serial devices, the network and group-readable state.
    assert score <= 2.0 and verdict == "OK", done.stdout


def test_notify_watchdog_and_restart_policy() -> None:
    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert re.fullmatch(r"\d+s", one("WatchdogSec"))
    assert one("Restart") == "on-failure"
    assert one("RestartSec")
    # Every exit status the agent uses for "restart me" is restarted and not counted as a failure.
    for code in {str(EXIT_RESTART_REQUESTED), str(RESTART_EXIT_STATUS)}:
        assert code in one("RestartForceExitStatus").split(), code
        assert code in one("SuccessExitStatus").split(), code
    assert one("RestartPreventExitStatus") == "2"  # bad configuration: restarting will not fix it


def test_user_directories_and_hardening() -> None:
    assert (one("User"), one("Group"), one("SupplementaryGroups")) == ("cpagent", "cpagent", "dialout")
    assert one("CapabilityBoundingSet") == ""
    assert set(one("RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK",
                                                           "AF_CAN"}
    for key, value in [("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
                       ("NoNewPrivileges", "yes"), ("RuntimeDirectoryMode", "0750"), ("DevicePolicy", "closed")]:
        assert one(key) == value, key
    assert not values("PrivateDevices"), "PrivateDevices=yes would hide the serial ports"
    allowed = {v.split()[0] for v in values("DeviceAllow")}
    assert {"char-ttyS", "char-ttyUSB", "char-ttyACM", "char-ttymxc"} <= allowed
    assert all(v.split()[1] == "rw" for v in values("DeviceAllow"))


def test_paths_agree_with_the_agent_and_the_installer() -> None:
    assert Path("/var/lib") / one("StateDirectory") == DEFAULT_STATE_DIR
    assert Path("/run") / one("RuntimeDirectory") == DEFAULT_DIAG_SOCKET.parent
    assert Path("/etc") / one("ConfigurationDirectory") == DEFAULT_CONFIG_PATH.parent
    venv = re.search(r"^VENV=(\S+)$", INSTALLER.read_text(), re.M)
    assert venv
    assert one("ExecStart") == f"{venv[1]}/bin/cpagent run --config {DEFAULT_CONFIG_PATH}"
    assert one("WantedBy", "Install") == "multi-user.target"
