"""Helpers for the firmware/diagnostics OCTT tests: the agent's TOML with a password, an AuthorizationKey
preset and a real installer script; reading uploaded archives; status sequences."""

from __future__ import annotations

import io
import sys
import tarfile
from datetime import UTC, datetime
from pathlib import Path

from tests.agent.ocpp.conftest import Octt, eventually

PASSWORD = "toml-ocpp-password-1234"
AUTH_KEY = "0123456789abcdefAUTHKEY"
FIRMWARE = b"\x7fELF fake firmware image " * 4000

INSTALLER = """\
import shutil, sys
firmware, marker, code = sys.argv[1], sys.argv[2], int(sys.argv[3])
if code == 0:
    shutil.copyfile(firmware, marker)
print("installer ran on", firmware)
sys.exit(code)
"""


def now_iso(offset_s: float = 0.0) -> str:
    return datetime.fromtimestamp(datetime.now(UTC).timestamp() + offset_s, UTC).isoformat().replace("+00:00", "Z")


def configure(octt: Octt, tmp_path: Path, *, exit_code: int | None = 0) -> Path:
    """Rewrite the rig's agent.toml: [ocpp] password, an AuthorizationKey preset and (unless exit_code is
    None) an installer that copies the firmware to the returned marker path and exits with exit_code."""
    marker = tmp_path / "installed.bin"
    toml = octt.rig.dir / "agent.toml"
    text = toml.read_text().replace("[ocpp]\n", f'[ocpp]\npassword = "{PASSWORD}"\n', 1)
    text += f'\n[ocpp.keys]\nAuthorizationKey = "{AUTH_KEY}"\n'
    if exit_code is not None:
        script = tmp_path / "install.py"
        script.write_text(INSTALLER)
        argv = [sys.executable, str(script), "{file}", str(marker), str(exit_code)]
        text += "\n[firmware]\ninstaller = [" + ", ".join(f'"{a}"' for a in argv) + "]\n"
    toml.write_text(text)
    return marker


def statuses(octt: Octt, action: str) -> list[str]:
    return [m.payload["status"] for m in octt.msgs(action)]


async def wait_statuses(octt: Octt, action: str, expected: list[str], within: float = 10.0) -> None:
    await eventually(lambda: statuses(octt, action) == expected, within,
                     f"{action} {expected} (have {statuses(octt, action)})")


def archive_members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        out: dict[str, bytes] = {}
        for member in tar.getmembers():
            extracted = tar.extractfile(member)
            if extracted is not None:
                out[member.name] = extracted.read()
        return out


def assert_no_secrets(members: dict[str, bytes]) -> None:
    for name, content in members.items():
        for secret in (PASSWORD, AUTH_KEY):
            assert secret.encode() not in content, f"{secret!r} leaked into {name}"
