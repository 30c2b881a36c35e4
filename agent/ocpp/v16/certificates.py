"""CS -> CP certificate management (security whitepaper): InstallCertificate, DeleteCertificate,
GetInstalledCertificateIds, CertificateSigned, and the SignCertificate request we send when the CSMS asks
(ExtendedTriggerMessage SignChargePointCertificate, handled by the firmware feature, calls
``sign_charge_point_certificate``). Mixed into the Security feature class."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ocpp.v16 import call

from agent.certificates import CENTRAL_SYSTEM_ROOT, CertificateError, CertificateStore, HashData, read_ca_file
from agent.ocpp.v16.rpc import OcppRpcError

if TYPE_CHECKING:
    from cryptography import x509

    from agent.ocpp.v16.service import OcppService

log = logging.getLogger("cpagent.ocpp.v16.certificates")

RECONFIGURED = "ReconfigurationOfSecurityParameters"
INVALID_CHARGE_POINT_CERTIFICATE = "InvalidChargePointCertificate"


def _hash_data_argument(data: dict[str, Any]) -> HashData:
    """certificateHashData as the handler receives it (snake_case keys) or as on the wire."""
    snake = {
        "hashAlgorithm": data.get("hash_algorithm", data.get("hashAlgorithm")),
        "issuerNameHash": data.get("issuer_name_hash", data.get("issuerNameHash")),
        "issuerKeyHash": data.get("issuer_key_hash", data.get("issuerKeyHash")),
        "serialNumber": data.get("serial_number", data.get("serialNumber")),
    }
    return HashData.from_ocpp(snake)


class CertificateHandlers:
    _svc: OcppService
    certs: CertificateStore
    _ca_file_problem: str | None = None  # the last one logged

    def event(self, kind: str, tech_info: str | None = None) -> None:
        raise NotImplementedError

    def client_certificate_changed(self) -> None:
        raise NotImplementedError

    async def on_install_certificate(self, certificate_type: str, certificate: str, **_: Any) -> dict[str, Any]:
        status = self.certs.install(certificate_type, certificate, now=self._svc.wall())
        if status == "Accepted":
            self.event(RECONFIGURED, f"{certificate_type} installed")
        return {"status": status}

    async def on_delete_certificate(self, certificate_hash_data: dict[str, Any], **_: Any) -> dict[str, Any]:
        wanted = _hash_data_argument(certificate_hash_data)
        roots_before = len(self.certs.installed(CENTRAL_SYSTEM_ROOT))
        if self._svc.security_profile >= 2 and roots_before == 1 and self.config_ca_file() is None:
            # Deleting the only trust anchor of a TLS profile would strand the charge point.
            only = self.certs.hash_ids(CENTRAL_SYSTEM_ROOT, wanted.hash_algorithm)
            if only and only[0][0] == wanted:
                return {"status": "Failed"}
        status = self.certs.delete(wanted, self.configured_roots())
        if status == "Accepted":
            self.event(RECONFIGURED, f"certificate {wanted.serial_number} deleted")
        return {"status": status}

    async def on_get_installed_certificate_ids(self, certificate_type: str, **_: Any) -> dict[str, Any]:
        found = [data.as_ocpp() for data, _path in self.certs.hash_ids(certificate_type,
                                                                         configured_roots=self.configured_roots())]
        if not found:
            return {"status": "NotFound"}
        return {"status": "Accepted", "certificateHashData": found}

    async def on_certificate_signed(self, certificate_chain: str, **_: Any) -> dict[str, Any]:
        try:
            self.certs.accept_signed_chain(
                certificate_chain,
                serial_number=self._svc.config.station.serial_number,
                now=self._svc.wall(),
                max_size=self._svc.store.get_int("CertificateSignedMaxChainSize"),
                configured_roots=self.configured_roots(),
            )
        except (CertificateError, OSError) as exc:
            log.warning("CertificateSigned rejected: %s", exc)
            self.event(INVALID_CHARGE_POINT_CERTIFICATE, str(exc))
            return {"status": "Rejected"}
        self.event(RECONFIGURED, "new ChargePointCertificate installed")
        return {"status": "Accepted"}

    async def after_certificate_signed(self, **_: Any) -> None:
        if self.certs.has_client_certificate():
            self.client_certificate_changed()

    async def sign_charge_point_certificate(self) -> str | None:
        """Create a key and CSR (O = CpoName, CN = serial number) and send SignCertificate.req.
        Returns the CSMS's status ("Accepted"/"Rejected"), or None when it could not be sent."""
        csr = self.certs.create_csr(
            cpo_name=self._svc.store.get_str("CpoName"), serial_number=self._svc.config.station.serial_number
        )
        try:
            conf = await self._svc._request(call.SignCertificate(csr=csr))
        except OcppRpcError as exc:
            log.warning("SignCertificate could not be sent: %s", exc)
            return None
        return str(conf.status)

    def config_ca_file(self) -> object | None:
        return self._svc.config.ocpp.ca_file

    def configured_roots(self) -> list[x509.Certificate]:
        """The CentralSystemRootCertificates of ``[ocpp] ca_file``: trusted for CertificateSigned and listed
        by GetInstalledCertificateIds like installed ones, but never deleted over OCPP. Read on each use
        (a few kB), so a replaced file counts at once; an unreadable file is logged once and trusts nothing."""
        roots, self._ca_file_problem = read_ca_file(self.config_ca_file(), CENTRAL_SYSTEM_ROOT,
                                                    self._ca_file_problem, log)
        return roots
