"""OCPP 2.0.1 Tariff and Cost (I01-I08) on the connector's display, with TariffCostCtrlr.

- I01 tariff: the ``personalMessage`` of an idTokenInfo (Authorize, TransactionEvent answers) is the driver's
  tariff text, shown as the display's ``("price", text)`` line when the token is presented / the session
  starts; without one, ``TariffCostCtrlr.TariffFallbackMessage``; I06: ``updatedPersonalMessage`` of a
  TransactionEventResponse replaces it during the transaction;
- I02 running cost: ``CostUpdated`` (totalCost, transactionId) and ``totalCost`` of a TransactionEventResponse
  to an Updated event, shown as ``("cost", "4.70 EUR")``;
- I03 final cost: ``totalCost`` of the answer to the Ended event: shown on the finished screen and kept with
  the transaction (table ``ocpp201_costs``: minor units, decimals, currency, source);
- I04/I05 offline: the fallback messages; where a tariff is known (a ``chargingPrice`` {kWhPrice, hourPrice,
  flatFee} in the customData of the idTokenInfo / TransactionEventResponse, vendorId
  ``org.openchargealliance.costmsg``, as the OCA California pricing whitepaper carries it), the cost is
  computed locally from the meter and the clock (``agent.ocpp.money.local_cost_minor``) while the CSMS
  cannot be reached, shown as "~4.70 EUR" and kept with source "local" (a CSMS total arriving later wins).

TariffCostCtrlr.Enabled.Tariff / .Cost false: nothing of that kind is shown. Money is Decimal / integer minor
units (the currency's decimals), never float: a JSON number the RPC layer read as float becomes the
shortest decimal text that reads back as it, i.e. the number the CSMS wrote.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from agent.db import Migration, StorageError, migrate, transaction
from agent.events import MeterUpdate, SessionStarted, SessionStopped, StationEvent, TokenPresented
from agent.ocpp.money import BadAmount, decimal_to_minor, format_money, local_cost_minor, to_decimal
from hal.clock import TimerHandle

if TYPE_CHECKING:
    from agent.ocpp.v201.service import OcppService

log = logging.getLogger("cpagent.ocpp.v201.pricing")

CONTROLLER = "TariffCostCtrlr"
COMPONENT = "ocpp201_costs"
MIGRATIONS: list[Migration] = [
    "CREATE TABLE ocpp201_costs (transaction_id TEXT PRIMARY KEY, total_minor INTEGER NOT NULL, "
    "decimals INTEGER NOT NULL, currency TEXT NOT NULL, source TEXT NOT NULL, final INTEGER NOT NULL, "
    "wall REAL NOT NULL)",
]
MAX_KEPT = 1000  # cost rows kept (the oldest go first)
MAX_TEXT = 255
FINAL_COST_SHOWN_S = 120.0
COSTMSG = "org.openchargealliance.costmsg"
# ISO 4217 minor units of the currencies that do not have 2.
_DECIMALS = {"JPY": 0, "KRW": 0, "ISK": 0, "CLP": 0, "VND": 0, "BHD": 3, "KWD": 3, "JOD": 3, "OMR": 3, "TND": 3}


def currency_decimals(currency: str) -> int:
    return _DECIMALS.get(currency.upper(), 2)


def _get(obj: Any, camel: str, snake: str) -> Any:
    """A field of an answer as the library gives it (dataclass or dict, snake_case or camelCase)."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(camel, obj.get(snake))
    return getattr(obj, snake, None)


def message_text(content: Any) -> str | None:
    """The text of a MessageContentType (format ASCII / UTF8 / HTML / URI: its content)."""
    text = _get(content, "content", "content")
    return str(text)[:MAX_TEXT] if isinstance(text, str) and text else None


def charging_price(custom_data: Any) -> dict[str, Any] | None:
    """A ``chargingPrice`` in customData of vendorId org.openchargealliance.costmsg, checked (None: none)."""
    if not isinstance(custom_data, dict) or _get(custom_data, "vendorId", "vendor_id") != COSTMSG:
        return None
    price = _get(custom_data, "chargingPrice", "charging_price")
    if not isinstance(price, dict):
        return None
    out: dict[str, Any] = {}
    for camel, snake in (("kWhPrice", "k_wh_price"), ("hourPrice", "hour_price"), ("flatFee", "flat_fee")):
        value = price.get(camel, price.get(snake))
        if value is not None:
            out[camel] = to_decimal(value)
    return out or None


@dataclass
class Shown:
    price: str | None = None
    cost: str | None = None


class Pricing:
    def __init__(self, service: OcppService) -> None:
        self._svc = service
        self._station = service.station
        self._db = service.db
        migrate(self._db, COMPONENT, MIGRATIONS)
        self._personal: dict[str, str] = {}  # idToken (upper) -> tariff text (bounded by the auth answers)
        self._tariffs: dict[str, dict[str, Any]] = {}  # idToken (upper) -> chargingPrice
        self._tx_tariff: dict[str, dict[str, Any]] = {}  # transactionId -> chargingPrice
        self._shown: dict[int, Shown] = {cid: Shown() for cid in self._station.connector_ids()}
        self._clear_timers: dict[int, TimerHandle] = {}
        self._started: dict[int, tuple[float, float]] = {}  # connector -> (start wall, start energy Wh)
        self._last_tx: dict[int, str] = {}  # connector -> its latest transactionId

    async def run(self) -> None:
        # Every feature exists now: listen to the authorizer's and the transactions' answers.
        tx = self._svc.features.get("Transactions")
        if tx is not None:
            tx.authorizer.info_listeners.append(self._on_id_token_info)
            tx.answer_listeners.append(self._on_transaction_answer)
        self._station.subscribe(self._on_event)

    # -- settings ------------------------------------------------------------------------------------

    def _flag(self, instance: str) -> bool:
        try:
            return self._svc.variables.boolean(CONTROLLER, "Enabled", instance=instance)
        except Exception:
            return True

    def _text(self, variable: str) -> str:
        try:
            return self._svc.variables.text(CONTROLLER, variable)[:MAX_TEXT]
        except Exception:
            return ""

    @property
    def currency(self) -> str:
        return self._text("Currency") or "EUR"

    def money(self, minor: int) -> str:
        return f"{format_money(minor, currency_decimals(self.currency))} {self.currency}"

    # -- answers of the CSMS -------------------------------------------------------------------------

    def _on_id_token_info(self, id_token: str, info: Any) -> None:
        key = id_token.upper()
        text = self._personal_text(_get(info, "personalMessage", "personal_message"))
        if text:
            self._personal[key] = text
            if len(self._personal) > 1000:
                self._personal.pop(next(iter(self._personal)))
        try:
            price = charging_price(_get(info, "customData", "custom_data"))
        except BadAmount as exc:
            log.warning("idTokenInfo chargingPrice ignored: %s", exc)
            price = None
        if price is not None:
            self._tariffs[key] = price
            if len(self._tariffs) > 1000:
                self._tariffs.pop(next(iter(self._tariffs)))

    def _personal_text(self, content: Any) -> str | None:
        """A personal message cut to DisplayMessageCtrlr.PersonalMessageSize (0: none may be kept)."""
        text = message_text(content)
        try:
            size = self._svc.variables.integer("DisplayMessageCtrlr", "PersonalMessageSize")
        except Exception:
            size = MAX_TEXT
        return text[:size] if text and size > 0 else None

    def _on_transaction_answer(self, payload: dict[str, Any], conf: Any) -> None:
        tx_id = str(payload.get("transactionInfo", {}).get("transactionId", ""))
        event_type = payload.get("eventType")
        cid = self._connector_of(tx_id, payload)
        try:
            price = charging_price(_get(conf, "customData", "custom_data"))
        except BadAmount as exc:
            log.warning("TransactionEventResponse chargingPrice ignored: %s", exc)
            price = None
        if price is not None:
            self._tx_tariff[tx_id] = price
            if len(self._tx_tariff) > 100:  # Ended answers that never came
                self._tx_tariff.pop(next(iter(self._tx_tariff)))
        updated = self._personal_text(_get(conf, "updatedPersonalMessage", "updated_personal_message"))
        if updated and cid is not None and self._flag("Tariff"):
            self._show(cid, price=updated)  # I06
        total = _get(conf, "totalCost", "total_cost")
        if total is not None:
            self.cost_from_csms(tx_id, total, final=event_type == "Ended", connector_id=cid)
        if event_type == "Ended":
            self._tx_tariff.pop(tx_id, None)

    async def on_cost_updated(self, total_cost: Any, transaction_id: str, **_: Any) -> dict[str, Any]:
        """I02: the running cost of a transaction (an unknown one is answered and logged, nothing shown)."""
        cid = self._connector_of(transaction_id, None)
        if cid is None:
            log.warning("CostUpdated for transaction %s, which is not running here", transaction_id[:36])
            return {}
        self.cost_from_csms(transaction_id, total_cost, final=False, connector_id=cid)
        return {}

    def cost_from_csms(self, transaction_id: str, total: Any, *, final: bool, connector_id: int | None) -> None:
        try:
            minor = decimal_to_minor(to_decimal(total), currency_decimals(self.currency))
        except BadAmount as exc:
            log.warning("transaction %s: totalCost ignored: %s", transaction_id[:36], exc)
            return
        self._keep(transaction_id, minor, "csms", final)
        if connector_id is not None and self._flag("Cost"):
            self._show(connector_id, cost=self.money(minor))
            if final:
                self._clear_later(connector_id)
        log.info("transaction %s: %s cost %s", transaction_id[:36], "final" if final else "running",
                 self.money(minor))

    # -- station events ------------------------------------------------------------------------------

    def _on_event(self, event: StationEvent) -> None:
        try:
            if (isinstance(event, TokenPresented) and event.accepted and event.connector_id is not None
                    and event.connector_id not in self._clear_timers  # not the card that just stopped
                    and self._station.connector_view(event.connector_id).session is None):
                self._shown[event.connector_id] = Shown()
                self._show(event.connector_id, price=self._tariff_text(event.id_tag))
            elif isinstance(event, SessionStarted):
                self._started[event.connector_id] = (event.session.start_wall, event.session.start_energy_wh)
                self._transaction_of(event.connector_id)
                self._shown[event.connector_id] = Shown()
                self._show(event.connector_id, price=self._tariff_text(event.session.id_tag))
            elif isinstance(event, MeterUpdate) and not self._svc.online:
                session = self._station.connector_view(event.connector_id).session
                if session is not None:
                    self._local_cost(event.connector_id, event.sample.energy_import_wh, session.id_tag, final=False)
            elif isinstance(event, SessionStopped):
                if not self._svc.online:  # I05: the CSMS's total will come when it can; show what is known
                    stop = event.session.stop_energy_wh
                    energy = stop if stop is not None else event.session.last_energy_wh
                    known = self._local_cost(event.connector_id, energy, event.session.id_tag, final=True)
                    if not known and self._flag("Cost"):
                        self._show(event.connector_id, cost=self._text("TotalCostFallbackMessage") or None)
                self._started.pop(event.connector_id, None)
                self._clear_later(event.connector_id)
        except Exception:  # pricing is display only: it must never disturb the station
            log.exception("pricing: handling %s failed", type(event).__name__)

    def _tariff_text(self, id_tag: str) -> str | None:
        if not self._flag("Tariff"):
            return None
        return self._personal.get(id_tag.upper()) or self._text("TariffFallbackMessage") or None

    def _local_cost(self, connector_id: int, energy_wh: float | None, id_tag: str | None, *, final: bool) -> bool:
        """The cost from a known tariff while the CSMS is unreachable; False when no tariff is known."""
        tx_id = self._transaction_of(connector_id)
        price = self._tx_tariff.get(tx_id or "") if tx_id else None
        if price is None and id_tag:
            price = self._tariffs.get(id_tag.upper())
        started = self._started.get(connector_id)
        if price is None or started is None or energy_wh is None or not self._flag("Cost"):
            return False
        start_wall, start_energy = started
        minor = local_cost_minor(price, energy_wh=energy_wh - start_energy,
                                 duration_s=self._svc.wall() - start_wall,
                                 decimals=currency_decimals(self.currency))
        text = "~" + self.money(minor)
        if self._shown.get(connector_id, Shown()).cost != text:
            self._show(connector_id, cost=text)
        if final and tx_id:
            self._keep(tx_id, minor, "local", True)
        return True

    # -- display -------------------------------------------------------------------------------------

    def _show(self, connector_id: int, *, price: str | None = None, cost: str | None = None) -> None:
        shown = self._shown.setdefault(connector_id, Shown())
        if price is not None:
            shown.price = price
        if cost is not None:
            shown.cost = cost
        timer = self._clear_timers.pop(connector_id, None)
        if timer is not None:
            timer.cancel()
        extra = tuple((k, v) for k, v in (("price", shown.price), ("cost", shown.cost)) if v)
        self._station.set_display_extra(connector_id, extra)

    def _clear_later(self, connector_id: int) -> None:
        def clear() -> None:
            self._clear_timers.pop(connector_id, None)
            if self._station.connector_view(connector_id).session is None:
                self._shown[connector_id] = Shown()
                self._station.set_display_extra(connector_id, ())

        old = self._clear_timers.pop(connector_id, None)
        if old is not None:
            old.cancel()
        self._clear_timers[connector_id] = self._svc.clock.call_later(FINAL_COST_SHOWN_S, clear)

    # -- the cost kept with the transaction ----------------------------------------------------------

    def _keep(self, transaction_id: str, minor: int, source: str, final: bool) -> None:
        currency = self.currency
        try:
            with transaction(self._db):
                if source == "local":  # never over a total the CSMS gave
                    row = self._db.execute("SELECT source FROM ocpp201_costs WHERE transaction_id = ?",
                                           (transaction_id,)).fetchone()
                    if row is not None and row[0] == "csms":
                        return
                self._db.execute(
                    "INSERT INTO ocpp201_costs VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(transaction_id) DO UPDATE "
                    "SET total_minor = excluded.total_minor, decimals = excluded.decimals, currency = "
                    "excluded.currency, source = excluded.source, final = excluded.final, wall = excluded.wall",
                    (transaction_id[:36], minor, currency_decimals(currency), currency, source, int(final),
                     self._svc.wall()))
                self._db.execute("DELETE FROM ocpp201_costs WHERE transaction_id NOT IN (SELECT transaction_id "
                                 "FROM ocpp201_costs ORDER BY wall DESC LIMIT ?)", (MAX_KEPT,))
        except (sqlite3.Error, StorageError) as exc:
            log.warning("transaction %s: cost not kept: %s", transaction_id[:36], exc)

    def kept(self, transaction_id: str) -> dict[str, Any] | None:
        """The cost kept for a transaction: {"total": Decimal, "currency", "source", "final"}."""
        row = self._db.execute("SELECT total_minor, decimals, currency, source, final FROM ocpp201_costs "
                               "WHERE transaction_id = ?", (transaction_id,)).fetchone()
        if row is None:
            return None
        return {"total": Decimal(row[0]).scaleb(-row[1]), "currency": row[2], "source": row[3],
                "final": bool(row[4])}

    def cost_text(self, transaction_id: str) -> str | None:
        """The kept cost as `cpctl sessions` shows it: "4.70 EUR", "~4.70 EUR (local)"; "running" until the
        final one."""
        try:
            kept = self.kept(transaction_id)
        except sqlite3.Error as exc:
            log.warning("transaction %s: kept cost not read: %s", transaction_id[:36], exc)
            return None
        if kept is None:
            return None
        local = kept["source"] == "local"
        return (f"{'~' if local else ''}{kept['total']} {kept['currency']}{' (local)' if local else ''}"
                f"{'' if kept['final'] else ' running'}")

    # -- lookups -------------------------------------------------------------------------------------

    def _machines(self) -> dict[int, Any]:
        feature = self._svc.features.get("Transactions")
        machines: dict[int, Any] = getattr(feature, "machines", {}) if feature is not None else {}
        return machines

    def _transaction_of(self, connector_id: int) -> str | None:
        """The connector's running transaction, else the last one seen there (a session's stop may end it
        before this listener hears of the stop)."""
        machine = self._machines().get(connector_id)
        tx_id: str | None = machine.transaction_id if machine is not None else None
        if tx_id is not None:
            self._last_tx[connector_id] = tx_id
            return tx_id
        return self._last_tx.get(connector_id)

    def _connector_of(self, transaction_id: str, payload: dict[str, Any] | None) -> int | None:
        for evse, machine in self._machines().items():
            if machine.transaction_id == transaction_id:
                return evse
        given = (payload or {}).get("evse")
        if isinstance(given, dict) and given.get("id") in self._station.connector_ids():
            return int(given["id"])
        return None
