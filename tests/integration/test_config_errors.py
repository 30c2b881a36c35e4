"""Configuration errors are found before anything starts (issue 11 items 9, 17, 18): `cpagent check-config`
and `cpagent run` both exit 2 with one line naming the key, never a traceback and exit 1 (which systemd's
Restart=on-failure turns into a restart loop), and check-config never says ok for a file run refuses."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.cli import main

ARABIC_3600 = "\u0663\u0666\u0660\u0660"  # int() reads it as 3600


def base_toml(tmp_path: Path, *, ocpp: str = 'endpoint = "ws://127.0.0.1:9"\n', keys: str = "",
              state_dir: str | None = None) -> str:
    state = state_dir if state_dir is not None else str(tmp_path / "state")
    text = (
        f'[station]\nid = "CP1"\nstate_dir = "{state}"\ndiag_socket = "{tmp_path / "diag.sock"}"\n'
        '[devices.b]\ndriver = "pilot-board-serial"\nport = "/dev/null"\n'
        '[[connectors]]\nid = 1\npilot = "b"\n'
        f"[ocpp]\n{ocpp}"
    )
    return text + (f"[ocpp.keys]\n{keys}" if keys else "")


def ca_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Root")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def wss(profile: int, ca_file: Path | None) -> str:
    text = f'endpoint = "wss://127.0.0.1:9"\nsecurity_profile = {profile}\npassword = "0123456789abcdef"\n'
    return text + (f'ca_file = "{ca_file}"\n' if ca_file else "")


def not_pem(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text("this is not a certificate\n")
    return path


def good_ca(tmp_path: Path) -> Path:
    path = tmp_path / "root.pem"
    path.write_bytes(ca_pem())
    return path


def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "plain-file"
    path.write_text("")
    return path


# (case id, TOML, the text stderr must contain). Each a configuration that cannot run.
BAD: list[tuple[str, Callable[[Path], str], str]] = [
    ("derived key", lambda t: base_toml(t, keys="NumberOfConnectors = 2\n"), "ocpp.keys.NumberOfConnectors: read-only"),
    ("derived list", lambda t: base_toml(t, keys='SupportedFeatureProfiles = "Core"\n'),
     "ocpp.keys.SupportedFeatureProfiles: read-only"),
    ("capability without a feature", lambda t: base_toml(t, keys="CustomMultiLanguageMessages = true\n"),
     "ocpp.keys.CustomMultiLanguageMessages: read-only"),
    ("capability without a feature 2", lambda t: base_toml(t, keys="AdditionalRootCertificateCheck = true\n"),
     "ocpp.keys.AdditionalRootCertificateCheck: read-only"),
    ("unknown key", lambda t: base_toml(t, keys="HeartbeatIntervall = 300\n"), "ocpp.keys.HeartbeatIntervall"),
    ("invalid value", lambda t: base_toml(t, keys='HeartbeatInterval = "often"\n'), "ocpp.keys.HeartbeatInterval"),
    ("unicode digits", lambda t: base_toml(t, keys=f'HeartbeatInterval = "{ARABIC_3600}"\n'),
     "ocpp.keys.HeartbeatInterval"),
    ("out of range", lambda t: base_toml(t, keys="LightIntensity = 101\n"), "ocpp.keys.LightIntensity"),
    ("profile 2, CA file not PEM", lambda t: base_toml(t, ocpp=wss(2, not_pem(t))), "ocpp.ca_file"),
    ("profile 2, no CA at all", lambda t: base_toml(t, ocpp=wss(2, None)), "ocpp.ca_file"),
    ("profile 3, no client certificate", lambda t: base_toml(t, ocpp=wss(3, good_ca(t))), "ocpp.client_cert"),
    ("profile 3, client certificate not PEM", lambda t: base_toml(
        t, ocpp=wss(3, good_ca(t)) + f'client_cert = "{not_pem(t)}"\nclient_key = "{not_pem(t)}"\n'),
     "ocpp.client_cert"),
    ("state_dir under a file", lambda t: base_toml(t, state_dir=str(a_file(t) / "state")), "station.state_dir"),
    ("state_dir is a file", lambda t: base_toml(t, state_dir=str(a_file(t))), "station.state_dir"),
]


@pytest.mark.parametrize("command", ["check-config", "run"])
@pytest.mark.parametrize(("toml", "named"), [pytest.param(t, n, id=i) for i, t, n in BAD])
def test_bad_configuration_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, toml: Callable[[Path], str], named: str
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(toml(tmp_path))
    try:
        status = main([command, "--config", str(config)])
    except SystemExit as exc:
        status = exc.code  # type: ignore[assignment]
    err = capsys.readouterr().err
    assert status == 2, err
    assert named in err
    assert err.count("\n") == 1 and err.startswith("cpagent: configuration error: ")


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_as_a_process_no_traceback(tmp_path: Path, command: str) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(base_toml(tmp_path, keys="NumberOfConnectors = 2\n"))
    result = subprocess.run([sys.executable, "-m", "agent.cli", command, "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr == "cpagent: configuration error: ocpp.keys.NumberOfConnectors: read-only " \
        "(derived from the station configuration)\n"


def test_what_is_fine_stays_fine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check-config says ok to presets the agent honours and to profile 2 with a PEM CA; it creates nothing."""
    ca = tmp_path / "ca.pem"
    ca.write_bytes(ca_pem())
    config = tmp_path / "agent.toml"
    keys = ('HeartbeatInterval = "3600"\nReserveConnectorZeroSupported = true\nMeterValuesSampledDataMaxLength = 4\n'
            'ConnectorPhaseRotation = "1.RST"\nWebSocketPingInterval = 0\n')
    config.write_text(base_toml(tmp_path, ocpp=wss(2, ca), keys=keys, state_dir=str(tmp_path / "new" / "state")))
    assert main(["check-config", "--config", str(config)]) == 0, capsys.readouterr().err
    assert "ok" in capsys.readouterr().out
    assert not (tmp_path / "new").exists()
