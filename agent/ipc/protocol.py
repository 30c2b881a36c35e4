"""The messages of the station socket (one JSON object per line, ``agent.ipc.codec``).

Control side (``ControlServer``) to network side (``StationProxy``):

- ``{"k": "hello", "v": 1, "facts": StationFacts, "views": [ConnectorView, ...]}`` once on connect;
- ``{"k": "event", "event": StationEvent, "view": ConnectorView | null, "facts": StationFacts | absent,
  "signing": bool | absent}`` for every station event, with the affected connector's fresh view (facts
  for connector 0, the station; ``signing``: a signed start/stop reading of the session is in progress);
- ``{"k": "refresh", "facts": ..., "views": [...]}`` periodically (meter values, lock position, ...);
- ``{"k": "reply", "id": n, "result": ...}`` or ``{"k": "reply", "id": n, "error": {"type": ..., "message":
  ...}}`` for each command;
- ``{"k": "ask", "id": n, "op": "authorize", "id_tag": ...}`` or ``{"k": "ask", "id": n, "op": "may_stop",
  "session": Session, "id_tag": ...}``: a token decision the station needs from the network side.

Network side to control side:

- ``{"k": "call", "id": n, "op": <StationPort command>, "args": {name: value}}`` (or ``"op":
  "register_authority"`` without args: token decisions are to be asked over this connection);
- ``{"k": "answer", "id": n, "result": ...}`` or ``{"k": "answer", "id": n, "error": "..."}``.

Every command's argument and result types are StationPort's own annotations (``COMMANDS``), so the
receiving side decodes exactly the types the interface declares.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any

from agent.authorize import AuthDecision
from agent.station_api import StationPort

PROTOCOL_VERSION = 1
ASK_OPS = {"authorize": AuthDecision, "may_stop": bool}
REGISTER_AUTHORITY = "register_authority"

# Commands carried as calls; those that are coroutines in StationPort are awaited by the proxy.
_COMMAND_NAMES = (
    "begin_authorized", "stop_session", "set_current_limit", "set_available", "set_maintenance", "unlock",
    "hold_energy", "release_energy", "set_reservation", "set_display_extra", "configure_connector",
    "set_operator_messages",
    "signed_reading", "manual_relay", "manual_pwm", "clear_faults",
)


@dataclass(frozen=True)
class Command:
    name: str
    params: dict[str, Any]  # parameter name -> type, in order
    defaults: dict[str, Any]
    result: Any


def _command(name: str) -> Command:
    func = getattr(StationPort, name)
    hints = typing.get_type_hints(func)
    result = hints.pop("return")
    code = func.__code__
    names = code.co_varnames[1:code.co_argcount]  # after self
    defaults = dict(zip(names[len(names) - len(func.__defaults__ or ()):], func.__defaults__ or (), strict=True))
    return Command(name, {n: hints[n] for n in names}, defaults, result)


COMMANDS: dict[str, Command] = {name: _command(name) for name in _COMMAND_NAMES}

# Errors a command may answer with, re-raised as themselves on the network side; anything else arrives as
# StationCommandError.
ERROR_TYPES: dict[str, type[Exception]] = {"KeyError": KeyError, "RuntimeError": RuntimeError, "ValueError": ValueError}


class StationUnavailable(RuntimeError):
    """The control side is not connected (or did not answer in time): the command was not given."""


class StationCommandError(RuntimeError):
    """The control side refused or failed a command for a reason without its own exception type here."""
