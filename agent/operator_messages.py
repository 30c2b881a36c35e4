"""What a connector's display shows of the operator's messages (control side, pure).

The network side gives each connector its current operator messages (``StationPort.set_operator_messages``,
most urgent first: OCPP 2.0.1 SetDisplayMessage, or any other protocol); at every screen the connector
composes them with its own guidance screen here:

- only messages whose ``states`` admit the screen's state count (empty ``states``: any screen);
- the most urgent one (ALWAYS_FRONT, then IN_FRONT, then NORMAL; the order given within one priority)
  becomes the extra line ``("message", text)`` that every display driver shows;
- ALWAYS_FRONT also takes the place of the guidance text (``Screen.message``) - except on a fault screen:
  a fault screen keeps its fault text, code and support contact, whatever the operator says (safety first:
  the driver must see why the charger does not charge).
"""

from __future__ import annotations

import dataclasses

from agent.station_api import MessagePriority, OperatorMessage
from hal.types import Screen, ScreenState

MAX_OPERATOR_MESSAGES = 16  # per connector; more given at once are cut (the network side bounds its own)
MAX_TEXT = 512  # characters of one message the display is given
_RANK = {MessagePriority.ALWAYS_FRONT: 0, MessagePriority.IN_FRONT: 1, MessagePriority.NORMAL: 2}


def chosen(state: ScreenState, messages: tuple[OperatorMessage, ...]) -> OperatorMessage | None:
    """The message to show on a screen of ``state`` (None: none applies)."""
    applicable = [m for m in messages if not m.states or state in m.states]
    if not applicable:
        return None
    return min(applicable, key=lambda m: _RANK.get(m.priority, 2))  # min is stable: the first of a priority


def compose_screen(screen: Screen, messages: tuple[OperatorMessage, ...]) -> Screen:
    message = chosen(screen.state, messages)
    if message is None:
        return screen
    text = message.text[:MAX_TEXT]
    extra = (*((k, v) for k, v in screen.extra if k != "message"), ("message", text))
    if message.priority is MessagePriority.ALWAYS_FRONT and screen.state is not ScreenState.FAULT:
        return dataclasses.replace(screen, message=text, extra=extra)
    return dataclasses.replace(screen, extra=extra)
