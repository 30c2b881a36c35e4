"""OCTT 1.6 security (whitepaper edition 2): 073 password update, 074 certificate by CSMS request, 075/076
install/delete certificate (+ GetInstalledCertificateIds), 077 invalid ChargePointCertificate, 078 invalid
CentralSystemCertificate, 083/084 security profile upgrade/downgrade, 085 basic auth, 086 TLS server
certificate, 087 TLS client certificate. Real TLS servers on 127.0.0.1 with a throwaway PKI."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import ipaddress
import json
import socket
import ssl
import stat
import threading
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.certificates import hash_data
from agent.ocpp.v16.security import wire_password
from simulator.csms import Csms, CsmsCallError
from simulator.rig import Rig, RigOptions
from tests.agent.ocpp.conftest import CP, Octt, eventually

PASSWORD = "InitialPassword-01"
NEW_PASSWORD = "NewPassword-23456"
NEW_KEY_HEX = NEW_PASSWORD.encode().hex()  # OCTT sends the key hex-encoded; Basic carries the decoded form


# -- a throwaway PKI ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Issued:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        cert_path.write_text(self.pem)
        key_path.write_bytes(self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return cert_path, key_path


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def make_ca(cn: str) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Issued(key, cert)


def issue(ca: Issued, public_key: ec.EllipticCurvePublicKey, subject: x509.Name, *, server: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(ca.cert.subject).public_key(public_key)
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


def leaf(ca: Issued, cn: str, *, server: bool) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    return Issued(key, issue(ca, key.public_key(), _name(cn), server=server))


@dataclasses.dataclass
class Pki:
    dir: Path
    ca: Issued
    ca_file: Path
    server: Issued

    def server_context(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert_path, key_path = self.server.write(self.dir, "server")
        context.load_cert_chain(cert_path, key_path)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=str(self.ca_file))
        return context


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    directory = tmp_path / "pki"
    directory.mkdir()
    ca = make_ca("Test CPO Root")
    ca_file = directory / "ca.pem"
    ca_file.write_text(ca.pem)
    return Pki(directory, ca, ca_file, leaf(ca, "csms.test", server=True))


async def tls_octt(tmp_path: Path, pki: Pki, *, require_client_cert: bool = False, **options: object) -> Octt:
    csms = Csms(accept=["DEADBEEF01"], password=options.get("password"),  # type: ignore[arg-type]
                ssl_context=pki.server_context(require_client_cert=require_client_cert))
    await csms.start()
    rig = Rig(RigOptions(directory=tmp_path / "rig", csms_url=csms.url, charge_point_id=CP, **options))  # type: ignore[arg-type]
    await rig.start()
    return Octt(csms, rig)


@pytest.fixture
async def closing() -> AsyncIterator[list[Octt]]:
    harnesses: list[Octt] = []
    yield harnesses
    for harness in harnesses:
        if harness.agent is not None:
            await harness.agent.stop()
        await harness.rig.stop()
        await harness.csms.stop()


def basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"{CP}:{password}".encode()).decode()


def use_password(octt: Octt, password: str, profile: int = 1) -> None:
    octt.rig.options.password = password
    octt.rig.options.security_profile = profile
    (octt.rig.dir / "agent.toml").write_text(octt.rig.agent_toml())
    octt.csms.password = password


def security_events(octt: Octt) -> list[str]:
    return [m.payload["type"] for m in octt.msgs("SecurityEventNotification")]


# -- 085 / 073: HTTP Basic and the AuthorizationKey -----------------------------------------------------


def test_085_hex_authorization_key_is_sent_decoded() -> None:
    assert wire_password(NEW_KEY_HEX) == NEW_PASSWORD
    assert wire_password("not-hex-at-all-123") == "not-hex-at-all-123"
    assert wire_password("00ff00ff00ff00ff00ff") == "00ff00ff00ff00ff00ff"  # bytes are not text: as is
    assert wire_password("abc") == "abc"  # odd length


async def test_085_basic_authentication(octt: Octt) -> None:
    use_password(octt, PASSWORD)
    await octt.start_agent()
    await octt.booted()
    assert octt.csms.handshakes[-1].authorization == basic(PASSWORD)


async def test_073_update_password_reconnects_and_keeps_the_boot(octt: Octt) -> None:
    use_password(octt, PASSWORD)
    agent = await octt.start_agent()
    await octt.booted()
    octt.csms.password = NEW_PASSWORD  # the CSMS expects the new key from now on
    answer = await octt.csms.send(CP, "ChangeConfiguration", {"key": "AuthorizationKey", "value": NEW_KEY_HEX})
    assert answer == {"status": "Accepted"}
    await eventually(lambda: any(h.authorization == basic(NEW_PASSWORD) for h in octt.csms.handshakes),
                     5, "reconnect with the new password")
    await octt.csms.wait_connected(CP)
    await eventually(lambda: "ReconfigurationOfSecurityParameters" in security_events(octt), 5, "security event")
    assert len(octt.msgs("BootNotification")) == 1  # a reconnect, not a reboot
    got = await octt.csms.send(CP, "GetConfiguration", {"key": ["AuthorizationKey"]})
    assert got["configurationKey"] == [{"key": "AuthorizationKey", "readonly": False}]  # write-only
    assert agent.service is not None
    security = agent.service.features["Security"]
    await eventually(lambda: security.confirmed.key == NEW_KEY_HEX, 5, "the new key confirmed")


async def test_073_new_password_refused_falls_back_to_the_old(octt: Octt) -> None:
    use_password(octt, PASSWORD)
    agent = await octt.start_agent()
    await octt.booted()
    answer = await octt.csms.send(CP, "ChangeConfiguration", {"key": "AuthorizationKey", "value": NEW_KEY_HEX})
    assert answer == {"status": "Accepted"}  # but the CSMS keeps the old password: 401 for the new one
    await eventually(lambda: "FailedToAuthenticateAtCentralSystem" in security_events(octt), 10,
                     "FailedToAuthenticateAtCentralSystem after the fallback")
    assert octt.csms.handshakes[-1].authorization == basic(PASSWORD)
    assert agent.service is not None
    assert agent.service.store.get_str("AuthorizationKey") == ""  # the old (TOML) password is back


# -- 084 / 083: security profile ---------------------------------------------------------------------


async def test_084_downgrade_and_unprepared_upgrade_are_rejected(octt: Octt) -> None:
    use_password(octt, PASSWORD)
    await octt.start_agent()
    await octt.booted()
    down = await octt.csms.send(CP, "ChangeConfiguration", {"key": "SecurityProfile", "value": "0"})
    assert down == {"status": "Rejected"}
    up = await octt.csms.send(CP, "ChangeConfiguration", {"key": "SecurityProfile", "value": "2"})
    assert up == {"status": "Rejected"}  # ws:// endpoint and no CentralSystemRootCertificate
    got = await octt.csms.send(CP, "GetConfiguration", {"key": ["SecurityProfile"]})
    assert got["configurationKey"][0]["value"] == "1"


async def test_083_upgrade_to_profile_2_and_3(tmp_path: Path, pki: Pki, closing: list[Octt]) -> None:
    octt = await tls_octt(tmp_path, pki, security_profile=1, password=PASSWORD, ca_file=pki.ca_file)
    closing.append(octt)
    agent = await octt.start_agent()
    await octt.booted()
    no_client_cert = await octt.csms.send(CP, "ChangeConfiguration", {"key": "SecurityProfile", "value": "3"})
    assert no_client_cert == {"status": "Rejected"}
    installed = await octt.csms.send(CP, "InstallCertificate",
                                     {"certificateType": "CentralSystemRootCertificate", "certificate": pki.ca.pem})
    assert installed == {"status": "Accepted"}
    handshakes = len(octt.csms.handshakes)
    up = await octt.csms.send(CP, "ChangeConfiguration", {"key": "SecurityProfile", "value": "2"})
    assert up == {"status": "Accepted"}
    await eventually(lambda: len(octt.csms.handshakes) > handshakes and CP in octt.csms.connected_ids, 5, "redial")
    assert agent.service is not None
    security = agent.service.features["Security"]
    await eventually(lambda: security.confirmed.profile == 2, 5, "profile 2 confirmed")
    state = json.loads((agent.service.config.state_dir / "security-state.json").read_text())
    assert state["profile"] == 2
    assert stat.S_IMODE((agent.service.config.state_dir / "security-state.json").stat().st_mode) == 0o600
    got = await octt.csms.send(CP, "GetConfiguration", {"key": ["SecurityProfile"]})
    assert got["configurationKey"][0]["value"] == "2"
    assert len(octt.msgs("BootNotification")) == 1


# -- 086 / 078 / 087: TLS ----------------------------------------------------------------------------


async def test_086_tls_server_certificate(tmp_path: Path, pki: Pki, closing: list[Octt]) -> None:
    octt = await tls_octt(tmp_path, pki, security_profile=2, password=PASSWORD, ca_file=pki.ca_file)
    closing.append(octt)
    await octt.start_agent()
    await octt.booted()
    assert octt.csms.url.startswith("wss://")
    assert octt.csms.handshakes[-1].authorization == basic(PASSWORD)


async def test_078_invalid_central_system_certificate(tmp_path: Path, pki: Pki, closing: list[Octt]) -> None:
    other_ca = make_ca("Somebody Else")
    other_file = pki.dir / "other-ca.pem"
    other_file.write_text(other_ca.pem)
    octt = await tls_octt(tmp_path, pki, security_profile=2, password=PASSWORD, ca_file=other_file)
    closing.append(octt)
    agent = await octt.start_agent()
    assert agent.service is not None
    log_path = agent.service.config.state_dir / "security.log"

    def logged() -> list[str]:
        return [json.loads(line)["type"] for line in log_path.read_text().splitlines()] if log_path.exists() else []

    await eventually(lambda: "InvalidCentralSystemCertificate" in logged(), 5, "InvalidCentralSystemCertificate")
    assert octt.csms.handshakes == []  # the TLS handshake failed: nothing reached HTTP
    assert logged().count("InvalidCentralSystemCertificate") == 1  # once per streak, not per redial
    queued = [e.action for e in agent.service.outbox.pending()] if hasattr(agent.service.outbox, "pending") else []
    assert queued == [] or "SecurityEventNotification" in queued


@contextmanager
def silent_tls11_endpoint(pki: Pki) -> Iterator[str]:
    """An asyncio TLS server on 127.0.0.1 that speaks only TLS 1.0/1.1: unlike a blocking one, it resets a
    TLS 1.2 handshake without sending the protocol_version alert, so the agent sees a bare reset."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*pki.server.write(pki.dir, "old-async-server"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    loop = asyncio.new_event_loop()
    started: list[asyncio.Server] = []
    ready = threading.Event()

    async def serve() -> None:
        server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0, ssl=context)
        started.append(server)
        ready.set()
        with contextlib.suppress(asyncio.CancelledError):  # close() below ends serve_forever this way
            await server.serve_forever()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(5)
    try:
        yield f"wss://127.0.0.1:{started[0].sockets[0].getsockname()[1]}/ocpp"
    finally:
        loop.call_soon_threadsafe(started[0].close)
        thread.join(5)


@contextmanager
def unagreeable_tls_endpoint(pki: Pki, mismatch: str) -> Iterator[str]:
    """A blocking TLS server on 127.0.0.1 the agent cannot agree with: TLS <= 1.1 only ("version"), or TLS
    1.2 with a SHA-1 cipher the agent does not offer ("cipher"). Unlike an asyncio server it sends the TLS
    alert before closing, as a real TLS terminator does. Yields its wss:// URL."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*pki.server.write(pki.dir, "old-server"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if mismatch == "version":
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = ssl.TLSVersion.TLSv1_1
        else:
            context.maximum_version = ssl.TLSVersion.TLSv1_2
            context.set_ciphers("ECDHE-ECDSA-AES128-SHA")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    context.wrap_socket(conn, server_side=True).close()
                except (ssl.SSLError, OSError):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"wss://127.0.0.1:{listener.getsockname()[1]}/ocpp"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.mark.parametrize(("mismatch", "event"), [("version", "InvalidTLSVersion"), ("cipher", "InvalidTLSCipherSuite"),
                                               ("version-without-alert", "InvalidTLSVersion")])
async def test_tls_version_and_cipher_suite_failures_are_security_events(
    tmp_path: Path, pki: Pki, mismatch: str, event: str
) -> None:
    """Issue 11 item 18: against an asyncio TLS 1.1-only server (a reset, no alert) the log said
    "connection failed: " and no InvalidTLSVersion was raised; one probe now learns the server's version."""
    csms = Csms(accept=["DEADBEEF01"])
    await csms.start()
    endpoint = silent_tls11_endpoint(pki) if mismatch == "version-without-alert" else \
        unagreeable_tls_endpoint(pki, mismatch)
    with endpoint as url:
        rig = Rig(RigOptions(directory=tmp_path / "rig", csms_url=url, charge_point_id=CP, security_profile=2,
                             password=PASSWORD, ca_file=pki.ca_file))
        await rig.start()
        octt = Octt(csms, rig)
        try:
            agent = await octt.start_agent()
            assert agent.service is not None
            log_path = agent.service.config.state_dir / "security.log"

            def logged() -> list[str]:
                lines = log_path.read_text().splitlines() if log_path.exists() else []
                return [json.loads(line)["type"] for line in lines]

            await eventually(lambda: event in logged(), 8, event)
            assert "InvalidCentralSystemCertificate" not in logged()
        finally:
            if octt.agent is not None:
                await octt.agent.stop()
            await rig.stop()
            await csms.stop()


async def test_087_tls_client_certificate(tmp_path: Path, pki: Pki, closing: list[Octt]) -> None:
    client_cert, client_key = leaf(pki.ca, "SIM-CP1", server=False).write(pki.dir, "client")
    octt = await tls_octt(tmp_path, pki, require_client_cert=True, security_profile=3, ca_file=pki.ca_file,
                          client_cert=client_cert, client_key=client_key)
    closing.append(octt)
    await octt.start_agent()
    await octt.booted()
    assert octt.csms.handshakes[-1].authorization is None  # profile 3: no Basic auth


# -- 075 / 076 / GetInstalledCertificateIds -----------------------------------------------------------


async def test_075_076_install_list_delete_certificates(octt: Octt, pki: Pki) -> None:
    agent = await octt.start_agent()
    await octt.booted()
    for use in ("CentralSystemRootCertificate", "ManufacturerRootCertificate"):
        answer = await octt.csms.send(CP, "InstallCertificate", {"certificateType": use, "certificate": pki.ca.pem})
        assert answer == {"status": "Accepted"}
    bad = await octt.csms.send(CP, "InstallCertificate",
                               {"certificateType": "CentralSystemRootCertificate", "certificate": "garbage"})
    assert bad == {"status": "Rejected"}
    not_ca = await octt.csms.send(CP, "InstallCertificate",
                                  {"certificateType": "CentralSystemRootCertificate", "certificate": pki.server.pem})
    assert not_ca == {"status": "Rejected"}
    assert agent.service is not None
    stored = agent.service.config.state_dir / "certificates" / "ManufacturerRootCertificate"
    assert len(list(stored.glob("*.pem"))) == 1
    ids = await octt.csms.send(CP, "GetInstalledCertificateIds", {"certificateType": "CentralSystemRootCertificate"})
    expected = hash_data(pki.ca.cert, pki.ca.cert).as_ocpp()
    assert ids == {"status": "Accepted", "certificateHashData": [expected]}
    deleted = await octt.csms.send(CP, "DeleteCertificate", {"certificateHashData": expected})
    assert deleted == {"status": "Accepted"}  # the first match (CentralSystemRoot) goes
    again = await octt.csms.send(CP, "DeleteCertificate", {"certificateHashData": expected})
    assert again == {"status": "Accepted"}  # then the same CA as ManufacturerRoot
    gone = await octt.csms.send(CP, "DeleteCertificate", {"certificateHashData": expected})
    assert gone == {"status": "NotFound"}
    none = await octt.csms.send(CP, "GetInstalledCertificateIds", {"certificateType": "ManufacturerRootCertificate"})
    assert none == {"status": "NotFound"}
    sha384 = hash_data(pki.ca.cert, pki.ca.cert, "SHA384").as_ocpp()
    assert (await octt.csms.send(CP, "DeleteCertificate", {"certificateHashData": sha384})) == {"status": "NotFound"}


# -- 074 / 077: SignCertificate / CertificateSigned ---------------------------------------------------


async def test_074_077_sign_charge_point_certificate(octt: Octt, pki: Pki) -> None:
    agent = await octt.start_agent()
    await octt.booted()
    assert agent.service is not None
    security = agent.service.features["Security"]
    await octt.csms.send(CP, "ChangeConfiguration", {"key": "CpoName", "value": "Test CPO"})
    await octt.csms.send(CP, "InstallCertificate",
                         {"certificateType": "CentralSystemRootCertificate", "certificate": pki.ca.pem})
    assert await security.sign_charge_point_certificate() == "Accepted"
    request = await octt.wait("SignCertificate")
    csr = x509.load_pem_x509_csr(request.payload["csr"].encode())
    assert csr.subject == _name("SIM-CP1", "Test CPO")  # O = CpoName, CN = serial number
    pending = agent.service.config.state_dir / "certificates" / "ChargePointCertificate" / "pending-key.pem"
    assert stat.S_IMODE(pending.stat().st_mode) == 0o600

    stranger = ec.generate_private_key(ec.SECP256R1())  # 077: a certificate for somebody else's key
    wrong = issue(pki.ca, stranger.public_key(), csr.subject, server=False)
    wrong_pem = wrong.public_bytes(serialization.Encoding.PEM).decode()
    answer = await octt.csms.send(CP, "CertificateSigned", {"certificateChain": wrong_pem})
    assert answer == {"status": "Rejected"}
    await eventually(lambda: "InvalidChargePointCertificate" in security_events(octt), 5, "077 event")

    signed = issue(pki.ca, csr.public_key(), csr.subject, server=False)  # type: ignore[arg-type]
    chain = signed.public_bytes(serialization.Encoding.PEM).decode()
    answer = await octt.csms.send(CP, "CertificateSigned", {"certificateChain": chain})
    assert answer == {"status": "Accepted"}
    key = pending.with_name("key.pem")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and not pending.exists()
    assert security.certs.has_client_certificate()
    own = await octt.csms.send(CP, "DeleteCertificate",
                               {"certificateHashData": hash_data(signed, pki.ca.cert).as_ocpp()})
    assert own == {"status": "Failed"}  # never our own certificate


# -- security events and log ------------------------------------------------------------------------


async def test_startup_event_and_security_log(octt: Octt) -> None:
    agent = await octt.start_agent()
    await octt.booted()
    await eventually(lambda: "StartupOfTheDevice" in security_events(octt), 5, "StartupOfTheDevice")
    event = octt.msgs("SecurityEventNotification")[0].payload
    assert event["timestamp"].endswith("Z")
    assert agent.service is not None
    log_path = agent.service.config.state_dir / "security.log"
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600
    assert [e["type"] for e in agent.service.features["Security"].read_log()] == ["StartupOfTheDevice"]
    await octt.csms.send_raw(CP, "this is not json")
    await eventually(lambda: "InvalidMessages" in security_events(octt), 5, "InvalidMessages")
    assert await octt.csms.send(CP, "Reset", {"type": "Soft"}) == {"status": "Accepted"}
    await eventually(lambda: agent.service is not None and agent.service.restart_requested.is_set(), 5, "restart")
    await eventually(lambda: "ResetOrReboot" in [e["type"] for e in agent.service.features["Security"].read_log()],
                     5, "ResetOrReboot logged")


async def test_security_feature_rejects_unknown_certificate_type(octt: Octt) -> None:
    await octt.start_agent()
    await octt.booted()
    with pytest.raises(CsmsCallError):
        await octt.csms.send(CP, "GetInstalledCertificateIds", {"certificateType": "V2GRootCertificate"})
