"""OCPP 1.6J RPC over one websocket connection, on top of the mobilityhouse ``ocpp`` library.

The library gives the message classes, the JSON schemas and their validators and the snake/camelCase
conversion. The session frames both sides itself. Incoming: the library gets it wrong for 1.6
(NotImplemented/NotSupported swapped, "FormatViolation" instead of "FormationViolation", no CALLERROR for
unparseable frames, and a handler crash or a non-dataclass reply can kill its loop). Outgoing: one CALL
outstanding, the request and the answer each schema-validated once in the event-loop thread (the
library's ``ChargePoint.call`` validates both in an executor thread: two thread hand-overs per CALL cost
more CPU than the validation, and an outbox replay sends thousands), no task per CALL, and queued camelCase
payloads go out without a dataclass round trip (``request_payload``).
Incoming CALLs run in their own tasks, so the CSMS is answered while one of our CALLs is pending.

Handlers come from an explicit registry keyed by OCPP action name. A handler is an async callable
taking the request payload as snake_case keyword arguments (like the library's ``@on`` handlers) and
returning either an ``ocpp.v16.call_result`` dataclass or a camelCase ``Mapping`` sent as is. Raising
an ``ocpp.exceptions.OCPPError`` answers with that error code (mapped to its 1.6 spelling); any other
exception answers InternalError and is logged, the connection stays up. An optional *after* hook per
action runs once the CALLRESULT has been sent (TriggerMessage: the .conf goes first).

Example::

    from ocpp.v16 import call, call_result
    from agent.ocpp.v16.rpc import OcppSession, handlers_from_object

    class ChargePointService:
        async def on_reset(self, type: str, **_: object) -> call_result.Reset:
            return call_result.Reset(status="Accepted")

        async def after_reset(self, type: str, **_: object) -> None:
            ...  # reboot after the .conf is on the wire

    handlers, after = handlers_from_object(ChargePointService())   # on_<action> / after_<action>
    session = OcppSession(websocket, "CP-1", handlers, after=after, message_timeout=30)
    serving = asyncio.create_task(session.serve())          # until the connection closes
    conf = await session.request(call.Heartbeat())          # -> call_result.Heartbeat
    # CallErrorReceived / CallTimeout / ConnectionLost / InvalidPayload on failure

Normally ``agent.ocpp.v16.link.Link`` creates the session per connection and hands it to the
service's ``on_connected`` hook.

The machinery is version-neutral: a ``Dialect`` says what differs between OCPP-J versions on the wire
(actions, schemas, error-code spellings, what to answer to an unknown message type). Sessions default to
``V16``; ``V201`` is the 2.0.1 dialect over the same code (used by agent/ocpp/v201/).
"""

from __future__ import annotations

import asyncio
import decimal
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, is_dataclass
from enum import StrEnum
from functools import cache, cached_property
from typing import Any, Protocol, TypeAlias

from jsonschema.exceptions import ValidationError as SchemaError
from jsonschema.exceptions import best_match
from ocpp.charge_point import camel_to_snake_case, remove_nones, serialize_as_dict, snake_to_camel_case
from ocpp.exceptions import OCPPError
from ocpp.messages import Call, CallError, CallResult, MessageType, get_validator
from ocpp.v16 import call_result as call_result16
from ocpp.v16.enums import Action
from websockets.exceptions import ConnectionClosed

from agent.ocpp.budget import RequestBudget
from agent.ocpp.fast_schema import surely_valid
from agent.redact import LoggedFrame, redact_text
from hal.flag import Flag

LOG = logging.getLogger("cpagent.ocpp.v16.rpc")

Handler = Callable[..., Awaitable[Any]]
OCPP_VERSION = "1.6"
OCPP16_ACTIONS: frozenset[str] = frozenset(action.value for action in Action)
MAX_UNIQUE_ID_LENGTH = 36
# The CSMS may only have one CALL outstanding; this bounds a misbehaving one.
MAX_CONCURRENT_INCOMING = 8


class ErrorCode(StrEnum):
    """OCPP-J 1.6 CALLERROR codes, spelled as the 1.6 spec spells them (errata keep the typos)."""

    NOT_IMPLEMENTED = "NotImplemented"
    NOT_SUPPORTED = "NotSupported"
    INTERNAL_ERROR = "InternalError"
    PROTOCOL_ERROR = "ProtocolError"
    SECURITY_ERROR = "SecurityError"
    FORMATION_VIOLATION = "FormationViolation"
    PROPERTY_CONSTRAINT_VIOLATION = "PropertyConstraintViolation"
    OCCURENCE_CONSTRAINT_VIOLATION = "OccurenceConstraintViolation"
    TYPE_CONSTRAINT_VIOLATION = "TypeConstraintViolation"
    GENERIC_ERROR = "GenericError"


# Library / 2.0.1 spellings a handler might raise, translated to 1.6.
_CODE_ALIASES = {
    "FormatViolation": ErrorCode.FORMATION_VIOLATION,
    "OccurrenceConstraintViolation": ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION,
}

_KNOWN_CODES = frozenset(code.value for code in ErrorCode)

# jsonschema keyword that failed -> 1.6 error code. Everything unlisted is a FormationViolation.
_SCHEMA_KEYWORD_CODES = {
    "type": ErrorCode.TYPE_CONSTRAINT_VIOLATION,
    "maxLength": ErrorCode.TYPE_CONSTRAINT_VIOLATION,  # CiStringNType is a 1.6 data type
    "minLength": ErrorCode.TYPE_CONSTRAINT_VIOLATION,
    "format": ErrorCode.TYPE_CONSTRAINT_VIOLATION,
    "multipleOf": ErrorCode.TYPE_CONSTRAINT_VIOLATION,
    "enum": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "minimum": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "maximum": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "exclusiveMinimum": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "exclusiveMaximum": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "pattern": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "required": ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION,
    "minItems": ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION,
    "maxItems": ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION,
}

# The library validates these with Decimal floats (multipleOf 0.1 fails on binary floats).
_DECIMAL_SCHEMAS = {
    (MessageType.Call, "SetChargingProfile"),
    (MessageType.Call, "RemoteStartTransaction"),
    (MessageType.CallResult, "GetCompositeSchedule"),
}

_CALL_ID_PREFIX = re.compile(r'^\s*\[\s*2\s*,\s*"([^"\\]{1,36})"')
_ANSWER_ID_PREFIX = re.compile(r'^\s*\[\s*[34]\s*,\s*"([^"\\]{1,36})"')

# OCPP 1.6 field type "integer" is 32 bit (31 bit resolution, 1 sign bit): anything beyond is out of range.
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
# Largest incoming frame (bytes) the websocket accepts (``Link`` passes it as websockets' max_size). The
# largest legitimate CS->CP frames are a SendLocalList of SendLocalListMaxLength (100) entries (~150 bytes
# each, ~15 kB) and CertificateSigned (certificateChain maxLength 10 000): 64 KiB leaves 4x headroom and
# bounds what a hostile CSMS can make us buffer, parse and log per frame.
MAX_FRAME_BYTES = 64 * 1024
# A CALLRESULT/CALLERROR for no CALL of ours: at most one log line per this many seconds per session.
STRAY_LOG_INTERVAL_S = 60.0


class _NotJson(ValueError):
    """NaN / Infinity / -Infinity: Python's json reads them, RFC 8259 section 6 does not permit them."""


def _reject_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not a JSON number (RFC 8259)")


class OcppRpcError(Exception):
    """Base of every failure of ``OcppSession.request``."""


class CallErrorReceived(OcppRpcError):
    """The CSMS answered our CALL with a CALLERROR."""

    def __init__(self, action: str, code: str, description: str, details: Mapping[str, Any]) -> None:
        super().__init__(f"{action}: CALLERROR {code}: {description}")
        self.action = action
        self.code = code
        self.description = description
        self.details = dict(details)


class CallTimeout(OcppRpcError, TimeoutError):
    """No answer within MessageTimeout."""


class ConnectionLost(OcppRpcError):
    """The connection closed before the answer arrived (or before the CALL could be sent)."""


class InvalidPayload(OcppRpcError):
    """Our request or the CSMS's response failed the 1.6 JSON schema."""


class Connection(Protocol):
    """What a session needs from a websocket (websockets.asyncio connections fit)."""

    async def recv(self) -> str | bytes: ...

    async def send(self, message: str) -> None: ...


@dataclass
class FrameError(Exception):
    """An incoming frame we cannot route. ``unique_id`` is set when the sender can be answered.
    ``code`` is a 1.6 ``ErrorCode`` or a code only later versions have; the dialect spells it on the wire."""

    code: str
    description: str
    unique_id: str | None = None
    # Set when the broken frame is a CALLRESULT/CALLERROR whose id is readable: the CALL it answers fails.
    answers: str | None = None


# ocpp.messages.Call | CallResult | CallError; the library is untyped, so mypy sees Any.
Frame: TypeAlias = Any


def decode_frame(raw: str | bytes, dialect: Dialect | None = None) -> Frame:
    """Parse one OCPP-J frame into the library's message objects; raise FrameError if malformed.

    1.6: only a malformed CALL whose unique id is recoverable gets ``FrameError.unique_id``: results,
    errors and unknown message types are never answered (OCPP-J: ignore them). 2.0.1 (Part 4 4.2.3, 4.4)
    also answers an unknown message type (MessageTypeNotSupported) and a frame whose MessageId cannot be
    read (RpcFrameworkError, MessageId "-1"), never a broken CALLRESULT/CALLERROR.
    """
    unreadable = dialect.unreadable_id if dialect is not None else None
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError(ErrorCode.FORMATION_VIOLATION, "frame is not UTF-8", unreadable) from None
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than the parser's stack
        match = _CALL_ID_PREFIX.match(raw)
        uid = match.group(1) if match else None
        answer = _ANSWER_ID_PREFIX.match(raw)
        why = str(exc) if isinstance(exc, _NotJson) else "frame is not valid JSON"
        if uid is None and answer is None and unreadable is not None:
            raise FrameError(RPC_FRAMEWORK_ERROR, why, unreadable) from None
        raise FrameError(ErrorCode.FORMATION_VIOLATION, why, uid, answer.group(1) if answer else None) from None
    if not isinstance(data, list) or not data:
        raise FrameError(RPC_FRAMEWORK_ERROR if unreadable else ErrorCode.PROTOCOL_ERROR,
                         "frame is not a non-empty JSON array", unreadable)
    message_type, uid = data[0], data[1] if len(data) > 1 else None
    if not isinstance(uid, str) or not uid:
        if message_type in (MessageType.CallResult, MessageType.CallError):
            unreadable = None
        raise FrameError(RPC_FRAMEWORK_ERROR if unreadable else ErrorCode.PROTOCOL_ERROR,
                         "frame has no unique id", unreadable)
    if message_type == MessageType.Call:
        return _decode_call(data, uid)
    if message_type == MessageType.CallResult:
        if len(data) != 3 or not isinstance(data[2], dict):
            raise FrameError(ErrorCode.PROTOCOL_ERROR, "malformed CALLRESULT", answers=uid)
        return CallResult(uid, data[2])
    if message_type == MessageType.CallError:
        if not 4 <= len(data) <= 5 or not all(isinstance(part, str) for part in data[2:4]):
            raise FrameError(ErrorCode.PROTOCOL_ERROR, "malformed CALLERROR", answers=uid)
        details = data[4] if len(data) == 5 and isinstance(data[4], dict) else {}
        return CallError(uid, data[2], data[3], details)
    if dialect is not None and dialect.answer_unknown_message_type:
        raise FrameError(MESSAGE_TYPE_NOT_SUPPORTED, f"unknown message type {message_type!r}"[:100],
                         uid[:MAX_UNIQUE_ID_LENGTH])
    raise FrameError(ErrorCode.PROTOCOL_ERROR, f"unknown message type {message_type!r}")


def _decode_call(data: list[Any], uid: str) -> Call:
    if len(uid) > MAX_UNIQUE_ID_LENGTH:
        raise FrameError(ErrorCode.PROTOCOL_ERROR, "unique id longer than 36 characters", uid)
    if len(data) != 4:
        raise FrameError(ErrorCode.PROTOCOL_ERROR, "CALL must have 4 elements", uid)
    if not isinstance(data[2], str) or not data[2]:
        raise FrameError(ErrorCode.PROTOCOL_ERROR, "CALL action must be a string", uid)
    if not isinstance(data[3], dict):
        raise FrameError(ErrorCode.FORMATION_VIOLATION, "CALL payload must be a JSON object", uid)
    return Call(uid, data[2], data[3])


def _expire(answer: asyncio.Future[Frame], why: str) -> None:
    if not answer.done():
        answer.set_exception(CallTimeout(why))


def number_violation(payload: Any) -> FrameError | None:
    """A number no 1.6 field can hold: an integer beyond 32 bits or a float that is not finite (a JSON
    literal like 1e400 reads as inf). Walked without recursion: nesting depth is the parser's business."""
    stack: list[tuple[Any, str]] = [(payload, "payload")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            if not INT32_MIN <= value <= INT32_MAX:
                return FrameError(ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
                                  f"{where[:80]}: integer out of the 32-bit range")
        elif isinstance(value, float | decimal.Decimal):
            if not (value.is_finite() if isinstance(value, decimal.Decimal) else math.isfinite(value)):
                return FrameError(ErrorCode.PROPERTY_CONSTRAINT_VIOLATION, f"{where[:80]}: number out of range")
        elif isinstance(value, Mapping):
            stack.extend((item, f"{where}/{key}") for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((item, f"{where}/{index}") for index, item in enumerate(value))
    return None


def schema_violation(
    message_type_id: int, action: str, payload: Mapping[str, Any], dialect: Dialect | None = None
) -> FrameError | None:
    """Check a payload against the dialect's (default 1.6) schema; return the error for the most relevant
    failure (1.6 spelling; the dialect spells it on the wire).
    Never raises for any parsed JSON: numbers the checks cannot compute with are PropertyConstraintViolation."""
    version = dialect.version if dialect is not None else OCPP_VERSION
    decimal_schemas = dialect.decimal_schemas if dialect is not None else _DECIMAL_SCHEMAS
    use_decimal = (message_type_id, action) in decimal_schemas
    if surely_valid(version, message_type_id, action, payload, decimal=use_decimal):
        return None  # the compiled check passed; anything else is decided and worded by jsonschema below
    try:
        validator = get_validator(
            message_type_id, action, version, parse_float=decimal.Decimal if use_decimal else float
        )
    except (OSError, ValueError):
        return FrameError(ErrorCode.NOT_SUPPORTED, f"no {version} schema for {action}")
    instance: Any = payload
    try:
        if use_decimal:
            instance = json.loads(json.dumps(payload), parse_float=decimal.Decimal)
        error: SchemaError | None = best_match(validator.iter_errors(instance))
    except (ArithmeticError, TypeError, ValueError):
        # e.g. multipleOf 0.1 on 1e308 as a Decimal needs more digits than the context has, or a float
        # meeting a Decimal: the value is beyond anything the field can mean.
        return FrameError(ErrorCode.PROPERTY_CONSTRAINT_VIOLATION, "a number is out of range")
    except RecursionError:
        return FrameError(ErrorCode.FORMATION_VIOLATION, "payload nested too deeply")
    if error is None:
        return None
    code = _SCHEMA_KEYWORD_CODES.get(str(error.validator), ErrorCode.FORMATION_VIOLATION)
    where = "/".join(str(part) for part in error.absolute_path) or "payload"
    if error.validator in ("required", "additionalProperties"):  # these name properties, not values
        return FrameError(code, f"{where}: {error.message}"[:200])
    # The schema's own message quotes the offending value, which may be a secret (a too-long
    # AuthorizationKey): name the rule instead. The description goes to the CSMS and into the log.
    return FrameError(code, f"{where}: violates {error.validator} {error.validator_value!r}"[:200])


def to_wire_payload(result: Any) -> dict[str, Any]:
    """A handler's return value as a camelCase JSON object."""
    if result is None:
        return {}
    if is_dataclass(result) and not isinstance(result, type):
        converted: dict[str, Any] = snake_to_camel_case(remove_nones(serialize_as_dict(result)))
        return converted
    if isinstance(result, Mapping):
        return dict(result)
    raise TypeError(f"handler returned {type(result).__name__}, expected a call_result dataclass")


def to_16_error_code(code: str) -> ErrorCode:
    """A library / 2.0.1 error code in its 1.6 spelling; codes 1.6 lacks become GenericError."""
    code = _CODE_ALIASES.get(code, code)
    return ErrorCode(code) if code in _KNOWN_CODES else ErrorCode.GENERIC_ERROR


# Codes OCPP 2.0.1 added (Part 4 table 8); 1.6 never sends them.
MESSAGE_TYPE_NOT_SUPPORTED = "MessageTypeNotSupported"
RPC_FRAMEWORK_ERROR = "RpcFrameworkError"
_201_CODES = frozenset({
    "FormatViolation", "GenericError", "InternalError", MESSAGE_TYPE_NOT_SUPPORTED, "NotImplemented",
    "NotSupported", "OccurrenceConstraintViolation", "PropertyConstraintViolation", "ProtocolError",
    RPC_FRAMEWORK_ERROR, "SecurityError", "TypeConstraintViolation",
})
_201_ALIASES = {
    ErrorCode.FORMATION_VIOLATION.value: "FormatViolation",
    ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION.value: "OccurrenceConstraintViolation",
}


def to_201_error_code(code: str) -> str:
    """An error code in any spelling as OCPP 2.0.1 spells it; codes 2.0.1 lacks become GenericError."""
    code = _201_ALIASES.get(code, code)
    return code if code in _201_CODES else "GenericError"


@dataclass(frozen=True)
class Dialect:
    """What differs between OCPP-J versions on the wire; the session and codec are otherwise the same."""

    version: str  # the library's name for the version (schemas): "1.6", "2.0.1"
    subprotocol: str  # the websocket subprotocol
    # The version's actions and the library's call_result module (the answers' classes), imported on first
    # use: a station speaking 1.6 never loads the 2.0.1 library (~3.4 MB, ~0.1-0.25 s at start).
    load: Callable[[], tuple[frozenset[str], Any]]
    wire_code: Callable[[str], str]  # an error code in any spelling -> this version's spelling
    answer_unknown_message_type: bool = False  # 2.0.1: CALLERROR MessageTypeNotSupported
    unreadable_id: str | None = None  # 2.0.1: "-1", the MessageId of an answer to a frame without a readable id
    decimal_schemas: frozenset[tuple[int, str]] = frozenset()

    @cached_property
    def actions(self) -> frozenset[str]:
        return self.load()[0]

    @cached_property
    def call_results(self) -> Any:
        return self.load()[1]


def _load_201() -> tuple[frozenset[str], Any]:
    from ocpp.v201 import call_result as call_result201
    from ocpp.v201.enums import Action as Action201

    return frozenset(action.value for action in Action201), call_result201


V16 = Dialect("1.6", "ocpp1.6", lambda: (OCPP16_ACTIONS, call_result16), to_16_error_code,
              decimal_schemas=frozenset(_DECIMAL_SCHEMAS))
V201 = Dialect("2.0.1", "ocpp2.0.1", _load_201,
               to_201_error_code, answer_unknown_message_type=True, unreadable_id="-1",
               decimal_schemas=frozenset({(MessageType.Call, "SetChargingProfile"),
                                          (MessageType.Call, "RequestStartTransaction")}))


@cache  # a few hundred names, asked by every service built (cpsim fleet builds thousands)
def _snake_name(action: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", action).lower()


def handlers_from_object(
    service: object, actions: Iterable[str] = OCPP16_ACTIONS
) -> tuple[dict[str, Handler], dict[str, Handler]]:
    """Collect ``on_<snake_action>`` and ``after_<snake_action>`` methods for every action (default 1.6).

    The names a class defines are looked up once per class (cpsim fleet builds thousands of services; the
    full scan was ~260 getattr per object); handlers set on the instance itself are still found, and a class
    with ``__getattr__`` still gets the full scan."""
    handlers: dict[str, Handler] = {}
    after: dict[str, Handler] = {}
    wanted = actions if isinstance(actions, frozenset) else frozenset(actions)
    cls = type(service)
    names = _class_handler_names(cls, wanted)
    if names is None:  # the class answers names of its own: ask for all of them
        names = _handler_names(wanted)
    else:
        own = getattr(service, "__dict__", None)
        if own:
            every = _handler_names(wanted)
            position = _handler_positions(wanted)
            extra = {position[key] for key in own if key in position}
            if extra:
                names = tuple(every[i] for i in sorted(extra | {position[e[2]] for e in names}))
    for action, is_after, name in names:
        method = getattr(service, name, None)
        if method is not None and callable(method):
            (after if is_after else handlers)[action] = method
    return handlers, after


@cache
def _handler_names(actions: frozenset[str]) -> tuple[tuple[str, bool, str], ...]:
    return tuple((action, is_after, prefix + _snake_name(action))
                 for action in sorted(actions) for prefix, is_after in (("on_", False), ("after_", True)))


@cache
def _handler_positions(actions: frozenset[str]) -> dict[str, int]:
    return {entry[2]: i for i, entry in enumerate(_handler_names(actions))}


_CLASS_HANDLER_NAMES: dict[tuple[type, frozenset[str]], tuple[tuple[str, bool, str], ...] | None] = {}


def _class_handler_names(cls: type, actions: frozenset[str]) -> tuple[tuple[str, bool, str], ...] | None:
    """The handler names the class defines; None if it has ``__getattr__`` (then every name may answer)."""
    key = (cls, actions)
    if key not in _CLASS_HANDLER_NAMES:
        _CLASS_HANDLER_NAMES[key] = None if hasattr(cls, "__getattr__") else tuple(
            entry for entry in _handler_names(actions) if hasattr(cls, entry[2]))
    return _CLASS_HANDLER_NAMES[key]


@dataclass
class SessionStats:
    calls_answered: int = 0
    call_errors_sent: int = 0
    handler_failures: int = 0
    bad_frames: int = 0
    stray_results: int = 0  # CALLRESULT/CALLERROR frames for no CALL of ours (dropped)


class OcppSession:
    """One OCPP 1.6J RPC endpoint on one connection. See the module docstring."""

    def __init__(
        self,
        connection: Connection,
        charge_point_id: str,
        handlers: Mapping[str, Handler],
        *,
        after: Mapping[str, Handler] | None = None,
        message_timeout: float = 30.0,
        on_activity: Callable[[], None] | None = None,
        dialect: Dialect = V16,
        budget: RequestBudget | None = None,
    ) -> None:
        unknown = set(handlers) - dialect.actions
        if unknown:
            raise ValueError(f"handlers for actions unknown to OCPP {dialect.version}: {sorted(unknown)}")
        self.dialect = dialect
        self.charge_point_id = charge_point_id
        self.message_timeout = message_timeout
        self.stats = SessionStats()
        self._connection = connection
        self._handlers = handlers  # the caller's tables, not copies (a Link gives the same ones to each session)
        self._after: Mapping[str, Handler] = {} if after is None else after
        self._on_activity = on_activity
        self._request_lock = asyncio.Lock()
        self._closed = Flag()  # only set and read (a Flag: no 760 B deque of waiters)
        self._tasks: set[asyncio.Task[None]] = set()
        self._logged_bad_frame_kinds: set[str] = set()
        # The unique id and action of our outstanding CALL while its answer is awaited (any other answer is a
        # stray), and the future the answer frame goes to (failed with ConnectionLost when serve() ends).
        self._awaiting_id: str | None = None
        self._awaiting_action = ""
        self._answer_future: asyncio.Future[Frame] | None = None
        # Why the answer to our outstanding CALL is unusable although it passes the schema (None: usable).
        self._answer_problem: str | None = None
        self._stray_logged_at: float | None = None
        self._strays_unlogged = 0
        # The CSMS's requests' CPU budget on this connection (agent/ocpp/budget.py); None: unmetered.
        self.budget = budget

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def busy(self) -> bool:
        """A CALL of ours is outstanding (or waiting for its turn)."""
        return self._request_lock.locked()

    async def serve(self) -> None:
        """Receive and dispatch frames until the connection closes; then fail any pending request."""
        try:
            while True:
                try:
                    raw = await self._connection.recv()
                except Exception as exc:  # ConnectionClosed and friends: the connection is gone
                    LOG.debug("%s: receive loop ends: %r", self.charge_point_id, exc)
                    return
                LOG.debug("%s < %s", self.charge_point_id, LoggedFrame(raw))
                if self._on_activity is not None:
                    self._on_activity()
                self._route(raw)
        finally:
            self._closed.set()
            if self._answer_future is not None and not self._answer_future.done():
                self._answer_future.set_exception(ConnectionLost("connection closed while waiting for the answer"))
            for task in list(self._tasks):
                task.cancel()

    async def request(self, payload: Any, *, response_timeout: float | None = None) -> Any:
        """Send one CALL (an ``ocpp.v16.call`` / ``ocpp.v201.call`` dataclass, per the dialect) and return
        its ``call_result`` dataclass.

        One CALL outstanding at a time: concurrent requests queue up here.
        """
        return await self.request_payload(type(payload).__name__, to_wire_payload(payload),
                                          response_timeout=response_timeout)

    async def request_payload(self, action: str, payload: Mapping[str, Any], *,
                              response_timeout: float | None = None) -> Any:
        """``request`` for a payload that is already the camelCase JSON object (a queued outbox message): put
        on the wire as it is, without a round trip through the dataclass. Returns the ``call_result`` dataclass.

        The request is checked against the dialect's schema before it is sent and the answer before it is
        used (InvalidPayload), each once, in this thread: the library's ``ChargePoint.call`` validates in an
        executor thread, two thread hand-overs per CALL that cost more CPU than the validation itself."""
        async with self._request_lock:
            if self.closed:
                raise ConnectionLost(f"{action}: connection closed")
            violation = schema_violation(MessageType.Call, action, payload, self.dialect)
            if violation is not None:
                raise InvalidPayload(f"{action}: our request breaks the schema: {violation.description}")
            unique_id = str(uuid.uuid4())
            timeout = self.message_timeout if response_timeout is None else response_timeout
            loop = asyncio.get_running_loop()
            answer: asyncio.Future[Frame] = loop.create_future()
            text = Call(unique_id, action, payload).to_json()
            self._answer_future = answer
            self._awaiting_id = unique_id
            self._awaiting_action = action
            self._answer_problem = None
            try:
                LOG.debug("%s > %s", self.charge_point_id, LoggedFrame(text))
                try:
                    await self._connection.send(text)
                except (OSError, ConnectionClosed) as exc:
                    raise ConnectionLost(f"{action}: {exc}") from None
                # One timer that fails the answer (not asyncio.timeout: its context manager, task cancel
                # and uncancel per CALL were ~2 % of a fleet station's CPU).
                expiry = loop.call_later(timeout, _expire, answer, f"{action}: no answer within {timeout}s")
                try:
                    frame = await answer
                finally:
                    expiry.cancel()
            finally:
                self._awaiting_id = None
                self._answer_future = None
                if answer.done() and not answer.cancelled():
                    answer.exception()  # serve() failed it while the send failed too: retrieved, not leaked
                else:
                    answer.cancel()
            if isinstance(frame, CallError):
                raise CallErrorReceived(action, frame.error_code, frame.error_description, frame.error_details or {})
            if self._answer_problem is not None:  # schema, or e.g. transactionId 2**70: no 1.6 integer
                raise InvalidPayload(f"{action}: {self._answer_problem}")
            try:
                return getattr(self.dialect.call_results, action)(**camel_to_snake_case(frame.payload))
            except Exception as exc:  # an answer we cannot use although it passed the schema: like invalid
                raise InvalidPayload(f"{action}: unusable answer ({type(exc).__name__})") from None

    # -- incoming ---------------------------------------------------------------------------------

    def _route(self, raw: str | bytes) -> None:
        try:
            frame = decode_frame(raw, self.dialect)
        except FrameError as error:
            self._bad_frame(error, raw)
            return
        if isinstance(frame, Call):
            if len(self._tasks) >= MAX_CONCURRENT_INCOMING:
                self._spawn(self._send_error(frame.unique_id, ErrorCode.GENERIC_ERROR, "too many CALLs"))
                return
            self._spawn(self._answer(frame) if self.budget is None else self._budgeted(frame, self.budget))
            return
        if frame.unique_id != self._awaiting_id:
            self._stray(frame)
            return
        self._awaiting_id = None  # a duplicate answer is a stray too
        if not isinstance(frame, CallError):
            violation = number_violation(frame.payload) or schema_violation(
                MessageType.CallResult, self._awaiting_action, frame.payload, self.dialect)
            self._answer_problem = violation.description if violation is not None else None
        if self._answer_future is not None and not self._answer_future.done():
            self._answer_future.set_result(frame)

    def _stray(self, frame: Frame) -> None:
        """An answer to no CALL of ours (never sent, timed out, answered already): dropped at once; one
        short line, then at most one per STRAY_LOG_INTERVAL_S with the count in between."""
        self.stats.stray_results += 1
        now = time.monotonic()
        if self._stray_logged_at is not None and now - self._stray_logged_at < STRAY_LOG_INTERVAL_S:
            self._strays_unlogged += 1
            return
        kind = "CALLERROR" if isinstance(frame, CallError) else "CALLRESULT"
        more = f" ({self._strays_unlogged} more since the last report)" if self._strays_unlogged else ""
        LOG.warning("%s: dropped stray %s for unknown id %.40r%s", self.charge_point_id, kind,
                    frame.unique_id, more)
        self._stray_logged_at = now
        self._strays_unlogged = 0

    def _bad_frame(self, error: FrameError, raw: str | bytes) -> None:
        self.stats.bad_frames += 1
        level = logging.DEBUG if error.description in self._logged_bad_frame_kinds else logging.WARNING
        self._logged_bad_frame_kinds.add(error.description)
        LOG.log(level, "%s: bad frame (%s), %s: %.200s", self.charge_point_id, error.description,
                "answering" if error.unique_id else "dropped", LoggedFrame(raw))
        if error.unique_id is not None:
            self._spawn(self._send_error(error.unique_id, error.code, error.description))
        if error.answers is not None and error.answers == self._awaiting_id:
            # The answer to our CALL is unreadable: fail the request now (InvalidPayload), not at the timeout.
            self._awaiting_id = None
            self._answer_problem = f"unreadable answer: {error.description}"
            if self._answer_future is not None and not self._answer_future.done():
                self._answer_future.set_result(CallResult(error.answers, {}))

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _budgeted(self, call: Call, budget: RequestBudget) -> None:
        """``_answer`` once the budget admits it (expensive requests may wait), its CPU time charged."""
        refusal = await budget.admit(call.action, call.payload)
        if refusal is not None:
            await self._send_error(call.unique_id, ErrorCode.GENERIC_ERROR, refusal)
            return
        await budget.metered(self._answer(call))

    async def _answer(self, call: Call) -> None:
        try:
            payload = await self._dispatch(call)
        except FrameError as error:
            await self._send_error(call.unique_id, error.code, error.description)
            return
        except asyncio.CancelledError:
            raise
        except Exception:  # a failure outside the handler (validation, conversion): still one answer
            self.stats.handler_failures += 1
            LOG.exception("%s: %s %.40r could not be processed", self.charge_point_id, call.action, call.unique_id)
            await self._send_error(call.unique_id, ErrorCode.INTERNAL_ERROR, f"{call.action} could not be processed")
            return
        self.stats.calls_answered += 1
        await self._send(CallResult(call.unique_id, payload).to_json())
        hook = self._after.get(call.action)
        if hook is not None:
            try:
                await hook(**camel_to_snake_case(call.payload))
            except asyncio.CancelledError:
                raise
            except Exception:
                LOG.exception("%s: after-hook for %s failed", self.charge_point_id, call.action)

    async def _dispatch(self, call: Call) -> dict[str, Any]:
        if call.action not in self.dialect.actions:
            raise FrameError(ErrorCode.NOT_IMPLEMENTED,
                             f"{call.action} is not an OCPP {self.dialect.version} action")
        handler = self._handlers.get(call.action)
        if handler is None:
            raise FrameError(ErrorCode.NOT_SUPPORTED, f"{call.action} is not supported by this charge point")
        violation = number_violation(call.payload) or schema_violation(
            MessageType.Call, call.action, call.payload, self.dialect)
        if violation is not None:
            raise violation
        try:
            result = await handler(**camel_to_snake_case(call.payload))
            payload = to_wire_payload(result)
        except asyncio.CancelledError:
            raise
        except OCPPError as refusal:  # a deliberate refusal by the handler
            raise FrameError(self.dialect.wire_code(refusal.code), str(refusal.description)) from None
        except Exception:
            self.stats.handler_failures += 1
            LOG.exception("%s: handler for %s failed", self.charge_point_id, call.action)
            raise FrameError(ErrorCode.INTERNAL_ERROR, f"{call.action} handler failed") from None
        invalid_reply = schema_violation(MessageType.CallResult, call.action, payload, self.dialect)
        if invalid_reply is not None:
            self.stats.handler_failures += 1
            LOG.error("%s: our %s reply breaks the schema: %s", self.charge_point_id, call.action,
                      invalid_reply.description)
            raise FrameError(ErrorCode.INTERNAL_ERROR, f"{call.action} produced an invalid reply")
        return payload

    async def _send_error(self, unique_id: str, code: str, description: str) -> None:
        self.stats.call_errors_sent += 1
        await self._send(CallError(unique_id, self.dialect.wire_code(code), description, {}).to_json())

    async def _send(self, text: str) -> None:
        LOG.debug("%s > %s", self.charge_point_id, LoggedFrame(text))
        try:
            await self._connection.send(text)
        except Exception as exc:  # closed underneath us: the CSMS will never see this answer
            LOG.debug("%s: send failed: %r", self.charge_point_id, exc)


class RedactingFilter(logging.Filter):
    """Replace secret values in log records with "***".

    Install it on the "ocpp" logger, "websockets.client" and our own loggers (``install_redaction``),
    or on a handler to cover everything. Logger filters do not apply to child loggers.
    Values that follow a secret's name in any spelling (``agent.redact.redact_text``) are redacted even
    when not yet configured; frames themselves are logged through ``agent.redact.LoggedFrame``.
    """

    def __init__(self, secrets: Callable[[], Iterable[str]], replacement: str = "***") -> None:
        super().__init__()
        self._secrets = secrets
        self._replacement = replacement

    def redact(self, text: str) -> str:
        text = redact_text(text)  # first: it decodes \uXXXX escapes around a secret's name
        for secret in sorted({s for s in self._secrets() if s}, key=len, reverse=True):
            text = text.replace(secret, self._replacement)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is not ours to fix; leave it to the handler
            return True
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


REDACTED_LOGGERS = ("ocpp", "websockets.client", "websockets.server", LOG.name, "cpagent.ocpp.v16.link")


class SharedRedaction(logging.Filter):
    """The one redaction filter on a logger or handler, for every ``RedactingFilter`` installed there.

    Each installed filter joins as a member. A record is redacted once per filter class present (a
    ``SecretsFilter`` does more than a plain ``RedactingFilter``), each time with the secrets of ALL members,
    asked afresh for every record as each filter alone did: so a record is redacted at least as much as the
    members' filters one after the other did, at the cost of one pass instead of one per member (a process
    with many stations, cpsim fleet, had one filter per station on every logger: each record went through
    N filters and installing grew with N^2)."""

    def __init__(self) -> None:
        super().__init__()
        self._members: dict[int, RedactingFilter] = {}

    def add(self, member: RedactingFilter) -> None:
        self._members[id(member)] = member

    def remove(self, member: RedactingFilter) -> bool:
        """Drop the member; True when none is left."""
        self._members.pop(id(member), None)
        return not self._members

    def __len__(self) -> int:
        return len(self._members)

    def filter(self, record: logging.LogRecord) -> bool:
        members = list(self._members.values())
        secrets: set[str] = set()
        kinds: dict[type[RedactingFilter], str] = {}
        for member in members:
            secrets.update(member._secrets())
            kinds.setdefault(type(member), member._replacement)
        for kind, replacement in kinds.items():  # built per record: safe with records from several threads
            kind(lambda: secrets, replacement).filter(record)
        return True


def _shared_on(target: logging.Filterer, create: bool) -> SharedRedaction | None:
    for existing in target.filters:
        if isinstance(existing, SharedRedaction):
            return existing
    if not create:
        return None
    shared = SharedRedaction()
    target.addFilter(shared)
    return shared


def install_redaction(
    log_filter: logging.Filter,
    loggers: Iterable[str] = REDACTED_LOGGERS,
    *,
    handlers: Iterable[logging.Handler] = (),
) -> Callable[[], None]:
    """Add the filter to the named loggers (and handlers); return a function that removes it again.
    A ``RedactingFilter`` joins the one ``SharedRedaction`` of each target instead of being added itself."""
    targets: list[logging.Filterer] = [logging.getLogger(name) for name in loggers]
    targets.extend(handlers)
    for target in targets:
        if isinstance(log_filter, RedactingFilter):
            shared = _shared_on(target, create=True)
            assert shared is not None
            shared.add(log_filter)
        else:
            target.addFilter(log_filter)

    def uninstall() -> None:
        for target in targets:
            if isinstance(log_filter, RedactingFilter):
                shared = _shared_on(target, create=False)
                if shared is not None and shared.remove(log_filter):
                    target.removeFilter(shared)
            else:
                target.removeFilter(log_filter)

    return uninstall

