"""`cpsim up` security flags: refused combinations exit 2 naming the flag; accepted ones reach the rig
(agent.toml [ocpp] and a bundled CSMS that demands the password)."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import pytest
import websockets
from websockets.typing import Subprotocol

import simulator.rig
from simulator.cli import main
from simulator.rig import Rig, RigOptions


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--security-profile", "1"], "--security-profile 1 needs --password"),
        (["--security-profile", "2", "--password", "pw"], "--security-profile 2 needs --csms wss://"),
        (["--security-profile", "3", "--csms", "wss://127.0.0.1:1/ocpp"], "needs --client-cert and --client-key"),
        (["--ca", "/nonexistent/ca.pem"], "--ca: no such file"),
    ],
)
def test_impossible_security_options_exit_2_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    assert main(["up", "--dir", str(tmp_path), *flags]) == 2
    assert message in capsys.readouterr().err


def test_security_flags_reach_the_rig_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[RigOptions] = []

    async def capture(options: RigOptions) -> int:  # the rig itself is exercised below and elsewhere
        seen.append(options)
        return 0

    monkeypatch.setattr(simulator.rig, "run_rig", capture)
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert main(["up", "--dir", str(tmp_path / "rig"), "--security-profile", "1", "--password", "s3cret-pw",
                 "--ca", str(ca)]) == 0
    (options,) = seen
    assert (options.security_profile, options.password, options.ca_file) == (1, "s3cret-pw", ca.resolve())
    assert options.bundled_csms


async def test_profile_1_rig_writes_the_password_privately_and_its_csms_requires_it(tmp_path: Path) -> None:
    rig = Rig(RigOptions(directory=tmp_path, bundled_csms=True, security_profile=1, password="s3cret-pw"))
    await rig.start()
    try:
        config_file = tmp_path / "agent.toml"
        assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
        ocpp = tomllib.loads(config_file.read_text())["ocpp"]
        assert (ocpp["security_profile"], ocpp["password"]) == (1, "s3cret-pw")
        assert ocpp["endpoint"].startswith("ws://127.0.0.1:")
        with pytest.raises(websockets.InvalidStatus) as refused:  # no Basic auth: the bundled CSMS says no
            async with websockets.connect(f"{ocpp['endpoint']}/CP001", subprotocols=[Subprotocol("ocpp1.6")]):
                pass
        assert refused.value.response.status_code == 401
    finally:
        await rig.stop()
