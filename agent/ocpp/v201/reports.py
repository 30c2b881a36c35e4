"""Sending a 2.0.1 report (the messages answering one request: NotifyReport, ReportChargingProfiles,
NotifyDisplayMessages, NotifyMonitoringReport) and what happens when it is cut.

The messages go in order as the camelCase JSON they are built as (``OcppService.request_payload``). A report
the CSMS refused (CALLERROR) is dropped. A report cut by the connection (lost, or no answer in time) is not
resumed by the feature: the CSMS saw the connection go and asks again (each request is a pure read). Except
with ``OCPPCommCtrlr.QueueAllMessages`` true ("the Charging Station will queue all messages until they are
delivered to the CSMS", Part 2 Appendices): then the messages not acknowledged (the one in flight included,
so the CSMS may see it twice) go to the durable outbox and are sent after the reconnect, in order, behind what
was queued before. Bounded whatever the CSMS does: at most one cut report per action waits in the outbox (a
second one cut meanwhile is dropped), and each report is bounded by its feature. Either way one warning says
which messages were not sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from agent.db import StorageError
from agent.ocpp.v201.rpc import CallTimeout, ConnectionLost

if TYPE_CHECKING:
    from agent.ocpp.v201.service import OcppService

log = logging.getLogger("cpagent.ocpp.v201.reports")


def _queue_all(service: OcppService) -> bool:
    try:
        return service.variables.boolean("OCPPCommCtrlr", "QueueAllMessages") is True
    except Exception:
        return False


async def send_report(service: OcppService, action: str, request_id: int,
                      payloads: Sequence[Mapping[str, Any]], *, while_pending: bool = False) -> bool:
    """Send ``payloads`` (one report) in order; True when every message was acknowledged. ``while_pending``:
    sent while the boot is Pending too (the NotifyReport messages a Pending station was asked for, B02)."""
    for index, payload in enumerate(payloads):
        session = service.link.session
        try:
            await service.request_payload(action, payload, while_pending=while_pending)
        except asyncio.CancelledError:
            # A report is sent from its request's after-hook, a task of the session: the connection going
            # cancels it with the message in flight unanswered. A cut like any other, then the cancel goes on.
            if session is not None and session.closed:
                _cut(service, action, request_id, payloads, index, ConnectionLost("connection lost"))
            raise
        except Exception as exc:
            _cut(service, action, request_id, payloads, index, exc)
            return False
    return True


def _cut(service: OcppService, action: str, request_id: int, payloads: Sequence[Mapping[str, Any]], index: int,
         exc: Exception) -> None:
    """The report was cut at ``payloads[index]`` by ``exc``: drop the rest, or queue it; one warning."""
    what = f"{action} {request_id}: messages {index + 1}-{len(payloads)} of {len(payloads)} not sent ({exc})"
    if isinstance(exc, ConnectionLost | CallTimeout) and _queue_all(service):
        if service.outbox.has_action(action):
            log.warning("%s; dropped: a cut %s already waits in the queue", what, action)
            return
        try:
            for rest in payloads[index:]:
                service.enqueue(action, dict(rest))
        except StorageError as store_exc:
            log.warning("%s; not queued: %s", what, store_exc)
            return
        log.warning("%s; queued until the reconnect (OCPPCommCtrlr.QueueAllMessages)", what)
        return
    log.warning("%s; report dropped (the CSMS asks again)", what)
