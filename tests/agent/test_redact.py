"""agent.redact: frames are redacted by parsing them, so member order, the case of the key name and JSON
escapes do not matter (issue 11 item 16). The end-to-end check over a websocket is in
tests/test_no_secrets_in_logs.py; these pin the rules one by one."""

from __future__ import annotations

import json
import logging

import pytest

from agent.ocpp.v16.rpc import RedactingFilter
from agent.redact import LoggedFrame, frame_for_log, mask, redact_text

SECRET = "Sixteen-Char-Key-0001"


@pytest.mark.parametrize("payload", [
    '{"key":"AuthorizationKey","value":"%s"}',
    '{"value":"%s","key":"AuthorizationKey"}',
    '{"key":"authorizationkey","value":"%s"}',
    '{"key":"AuthorizationKe\\u0079","value":"%s"}',
    '{"key":"AuthorizationKey","value":"%s","extra":1}',
    '{"key" : "AUTHORIZATIONKEY" , "value" : "%s"}',
])
def test_change_configuration_value_is_redacted_in_any_spelling(payload: str) -> None:
    raw = '[2,"1","ChangeConfiguration",' + payload.replace("%s", SECRET) + "]"
    logged = frame_for_log(raw)
    assert SECRET not in logged
    frame = json.loads(logged)
    assert frame[3]["value"] == "***" and frame[2] == "ChangeConfiguration"


def test_escaped_value_is_decoded_then_redacted() -> None:
    escaped = "".join(f"\\u{ord(c):04x}" for c in SECRET)
    logged = frame_for_log('[2,"1","ChangeConfiguration",{"key":"AuthorizationKey","value":"' + escaped + '"}]')
    assert SECRET not in logged and escaped not in logged and '"value":"***"' in logged


def test_configuration_key_entries_and_secret_member_names() -> None:
    conf = [3, "1", {"configurationKey": [
        {"key": "AuthorizationKey", "readonly": False, "value": SECRET},
        {"key": "HeartbeatInterval", "readonly": False, "value": "300"},
    ], "authorization_key": SECRET}]
    logged = json.loads(frame_for_log(json.dumps(conf)))
    assert logged[2]["configurationKey"] == [
        {"key": "AuthorizationKey", "readonly": False, "value": "***"},
        {"key": "HeartbeatInterval", "readonly": False, "value": "300"},
    ]
    assert logged[2]["authorization_key"] == "***"


def test_secret_inside_a_json_string_is_redacted() -> None:
    data = json.dumps({"key": "AuthorizationKey", "value": SECRET})
    logged = frame_for_log(json.dumps([2, "1", "DataTransfer", {"vendorId": "x", "data": data}]))
    assert SECRET not in logged and "***" in logged
    unreadable = '{"key":"AuthorizationKey","value":"' + SECRET
    assert SECRET not in frame_for_log(json.dumps([2, "1", "DataTransfer", {"vendorId": "x", "data": unreadable}]))


def test_id_tags_are_masked_like_cpctl() -> None:
    logged = json.loads(frame_for_log('[2,"1","StartTransaction",{"connectorId":1,"idTag":"DEADBEEF01",'
                                      '"meterStart":0,"timestamp":"2026-01-01T00:00:00Z"}]'))
    assert logged[3]["idTag"] == mask("DEADBEEF01") == "******EF01"
    conf = json.loads(frame_for_log('[3,"1",{"idTagInfo":{"status":"Accepted","parentIdTag":"PARENT0042"}}]'))
    assert conf[2]["idTagInfo"]["parentIdTag"] == mask("PARENT0042")


@pytest.mark.parametrize("raw", [
    '[2,"1","ChangeConfiguration",{"key":"AuthorizationKey","value":"%s"}' % SECRET,  # noqa: UP031
    b'[2,"1","ChangeConfiguration",{"value":"' + SECRET.encode() + b'\xff"}]',
    "[" * 100_000 + SECRET,
])
def test_a_frame_that_does_not_parse_is_logged_as_its_length_only(raw: str | bytes) -> None:
    logged = frame_for_log(raw)
    assert logged.startswith("<unparseable frame, ") and str(len(raw)) in logged
    assert SECRET not in logged


def test_lone_surrogate_does_not_break_a_log_handler() -> None:
    logged = frame_for_log('[2,"1","DataTransfer",{"vendorId":"\\ud800"}]')
    logged.encode("utf-8")  # a file handler must be able to write it


def test_logged_frame_is_rendered_only_when_emitted_and_repr_is_redacted() -> None:
    frame = LoggedFrame('[2,"1","ChangeConfiguration",{"value":"' + SECRET + '","key":"authorizationkey"}]')
    assert SECRET not in repr(frame) and SECRET not in str(frame) and SECRET not in f"{frame!r:.200}"


@pytest.mark.parametrize("text", [
    f"CallError(unique_id='1', details={{'value': '{SECRET}', 'key': 'authorizationkey'}})",
    f"ChangeConfiguration AuthorizationKey={SECRET!r} rejected",
    f"authorization_key: {SECRET}",
    f'{{"AuthorizationKe\\u0079":"{SECRET}"}}',
    f"< TEXT '[2,\"1\",\"ChangeConfiguration\",{{\"key\":\"Authoriz' ... '{SECRET}\"}}]' [99 bytes]",
])
def test_free_text_fallback(text: str) -> None:
    assert SECRET not in redact_text(text)


def test_free_text_without_a_secret_name_is_left_alone() -> None:
    text = "connector 1 value: 'x' is too long"
    assert redact_text(text) == text


def test_filter_redacts_a_record_about_a_key_it_does_not_know() -> None:
    records: list[logging.LogRecord] = []
    logger = logging.getLogger("test.redact.filter")
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    logger.addFilter(RedactingFilter(lambda: []))
    logger.propagate = False
    try:
        logger.warning("got %s", {"value": SECRET, "key": "AUTHORIZATIONKEY"})
    finally:
        logger.removeHandler(handler)
    assert SECRET not in records[0].getMessage()


def test_id_tags_in_free_text_are_masked_once() -> None:
    from agent.redact import mask_id_tags, mask_id_tags_in_text

    text = 'x {"idTag":"DEADBEEF01"} parentIdTag=04A1B2C3D4, id_tag: \'AB12CD34\' idTag Invalid'
    masked = mask_id_tags_in_text(text)
    assert masked == ('x {"idTag":"******EF01"} parentIdTag=******C3D4, id_tag: \'****CD34\' idTag Invalid')
    assert mask_id_tags_in_text(masked) == masked
    assert mask_id_tags({"id_tag": "DEADBEEF01", "n": [{"parentIdTag": "04A1B2C3D4"}]}) == {
        "id_tag": "******EF01", "n": [{"parentIdTag": "******C3D4"}]}
