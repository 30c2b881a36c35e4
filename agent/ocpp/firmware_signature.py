"""Signed firmware checks, pure (no I/O besides reading the given paths), for both OCPP versions' signed
updates (1.6 SignedUpdateFirmware, 2.0.1 UpdateFirmware): the signing certificate must chain to an installed
ManufacturerRootCertificate (PEM files of a directory), the firmware's SHA-256 signature (base64) must verify
with its key (RSA PKCS#1 v1.5 or ECDSA).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from agent.certificates import issued_by

# cryptography (~8 MB resident) is imported where a signature or certificate is checked, not to start.
if TYPE_CHECKING:
    from cryptography import x509

log = logging.getLogger("cpagent.ocpp.firmware_signature")

MAX_CHAIN_DEPTH = 5
_HASH_CHUNK = 1024 * 1024
_WHITESPACE = re.compile(r"[ \t\r\n\f\v]+")


def load_roots(directory: Path) -> list[x509.Certificate]:
    from cryptography import x509

    roots: list[x509.Certificate] = []
    for path in sorted(directory.glob("*.pem")) if directory.is_dir() else []:
        try:
            roots.extend(x509.load_pem_x509_certificates(path.read_bytes()))
        except (OSError, ValueError) as exc:
            log.warning("manufacturer root %s unreadable: %s", path.name, exc)
    return roots


def _valid_at(cert: x509.Certificate, when: datetime) -> bool:
    return cert.not_valid_before_utc <= when <= cert.not_valid_after_utc


def certificate_problem(chain_pem: str, roots: list[x509.Certificate], when: datetime) -> str | None:
    """None if the leaf of ``chain_pem`` (optionally followed by intermediates) chains to one of ``roots``
    with every certificate valid at ``when``; otherwise why not."""
    from cryptography import x509

    try:
        chain = x509.load_pem_x509_certificates(chain_pem.encode())
    except ValueError as exc:
        return f"signing certificate unreadable: {exc}"
    if not roots:
        return "no ManufacturerRootCertificate installed"
    current, intermediates = chain[0], chain[1:]
    for _ in range(MAX_CHAIN_DEPTH):
        if not _valid_at(current, when):
            return f"certificate {current.subject.rfc4514_string()} is not valid now"
        for root in roots:
            if current == root or issued_by(current, root):
                return None if _valid_at(root, when) else "manufacturer root certificate expired"
        parent = next((c for c in intermediates if issued_by(current, c)), None)
        if parent is None:
            return "signing certificate does not chain to an installed ManufacturerRootCertificate"
        current = parent
    return "certificate chain too long"


def file_digest(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.digest()


def decode_signature(text: str) -> bytes:
    """The base64 ``signature`` field. Line breaks and other ASCII whitespace are allowed anywhere (base64
    wrapped at 64 columns, as `openssl base64` writes it); any other character outside the base64 alphabet,
    or bad padding, raises binascii.Error."""
    return base64.b64decode(_WHITESPACE.sub("", text), validate=True)


def signature_valid(chain_pem: str, signature_b64: str, digest: bytes) -> bool:
    """SHA-256 signature (base64, possibly wrapped in lines) by the signing certificate's key (RSA PKCS#1
    v1.5 or ECDSA) over the file whose SHA-256 is ``digest``."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

    try:
        signature = decode_signature(signature_b64)
        key = x509.load_pem_x509_certificates(chain_pem.encode())[0].public_key()
        prehashed = utils.Prehashed(hashes.SHA256())
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, digest, padding.PKCS1v15(), prehashed)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, digest, ec.ECDSA(prehashed))
        else:
            return False
    except (ValueError, binascii.Error, InvalidSignature):
        return False
    return True
