"""The charge point's certificate store (OCPP 1.6 security whitepaper).

Layout under ``<state_dir>/certificates/``::

    CentralSystemRootCertificate/<sha256-of-DER>.pem   trust anchors for the CSMS's TLS server certificate
    ManufacturerRootCertificate/<sha256-of-DER>.pem    trust anchors for signed firmware
    ChargePointCertificate/cert.pem                    our client certificate chain (leaf first)
    ChargePointCertificate/key.pem                     its private key (0600)
    ChargePointCertificate/pending-key.pem             the key of the last CSR, until CertificateSigned (0600)

Certificates are public and stored 0644; private keys 0600, written atomically. Every write is
all-or-nothing (temp file + rename), so a power loss never leaves half a PEM behind.

    store = CertificateStore(state_dir / "certificates", max_entries=50)
    store.install("CentralSystemRootCertificate", pem)          # -> "Accepted" | "Rejected" | "Failed"
    csr_pem = store.create_csr(cpo_name="ACME", serial_number="SN-1")
    problem = store.accept_signed_chain(chain_pem, serial_number="SN-1", now=time.time())
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import itertools
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

# cryptography (~8 MB resident) is imported by the functions that use it: the network side loads it only
# when a certificate is handled, not to start.
if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

log = logging.getLogger("cpagent.certificates")

CENTRAL_SYSTEM_ROOT = "CentralSystemRootCertificate"
MANUFACTURER_ROOT = "ManufacturerRootCertificate"
CHARGE_POINT = "ChargePointCertificate"
ROOT_USES = (CENTRAL_SYSTEM_ROOT, MANUFACTURER_ROOT)

HASH_ALGORITHMS = ("SHA256", "SHA384", "SHA512")  # the classes of these names in cryptography's hashes

InstallStatus = Literal["Accepted", "Rejected", "Failed"]
DeleteStatus = Literal["Accepted", "Failed", "NotFound"]


class CertificateError(ValueError):
    """A certificate (chain) that cannot be used; the message says why (never contains key material)."""


@dataclass(frozen=True)
class HashData:
    """certificateHashData: OCSP-style hashes of the issuer's name and key, plus the serial number."""

    hash_algorithm: str
    issuer_name_hash: str
    issuer_key_hash: str
    serial_number: str

    def as_ocpp(self) -> dict[str, str]:
        return {
            "hashAlgorithm": self.hash_algorithm,
            "issuerNameHash": self.issuer_name_hash,
            "issuerKeyHash": self.issuer_key_hash,
            "serialNumber": self.serial_number,
        }

    @classmethod
    def from_ocpp(cls, data: Mapping[str, object]) -> HashData:
        return cls(
            str(data["hashAlgorithm"]),
            str(data["issuerNameHash"]).lower(),
            str(data["issuerKeyHash"]).lower(),
            str(data["serialNumber"]).lower().lstrip("0") or "0",
        )


def fingerprint(cert: x509.Certificate) -> str:
    from cryptography.hazmat.primitives import serialization

    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def parse_pem_chain(text: str) -> list[x509.Certificate]:
    """All certificates of a PEM text, in order; CertificateError if there are none or one is broken."""
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise CertificateError(f"not a PEM certificate: {str(exc)[:120]}") from None
    if not certs:
        raise CertificateError("no certificate in the PEM text")
    return certs


def read_pem_file(path: Path) -> list[x509.Certificate]:
    """The certificates of a PEM file (e.g. ``[ocpp] ca_file``); CertificateError if unreadable or empty."""
    try:
        text = path.read_text("ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise CertificateError(f"cannot read {path}: {exc}") from None
    return parse_pem_chain(text)


def read_ca_file(path: object, use: str, last_problem: str | None,
                 logger: logging.Logger) -> tuple[list[x509.Certificate], str | None]:
    """The roots of ``[ocpp] ca_file`` (``path``; not a Path: none) trusted as ``use``, and the problem that
    made it unusable (then no roots), logged only when it differs from ``last_problem``. Read on each use (a
    few kB), so a replaced file counts at once."""
    if not isinstance(path, Path):
        return [], None
    try:
        return read_pem_file(path), None
    except CertificateError as exc:
        if last_problem != str(exc):
            logger.warning("ocpp.ca_file not usable as %s: %s", use, exc)
        return [], str(exc)


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    from cryptography.exceptions import InvalidSignature

    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def hash_data(cert: x509.Certificate, issuer: x509.Certificate, algorithm: str = "SHA256") -> HashData:
    """The whitepaper's certificateHashData, computed as OCSP does (RFC 6960 CertID)."""
    from cryptography.x509 import ocsp

    request = (
        ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, _hash_algorithm(algorithm)).build()
    )
    return HashData(
        algorithm,
        request.issuer_name_hash.hex(),
        request.issuer_key_hash.hex(),
        format(cert.serial_number, "x"),  # hex without "0x" and without leading zeros (edition 3)
    )


def _hash_algorithm(name: str) -> hashes.HashAlgorithm:
    from cryptography.hazmat.primitives import hashes

    if name not in HASH_ALGORITHMS:
        raise KeyError(name)
    algorithm: hashes.HashAlgorithm = getattr(hashes, name)()
    return algorithm


def _valid_at(cert: x509.Certificate, now: float) -> bool:
    moment = dt.datetime.fromtimestamp(now, dt.UTC)
    return cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc


def _is_ca(cert: x509.Certificate) -> bool:
    from cryptography import x509

    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is masked by the umask; keys must be exactly 0600
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class CertificateStore:
    def __init__(self, root: Path, *, max_entries: int = 50) -> None:
        self.root = root
        self.max_entries = max_entries
        # A folder is made when the first file goes into it (_folder): a store that is only read costs no
        # directory at each start (4 mkdirs, most of a `cpsim fleet` station's construction on a busy disk).
        with contextlib.suppress(FileNotFoundError):
            os.chmod(root / CHARGE_POINT, 0o700)

    def _folder(self, use: str) -> Path:
        """The folder of ``use``, made now if it is not there (the client identity's 0700, the roots' 0750)."""
        folder = self.root / use
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True, mode=0o750)
            if use == CHARGE_POINT:
                os.chmod(folder, 0o700)
        return folder

    # -- root certificates --------------------------------------------------------------------------

    def _files(self, use: str) -> list[Path]:
        return sorted(p for p in (self.root / use).glob("*.pem") if p.is_file())

    def installed(self, use: str) -> list[x509.Certificate]:
        certs: list[x509.Certificate] = []
        for path in self._files(use):
            try:
                certs.extend(parse_pem_chain(path.read_text("ascii")))
            except (OSError, CertificateError, UnicodeDecodeError) as exc:
                log.warning("ignoring unreadable certificate file %s: %s", path, exc)
        return certs

    def pem_bundle(self, use: str) -> str:
        """Every installed certificate of ``use`` as one PEM text ("" if none)."""
        from cryptography.hazmat.primitives import serialization

        return "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in self.installed(use))

    def count(self) -> int:
        return sum(len(self._files(use)) for use in ROOT_USES)

    def install(self, use: str, pem: str, *, now: float) -> InstallStatus:
        """InstallCertificate: a single, currently valid CA certificate. Full store -> Failed."""
        from cryptography.hazmat.primitives import serialization

        if use not in ROOT_USES:
            return "Rejected"
        try:
            certs = parse_pem_chain(pem)
        except CertificateError as exc:
            log.info("InstallCertificate %s rejected: %s", use, exc)
            return "Rejected"
        cert = certs[0]
        if len(certs) != 1 or not _valid_at(cert, now) or not _is_ca(cert):
            log.info("InstallCertificate %s rejected: expected one valid CA certificate", use)
            return "Rejected"
        path = self.root / use / f"{fingerprint(cert)}.pem"
        if path.exists():
            return "Accepted"
        if self.count() >= self.max_entries:
            log.info("InstallCertificate %s failed: CertificateStoreMaxLength %d reached", use, self.max_entries)
            return "Failed"
        try:
            self._folder(use)
            _write_atomic(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        except OSError as exc:
            log.error("InstallCertificate %s: cannot write %s: %s", use, path, exc)
            return "Failed"
        return "Accepted"

    def _issuer_of(self, cert: x509.Certificate, candidates: Iterable[x509.Certificate]) -> x509.Certificate:
        for candidate in candidates:
            if issued_by(cert, candidate):
                return candidate
        return cert  # self-signed root, or an issuer we do not hold: hash against the certificate itself

    def hash_ids(self, use: str, algorithm: str = "SHA256",
                 configured_roots: Sequence[x509.Certificate] = ()) -> list[tuple[HashData, Path | None]]:
        """certificateHashData of every root of ``use``: for CentralSystemRootCertificate first the
        ``configured_roots`` (``[ocpp] ca_file``; path None: not a file of this store), then the installed
        files, each certificate listed once."""
        result: list[tuple[HashData, Path | None]] = []
        configured = list(configured_roots) if use == CENTRAL_SYSTEM_ROOT else []
        pool = [*configured_roots, *(c for u in ROOT_USES for c in self.installed(u))]
        for cert in configured:
            data = hash_data(cert, self._issuer_of(cert, pool), algorithm)
            if all(data != known for known, _ in result):
                result.append((data, None))
        for path in self._files(use):
            try:
                cert = parse_pem_chain(path.read_text("ascii"))[0]
            except (OSError, CertificateError, UnicodeDecodeError):
                continue
            data = hash_data(cert, self._issuer_of(cert, pool), algorithm)
            if all(data != known for known, _ in result):
                result.append((data, path))
        return result

    def delete(self, wanted: HashData, configured_roots: Sequence[x509.Certificate] = ()) -> DeleteStatus:
        """DeleteCertificate. Our own charge point certificate cannot be deleted (Failed), nor a
        CentralSystemRootCertificate of the configuration (``configured_roots``, ``[ocpp] ca_file``: the
        file belongs to the TOML and stays trusted, so "Accepted" would be untrue; an OCPP-installed copy of
        it stays too)."""
        if wanted.hash_algorithm not in HASH_ALGORITHMS:
            return "NotFound"
        own = self.client_chain()
        if own:
            leaf_issuer = own[1] if len(own) > 1 else self._issuer_of(own[0], self.installed(CENTRAL_SYSTEM_ROOT))
            if hash_data(own[0], leaf_issuer, wanted.hash_algorithm) == wanted:
                return "Failed"
        for use in ROOT_USES:
            for found, path in self.hash_ids(use, wanted.hash_algorithm, configured_roots):
                if found == wanted:
                    if path is None:
                        log.info("DeleteCertificate: %s is the configured ca_file's; not deleted", found.serial_number)
                        return "Failed"
                    try:
                        path.unlink()
                    except OSError as exc:
                        log.error("DeleteCertificate: cannot remove %s: %s", path, exc)
                        return "Failed"
                    return "Accepted"
        return "NotFound"

    # -- the charge point's own certificate ---------------------------------------------------------

    @property
    def key_path(self) -> Path:
        return self.root / CHARGE_POINT / "key.pem"

    @property
    def cert_path(self) -> Path:
        return self.root / CHARGE_POINT / "cert.pem"

    @property
    def pending_key_path(self) -> Path:
        return self.root / CHARGE_POINT / "pending-key.pem"

    def client_chain(self) -> list[x509.Certificate]:
        if not self.cert_path.exists():
            return []
        try:
            return parse_pem_chain(self.cert_path.read_text("ascii"))
        except (OSError, CertificateError, UnicodeDecodeError) as exc:
            log.warning("charge point certificate unreadable: %s", exc)
            return []

    def has_client_certificate(self) -> bool:
        return bool(self.client_chain()) and self.key_path.exists()

    def client_files(self, configured_cert: Path | None, configured_key: Path | None) -> tuple[Path, Path] | None:
        """(certificate chain, key) files to present in TLS: the installed ChargePointCertificate, else the
        configured pair ([ocpp] client_cert / client_key), else None."""
        if self.has_client_certificate():
            return self.cert_path, self.key_path
        if configured_cert is not None and configured_key is not None:
            return configured_cert, configured_key
        return None

    def private_key_pems(self) -> list[str]:
        """Key material that must never be logged (for the redaction filter, which asks on every log
        record): files are re-read only when their modification time or size changed."""
        signature: list[tuple[str, int, int]] = []
        for path in (self.key_path, self.pending_key_path):
            with contextlib.suppress(OSError):
                st = path.stat()
                signature.append((str(path), st.st_mtime_ns, st.st_size))
        cached = getattr(self, "_pem_cache", None)
        if cached is not None and cached[0] == signature:
            return list(cached[1])
        pems: list[str] = []
        for path in (self.key_path, self.pending_key_path):
            with contextlib.suppress(OSError, UnicodeDecodeError):
                pems.append(path.read_text("ascii"))
        self._pem_cache = (signature, pems)
        return list(pems)

    def create_csr(self, *, cpo_name: str, serial_number: str) -> str:
        """A new P-256 key (kept 0600 as the pending key) and its CSR: O = CpoName, CN = serial number."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        self._folder(CHARGE_POINT)
        _write_atomic(
            self.pending_key_path,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            0o600,
        )
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, serial_number)]
        if cpo_name:
            attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, cpo_name))
        csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes)).sign(key, hashes.SHA256())
        return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def accept_signed_chain(self, chain_pem: str, *, serial_number: str, now: float, max_size: int,
                            configured_roots: Sequence[x509.Certificate] = ()) -> None:
        """CertificateSigned: check the chain and make it (and the pending key) our client identity.

        Raises CertificateError when it is too long, broken, expired, not for our pending key or
        serial number, or does not lead to a trusted CentralSystemRootCertificate: one installed over OCPP
        or one of ``configured_roots`` (``[ocpp] ca_file``).
        """
        from cryptography.hazmat.primitives import serialization
        from cryptography.x509.oid import NameOID

        if len(chain_pem) > max_size:
            raise CertificateError(f"chain longer than CertificateSignedMaxChainSize ({max_size})")
        chain = parse_pem_chain(chain_pem)
        try:
            pending = serialization.load_pem_private_key(self.pending_key_path.read_bytes(), None)
        except (OSError, ValueError):
            raise CertificateError("no certificate signing request is pending") from None
        leaf = chain[0]
        der = serialization.Encoding.DER
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        if leaf.public_key().public_bytes(der, spki) != pending.public_key().public_bytes(der, spki):
            raise CertificateError("certificate does not match the key of our signing request")
        common_names = [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if common_names != [serial_number]:
            raise CertificateError(f"certificate CN {common_names} is not the serial number {serial_number!r}")
        for cert in chain:
            if not _valid_at(cert, now):
                raise CertificateError(f"certificate {cert.subject.rfc4514_string()} is not valid now")
        for cert, issuer in itertools.pairwise(chain):
            if not issued_by(cert, issuer):
                raise CertificateError(f"{cert.subject.rfc4514_string()} is not issued by the next in the chain")
        roots = [*configured_roots, *self.installed(CENTRAL_SYSTEM_ROOT)]
        top = chain[-1]
        if not any(fingerprint(top) == fingerprint(r) or issued_by(top, r) for r in roots):
            raise CertificateError("chain does not lead to a trusted CentralSystemRootCertificate")
        _write_atomic(self.cert_path, "".join(
            c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in chain
        ).encode("ascii"), 0o644)
        os.replace(self.pending_key_path, self.key_path)
        os.chmod(self.key_path, 0o600)
