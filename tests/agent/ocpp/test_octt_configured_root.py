"""The CentralSystemRootCertificate configured in the TOML (`[ocpp] ca_file`) is a trust anchor like one
installed over OCPP (security whitepaper 1.6 edition 3): CertificateSigned with a chain issued by it is
Accepted (A02/A03, 074/077), GetInstalledCertificateIds(CentralSystemRootCertificate) lists it (M03, 076),
and DeleteCertificate answers Failed for it (M04): it comes from the TOML and stays trusted whatever the
CSMS says, so "Accepted" would be a lie. Real TLS (profile 2) against the bundled CSMS on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.certificates import hash_data
from tests.agent.ocpp.conftest import CP, Octt, eventually
from tests.agent.ocpp.test_octt_security import (
    PASSWORD,
    Issued,
    Pki,
    issue,
    make_ca,
    security_events,
    tls_octt,
)
from tests.agent.ocpp.test_octt_security import closing as closing  # a fixture
from tests.agent.ocpp.test_octt_security import pki as pki  # a fixture


def sub_ca(root: Issued, cn: str) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(root.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(root.key, hashes.SHA256())
    )
    return Issued(key, cert)


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


async def request_csr(octt: Octt, count: int = 1) -> x509.CertificateSigningRequest:
    """074: the CSMS asks for a CSR (ExtendedTriggerMessage SignChargePointCertificate)."""
    answer = await octt.csms.send(CP, "ExtendedTriggerMessage", {"requestedMessage": "SignChargePointCertificate"})
    assert answer == {"status": "Accepted"}
    request = await octt.wait("SignCertificate", count=count)
    return x509.load_pem_x509_csr(request.payload["csr"].encode())


async def start_profile_2(tmp_path: Path, pki: Pki, closing: list[Octt]) -> Octt:
    octt = await tls_octt(tmp_path, pki, security_profile=2, password=PASSWORD, ca_file=pki.ca_file)
    closing.append(octt)
    await octt.start_agent()
    await octt.booted()
    return octt


async def test_certificate_signed_by_the_configured_root_is_accepted(
    tmp_path: Path, pki: Pki, closing: list[Octt]
) -> None:
    """Whitepaper A02/A03 (OCTT 074): a chain leading to the CentralSystemRootCertificate the charge point
    trusts - here the TOML's ca_file, nothing installed over OCPP - is accepted."""
    octt = await start_profile_2(tmp_path, pki, closing)
    csr = await request_csr(octt)
    # leaf <- intermediate <- configured root: the chain carries the intermediate, not the root
    intermediate = sub_ca(pki.ca, "Test CPO Sub-CA")
    leaf = issue(intermediate, csr.public_key(), csr.subject, server=False)  # type: ignore[arg-type]
    chain = pem(leaf) + pem(intermediate.cert)
    answer = await octt.csms.send(CP, "CertificateSigned", {"certificateChain": chain})
    assert answer == {"status": "Accepted"}
    assert octt.agent is not None and octt.agent.service is not None
    assert octt.agent.service.features["Security"].certs.has_client_certificate()

    # 077: a chain from a root the charge point does not trust is still Rejected
    csr = await request_csr(octt, count=2)
    stranger = make_ca("Test CPO Root")  # same name, other key
    foreign = pem(issue(stranger, csr.public_key(), csr.subject, server=False))  # type: ignore[arg-type]
    assert await octt.csms.send(CP, "CertificateSigned", {"certificateChain": foreign}) == {"status": "Rejected"}
    await eventually(lambda: "InvalidChargePointCertificate" in security_events(octt), 5, "077 event")


async def test_configured_root_is_listed_and_cannot_be_deleted(
    tmp_path: Path, pki: Pki, closing: list[Octt]
) -> None:
    """Whitepaper M03 (GetInstalledCertificateIds, OCTT 076) lists the configured root; M04 DeleteCertificate
    of it answers Failed and it stays listed and trusted; a root installed over OCPP is listed beside it and
    can be deleted."""
    octt = await start_profile_2(tmp_path, pki, closing)
    configured = hash_data(pki.ca.cert, pki.ca.cert).as_ocpp()
    ids = await octt.csms.send(CP, "GetInstalledCertificateIds", {"certificateType": "CentralSystemRootCertificate"})
    assert ids == {"status": "Accepted", "certificateHashData": [configured]}
    none = await octt.csms.send(CP, "GetInstalledCertificateIds", {"certificateType": "ManufacturerRootCertificate"})
    assert none == {"status": "NotFound"}

    assert await octt.csms.send(CP, "DeleteCertificate", {"certificateHashData": configured}) == {"status": "Failed"}

    other = make_ca("Second CPO Root")
    installed = await octt.csms.send(CP, "InstallCertificate",
                                     {"certificateType": "CentralSystemRootCertificate", "certificate": other.pem})
    assert installed == {"status": "Accepted"}
    ids = await octt.csms.send(CP, "GetInstalledCertificateIds", {"certificateType": "CentralSystemRootCertificate"})
    second = hash_data(other.cert, other.cert).as_ocpp()
    assert ids["status"] == "Accepted"
    assert sorted(ids["certificateHashData"], key=str) == sorted([configured, second], key=str)
    assert await octt.csms.send(CP, "DeleteCertificate", {"certificateHashData": second}) == {"status": "Accepted"}
    ids = await octt.csms.send(CP, "GetInstalledCertificateIds", {"certificateType": "CentralSystemRootCertificate"})
    assert ids == {"status": "Accepted", "certificateHashData": [configured]}

    # still the trust anchor: a chain from it is accepted after the refused delete
    csr = await request_csr(octt)
    signed = pem(issue(pki.ca, csr.public_key(), csr.subject, server=False))  # type: ignore[arg-type]
    assert await octt.csms.send(CP, "CertificateSigned", {"certificateChain": signed}) == {"status": "Accepted"}
