"""TLS for security profiles 2 and 3: the client ``ssl.SSLContext`` and the reading of TLS failures.

The CSMS's server certificate is verified against the installed CentralSystemRootCertificate(s) (plus an
optional CA file from the agent configuration) and its host name; TLS 1.2 is the minimum. Profile 3 adds
the charge point's client certificate and key.

    context = build_client_context(ca_pem=store.pem_bundle(CENTRAL_SYSTEM_ROOT), ca_file=None,
                                   client_cert=store.cert_path, client_key=store.key_path)
"""

from __future__ import annotations

import socket
import ssl
import warnings
from pathlib import Path

INVALID_CENTRAL_SYSTEM_CERTIFICATE = "InvalidCentralSystemCertificate"
INVALID_TLS_VERSION = "InvalidTLSVersion"
INVALID_TLS_CIPHER_SUITE = "InvalidTLSCipherSuite"
FAILED_TO_AUTHENTICATE = "FailedToAuthenticateAtCentralSystem"


class TlsSetupError(ValueError):
    """No trust anchor or an unusable client certificate: profile 2/3 cannot be used."""


def build_client_context(
    *,
    ca_pem: str = "",
    ca_file: Path | None = None,
    client_cert: Path | None = None,
    client_key: Path | None = None,
) -> ssl.SSLContext:
    if not ca_pem and ca_file is None:
        raise TlsSetupError("no CentralSystemRootCertificate installed and no ocpp.ca_file configured")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED by default
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if ca_pem:
            context.load_verify_locations(cadata=ca_pem)
        if ca_file is not None:
            context.load_verify_locations(cafile=str(ca_file))
    except (ssl.SSLError, OSError) as exc:
        raise TlsSetupError(f"cannot load the CA certificates: {exc}") from None
    if client_cert is not None:
        try:
            context.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
        except (ssl.SSLError, OSError) as exc:
            # The message names files, never their content.
            raise TlsSetupError(f"cannot load the client certificate {client_cert}: {exc}") from None
    return context


PROBE_TIMEOUT_S = 3.0


def probe_server_tls_version(host: str, port: int, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """The TLS version a server negotiates when offered every version, or None if no handshake completes.

    Used once after a server reset our TLS 1.2+ handshake without an alert (an asyncio TLS terminator does
    that): a server that then completes a TLS 1.0/1.1 handshake is the InvalidTLSVersion case. The probe
    verifies nothing because it trusts nothing: it sends no HTTP, no credentials, and closes at once."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        try:
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
        except ssl.SSLError:
            pass
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            return tls.version()
    except (OSError, ValueError):
        return None


def classify_dial_failure(description: str | None) -> str | None:
    """The security event a failed dial stands for (from ``Link.last_error``), or None."""
    if not description:
        return None
    text = description.lower()
    if text.startswith("http 401"):
        return FAILED_TO_AUTHENTICATE
    if "certificate verify failed" in text or "certificate_verify_failed" in text or "hostname mismatch" in text:
        return INVALID_CENTRAL_SYSTEM_CERTIFICATE
    if "protocol_version" in text or "unsupported protocol" in text or "wrong version number" in text:
        return INVALID_TLS_VERSION
    if "no shared cipher" in text or "handshake failure" in text or "handshake_failure" in text:
        return INVALID_TLS_CIPHER_SUITE
    return None
