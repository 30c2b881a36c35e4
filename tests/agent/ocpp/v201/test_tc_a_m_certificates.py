"""OCPP 2.0.1 certificates over real TLS websockets on 127.0.0.1 against the bundled CSMS:
TC_M_01/02_CS (install CSMS / Manufacturer roots), TC_M_12/17/18/19_CS (GetInstalledCertificateIds),
TC_M_20/22/23_CS (DeleteCertificate), TC_A_11_CS (TriggerMessage SignChargingStationCertificate ->
SignCertificate -> CertificateSigned), TC_A_14_CS (invalid chain), then the security profile upgrade 2 -> 3
with the signed certificate (client-certificate TLS, no Basic auth), TC_A_23_CS (no CertificateSigned: the
request is repeated), and the expiry watch (A03); plus unit tests of the pure parts."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from agent.certificates import hash_data
from agent.ocpp.v201.certificates import renewal_due, sign_waits
from simulator.csms import Csms
from simulator.csms201 import CsrSigner
from simulator.rig import Rig, RigOptions
from tests.agent.ocpp.test_octt_security import PASSWORD, Issued, Pki, leaf, make_ca
from tests.agent.ocpp.test_octt_security import pki as pki  # the fixture
from tests.agent.ocpp.v201.conftest import CP, Octt201, eventually
from tests.agent.ocpp.v201.test_tc_a_b_security import closing as closing  # the fixture
from tests.agent.ocpp.v201.test_tc_a_b_security import network_profile, security_events, set_variable


def test_renewal_due_and_sign_waits() -> None:
    day = 86400.0
    assert renewal_due(100 * day, 0.0) is False
    assert renewal_due(10 * day, 0.0) is True
    assert renewal_due(None, 0.0) is False
    assert sign_waits(60, 3) == [60, 120, 240, 480]
    assert sign_waits(0, 0) == [1.0]


def optional_client_context(pki: Pki) -> ssl.SSLContext:
    """The CSMS's TLS: asks for a client certificate and verifies it when one is shown (profiles 2 and 3)."""
    context = pki.server_context()
    context.verify_mode = ssl.CERT_OPTIONAL
    context.load_verify_locations(cafile=str(pki.ca_file))
    return context


def cross_signed_ca(pki: Pki, name: str) -> str:
    """A CA certificate for a new key, issued by the test PKI's root (a root's successor), as PEM."""
    return successor_ca(pki, name).pem


def successor_ca(pki: Pki, name: str) -> Issued:
    """A CA certificate for a new key, issued by the test PKI's root (a root's successor)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(pki.ca.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(pki.ca.key, hashes.SHA256()))
    return Issued(key, cert)


async def tls_harness(tmp_path: Path, pki: Pki) -> Octt201:
    csms = Csms(accept=["DEADBEEF01"], password=PASSWORD, version="2.0.1", ssl_context=optional_client_context(pki))
    await csms.start()
    rig = Rig(RigOptions(directory=tmp_path / "rig", csms_url=csms.url, charge_point_id=CP, ocpp_version="2.0.1",
                         security_profile=2, password=PASSWORD, ca_file=pki.ca_file))
    await rig.start()
    return Octt201(csms, rig)


async def test_tc_m_and_a_11_a_14_cs_certificates_then_profile_3(
    tmp_path: Path, pki: Pki, closing: list[Octt201]
) -> None:
    octt = await tls_harness(tmp_path, pki)
    closing.append(octt)
    ca_key = pki.ca.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
    octt.csms.certificate_signer = CsrSigner(pki.ca.pem.encode(), ca_key)
    agent = await octt.start_agent({"SecurityCtrlr/OrganizationName": "Test CPO",
                                    "SecurityCtrlr/AdditionalRootCertificateCheck": True})
    await octt.booted()
    security = agent.service.features["Security"]
    await eventually(lambda: not security.in_trial, 5, "profile 2 confirmed")

    # TC_M_01_CS / TC_M_02_CS
    manufacturer = make_ca("Test Manufacturer Root")
    for kind, pem in (("CSMSRootCertificate", pki.ca.pem), ("ManufacturerRootCertificate", manufacturer.pem)):
        answer = await octt.send("InstallCertificate", {"certificateType": kind, "certificate": pem})
        assert answer["status"] == "Accepted", kind
    not_ca = await octt.send("InstallCertificate", {"certificateType": "CSMSRootCertificate",
                                                    "certificate": pki.server.pem})
    assert not_ca["status"] == "Rejected"
    # AdditionalRootCertificateCheck: a new CSMS root must be issued by one the station trusts
    stranger = await octt.send("InstallCertificate", {"certificateType": "CSMSRootCertificate",
                                                      "certificate": make_ca("Unrelated Root").pem})
    assert stranger["status"] == "Rejected"
    # TC_M_09_CS step 4: the old CSMS root is still the only one installed
    kept = await octt.send("GetInstalledCertificateIds", {"certificateType": ["CSMSRootCertificate"]})
    assert kept["status"] == "Accepted"
    assert [c["certificateHashData"] for c in kept["certificateHashDataChain"]] == [
        hash_data(pki.ca.cert, pki.ca.cert).as_ocpp()]
    successor = await octt.send("InstallCertificate", {"certificateType": "CSMSRootCertificate",
                                                       "certificate": cross_signed_ca(pki, "Next CPO Root")})
    assert successor["status"] == "Accepted"
    v2g = await octt.send("InstallCertificate", {"certificateType": "V2GRootCertificate", "certificate": pki.ca.pem})
    assert v2g["status"] == "Rejected"
    # TC_M_12_CS / TC_M_17_CS / TC_M_18_CS / TC_M_19_CS
    expected = hash_data(pki.ca.cert, pki.ca.cert).as_ocpp()
    one = await octt.send("GetInstalledCertificateIds", {"certificateType": ["CSMSRootCertificate"]})
    assert one["status"] == "Accepted"
    listed = [c["certificateHashData"] for c in one["certificateHashDataChain"]]
    assert listed[0] == expected and len(listed) == 2  # the ca_file's (= the installed copy) and its successor
    both = await octt.send("GetInstalledCertificateIds", {})
    assert sorted(c["certificateType"] for c in both["certificateHashDataChain"]) == [
        "CSMSRootCertificate", "CSMSRootCertificate", "ManufacturerRootCertificate"]
    none = await octt.send("GetInstalledCertificateIds", {"certificateType": ["V2GRootCertificate"]})
    assert none["status"] == "NotFound"

    # TC_A_11_CS: TriggerMessage -> SignCertificate (O = OrganizationName, CN = identity) -> CertificateSigned
    triggered = await octt.send("TriggerMessage", {"requestedMessage": "SignChargingStationCertificate"})
    assert triggered["status"] == "Accepted"
    request = await octt.wait("SignCertificate")
    assert request.payload["certificateType"] == "ChargingStationCertificate"
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    csr = x509.load_pem_x509_csr(request.payload["csr"].encode())
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == CP
    assert csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Test CPO"
    await eventually(lambda: octt.csms.certificate_signed_results, 8, "CertificateSigned answered")
    assert octt.csms.certificate_signed_results[-1] == {"status": "Accepted"}
    assert security.certs.has_client_certificate()

    # TC_A_14_CS: a chain that is not ours
    bad = await octt.send("CertificateSigned", {"certificateChain": pki.server.pem,
                                                "certificateType": "ChargingStationCertificate"})
    assert bad["status"] == "Rejected"
    await eventually(lambda: "InvalidChargingStationCertificate" in security_events(octt), 5, "A02 event")

    # TC_M_23_CS / TC_M_20_CS / TC_M_22_CS
    own_chain = security.certs.client_chain()
    own = await octt.send("DeleteCertificate", {"certificateHashData": hash_data(own_chain[0], pki.ca.cert).as_ocpp()})
    assert own["status"] == "Failed"
    configured = await octt.send("DeleteCertificate", {"certificateHashData": expected})
    assert configured["status"] == "Failed"  # the root of [ocpp] ca_file is never deleted over OCPP
    manufacturer_id = hash_data(manufacturer.cert, manufacturer.cert).as_ocpp()
    deleted = await octt.send("DeleteCertificate", {"certificateHashData": manufacturer_id})
    assert deleted["status"] == "Accepted"
    gone = await octt.send("DeleteCertificate", {"certificateHashData": manufacturer_id})
    assert gone["status"] == "NotFound"

    # A05 to profile 3 with the signed certificate: TLS client authentication, no Basic auth
    answer = await octt.send("SetNetworkProfile", {"configurationSlot": 2,
                                                   "connectionData": network_profile(octt.csms.url, 3)})
    assert answer["status"] == "Accepted"
    assert await set_variable(octt, "OCPPCommCtrlr", "NetworkConfigurationPriority", "2,1") == "RebootRequired"
    handshakes = len(octt.csms.handshakes)
    assert octt.csms.ssl_context is not None
    octt.csms.ssl_context.verify_mode = ssl.CERT_REQUIRED  # from now on the CSMS wants a client certificate
    octt.csms.password = None  # and no Basic auth
    agent = await octt.restart_agent()
    await eventually(lambda: agent.service.online and agent.service.security_profile == 3, 8, "profile 3")
    await octt.wait_status("Available", count=2)  # the CSMS has the new connection (sends go there)
    assert octt.csms.handshakes[-1].authorization is None and len(octt.csms.handshakes) > handshakes
    await eventually(lambda: not agent.service.features["Security"].in_trial, 5, "profile 3 confirmed")
    # A02 under profile 3: a newly signed certificate is used from a new connection at once
    handshakes = len(octt.csms.handshakes)
    results = len(octt.csms.certificate_signed_results)
    await octt.send("TriggerMessage", {"requestedMessage": "SignChargingStationCertificate"})
    await eventually(lambda: len(octt.csms.certificate_signed_results) > results, 8, "second CertificateSigned")
    assert octt.csms.certificate_signed_results[-1] == {"status": "Accepted"}
    await eventually(lambda: len(octt.csms.handshakes) > handshakes and agent.service.online, 8, "reconnected")


async def test_tc_a_23_cs_sign_certificate_repeated_and_expiry_renewal(
    tmp_path: Path, pki: Pki, closing: list[Octt201]
) -> None:
    octt = await tls_harness(tmp_path, pki)
    closing.append(octt)
    agent = await octt.start_agent({"SecurityCtrlr/CertSigningWaitMinimum": 1,
                                    "SecurityCtrlr/CertSigningRepeatTimes": 1})
    await octt.booted()
    # no signer: the CSMS accepts SignCertificate but never sends CertificateSigned -> asked again
    triggered = await octt.send("TriggerMessage", {"requestedMessage": "SignChargingStationCertificate"})
    assert triggered["status"] == "Accepted"
    await octt.wait("SignCertificate", count=2, within=8)  # after CertSigningWaitMinimum
    await asyncio.sleep(0.3)  # the CSMS's after-hook of that request has run (it must not see the signer below)

    # A03: a ChargingStationCertificate that ends within RENEW_BEFORE_S is renewed once online
    ca_key = pki.ca.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
    security = agent.service.features["Security"]
    octt.csms.certificate_signer = CsrSigner(pki.ca.pem.encode(), ca_key, days=5)
    await octt.send("TriggerMessage", {"requestedMessage": "SignChargingStationCertificate"})
    await eventually(lambda: octt.csms.certificate_signed_results, 8, "a 5-day certificate installed")
    assert security.certs.has_client_certificate()
    octt.csms.certificate_signer = CsrSigner(pki.ca.pem.encode(), ca_key, days=365)
    agent = await octt.restart_agent()
    await octt.wait("SignCertificate", count=4, within=8)  # the expiry watch asked for a new one
    await eventually(lambda: len(octt.csms.certificate_signed_results) >= 2, 8, "renewed")
    security = agent.service.features["Security"]
    not_after = security.client_not_after()
    assert not_after is not None and not_after - agent.service.wall() > 300 * 86400

    def installed() -> int:
        return sum(m.payload.get("techInfo") == "new ChargingStationCertificate installed"
                   for m in octt.msgs("SecurityEventNotification"))

    await eventually(lambda: installed() >= 2, 5, "a security event for each new certificate")


async def test_m05_additional_root_certificate_check_fallback_and_rollover(
    tmp_path: Path, pki: Pki, closing: list[Octt201]
) -> None:
    """AdditionalRootCertificateCheck: the station trusts the new CSMS root alone from a new connection; if that
    fails the old root is trusted again (and kept), once it succeeds the old root is removed."""
    from agent.certificates import CENTRAL_SYSTEM_ROOT, CertificateStore

    csms = Csms(accept=["DEADBEEF01"], password=PASSWORD, version="2.0.1", ssl_context=pki.server_context())
    await csms.start()
    rig = Rig(RigOptions(directory=tmp_path / "rig", csms_url=csms.url, charge_point_id=CP, ocpp_version="2.0.1",
                         security_profile=2, password=PASSWORD, ca_file=pki.ca_file))
    await rig.start()
    octt = Octt201(csms, rig)
    closing.append(octt)
    # the CSMS root installed over OCPP earlier; no [ocpp] ca_file any more (only the store is trusted)
    store = CertificateStore(rig.dir / "state" / "certificates")
    assert store.install(CENTRAL_SYSTEM_ROOT, pki.ca.pem, now=__import__("time").time()) == "Accepted"
    rig.options.ca_file = None
    (rig.dir / "agent.toml").write_text(rig.agent_toml())
    agent = await octt.start_agent({"SecurityCtrlr/AdditionalRootCertificateCheck": True,
                                    "OCPPCommCtrlr/NetworkProfileConnectionAttempts": 1})
    await octt.booted()
    security = agent.service.features["Security"]
    await eventually(lambda: not security.in_trial, 5, "confirmed")
    new_root = successor_ca(pki, "Next CPO Root")

    # the CSMS still presents a certificate of the old root: the trial fails, the old root is trusted again
    installed = await octt.send("InstallCertificate", {"certificateType": "CSMSRootCertificate",
                                                       "certificate": new_root.pem})
    assert installed["status"] == "Accepted"
    await eventually(lambda: "InvalidCsmsCertificate" in security_events(octt), 8, "the trial refused")
    await eventually(lambda: not security.in_trial and agent.service.online, 8, "back with the old root")
    assert len(store.installed(CENTRAL_SYSTEM_ROOT)) == 2

    # the CSMS moves to a certificate under the new root: this time the old root goes
    server = leaf(new_root, "csms.test", server=True)
    chain = pki.dir / "next-server.pem"
    key_file = pki.dir / "next-server.key"
    server.write(pki.dir, "next-server")
    chain.write_text(server.pem + new_root.pem)
    assert csms.ssl_context is not None
    csms.ssl_context.load_cert_chain(chain, key_file)
    handshakes = len(csms.handshakes)
    again = await octt.send("InstallCertificate", {"certificateType": "CSMSRootCertificate",
                                                   "certificate": new_root.pem})
    assert again["status"] == "Accepted"
    await eventually(lambda: len(csms.handshakes) > handshakes and agent.service.online, 8, "new connection")
    await eventually(lambda: len(store.installed(CENTRAL_SYSTEM_ROOT)) == 1, 5, "old root removed")
    assert store.installed(CENTRAL_SYSTEM_ROOT)[0] == new_root.cert
