"""The OCPP 2.0.1 central-system side of the bundled CSMS (``simulator.csms.Csms``).

``Csms`` serves both versions on one port: the websocket subprotocol a charge point gets decides which
side answers it (``Csms(version="1.6" | "2.0.1" | "auto")``; auto prefers ``ocpp2.0.1`` when offered).
This module is the 2.0.1 side, on the ``ocpp`` library's v201 ChargePoint: the library validates every
CALL it receives and every answer it sends against the 2.0.1 JSON schemas (strict: a frame the schema
refuses is answered with a CALLERROR, never with a made-up result). It answers every message a Core and
Advanced Security charging station sends, from the ``Csms`` settings:

- ``boot_status`` / ``heartbeat_interval``: BootNotification (Accepted, Pending, Rejected) and its interval;
- ``auth_list`` (idToken -> status) and ``id_token_infos`` (idToken -> a whole 2.0.1 ``idTokenInfo``, wire
  form, wins): the idTokenInfo of Authorize and of every TransactionEvent that carries an idToken; an
  idToken of type NoAuthorization is Accepted, an unknown one Invalid;
- ``data_transfer_status``, ``sign_certificate_status``; with ``certificate_signer`` set (e.g. a
  ``CsrSigner`` over a test CA) an accepted SignCertificate is followed by a CertificateSigned carrying the
  signed chain (its answers are recorded in ``Csms.certificate_signed_results``).

CSMS -> station CALLs are sent as given (camelCase, no snake_case round trip) by ``Csms.send``, validated
against the request schema first unless ``validate=False``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ocpp.exceptions import OCPPError
from ocpp.messages import Call, MessageType, validate_payload
from ocpp.routing import after, on
from ocpp.v201 import ChargePoint as LibraryChargePoint
from ocpp.v201 import call as call201
from ocpp.v201 import call_result
from websockets.typing import Subprotocol

if TYPE_CHECKING:
    from simulator.csms import Csms

LOG = logging.getLogger("cpsim.csms")
SUBPROTOCOL_201 = Subprotocol("ocpp2.0.1")
VERSION_201 = "2.0.1"

_Handler = TypeVar("_Handler", bound=Callable[..., Any])


def _on(action: str) -> Callable[[_Handler], _Handler]:
    """The library's ``@on``, typed."""
    decorator: Callable[[_Handler], _Handler] = on(action)
    return decorator


def _after(action: str) -> Callable[[_Handler], _Handler]:
    """The library's ``@after``, typed."""
    decorator: Callable[[_Handler], _Handler] = after(action)
    return decorator


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def is_201_action(action: str) -> bool:
    """Whether ``action`` is a CALL of OCPP 2.0.1 (either direction)."""
    return isinstance(getattr(call201, action, None), type)


class CentralSystemSide201(LibraryChargePoint):  # type: ignore[misc]
    """The library's v201 ChargePoint on the server side, answering station messages from Csms settings."""

    def __init__(self, charge_point_id: str, connection: Any, csms: Csms) -> None:
        super().__init__(charge_point_id, connection, response_timeout=csms.response_timeout, logger=LOG)
        self._csms = csms

    # -- CSMS -> station --------------------------------------------------------------------------

    async def call_payload(self, action: str, payload: dict[str, Any], *, validate: bool = True) -> dict[str, Any]:
        """Send one CALL with this camelCase payload; return the CALLRESULT payload.

        Raises the library's ``OCPPError`` for a CALLERROR (``UnknownCallErrorCodeError`` for a code
        2.0.1 does not have), ``TimeoutError`` when no answer comes within the response timeout and, when
        validating, ValueError for a request (nothing sent) or an answer the schema refuses.
        """
        message = Call(unique_id=str(uuid.uuid4()), action=action, payload=payload)
        if validate:
            try:
                await validate_payload(message, VERSION_201)
            except OCPPError as error:
                raise ValueError(f"{action}: the request breaks the 2.0.1 schema: {error.details}") from None
        async with self._call_lock:  # one outstanding CALL at a time, as the library's call() does
            await self._send(message.to_json())
            response = await self._get_specific_response(message.unique_id, self._response_timeout)
        if response.message_type_id == MessageType.CallError:
            raise response.to_exception()
        if validate:
            response.action = action
            try:
                await validate_payload(response, VERSION_201)
            except OCPPError as error:
                raise ValueError(f"{action}: the station's answer breaks the 2.0.1 schema: {error.details}") from None
        result: dict[str, Any] = response.payload
        return result

    # -- station -> CSMS --------------------------------------------------------------------------

    def id_token_info(self, id_token: dict[str, Any]) -> dict[str, Any]:
        """The idTokenInfo (wire form) for an idToken as the library hands it over (snake_case keys)."""
        token = str(id_token.get("id_token", ""))
        full = self._csms.id_token_infos.get(token)
        if full is not None:
            return dict(full)
        if id_token.get("type") == "NoAuthorization":
            return {"status": "Accepted"}
        return {"status": self._csms.auth_list.get(token, "Invalid")}

    @_on("BootNotification")
    async def on_boot_notification(self, **_: Any) -> call_result.BootNotification:
        return call_result.BootNotification(
            current_time=_now(), interval=self._csms.heartbeat_interval, status=self._csms.boot_status
        )

    @_on("Heartbeat")
    async def on_heartbeat(self, **_: Any) -> call_result.Heartbeat:
        return call_result.Heartbeat(current_time=_now())

    @_on("StatusNotification")
    async def on_status_notification(self, **_: Any) -> call_result.StatusNotification:
        return call_result.StatusNotification()

    @_on("Authorize")
    async def on_authorize(self, id_token: dict[str, Any], **_: Any) -> call_result.Authorize:
        return call_result.Authorize(id_token_info=self.id_token_info(id_token))

    @_on("TransactionEvent")
    async def on_transaction_event(
        self, event_type: str = "", id_token: dict[str, Any] | None = None, **_: Any
    ) -> call_result.TransactionEvent:
        # transactionId is the station's; the CSMS only judges the idToken when one is sent.
        more = self._csms.transaction_event_answers.get(event_type, {})
        return call_result.TransactionEvent(id_token_info=self.id_token_info(id_token) if id_token else None,
                                            total_cost=more.get("totalCost"), charging_priority=more.get(
                                                "chargingPriority"),
                                            updated_personal_message=more.get("updatedPersonalMessage"))

    @_on("MeterValues")
    async def on_meter_values(self, **_: Any) -> call_result.MeterValues:
        return call_result.MeterValues()

    @_on("NotifyReport")
    async def on_notify_report(self, **_: Any) -> call_result.NotifyReport:
        return call_result.NotifyReport()

    @_on("NotifyEvent")
    async def on_notify_event(self, **_: Any) -> call_result.NotifyEvent:
        return call_result.NotifyEvent()

    @_on("NotifyMonitoringReport")
    async def on_notify_monitoring_report(self, **_: Any) -> call_result.NotifyMonitoringReport:
        return call_result.NotifyMonitoringReport()

    @_on("SecurityEventNotification")
    async def on_security_event_notification(self, **_: Any) -> call_result.SecurityEventNotification:
        return call_result.SecurityEventNotification()

    @_on("LogStatusNotification")
    async def on_log_status_notification(self, **_: Any) -> call_result.LogStatusNotification:
        return call_result.LogStatusNotification()

    @_on("FirmwareStatusNotification")
    async def on_firmware_status_notification(self, **_: Any) -> call_result.FirmwareStatusNotification:
        return call_result.FirmwareStatusNotification()

    @_on("PublishFirmwareStatusNotification")
    async def on_publish_firmware_status_notification(
        self, **_: Any
    ) -> call_result.PublishFirmwareStatusNotification:
        return call_result.PublishFirmwareStatusNotification()

    @_on("SignCertificate")
    async def on_sign_certificate(self, **_: Any) -> call_result.SignCertificate:
        return call_result.SignCertificate(status=self._csms.sign_certificate_status)

    @_after("SignCertificate")
    def after_sign_certificate(self, csr: str, certificate_type: str | None = None, **_: Any) -> None:
        signer = self._csms.certificate_signer
        if signer is None or self._csms.sign_certificate_status != "Accepted":
            return
        task = asyncio.ensure_future(self._send_certificate_signed(signer, csr, certificate_type))
        self._csms._background.add(task)
        task.add_done_callback(self._csms._background.discard)

    async def _send_certificate_signed(
        self, signer: Callable[[str], str], csr: str, certificate_type: str | None
    ) -> None:
        await asyncio.sleep(self._csms.certificate_signed_delay)
        try:
            chain = signer(csr)
        except ValueError as error:  # a CSR that cannot be signed: no CertificateSigned, logged once
            LOG.warning("CSMS: %s: cannot sign the CSR: %s", self.id, error)
            self._csms.certificate_signed_results.append({"error": str(error)})
            return
        payload: dict[str, Any] = {"certificateChain": chain}
        if certificate_type is not None:
            payload["certificateType"] = certificate_type
        try:
            result = await self.call_payload("CertificateSigned", payload)
        except Exception as error:  # recorded for the test, never raised into the loop
            self._csms.certificate_signed_results.append({"error": f"{type(error).__name__}: {error}"})
            return
        self._csms.certificate_signed_results.append(result)

    @_on("NotifyCustomerInformation")
    async def on_notify_customer_information(self, **_: Any) -> call_result.NotifyCustomerInformation:
        return call_result.NotifyCustomerInformation()

    @_on("DataTransfer")
    async def on_data_transfer(self, **_: Any) -> call_result.DataTransfer:
        return call_result.DataTransfer(status=self._csms.data_transfer_status)

    @_on("NotifyChargingLimit")
    async def on_notify_charging_limit(self, **_: Any) -> call_result.NotifyChargingLimit:
        return call_result.NotifyChargingLimit()

    @_on("ClearedChargingLimit")
    async def on_cleared_charging_limit(self, **_: Any) -> call_result.ClearedChargingLimit:
        return call_result.ClearedChargingLimit()

    @_on("ReportChargingProfiles")
    async def on_report_charging_profiles(self, **_: Any) -> call_result.ReportChargingProfiles:
        return call_result.ReportChargingProfiles()

    @_on("NotifyEVChargingNeeds")
    async def on_notify_ev_charging_needs(self, **_: Any) -> call_result.NotifyEVChargingNeeds:
        return call_result.NotifyEVChargingNeeds(status="Rejected")

    @_on("NotifyEVChargingSchedule")
    async def on_notify_ev_charging_schedule(self, **_: Any) -> call_result.NotifyEVChargingSchedule:
        return call_result.NotifyEVChargingSchedule(status="Accepted")

    @_on("NotifyDisplayMessages")
    async def on_notify_display_messages(self, **_: Any) -> call_result.NotifyDisplayMessages:
        return call_result.NotifyDisplayMessages()

    @_on("ReservationStatusUpdate")
    async def on_reservation_status_update(self, **_: Any) -> call_result.ReservationStatusUpdate:
        return call_result.ReservationStatusUpdate()

    @_on("Get15118EVCertificate")
    async def on_get_15118_ev_certificate(self, **_: Any) -> call_result.Get15118EVCertificate:
        return call_result.Get15118EVCertificate(status="Failed", exi_response="")

    @_on("GetCertificateStatus")
    async def on_get_certificate_status(self, **_: Any) -> call_result.GetCertificateStatus:
        return call_result.GetCertificateStatus(status="Failed")


class CsrSigner:
    """Signs a station's PKCS#10 CSR (PEM) with a CA (for tests of SignCertificate / CertificateSigned).

    ``CsrSigner(ca_cert_pem, ca_key_pem, days=365)``; calling it returns the PEM chain leaf + CA. A CSR
    that does not parse or whose signature does not verify raises ValueError.
    """

    def __init__(self, ca_cert_pem: bytes, ca_key_pem: bytes, *, days: float = 365.0) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        self._ca = x509.load_pem_x509_certificate(ca_cert_pem)
        self._key = serialization.load_pem_private_key(ca_key_pem, password=None)
        self._ca_pem = ca_cert_pem.decode("ascii")
        self.days = days

    def __call__(self, csr_pem: str) -> str:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        csr = x509.load_pem_x509_csr(csr_pem.encode("ascii"))
        if not csr.is_signature_valid:
            raise ValueError("the CSR's signature does not verify")
        key = self._key
        if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
            raise ValueError("the CA key must be RSA or EC")
        now = dt.datetime.now(dt.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(self._ca.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=self.days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        leaf = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
        return leaf + self._ca_pem
