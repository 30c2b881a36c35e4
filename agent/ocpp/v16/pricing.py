"""California pricing (OCA whitepaper "OCPP & California Pricing Requirements", OCPP 1.6 part).

The CSMS sends DataTransfer vendorId ``org.openchargealliance.costmsg`` with a JSON ``data`` string:
- SetUserPrice {idToken, priceText}: the driver's price, shown when that driver identifies;
- RunningCost {transactionId, timestamp, meterValue, cost, state, chargingPrice, idlePrice, nextPeriod,
  triggerMeterValue{atTime, atEnergykWh, atPowerkW, atCPStatus}}: the running cost on the display (and in
  ``cpctl status``); the triggers ask for one MeterValues (context Trigger) each when they are met;
- FinalCost {transactionId, cost, priceText, qrCodeText}: the final cost on the display at the end.

Money is parsed with decimal.Decimal (JSON numbers never become floats) and kept as integer minor units
with NumberOfDecimalsForCostValues decimals.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ocpp.v16 import call

from agent.authcache import IdTagInfo
from agent.events import MeterUpdate, SessionStarted, StationEvent, StatusChanged, TokenPresented
from agent.ocpp.money import MAX_AMOUNT, BadAmount, format_money, price_text, to_minor_units
from agent.ocpp.v16 import meter_values as mv
from agent.ocpp.v16.rpc import CallErrorReceived, CallTimeout, ConnectionLost, InvalidPayload
from hal.clock import TimerHandle

if TYPE_CHECKING:
    from agent.ocpp.v16.service import OcppService
    from agent.station_api import ConnectorView, StationPort

log = logging.getLogger("cpagent.ocpp.v16.pricing")

__all__ = [
    "MAX_AMOUNT", "BadMessage", "CaliforniaPricing", "format_money", "parse_data", "price_text", "to_minor_units",
]

VENDOR_ID = "org.openchargealliance.costmsg"
MAX_TEXT = 255  # display texts from the CSMS are bounded
FINAL_COST_SHOWN_S = 120.0  # how long the final cost stays on an idle connector's display


BadMessage = BadAmount  # a costmsg payload that cannot be used (the shared money functions raise it too)


# -- costmsg payloads (money itself: agent/ocpp/money.py) ----------------------------------------------


def parse_data(data: str | None) -> dict[str, Any]:
    if not data:
        raise BadMessage("no data")
    try:
        parsed = json.loads(data, parse_float=Decimal, parse_constant=_not_json)
    except ValueError as exc:
        raise BadMessage(f"data is not JSON: {str(exc)[:80]}") from None
    except RecursionError:  # nesting deeper than the parser's stack
        raise BadMessage("data is nested too deeply") from None
    if not isinstance(parsed, dict):
        raise BadMessage("data is not a JSON object")
    return parsed


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (RFC 8259)")


def _transaction_id(value: object) -> int:
    """transactionId of a costmsg: an OCPP 1.6 integer (32 bit)."""
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**31) <= value < 2**31:
        raise BadMessage(f"not a transactionId: {str(value)[:20]}")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise BadMessage(f"not a text: {value!r}")
    return value[:MAX_TEXT]


# -- triggers -----------------------------------------------------------------------------------------


@dataclass
class Triggers:
    """triggerMeterValue of the latest RunningCost for one connector; each fires once."""

    at_energy_wh: int | None = None  # energy register (as RunningCost.meterValue)
    at_power_w: int | None = None  # crossing this power in either direction
    at_status: frozenset[str] = frozenset()
    power_above: bool | None = None
    timer: TimerHandle | None = None
    fired: set[str] = field(default_factory=set)


@dataclass
class _Shown:
    price: str | None = None
    cost: str | None = None


class CaliforniaPricing:
    profile = "CaliforniaPricing"

    def __init__(self, service: OcppService) -> None:
        self._svc = service
        self._store = service.store
        self._station: StationPort = service.station
        self._user_price: dict[str, str] = {}  # idTag (upper) -> priceText
        self._shown: dict[int, _Shown] = {cid: _Shown() for cid in self._station.connector_ids()}
        self._triggers: dict[int, Triggers] = {}
        self._clear_timers: dict[int, TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        service.handlers.data_transfer[VENDOR_ID] = self.handle_data_transfer
        service.station.subscribe(self._on_event)

    def _view(self, connector_id: int) -> ConnectorView | None:
        try:
            return self._station.connector_view(connector_id)
        except KeyError:
            return None

    @property
    def decimals(self) -> int:
        return self._store.get_int("NumberOfDecimalsForCostValues")

    # -- DataTransfer --------------------------------------------------------------------------------

    async def handle_data_transfer(self, message_id: str | None, data: str | None) -> dict[str, Any]:
        handlers = {"SetUserPrice": self._set_user_price, "RunningCost": self._running_cost,
                    "FinalCost": self._final_cost}
        handler = handlers.get(message_id or "")
        if handler is None:
            return {"status": "UnknownMessageId"}
        try:
            handler(parse_data(data))
        except (BadMessage, KeyError, TypeError, ValueError, ArithmeticError) as exc:
            # ArithmeticError: decimal.Overflow / InvalidOperation, OverflowError - out-of-range numbers
            log.warning("costmsg %s refused: %s", message_id, str(exc)[:200])
            return {"status": "Rejected"}
        return {"status": "Accepted"}

    def _set_user_price(self, msg: dict[str, Any]) -> None:
        id_tag = _text(msg["idToken"])
        text = _text(msg["priceText"])
        self._user_price[id_tag.upper()] = text
        for connector in self._station.connector_views().values():
            tags = {connector.pending_id_tag, connector.session.id_tag if connector.session else None}
            if id_tag.upper() in {t.upper() for t in tags if t}:
                self._show(connector.id, price=text)

    def _running_cost(self, msg: dict[str, Any]) -> None:
        connector = self._by_transaction(_transaction_id(msg["transactionId"]))
        if connector is None:
            raise BadMessage(f"no running transaction {msg['transactionId']}")
        d = self.decimals
        cost = format_money(to_minor_units(msg["cost"], d), d)
        price = _text(msg["priceText"]) if "priceText" in msg else None
        if price is None and isinstance(msg.get("chargingPrice"), dict):
            price = price_text(msg["chargingPrice"], d) or None
        self._show(connector.id, cost=cost, **({"price": price} if price else {}))
        trigger = msg.get("triggerMeterValue")
        if isinstance(trigger, dict):
            self._set_triggers(connector.id, trigger)

    def _final_cost(self, msg: dict[str, Any]) -> None:
        transaction_id = _transaction_id(msg["transactionId"])
        connector = self._by_transaction(transaction_id, finished_too=True)
        if connector is None:
            raise BadMessage(f"unknown transaction {transaction_id}")
        d = self.decimals
        cost = format_money(to_minor_units(msg["cost"], d), d)
        extra: list[tuple[str, str]] = [("cost", cost)]
        if "priceText" in msg:
            extra.insert(0, ("price", _text(msg["priceText"])))
        if "qrCodeText" in msg:
            extra.append(("qr", _text(msg["qrCodeText"])))
        self._shown[connector.id] = _Shown(dict(extra).get("price"), cost)
        self._drop_triggers(connector.id)
        self._station.set_display_extra(connector.id, tuple(extra))
        if connector.session is None:
            self._clear_later(connector.id)

    # -- display -------------------------------------------------------------------------------------

    def _show(self, connector_id: int, *, price: str | None = None, cost: str | None = None) -> None:
        shown = self._shown.setdefault(connector_id, _Shown())
        if price is not None:
            shown.price = price
        if cost is not None:
            shown.cost = cost
        extra = tuple((k, v) for k, v in (("price", shown.price), ("cost", shown.cost)) if v is not None)
        timer = self._clear_timers.pop(connector_id, None)
        if timer is not None:
            timer.cancel()
        self._station.set_display_extra(connector_id, extra)

    def _clear_later(self, connector_id: int) -> None:
        def clear() -> None:
            self._clear_timers.pop(connector_id, None)
            view = self._view(connector_id)
            if view is not None and view.session is None:
                self._shown[connector_id] = _Shown()
                self._station.set_display_extra(connector_id, ())

        old = self._clear_timers.pop(connector_id, None)
        if old is not None:
            old.cancel()
        self._clear_timers[connector_id] = self._svc.clock.call_later(FINAL_COST_SHOWN_S, clear)

    def default_price(self) -> str | None:
        """DefaultPrice (JSON: priceText / priceTextOffline / chargingPrice) or DefaultPriceText."""
        raw = self._store.get_str("DefaultPrice")
        if raw:
            try:
                parsed = parse_data(raw)
                if not self._svc.online and isinstance(parsed.get("priceTextOffline"), str):
                    return _text(parsed["priceTextOffline"])
                if isinstance(parsed.get("priceText"), str):
                    return _text(parsed["priceText"])
                if isinstance(parsed.get("chargingPrice"), dict):
                    return price_text(parsed["chargingPrice"], self.decimals) or None
            except BadMessage as exc:
                log.warning("DefaultPrice is unusable: %s", exc)
        text = self._store.get_str("DefaultPriceText")
        return text[:MAX_TEXT] if text else None

    # -- station events ------------------------------------------------------------------------------

    def _on_event(self, event: StationEvent) -> None:
        try:
            if isinstance(event, TokenPresented) and event.accepted and event.connector_id is not None:
                connector = self._view(event.connector_id)
                price = self._user_price.get(event.id_tag.upper()) or self.default_price()
                if connector is not None and price and connector.session is None:
                    self._shown[connector.id] = _Shown(price=price)
                    self._show(connector.id)
            elif isinstance(event, SessionStarted):
                cid = event.connector_id
                if cid in self._station.connector_ids():
                    price = self._user_price.get(event.session.id_tag.upper())
                    self._shown[cid] = _Shown(price=price or self._shown_price(cid))
                    self._show(cid)
            elif isinstance(event, MeterUpdate):
                self._check_meter(event)
            elif isinstance(event, StatusChanged):
                self._check_status(event)
        except Exception:  # pricing is display only: it must never disturb the station
            log.exception("pricing: handling %s failed", type(event).__name__)

    def _shown_price(self, connector_id: int) -> str | None:
        shown = self._shown.get(connector_id)
        return shown.price if shown else None

    # -- triggerMeterValue ---------------------------------------------------------------------------

    def _set_triggers(self, connector_id: int, trigger: dict[str, Any]) -> None:
        self._drop_triggers(connector_id)
        connector = self._view(connector_id)
        t = Triggers()
        if "atEnergykWh" in trigger:
            t.at_energy_wh = to_minor_units(trigger["atEnergykWh"], 3)  # kWh -> Wh
        if "atPowerkW" in trigger:
            t.at_power_w = to_minor_units(trigger["atPowerkW"], 3)
            sample = connector.last_sample if connector is not None else None
            t.power_above = sample.power_w >= t.at_power_w if sample else None
        if "atCPStatus" in trigger:
            statuses = trigger["atCPStatus"]
            t.at_status = frozenset(statuses if isinstance(statuses, list) else [statuses])
        if "atTime" in trigger:
            at = IdTagInfo.from_ocpp({"status": "Accepted", "expiryDate": trigger["atTime"]}).expiry_wall
            assert at is not None
            delay = max(0.0, at - self._svc.wall())
            t.timer = self._svc.clock.call_later(delay, lambda: self._fire(connector_id, "atTime"))
        self._triggers[connector_id] = t

    def _drop_triggers(self, connector_id: int) -> None:
        old = self._triggers.pop(connector_id, None)
        if old is not None and old.timer is not None:
            old.timer.cancel()

    def _check_meter(self, event: MeterUpdate) -> None:
        t = self._triggers.get(event.connector_id)
        if t is None:
            return
        if t.at_energy_wh is not None and event.sample.energy_import_wh >= t.at_energy_wh:
            t.at_energy_wh = None
            self._fire(event.connector_id, "atEnergykWh")
        if t.at_power_w is not None:
            above = event.sample.power_w >= t.at_power_w
            if t.power_above is not None and above != t.power_above:
                t.at_power_w = None
                self._fire(event.connector_id, "atPowerkW")
            t.power_above = above

    def _check_status(self, event: StatusChanged) -> None:
        t = self._triggers.get(event.connector_id)
        if t is not None and event.status.value in t.at_status:
            t.at_status = frozenset()
            self._fire(event.connector_id, "atCPStatus")

    def _fire(self, connector_id: int, why: str) -> None:
        task = asyncio.get_running_loop().create_task(self._send_meter_values(connector_id, why))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_meter_values(self, connector_id: int, why: str) -> None:
        """One MeterValues (context Trigger) as the CSMS asked; a triggered one is not queued offline."""
        connector = self._view(connector_id)
        if connector is None:
            return
        sample = connector.last_sample
        session = connector.session
        if sample is None:
            return
        measurands = self._store.get_csl("MeterValuesSampledData") or [mv.ENERGY]
        value = mv.meter_value(self._svc.wall(), sample, measurands, "Trigger")
        if value is None:
            return
        transaction_id = self._svc.outbox.transaction_id(session.ref) if session is not None else None
        request = call.MeterValues(connector_id=connector.id, meter_value=[value], transaction_id=transaction_id)
        try:
            await self._svc._request(request)
            log.info("connector %d: MeterValues sent for the costmsg trigger %s", connector.id, why)
        except (ConnectionLost, CallErrorReceived, CallTimeout, InvalidPayload) as exc:
            log.info("connector %d: triggered MeterValues (%s) not sent: %s", connector.id, why, exc)

    # -- lookups -------------------------------------------------------------------------------------

    def _by_transaction(self, transaction_id: int, *, finished_too: bool = False) -> ConnectorView | None:
        for connector in self._station.connector_views().values():
            session = connector.session
            if session is not None and self._svc.outbox.transaction_id(session.ref) == transaction_id:
                return connector
        if finished_too:
            for session in self._station.shared.sessions.recent(20):
                if session.transaction_id == transaction_id:
                    return self._view(session.connector_id)
        return None
