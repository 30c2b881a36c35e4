"""Signed meter values: the register layout of a map's ``[signing]`` block, ASCII <-> register words, and
OCMF records (``OCMF|{payload JSON}|{signature JSON}``, ECDSA secp256r1 / SHA-256 over the payload bytes).
Pure functions; the layout is documented in ``maps/ocmf.toml``."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

# cryptography (~6 MB resident) is imported by the functions that sign or verify: the meter driver on the
# control side only parses records and never loads it.

COMMAND_BEGIN = 1
COMMAND_END = 2
COMMAND_UPDATE = 3  # an intermediate reading of the transaction (OCMF TX "C"), e.g. clock-aligned
STATUS_IDLE, STATUS_BUSY, STATUS_READY, STATUS_ERROR = 0, 1, 2, 3
TX_REF_REGISTERS = 16  # 32 ASCII characters
SIGNATURE_ALGORITHM = "ECDSA-secp256r1-SHA256"


class OcmfError(ValueError):
    """A malformed OCMF record or signing block."""


@dataclass(frozen=True, slots=True)
class SigningLayout:
    """Where the signing registers are; offsets are fixed relative to ``base`` (see maps/ocmf.toml)."""

    function: int
    base: int
    record_registers: int

    @property
    def command(self) -> int:
        return self.base

    @property
    def status(self) -> int:
        """Status, record length and public key length: three consecutive registers."""
        return self.base + 17

    @property
    def public_key(self) -> int:
        return self.base + 32

    public_key_registers = 64

    @property
    def record(self) -> int:
        return self.base + 256

    @property
    def end(self) -> int:
        """First address after the block."""
        return self.record + self.record_registers


def parse_signing(table: Mapping[str, Any], where: str) -> SigningLayout:
    if table.get("scheme") != "ocmf":
        raise OcmfError(f"{where}.scheme: only 'ocmf' is known, got {table.get('scheme')!r}")
    values = {}
    for key, default in (("function", 3), ("base", None), ("record_registers", 1024)):
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise OcmfError(f"{where}.{key}: expected an integer, got {value!r}")
        values[key] = value
    if values["function"] != 3:
        raise OcmfError(f"{where}.function: the signing block is holding registers (3)")
    if not 64 <= values["record_registers"] <= 4096:
        raise OcmfError(f"{where}.record_registers: expected 64..4096")
    layout = SigningLayout(**values)
    if not 0 <= layout.base or layout.end > 0x10000:
        raise OcmfError(f"{where}.base: the block does not fit below 0x10000")
    return layout


# ---------------------------------------------------------------- text in registers


def text_to_words(text: str | bytes, registers: int) -> list[int]:
    raw = text.encode("ascii") if isinstance(text, str) else text
    if len(raw) > 2 * registers:
        raise ValueError(f"{len(raw)} bytes do not fit in {registers} registers")
    raw = raw.ljust(2 * registers, b"\0")
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def words_to_bytes(words: Sequence[int], length: int | None = None) -> bytes:
    raw = b"".join((w & 0xFFFF).to_bytes(2, "big") for w in words)
    return raw[:length] if length is not None else raw.rstrip(b"\0")


def transaction_ref_words(tx_ref: str) -> list[int]:
    if not tx_ref or not tx_ref.isascii() or not tx_ref.isprintable() or len(tx_ref) > 2 * TX_REF_REGISTERS:
        raise ValueError(f"transaction reference must be 1..{2 * TX_REF_REGISTERS} printable ASCII characters")
    return text_to_words(tx_ref, TX_REF_REGISTERS)


# ---------------------------------------------------------------- OCMF records


@dataclass(frozen=True, slots=True)
class OcmfRecord:
    payload_text: str
    payload: dict[str, Any]
    signature: dict[str, Any]

    @property
    def reading(self) -> dict[str, Any]:
        readings = self.payload.get("RD") or [{}]
        first = readings[0]
        return first if isinstance(first, dict) else {}


def parse_ocmf(record: str) -> OcmfRecord:
    """Split and check ``OCMF|payload|signature``; the payload keeps its exact text (it is what was signed)."""
    if not record.startswith("OCMF|") or record.count("|") < 2:
        raise OcmfError("not an OCMF record (expected OCMF|{payload}|{signature})")
    cut = record.rindex("|")  # the signature JSON has no '|'; the payload text might
    payload_text, signature_text = record[5:cut], record[cut + 1 :]
    try:
        payload, signature = json.loads(payload_text), json.loads(signature_text)
    except ValueError as exc:
        raise OcmfError(f"OCMF record is not JSON: {exc}") from exc
    if not isinstance(payload, dict) or not isinstance(signature, dict):
        raise OcmfError("OCMF payload and signature must be JSON objects")
    if not isinstance(signature.get("SD"), str):
        raise OcmfError("OCMF signature has no SD")
    return OcmfRecord(payload_text, payload, signature)


def sign_ocmf(payload: Mapping[str, Any], private_key: ec.EllipticCurvePrivateKey) -> str:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    payload_text = json.dumps(payload, separators=(",", ":"))
    der = private_key.sign(payload_text.encode(), ec.ECDSA(hashes.SHA256()))
    signature = {"SA": SIGNATURE_ALGORITHM, "SD": der.hex().upper()}
    return f"OCMF|{payload_text}|{json.dumps(signature, separators=(',', ':'))}"


def verify_ocmf(record: str, public_key_der: bytes) -> bool:
    """True when the record's signature verifies with this DER SubjectPublicKeyInfo key."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    parsed = parse_ocmf(record)
    if parsed.signature.get("SA", SIGNATURE_ALGORITHM) != SIGNATURE_ALGORITHM:
        return False
    key = serialization.load_der_public_key(public_key_der)
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        return False
    try:
        key.verify(bytes.fromhex(parsed.signature["SD"]), parsed.payload_text.encode(), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def public_key_der(private_key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
