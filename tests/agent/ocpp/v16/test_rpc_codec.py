"""Pure parts of the RPC layer: frame decoding, schema error mapping, log redaction, handler lookup."""

from __future__ import annotations

import logging

import pytest
from ocpp.messages import Call, CallError, CallResult, MessageType
from ocpp.v16 import call_result

from agent.ocpp.v16.rpc import (
    ErrorCode,
    FrameError,
    RedactingFilter,
    decode_frame,
    handlers_from_object,
    schema_violation,
    to_16_error_code,
    to_wire_payload,
)


def test_decode_well_formed_frames() -> None:
    frame = decode_frame('[2,"a1","Heartbeat",{}]')
    assert isinstance(frame, Call) and (frame.unique_id, frame.action, frame.payload) == ("a1", "Heartbeat", {})
    result = decode_frame(b'[3,"a1",{"currentTime":"2026-01-01T00:00:00Z"}]')
    assert isinstance(result, CallResult) and result.payload["currentTime"].endswith("Z")
    error = decode_frame('[4,"a1","NotSupported","no",{}]')
    assert isinstance(error, CallError) and error.error_code == "NotSupported"


@pytest.mark.parametrize(
    ("raw", "code", "unique_id"),
    [
        ('[2,"id-7","Heartbeat",{', ErrorCode.FORMATION_VIOLATION, "id-7"),  # broken JSON, id recoverable
        ("{{{ garbage", ErrorCode.FORMATION_VIOLATION, None),
        ('[2,"id-8","Heartbeat"]', ErrorCode.PROTOCOL_ERROR, "id-8"),
        ('[2,"id-9",17,{}]', ErrorCode.PROTOCOL_ERROR, "id-9"),
        ('[2,"id-10","Heartbeat",[]]', ErrorCode.FORMATION_VIOLATION, "id-10"),
        ('[2,"' + "x" * 37 + '","Heartbeat",{}]', ErrorCode.PROTOCOL_ERROR, "x" * 37),
        ('{"not": "an array"}', ErrorCode.PROTOCOL_ERROR, None),
        ('[3,"id-11"]', ErrorCode.PROTOCOL_ERROR, None),  # results are never answered
        ('[7,"id-12",{}]', ErrorCode.PROTOCOL_ERROR, None),  # unknown type: ignored per OCPP-J
        (b"\xff\xfe", ErrorCode.FORMATION_VIOLATION, None),
    ],
)
def test_decode_malformed_frames(raw: str | bytes, code: ErrorCode, unique_id: str | None) -> None:
    with pytest.raises(FrameError) as caught:
        decode_frame(raw)
    assert (caught.value.code, caught.value.unique_id) == (code, unique_id)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"connectorId": "one", "type": "Inoperative"}, ErrorCode.TYPE_CONSTRAINT_VIOLATION),
        ({"connectorId": 1, "type": "Sideways"}, ErrorCode.PROPERTY_CONSTRAINT_VIOLATION),
        ({"connectorId": 1}, ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION),
        ({"connectorId": 1, "type": "Inoperative", "extra": 1}, ErrorCode.FORMATION_VIOLATION),
    ],
)
def test_schema_violations_map_to_16_codes(payload: dict[str, object], code: ErrorCode) -> None:
    violation = schema_violation(MessageType.Call, "ChangeAvailability", payload)
    assert violation is not None and violation.code == code


def test_schema_accepts_valid_payloads_including_decimal_schemas() -> None:
    assert schema_violation(MessageType.Call, "ChangeAvailability", {"connectorId": 0, "type": "Operative"}) is None
    profile = {
        "connectorId": 1,
        "csChargingProfiles": {
            "chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [
                {"startPeriod": 0, "limit": 21.4}]},
        },
    }
    assert schema_violation(MessageType.Call, "SetChargingProfile", profile) is None
    too_long = {"chargePointVendor": "v" * 21, "chargePointModel": "m"}
    violation = schema_violation(MessageType.Call, "BootNotification", too_long)
    assert violation is not None and violation.code == ErrorCode.TYPE_CONSTRAINT_VIOLATION


def test_library_and_2_0_1_spellings_become_16_codes() -> None:
    assert to_16_error_code("FormatViolation") == ErrorCode.FORMATION_VIOLATION
    assert to_16_error_code("OccurrenceConstraintViolation") == ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION
    assert to_16_error_code("NotSupported") == ErrorCode.NOT_SUPPORTED
    assert to_16_error_code("MessageTypeNotSupported") == ErrorCode.GENERIC_ERROR


def test_wire_payload_from_dataclass_or_mapping() -> None:
    conf = call_result.ChangeConfiguration(status="Accepted")
    assert to_wire_payload(conf) == {"status": "Accepted"}
    assert to_wire_payload(call_result.DataTransfer(status="Accepted")) == {"status": "Accepted"}
    assert to_wire_payload({"status": "Rejected"}) == {"status": "Rejected"}
    with pytest.raises(TypeError):
        to_wire_payload("Accepted")


def test_handlers_from_object_finds_on_and_after_methods() -> None:
    class Service:
        async def on_reset(self, **_: object) -> call_result.Reset:
            return call_result.Reset(status="Accepted")

        async def after_reset(self, **_: object) -> None:
            return None

        async def on_get_configuration(self, **_: object) -> dict[str, object]:
            return {}

        async def on_not_an_action(self) -> None:
            return None

    handlers, after = handlers_from_object(Service())
    assert sorted(handlers) == ["GetConfiguration", "Reset"]
    assert sorted(after) == ["Reset"]


def test_redacting_filter_hides_secrets_in_message_args_and_tracebacks() -> None:
    secret = ["s3cr3t-key"]
    log_filter = RedactingFilter(lambda: secret)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("test.redaction")
    logger.propagate = False
    logger.addHandler(Keep())
    logger.addFilter(log_filter)
    try:
        logger.warning("frame %s", '[2,"1","X",{"password":"s3cr3t-key"}]')
        logger.warning('[2,"2","ChangeConfiguration",{"key":"AuthorizationKey","value":"new-unknown"}]')
        logger.warning("%s", {"key": "AuthorizationKey", "value": "py-repr-secret"})
        secret[0] = "rotated-key"  # the callable is asked every time
        logger.warning("now rotated-key")
        try:
            raise ValueError("boom rotated-key")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeFilter(log_filter)
    text = "\n".join(r.getMessage() + (r.exc_text or "") for r in records)
    for leaked in ("s3cr3t-key", "new-unknown", "py-repr-secret", "rotated-key"):
        assert leaked not in text
    assert text.count("***") == 6  # the traceback shows the secret twice (source line + message)
