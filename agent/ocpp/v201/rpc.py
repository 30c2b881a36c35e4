"""OCPP 2.0.1 RPC (Part 4): the version-neutral session and codec of agent/ocpp/v16/rpc.py in the 2.0.1
dialect. What differs: the 2.0.1 actions and JSON schemas, the error codes as 2.0.1 spells them
(FormatViolation, OccurrenceConstraintViolation, MessageTypeNotSupported, RpcFrameworkError ...), a frame
of an unknown message type is answered with MessageTypeNotSupported, one whose MessageId cannot be read
with RpcFrameworkError under MessageId "-1". One outstanding CALL, as in 1.6.

    session = OcppSession(websocket, "CP-1", handlers, dialect=DIALECT)
    conf = await session.request(call.Heartbeat())
"""

from __future__ import annotations

from agent.ocpp.v16.rpc import (
    MESSAGE_TYPE_NOT_SUPPORTED,
    RPC_FRAMEWORK_ERROR,
    V201,
    CallErrorReceived,
    CallTimeout,
    ConnectionLost,
    Handler,
    InvalidPayload,
    OcppRpcError,
    OcppSession,
    to_201_error_code,
)
from agent.ocpp.v16.rpc import handlers_from_object as _handlers_from_object

DIALECT = V201
SUBPROTOCOL = V201.subprotocol
ACTIONS = V201.actions

__all__ = [
    "ACTIONS", "DIALECT", "MESSAGE_TYPE_NOT_SUPPORTED", "RPC_FRAMEWORK_ERROR", "SUBPROTOCOL", "CallErrorReceived",
    "CallTimeout", "ConnectionLost", "Handler", "InvalidPayload", "OcppRpcError", "OcppSession",
    "handlers_from_object", "to_201_error_code",
]  # fmt: skip


def handlers_from_object(service: object) -> tuple[dict[str, Handler], dict[str, Handler]]:
    """``on_<snake_action>`` / ``after_<snake_action>`` methods for every 2.0.1 action."""
    return _handlers_from_object(service, ACTIONS)

