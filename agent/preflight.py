"""Start-up checks of a parsed configuration against what it refers to: the OCPP key presets (as the
configuration store will validate them), the TLS trust anchors and client certificate for security
profiles 2 and 3, and the state directory.

`cpagent check-config` and `cpagent run` both call ``check`` before anything starts, so a configuration
that cannot run is one ConfigError naming the key (exit 2), never a traceback half-way through start-up
(exit 1, which systemd's Restart=on-failure turns into a restart loop). Nothing is created or changed.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from agent.config import AgentConfig, ConfigError


def check(config: AgentConfig) -> None:
    """Raise ConfigError for the first problem found."""
    check_ocpp_keys(config)
    check_ocpp_variables(config)
    check_tls(config)
    check_state_dir(config.state_dir)


def check_ocpp_keys(config: AgentConfig) -> None:
    from agent.ocpp.v16.configuration import CORE, SECURITY, check_presets
    from agent.ocpp.v16.features import load_feature_classes
    from agent.ocpp.v16.meter_values import SUPPORTED_MEASURANDS

    # The same profiles and measurands OcppService gives its ConfigurationStore.
    profiles = (CORE, SECURITY, *(cls.profile for cls in load_feature_classes()))
    check_presets(
        config.ocpp.keys,
        number_of_connectors=len(config.connectors),
        enabled_profiles=profiles,
        supported_measurands=SUPPORTED_MEASURANDS,
    )


def check_ocpp_variables(config: AgentConfig) -> None:
    """[ocpp.variables] as the OCPP 2.0.1 device model validates them (each connector is an EVSE)."""
    from agent.ocpp.v201.device_model import check_presets as check_variables

    check_variables(config.ocpp.variables, evse_ids=tuple(c.id for c in config.connectors))


def check_tls(config: AgentConfig) -> None:
    from agent.certificates import CENTRAL_SYSTEM_ROOT, CHARGE_POINT, CertificateError, read_pem_file

    ocpp = config.ocpp
    ca_certs = 0
    if ocpp.ca_file is not None:
        try:
            ca_certs = len(read_pem_file(ocpp.ca_file))
        except CertificateError as exc:
            raise ConfigError("ocpp.ca_file", f"{ocpp.ca_file}: not a usable PEM certificate ({exc})") from None
    if ocpp.client_cert is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(str(ocpp.client_cert), str(ocpp.client_key))
        except (ssl.SSLError, OSError) as exc:
            # The message names the files, never their content.
            raise ConfigError("ocpp.client_cert", f"cannot load {ocpp.client_cert} with its key: {exc}") from None
    if not ocpp.endpoint or ocpp.security_profile < 2:
        return
    certificates = config.state_dir / "certificates"
    if ca_certs == 0 and not _installed_roots(certificates / CENTRAL_SYSTEM_ROOT):
        raise ConfigError(
            "ocpp.ca_file",
            f"security profile {ocpp.security_profile} needs a CA for the central system's certificate: "
            "set ocpp.ca_file to a PEM certificate (none is installed in the state directory)",
        )
    if ocpp.security_profile >= 3 and ocpp.client_cert is None:
        installed = certificates / CHARGE_POINT
        if not ((installed / "cert.pem").is_file() and (installed / "key.pem").is_file()):
            raise ConfigError(
                "ocpp.client_cert",
                "security profile 3 needs a client certificate: set ocpp.client_cert and ocpp.client_key "
                "(none is installed in the state directory)",
            )


def _installed_roots(folder: Path) -> bool:
    from agent.certificates import CertificateError, read_pem_file

    for path in sorted(folder.glob("*.pem")) if folder.is_dir() else []:
        try:
            if read_pem_file(path):
                return True
        except CertificateError:
            continue
    return False


def check_state_dir(path: Path) -> None:
    """The state directory exists as a writable directory, or can be created (nothing is created here)."""
    key = "station.state_dir"
    if path.exists():
        if not path.is_dir():
            raise ConfigError(key, f"{path} exists and is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(key, f"{path} is not writable by this user")
        return
    parent = path
    while not parent.exists():
        if parent.is_symlink():
            raise ConfigError(key, f"cannot create {path}: {parent} is a dangling symbolic link")
        if parent.parent == parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(key, f"cannot create {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(key, f"cannot create {path}: {parent} is not writable by this user")
