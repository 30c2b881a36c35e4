"""OCPP 2.0.1 K11-K13: the site limit (local energy management, agent/energy/site.py) as an external charging
limit. The SiteController on the control side is the "external control system" (an EMS inside the station):
its allocation per EVSE reaches this side only as ``ConnectorView.site_limit_a`` / ``binding_limit`` through
the StationPort.

- The external limit of an EVSE is its site allocation while the allocation binds (``binding_limit`` is
  ``site-fuse``, ``solar`` or ``failsafe``: the EVSE would otherwise get more); none otherwise.
- A new external limit, or one that moved by more than ``SmartChargingCtrlr.LimitChangeSignificance`` percent
  of the last reported one (K11.FR.02 / K12.FR.02), or whose grid criticality changed, is reported with
  NotifyChargingLimit: ``chargingLimitSource`` "EMS" (never "CSO": K11.FR.05 / K12.FR.04), ``isGridCritical``
  true when the fuse or the failsafe binds (the grid connection's protection), false for the solar rules (an
  economic choice); with ``SmartChargingCtrlr.NotifyChargingLimitWithSchedules`` true it carries the limit as
  a one-period schedule in A (K11.FR.03 / K12.FR.03). A pause (0 A) and a resume count as significant.
- An external limit that no longer binds is released: ClearedChargingLimit with chargingLimitSource "EMS"
  (K13.FR.02).

- During a transaction, a charging rate (the EVSE's effective limit) that an external limit or a CSMS
  charging profile (binding_limit ``ocpp``: agent/ocpp/v201/smart_charging.py; a new, cleared or replaced
  profile, or its next period) set or released and that moved by more than LimitChangeSignificance % is
  reported with a TransactionEvent Updated, triggerReason ChargingRateChanged (K11.FR.04, K13.FR.03; E-block
  triggerReason "rate of charging changed by more than LimitChangeSignificance"), through the transactions
  block's durable outbox. This check runs with or without a ``[site]``.

What is reported is the state now, not a history: the latest limit per EVSE waits while the CSMS is not
reachable (no stale queue in the outbox) and goes out once it is; a CALLERROR or timeout is logged once per
state and retried with the next change. Only with a ``[site]`` configured; it looks every ``POLL_S``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import Any

from agent.ocpp.v16.meter_values import ocpp_time
from agent.ocpp.v201.device_model import DeviceModelError
from agent.ocpp.v201.rpc import CallErrorReceived, CallTimeout, ConnectionLost, InvalidPayload

log = logging.getLogger("cpagent.ocpp.v201.external_limits")

POLL_S = 1.0
SOURCE = "EMS"
SITE_REASONS = frozenset({"site-fuse", "solar", "failsafe"})
GRID_CRITICAL = frozenset({"site-fuse", "failsafe"})
RATE_REASONS = SITE_REASONS | {"ocpp"}  # limits whose change of the charging rate is reported (not the cable's)
DEFAULT_SIGNIFICANCE_PCT = 10.0
COMPONENT = "SmartChargingCtrlr"


@dataclass(frozen=True, slots=True)
class ExternalLimit:
    """The external limit of one EVSE now: ``amps`` per phase (0 = paused) and who binds."""

    amps: float
    reason: str

    @property
    def grid_critical(self) -> bool:
        return self.reason in GRID_CRITICAL


def external_limit(site_limit_a: float | None, binding_limit: str) -> ExternalLimit | None:
    """The EVSE's external limit from its view: the site allocation while it binds, else None."""
    if site_limit_a is None or binding_limit not in SITE_REASONS or not math.isfinite(site_limit_a):
        return None
    return ExternalLimit(round(max(0.0, site_limit_a), 1), binding_limit)


def significant(previous: ExternalLimit | None, new: ExternalLimit | None, significance_pct: float) -> bool:
    """Whether ``new`` must be reported after ``previous`` (what the CSMS has): set or released, a change
    of grid criticality, a pause or a resume, or a change of more than ``significance_pct`` % of the
    previous limit."""
    if previous is None or new is None:
        return previous != new
    if previous.grid_critical != new.grid_critical:
        return True
    if (previous.amps == 0) != (new.amps == 0):
        return True
    return abs(new.amps - previous.amps) > previous.amps * max(0.0, significance_pct) / 100.0


def notify_payload(evse_id: int, limit: ExternalLimit, *, with_schedule: bool, phases: int,
                   start: str) -> dict[str, Any]:
    """NotifyChargingLimitRequest fields (camelCase) for one EVSE."""
    payload: dict[str, Any] = {
        "evseId": evse_id,
        "chargingLimit": {"chargingLimitSource": SOURCE, "isGridCritical": limit.grid_critical},
    }
    if with_schedule:
        payload["chargingSchedule"] = [{
            "id": evse_id,
            "startSchedule": start,
            "chargingRateUnit": "A",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit.amps, "numberPhases": phases}],
        }]
    return payload


class ExternalLimits:
    """K11-K13 over the 2.0.1 service (agent/ocpp/v201/features.py)."""

    def __init__(self, service: Any) -> None:
        self._svc = service
        self._station = service.station
        self._vars = service.variables
        self.enabled: bool = bool(service.config.site.enabled)
        self.reported: dict[int, ExternalLimit | None] = {}  # what the CSMS has per EVSE (acknowledged)
        self._failed: dict[int, ExternalLimit | None] = {}  # the state whose sending failed (logged once)
        # per EVSE with a transaction: (session ref, the charging rate last reported, external then)
        self._rates: dict[int, tuple[str, float, bool]] = {}

    # -- settings ----------------------------------------------------------------------------------

    def significance_pct(self) -> float:
        try:
            value = self._vars.value(COMPONENT, "LimitChangeSignificance")
        except DeviceModelError:
            return DEFAULT_SIGNIFICANCE_PCT
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else \
            DEFAULT_SIGNIFICANCE_PCT

    def with_schedules(self) -> bool:
        try:
            return self._vars.boolean(COMPONENT, "NotifyChargingLimitWithSchedules") is True
        except (DeviceModelError, TypeError):
            return False

    # -- the loop ----------------------------------------------------------------------------------

    async def run(self) -> None:
        while True:  # without a [site] nothing external limits an EVSE, but CSMS profiles change rates
            await asyncio.sleep(POLL_S)
            self.rate_changes()
            if self.enabled and self._svc.online:
                await self.report_changes()

    def rate_changes(self) -> list[int]:
        """K11.FR.04 / K13.FR.03 (and a CSMS profile's change): EVSEs whose transaction got a
        ChargingRateChanged Updated now."""
        transactions = self._svc.features.get("Transactions")
        threshold = self.significance_pct()
        sent: list[int] = []
        for evse_id, view in self._station.connector_views().items():
            session = view.session
            if session is None:
                self._rates.pop(evse_id, None)
                continue
            rate = round(view.effective_limit_a, 1)
            external = view.binding_limit in RATE_REASONS  # set by the site or by a CSMS profile
            last = self._rates.get(evse_id)
            if last is None or last[0] != session.ref:
                self._rates[evse_id] = (session.ref, rate, external)  # the Started carried this rate
                continue
            _, last_rate, was_external = last
            if not (external or was_external) or rate == last_rate:
                continue
            if abs(rate - last_rate) <= last_rate * max(0.0, threshold) / 100.0 and (rate == 0) == (last_rate == 0):
                continue
            self._rates[evse_id] = (session.ref, rate, external)
            if transactions is not None and transactions.charging_rate_changed(evse_id):
                sent.append(evse_id)
                log.info("EVSE %d: charging rate %.1f -> %.1f A (%s): TransactionEvent ChargingRateChanged",
                         evse_id, last_rate, rate, view.binding_limit)
        return sent

    def pending(self) -> dict[int, ExternalLimit | None]:
        """EVSEs whose external limit now differs significantly from what the CSMS has."""
        threshold = self.significance_pct()
        out: dict[int, ExternalLimit | None] = {}
        for evse_id, view in self._station.connector_views().items():
            now = external_limit(view.site_limit_a, view.binding_limit)
            if evse_id not in self.reported and now is None:
                continue  # never limited: nothing to clear
            if significant(self.reported.get(evse_id), now, threshold):
                out[evse_id] = now
        return out

    async def report_changes(self) -> None:
        from ocpp.v201 import call

        for evse_id, limit in self.pending().items():
            if limit is None:
                request: Any = call.ClearedChargingLimit(charging_limit_source=SOURCE, evse_id=evse_id)
            else:
                fields = notify_payload(evse_id, limit, with_schedule=self.with_schedules(),
                                        phases=self._station.connector_view(evse_id).phases,
                                        start=ocpp_time(self._svc.wall()))
                request = call.NotifyChargingLimit(
                    charging_limit=fields["chargingLimit"], evse_id=evse_id,
                    charging_schedule=fields.get("chargingSchedule"),
                )
            try:
                await self._svc.request(request)
            except ConnectionLost:
                return  # offline: the state now goes out after the reconnection
            except (CallErrorReceived, CallTimeout, InvalidPayload) as exc:
                if evse_id not in self._failed or self._failed[evse_id] != limit:
                    self._failed[evse_id] = limit
                    log.warning("EVSE %d: %s not delivered: %s", evse_id, type(request).__name__, exc)
                continue
            self._failed.pop(evse_id, None)
            if limit is None:
                self.reported.pop(evse_id, None)
                log.info("EVSE %d: external (site) limit released: ClearedChargingLimit", evse_id)
            else:
                self.reported[evse_id] = limit
                log.info("EVSE %d: external (site) limit %.1f A (%s): NotifyChargingLimit", evse_id, limit.amps,
                         limit.reason)
