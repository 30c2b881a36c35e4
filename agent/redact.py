"""Secrets and personal data out of logged OCPP frames and log lines.

A frame is redacted by parsing it (JSON), never by matching its text: the CSMS chooses the member order,
the case of a key name and may escape any character (``"AuthorizationKe\\u0079"``), and text patterns
miss all three. ``LoggedFrame`` defers the work until a log record is really emitted::

    LOG.debug("%s < %s", charge_point_id, LoggedFrame(raw))

In a logged frame

* a member whose name resembles a secret (``SECRET_WORDS``, any case, ``_``/``-`` ignored), and every
  member but ``key``/``readonly`` of an object whose ``key`` names a secret (ChangeConfiguration.req,
  GetConfiguration.conf entries) read ``"***"``; likewise the value members (``attributeValue``,
  ``value``, ``actualValue``, ``variableAttribute``) of an object whose ``variable.name`` names a secret
  (OCPP 2.0.1 SetVariables / GetVariables / NotifyReport entries of SecurityCtrlr.BasicAuthPassword);
* ``idTag``/``parentIdTag`` values are masked like cpctl masks them (``mask``; also
  ``mask_id_tags`` / ``mask_id_tags_in_text`` for the diagnostics archive);
* a string holding JSON that mentions a secret is redacted inside; other strings mentioning a secret go
  through ``redact_text``;
* a frame that does not parse is replaced by its length: no prefix, no hash (a short secret's hash is
  guessable).

``redact_text`` is the fallback for free text (exception messages, library log lines): when the text
mentions a secret name (escaped or not), quoted or assigned values after it and after any ``value``
member are replaced.
"""

from __future__ import annotations

import json
import re
from typing import Any, overload


@overload
def mask(id_tag: str) -> str: ...
@overload
def mask(id_tag: None) -> None: ...
def mask(id_tag: str | None) -> str | None:
    """idTags are personal data: show only the last four characters (logs, cpctl, diagnostics archives)."""
    if id_tag is None:
        return None
    return "*" * max(0, len(id_tag) - 4) + id_tag[-4:]

REDACTED = "***"
SECRET_WORDS = ("authorizationkey", "password", "passwd", "passphrase", "secret", "private")
ID_TAG_MEMBERS = frozenset({"idtag", "parentidtag"})
_KEEP_BESIDE_SECRET_KEY = frozenset({"key", "readonly"})
# OCPP 2.0.1: members holding the value of the variable named beside them (folded names)
_VALUES_OF_SECRET_VARIABLE = frozenset({"attributevalue", "value", "actualvalue", "variableattribute"})

_UNICODE_ESCAPE = re.compile(r"\\+u([0-9a-fA-F]{4})")
_QUOTED_OR_BARE = r"""(?:(["'])(?:\\.|(?!\2).)*?\2|[^\s,;}\])]+)"""
_SECRET_NAME = r"(?:authori[sz]ation[\s_-]*key|pass(?:word|wd|phrase)|secret|private[\s_-]*key)"
_SECRET_ASSIGNMENT = re.compile(
    rf"""({_SECRET_NAME}["']?\s*[:=]\s*){_QUOTED_OR_BARE}""", re.IGNORECASE
)
_VALUE_MEMBER = re.compile(rf"""(["']?\bvalue["']?\s*[:=]\s*){_QUOTED_OR_BARE}""", re.IGNORECASE)
_ID_TAG_ASSIGNMENT = re.compile(
    r"""((?<![A-Za-z])(?:parent[_-]?)?id[_-]?tag["']?\s*[:=]\s*["']?)([^"'\s,;})\]]+)""", re.IGNORECASE
)
# websockets' DEBUG frame lines ("< TEXT '[2,...' [140 bytes]") are cut in the middle, so a key name may be
# gone while its value is not: their content is never logged (rpc logs every frame, redacted).
_WEBSOCKETS_FRAME = re.compile(r"^([<>] (?:TEXT|BINARY) ).*( \[\d+ bytes\])$", re.DOTALL)


def _folded(name: str) -> str:
    return "".join(ch for ch in name.casefold() if ch.isalnum())


def is_secret_name(name: str) -> bool:
    """``AuthorizationKey``, ``authorizationkey``, ``authorization_key``, ``password``... (not ``key``)."""
    folded = _folded(name)
    return any(word in folded for word in SECRET_WORDS)


def mentions_secret(text: str) -> bool:
    """Whether ``text`` names a secret anywhere, also behind ``\\uXXXX`` escapes."""
    return is_secret_name(_unescape(text))


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    return _UNICODE_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)


def redact_text(text: str) -> str:
    """Free text with the values that follow a secret's name (or a ``value`` member) replaced."""
    text = _WEBSOCKETS_FRAME.sub(r"\g<1>'...'\g<2>", text)
    if not mentions_secret(text):
        return text
    text = _unescape(text)

    def hide(match: re.Match[str]) -> str:
        quote = match.group(2) or ""
        return f"{match.group(1)}{quote}{REDACTED}{quote}"

    return _VALUE_MEMBER.sub(hide, _SECRET_ASSIGNMENT.sub(hide, text))


def redact_json(value: Any) -> Any:
    """A copy of a parsed JSON value with secrets replaced and idTags masked (see the module docstring)."""
    if isinstance(value, dict):
        names_secret = any(
            isinstance(k, str) and k.casefold() == "key" and isinstance(v, str) and is_secret_name(v)
            for k, v in value.items()
        )
        variable = value.get("variable")
        secret_variable = (
            isinstance(variable, dict) and isinstance(variable.get("name"), str) and is_secret_name(variable["name"])
        )
        out: dict[Any, Any] = {}
        for k, v in value.items():
            name = str(k)
            if (
                is_secret_name(name)
                or (names_secret and name.casefold() not in _KEEP_BESIDE_SECRET_KEY)
                or (secret_variable and _folded(name) in _VALUES_OF_SECRET_VARIABLE)
            ):
                out[k] = REDACTED
            elif _folded(name) in ID_TAG_MEMBERS and isinstance(v, str):
                out[k] = mask(v)
            else:
                out[k] = redact_json(v)
        return out
    if isinstance(value, list):
        return [redact_json(v) for v in value]
    if isinstance(value, str) and mentions_secret(value):
        if value.lstrip()[:1] in ("{", "["):
            try:
                inner = json.loads(value)
            except (ValueError, RecursionError):
                return REDACTED  # looks like JSON about a secret but cannot be read: nothing of it
            return _dumps(redact_json(inner))
        return redact_text(value)
    return value


def mask_id_tags(value: Any) -> Any:
    """A copy of a JSON-like tree with every idTag/id_tag/parentIdTag string masked (cpctl's ``mask``)."""
    if isinstance(value, dict):
        return {k: mask(v) if _folded(str(k)) in ID_TAG_MEMBERS and isinstance(v, str) else mask_id_tags(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [mask_id_tags(v) for v in value]
    return value


def mask_id_tags_in_text(text: str) -> str:
    """Log text with the value after ``idTag``/``id_tag``/``parentIdTag`` (``:`` or ``=``, quoted or not)
    masked; for lines written without ``LoggedFrame`` (an older agent, a library)."""
    return _ID_TAG_ASSIGNMENT.sub(lambda m: f"{m.group(1)}{mask(m.group(2))}", text)


def _dumps(value: Any) -> str:
    # ensure_ascii=False: escapes are decoded, so a known secret's plain text can be matched afterwards;
    # a lone surrogate (valid JSON, invalid UTF-8) must not break the log handler's encoding.
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def frame_for_log(raw: str | bytes) -> str:
    """The frame as it may be logged: re-serialized after ``redact_json``, or just its length."""
    try:
        return _dumps(redact_json(json.loads(raw)))
    except (ValueError, TypeError, RecursionError):
        unit = "bytes" if isinstance(raw, bytes | bytearray) else "characters"
        return f"<unparseable frame, {len(raw)} {unit}>"


class LoggedFrame:
    """A log argument that renders a frame through ``frame_for_log`` only when the record is emitted."""

    __slots__ = ("raw",)

    def __init__(self, raw: str | bytes) -> None:
        self.raw = raw

    def __str__(self) -> str:
        return frame_for_log(self.raw)

    __repr__ = __str__  # logging's error report prints the arguments with %r: never the raw frame
