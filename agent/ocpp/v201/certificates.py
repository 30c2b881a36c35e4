"""OCPP 2.0.1 certificate management of the station (A02, A03, M03-M05 for the roots it keeps), over the
version-neutral store agent/certificates.CertificateStore (``<state_dir>/certificates``; a 1.6 and a 2.0.1
agent on the same state directory share it).

- InstallCertificate: CSMSRootCertificate (the store's CentralSystemRootCertificate directory) and
  ManufacturerRootCertificate; V2G/MO roots (ISO 15118) are Rejected on this AC station. With
  ``SecurityCtrlr.AdditionalRootCertificateCheck`` true a new CSMSRootCertificate must be issued by one the
  station already trusts (installed or ``[ocpp] ca_file``), else Rejected.
- GetInstalledCertificateIds / DeleteCertificate: certificateHashDataChain per type; the station's own
  certificate and the roots of ``[ocpp] ca_file`` cannot be deleted (Failed).
- SignCertificate (A02/A03): on TriggerMessage SignChargingStationCertificate, and by the expiry watch when
  the ChargingStationCertificate ends within ``RENEW_BEFORE_S`` (or is missing under profile 3): a new P-256
  key and CSR (O = SecurityCtrlr.OrganizationName, CN = the station identity). Without a CertificateSigned
  within CertSigningWaitMinimum the request is repeated, the wait doubling, CertSigningRepeatTimes times.
- CertificateSigned: chain checked (our pending key, CN, validity, issuer links, a trusted CSMS root, at most
  MaxCertificateChainSize characters); Rejected -> security event InvalidChargingStationCertificate. Accepted
  under profile 3 -> the station reconnects with the new certificate once the answer is out.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from typing import TYPE_CHECKING, Any

from agent.certificates import (
    CENTRAL_SYSTEM_ROOT,
    MANUFACTURER_ROOT,
    CertificateError,
    CertificateStore,
    HashData,
    issued_by,
    parse_pem_chain,
    read_ca_file,
)
from agent.ocpp.v201.device_model import DeviceModelError
from agent.ocpp.v201.rpc import CallErrorReceived, CallTimeout, ConnectionLost, InvalidPayload

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from cryptography import x509

    from agent.ocpp.v201.service import OcppService

log = logging.getLogger("cpagent.ocpp.v201.certificates")

# 2.0.1 certificate types -> the store's directories
STORE_USE: dict[str, str] = {
    "CSMSRootCertificate": CENTRAL_SYSTEM_ROOT,
    "ManufacturerRootCertificate": MANUFACTURER_ROOT,
}
REPORTED_TYPES = ("CSMSRootCertificate", "ManufacturerRootCertificate")
INVALID_STATION_CERTIFICATE = "InvalidChargingStationCertificate"
RECONFIGURED = "ReconfigurationOfSecurityParameters"
RENEW_BEFORE_S = 30 * 86400.0  # a ChargingStationCertificate ending within this is renewed
EXPIRY_CHECK_S = 3600.0


def renewal_due(not_after_wall: float | None, now_wall: float, renew_before_s: float = RENEW_BEFORE_S) -> bool:
    """Whether the station's certificate (None: there is none) must be renewed now. Pure."""
    return not_after_wall is not None and not_after_wall - now_wall <= renew_before_s


def sign_waits(wait_minimum_s: float, repeat_times: int) -> list[float]:
    """The waits for a CertificateSigned after each SignCertificate: CertSigningWaitMinimum, doubling, for the
    first request and CertSigningRepeatTimes repeats. Pure."""
    return [max(wait_minimum_s, 1.0) * 2**n for n in range(max(repeat_times, 0) + 1)]


def _hash_data(data: Mapping[str, Any]) -> HashData:
    get = data.get
    return HashData.from_ocpp({
        "hashAlgorithm": get("hash_algorithm", get("hashAlgorithm")),
        "issuerNameHash": get("issuer_name_hash", get("issuerNameHash")),
        "issuerKeyHash": get("issuer_key_hash", get("issuerKeyHash")),
        "serialNumber": get("serial_number", get("serialNumber")),
    })


class CertificateHandlers(abc.ABC):
    """Mixed into security.Security, which gives ``_svc``, ``certs``, ``context_for`` and implements the abstract
    hooks below (security events, tasks, the root rollover trial and the reconnect with a new certificate)."""

    _svc: OcppService
    certs: CertificateStore
    _ca_file_problem: str | None = None

    @abc.abstractmethod
    def event(self, kind: str, tech_info: str | None = None) -> None: ...

    @abc.abstractmethod
    def _spawn(self, coroutine: Any) -> None: ...

    def init_certificates(self) -> None:
        self._signed = asyncio.Event()
        self._signing: asyncio.Task[None] | None = None
        self._relink_for_certificate = False
        self._svc.register_trigger("SignChargingStationCertificate", self._trigger_accept, self._trigger_send)

    # -- roots --------------------------------------------------------------------------------------

    def configured_roots(self) -> list[x509.Certificate]:
        """The roots of ``[ocpp] ca_file`` (trusted, listed, never deleted over OCPP); unreadable: none, logged
        once."""
        roots, self._ca_file_problem = read_ca_file(self._svc.config.ocpp.ca_file, "CSMSRootCertificate",
                                                    self._ca_file_problem, log)
        return roots

    def _additional_check(self) -> bool:
        try:
            return self._svc.variables.boolean("SecurityCtrlr", "AdditionalRootCertificateCheck")
        except (DeviceModelError, TypeError):
            return False

    async def on_install_certificate(self, certificate_type: str, certificate: str, **_: Any) -> dict[str, Any]:
        use = STORE_USE.get(certificate_type)
        if use is None:
            return {"status": "Rejected", "statusInfo": {"reasonCode": "NotSupported",
                                                         "additionalInfo": f"{certificate_type} is not kept"}}
        successor = None
        if use == CENTRAL_SYSTEM_ROOT and self._additional_check():
            trusted = [*self.configured_roots(), *self.certs.installed(CENTRAL_SYSTEM_ROOT)]
            try:
                new = parse_pem_chain(certificate)[0]
            except CertificateError:
                return {"status": "Rejected"}
            if trusted and not any(issued_by(new, old) for old in trusted):
                log.info("InstallCertificate CSMSRootCertificate rejected: not signed by the current root "
                         "(AdditionalRootCertificateCheck)")
                return {"status": "Rejected", "statusInfo": {"reasonCode": "InvalidCertificate",
                                                             "additionalInfo": "not signed by the current root"}}
            successor = new
        status = self.certs.install(use, certificate, now=self._svc.wall())
        if status == "Accepted":
            self.event(RECONFIGURED, f"{certificate_type} installed")
            if successor is not None:
                self.root_rollover(successor)
        return {"status": status}

    @abc.abstractmethod
    def root_rollover(self, new_root: x509.Certificate) -> None:
        """A CSMS root accepted under AdditionalRootCertificateCheck: the old one is the fallback."""

    async def on_get_installed_certificate_ids(self, certificate_type: Sequence[str] | None = None,
                                               **_: Any) -> dict[str, Any]:
        wanted = list(certificate_type) if certificate_type else list(REPORTED_TYPES)
        chains: list[dict[str, Any]] = []
        for kind in wanted:
            use = STORE_USE.get(kind)
            if use is None:
                continue
            for data, _path in self.certs.hash_ids(use, configured_roots=self.configured_roots()):
                chains.append({"certificateType": kind, "certificateHashData": data.as_ocpp()})
        if not chains:
            return {"status": "NotFound"}
        return {"status": "Accepted", "certificateHashDataChain": chains}

    async def on_delete_certificate(self, certificate_hash_data: dict[str, Any], **_: Any) -> dict[str, Any]:
        try:
            wanted = _hash_data(certificate_hash_data)
        except (KeyError, TypeError):
            return {"status": "NotFound"}
        roots = self.certs.installed(CENTRAL_SYSTEM_ROOT)
        if self._svc.security_profile >= 2 and len(roots) == 1 and self._svc.config.ocpp.ca_file is None:
            only = self.certs.hash_ids(CENTRAL_SYSTEM_ROOT, wanted.hash_algorithm)
            if only and only[0][0] == wanted:  # the last trust anchor of a TLS connection stays
                return {"status": "Failed"}
        status = self.certs.delete(wanted, self.configured_roots())
        if status == "Accepted":
            self.event(RECONFIGURED, f"certificate {wanted.serial_number} deleted")
        return {"status": status}

    # -- the station's own certificate --------------------------------------------------------------

    def identity(self) -> str:
        return self._svc.config.station.charge_point_id

    def _trigger_accept(self, evse: Mapping[str, Any] | None) -> str:
        return "Accepted"

    async def _trigger_send(self, evse: Mapping[str, Any] | None) -> None:
        self.request_signing("triggered by the CSMS")

    def request_signing(self, why: str) -> None:
        """Start (or restart) the SignCertificate exchange with its repeats."""
        if self._signing is not None and not self._signing.done():
            self._signing.cancel()
        log.info("requesting a new ChargingStationCertificate (%s)", why)
        self._signed.clear()
        self._signing = asyncio.get_running_loop().create_task(self._sign_with_repeats())

    async def _sign_with_repeats(self) -> None:
        svc = self._svc
        waits = sign_waits(float(svc.setting("SecurityCtrlr", "CertSigningWaitMinimum", 60)),
                           svc.setting("SecurityCtrlr", "CertSigningRepeatTimes", 3))
        for wait in waits:
            status = await self.send_sign_certificate()
            if status is not None and status != "Accepted":
                log.warning("SignCertificate %s by the CSMS", status)
                return
            try:
                async with asyncio.timeout(wait):
                    await self._signed.wait()
                return
            except TimeoutError:
                log.warning("no CertificateSigned within %.0f s", wait)
        log.error("no ChargingStationCertificate after %d SignCertificate requests", len(waits))

    async def send_sign_certificate(self) -> str | None:
        """Create a key + CSR and send SignCertificate; the CSMS's status, None when it could not be sent."""
        from ocpp.v201 import call

        try:
            organization = self._svc.variables.text("SecurityCtrlr", "OrganizationName")
        except DeviceModelError:
            organization = ""
        csr = await asyncio.to_thread(self.certs.create_csr, cpo_name=organization, serial_number=self.identity())
        try:
            conf = await self._svc.request(call.SignCertificate(csr=csr, certificate_type="ChargingStationCertificate"))
        except (CallErrorReceived, CallTimeout, InvalidPayload, ConnectionLost) as exc:
            log.warning("SignCertificate could not be sent: %s", exc)
            return None
        return str(conf.status)

    async def on_certificate_signed(self, certificate_chain: str, certificate_type: str | None = None,
                                    **_: Any) -> dict[str, Any]:
        if certificate_type not in (None, "ChargingStationCertificate"):
            return {"status": "Rejected", "statusInfo": {"reasonCode": "NotSupported"}}
        try:
            self.certs.accept_signed_chain(
                certificate_chain, serial_number=self.identity(), now=self._svc.wall(),
                max_size=self._svc.setting("SecurityCtrlr", "MaxCertificateChainSize", 10000),
                configured_roots=self.configured_roots(),
            )
        except (CertificateError, OSError) as exc:
            log.warning("CertificateSigned rejected: %s", exc)
            self.event(INVALID_STATION_CERTIFICATE, str(exc))
            return {"status": "Rejected"}
        self._signed.set()
        self.event(RECONFIGURED, "new ChargingStationCertificate installed")
        self._relink_for_certificate = self._svc.security_profile == 3
        return {"status": "Accepted"}

    async def after_certificate_signed(self, **_: Any) -> None:
        if self._relink_for_certificate:
            self._relink_for_certificate = False
            self.certificate_changed()

    @abc.abstractmethod
    def certificate_changed(self) -> None:
        """Profile 3: reconnect presenting the new certificate."""

    def client_not_after(self) -> float | None:
        chain = self.certs.client_chain()
        return chain[0].not_valid_after_utc.timestamp() if chain else None

    async def watch_certificates(self) -> None:
        """Renew the ChargingStationCertificate before it expires (A03): looked at once online, then every
        EXPIRY_CHECK_S."""
        while True:
            while not self._svc.online:  # noqa: ASYNC110 (the service has no "online" event to wait for)
                await asyncio.sleep(1.0)
            busy = self._signing is not None and not self._signing.done()
            if not busy and renewal_due(self.client_not_after(), self._svc.wall()):
                self.request_signing("the ChargingStationCertificate expires soon")
            await asyncio.sleep(EXPIRY_CHECK_S)
