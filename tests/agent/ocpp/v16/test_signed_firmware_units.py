"""signed_firmware.signature_valid: the `signature` field's base64 (whitepaper 1.6 SignedUpdateFirmware.req:
"Base64 encoded firmware signature") may be wrapped in lines as `openssl base64` writes it, but characters
outside the base64 alphabet still make it invalid."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from agent.ocpp.firmware_signature import signature_valid

IMAGE = b"firmware image bytes " * 100


@pytest.fixture(scope="module")
def signer() -> tuple[str, str]:
    """(certificate PEM, base64 RSA-SHA256 signature of IMAGE without line breaks)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Maker Firmware")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    signature = key.sign(IMAGE, padding.PKCS1v15(), hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM).decode(), base64.b64encode(signature).decode()


def wrap(text: str, eol: str) -> str:
    return "".join(text[i:i + 64] + eol for i in range(0, len(text), 64))


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r", " ", "\t"])
def test_wrapped_base64_is_accepted(signer: tuple[str, str], eol: str) -> None:
    cert, signature = signer
    digest = hashlib.sha256(IMAGE).digest()
    assert signature_valid(cert, signature, digest)
    assert signature_valid(cert, wrap(signature, eol), digest)
    assert signature_valid(cert, "\n" + wrap(signature, eol) + "  \n", digest)


@pytest.mark.parametrize("junk", ["!", "é", "-", "_", "\x00", "\\n"])
def test_characters_outside_the_alphabet_are_refused(signer: tuple[str, str], junk: str) -> None:
    cert, signature = signer
    digest = hashlib.sha256(IMAGE).digest()
    assert not signature_valid(cert, signature[:40] + junk + signature[40:], digest)
    assert not signature_valid(cert, wrap(signature, "\n") + junk, digest)


def test_wrong_file_or_truncated_signature_is_refused(signer: tuple[str, str]) -> None:
    cert, signature = signer
    assert not signature_valid(cert, signature, hashlib.sha256(b"other").digest())
    assert not signature_valid(cert, signature[:-4], hashlib.sha256(IMAGE).digest())
