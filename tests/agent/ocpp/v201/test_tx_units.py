"""Pure and storage-level units of the 2.0.1 transaction side: seqNo numbered by the outbox in the commit
that queues the message, 2.0.1 meter values (J), the 2.0.1 authorizer (C) over the real cache/local list."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from ocpp.messages import Call
from ocpp.messages import _validate_payload as validate_payload

from agent import db
from agent.authcache import AuthorizationCache, IdTagInfo, LocalAuthList
from agent.ocpp.v201 import meter_values as mv
from agent.ocpp.v201.authorization import Authorizer201, id_token_info
from agent.outbox import TRANSACTION_EVENT, DuplicateStop, Outbox
from agent.sessions import Session
from hal.clock import FakeClock
from hal.types import MeterSample


def event(kind: str, tx: str = "tx-1", **extra: Any) -> dict[str, Any]:
    return {"eventType": kind, "timestamp": "2026-01-01T00:00:00.000Z", "triggerReason": "Authorized",
            "transactionInfo": {"transactionId": tx}, **extra}


def test_outbox_numbers_each_transaction_without_gaps_and_keeps_the_counter(tmp_path: Path) -> None:
    clock = FakeClock()
    conn = db.connect(tmp_path / "state.db")
    box = Outbox(conn, clock)
    conn.execute("CREATE TABLE probe (n INTEGER)")
    for kind in ("Started", "Updated"):
        box.append(TRANSACTION_EVENT, event(kind), tx_ref="tx-1", seq_field="seqNo",
                   also=lambda c: c.execute("INSERT INTO probe VALUES (1)"))
    box.append(TRANSACTION_EVENT, event("Started", "tx-2"), tx_ref="tx-2", seq_field="seqNo")
    box.append(TRANSACTION_EVENT, event("Ended"), tx_ref="tx-1", seq_field="seqNo")
    with pytest.raises(DuplicateStop):  # a second Ended: nothing of it commits, not even its seqNo / state
        box.append(TRANSACTION_EVENT, event("Ended"), tx_ref="tx-1", seq_field="seqNo",
                   also=lambda c: c.execute("INSERT INTO probe VALUES (2)"))
    assert conn.execute("SELECT COUNT(*) FROM probe").fetchone()[0] == 2
    seqs = [(e.tx_ref, e.payload["seqNo"]) for e in box.entries()]
    assert seqs == [("tx-1", 0), ("tx-1", 1), ("tx-2", 0), ("tx-1", 2)]
    assert box.has_stop("tx-1") and not box.has_stop("tx-2") and box.queued_for("tx-1") == 3
    head = box.head()
    assert head is not None and box.payload_for_send(head) == head.payload  # the station's own id, as queued
    for entry in box.entries():
        box.ack(entry.id)
    conn.close()
    again = Outbox(db.connect(tmp_path / "state.db"), clock)  # a restart keeps the counter
    again.append(TRANSACTION_EVENT, event("Updated", "tx-2"), tx_ref="tx-2", seq_field="seqNo")
    assert [e.payload["seqNo"] for e in again.entries()] == [1]
    assert again.next_seq_no("tx-2") == 2 and again.has_stop("tx-1")


SAMPLE = MeterSample(energy_import_wh=1234.5, power_w=7200.0, voltage_v=(230.1, 229.9, None),
                     current_a=(16.0, 15.9, None), soc_percent=55.0)


def test_meter_values_2_0_1_form_validates_against_the_schema() -> None:
    names = mv.measurands(("Energy.Active.Import.Register", "Power.Active.Import", "Voltage", "Current.Import",
                           "SoC", "Frequency"))
    assert "Frequency" not in names  # not measured by this station
    value = mv.meter_value(1_767_225_600.0, SAMPLE, names, mv.PERIODIC)
    assert value is not None
    units = {(v["measurand"], v.get("phase")): v["unitOfMeasure"]["unit"] for v in value["sampledValue"]}
    assert units[("Energy.Active.Import.Register", None)] == "Wh" and units[("Voltage", "L1-N")] == "V"
    assert ("Current.Import", "L3") not in units  # the meter gives no L3: none invented
    assert all(isinstance(v["value"], float) and "format" not in v for v in value["sampledValue"])
    record = 'OCMF|{"RD":[{"RV":1.2345,"RU":"kWh"}]}|{"SA":"ECDSA-secp256r1-SHA256","SD":"3045"}'
    signed = mv.signed_value(record, mv.TX_BEGIN, 1234.5)
    assert signed["signedMeterValue"]["signingMethod"] == "ECDSA-secp256r1-SHA256"
    assert signed["signedMeterValue"]["signedMeterData"] == record
    payload = {"eventType": "Updated", "timestamp": value["timestamp"], "triggerReason": "MeterValuePeriodic",
               "seqNo": 1, "transactionInfo": {"transactionId": "t"},
               "meterValue": [value, {"timestamp": value["timestamp"], "sampledValue": [signed]}]}
    validate_payload(Call("1", "TransactionEvent", payload), "2.0.1")
    assert mv.energy_of(payload["meterValue"]) == 1234.5


def test_meter_values_convert_between_versions() -> None:
    from agent.ocpp.v16 import meter_values as v16

    old = v16.meter_value(1_767_225_600.0, SAMPLE, ["Energy.Active.Import.Register", "Voltage"], v16.PERIODIC)
    assert old is not None
    new = mv.v16_to_201(old)
    assert new["sampledValue"][0] == {"value": 1234.5, "context": "Sample.Periodic",
                                      "measurand": "Energy.Active.Import.Register", "location": "Outlet",
                                      "unitOfMeasure": {"unit": "Wh"}}
    assert mv.v201_to_16(new) == old


def test_ended_values_are_bounded_and_keep_the_first() -> None:
    ended = mv.EndedValues(limit=3)
    for n in range(6):
        ended.add("t", {"n": n})
    ended.add("t", None)
    assert [v["n"] for v in ended.take("t")] == [0, 4, 5] and ended.take("t") == []


class Vars:
    def __init__(self, **values: Any) -> None:
        self.values = {"AuthCacheCtrlr/LifeTime": 3600, **values}

    def _get(self, component: str, variable: str) -> Any:
        key = f"{component}/{variable}"
        if key not in self.values:
            raise KeyError(key)
        return self.values[key]

    def boolean(self, component: str, variable: str, **_: Any) -> bool:
        return bool(self._get(component, variable))

    def integer(self, component: str, variable: str, **_: Any) -> int:
        return int(self._get(component, variable))

    def text(self, component: str, variable: str, **_: Any) -> str:
        return str(self._get(component, variable))


class Csms:
    def __init__(self) -> None:
        self.online = True
        self.answers: dict[str, dict[str, Any]] = {}
        self.asked: list[dict[str, str]] = []

    async def request(self, payload: Any) -> Any:
        self.asked.append(payload.id_token)
        validate_payload(Call("1", "Authorize", {"idToken": payload.id_token}), "2.0.1")
        info = self.answers.get(payload.id_token["idToken"], {"status": "Invalid"})

        class Conf:
            id_token_info = info

        return Conf()


def authorizer(vars_: Vars, csms: Csms) -> tuple[Authorizer201, FakeClock, AuthorizationCache]:
    clock = FakeClock()
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE schema_version (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
    local = LocalAuthList(conn, clock)
    cache = AuthorizationCache(conn, clock, local)
    local.replace_all(1, {"LISTED": IdTagInfo("Blocked")})
    auth = Authorizer201(vars_, local, cache, online=lambda: csms.online, request=csms.request, wall=clock.wall)
    return auth, clock, cache


async def test_authorize_online_caches_with_lifetime_then_decides_offline() -> None:
    csms = Csms()
    csms.answers["CARD"] = {"status": "Accepted", "groupIdToken": {"idToken": "FLEET", "type": "Central"}}
    auth, clock, cache = authorizer(Vars(), csms)
    assert (await auth.authorize("CARD")).accepted and csms.asked == [{"idToken": "CARD", "type": "ISO14443"}]
    csms.online = False
    assert (await auth.authorize("CARD")).accepted  # from the cache (LocalAuthorizeOffline by default)
    assert not (await auth.authorize("LISTED")).accepted  # the local list is the authority for its ids
    assert (await auth.authorize("STRANGER")).status == "Invalid"
    auth._vars.values["AuthCtrlr/OfflineTxForUnknownIdEnabled"] = True  # type: ignore[attr-defined]
    assert (await auth.authorize("STRANGER")).accepted  # C15 offline unknown id
    clock.advance(3601)  # AuthCacheCtrlr.LifeTime passed: the cached entry reads Expired
    cached = cache.lookup("CARD")
    assert cached is not None and (cached.status, cached.parent_id_tag) == ("Expired", "FLEET")


async def test_local_pre_authorize_and_auth_disabled() -> None:
    csms = Csms()
    auth, _clock, cache = authorizer(Vars(**{"AuthCtrlr/LocalPreAuthorize": True}), csms)
    cache.update("KNOWN", IdTagInfo("Accepted"))
    assert (await auth.authorize("KNOWN")).accepted and csms.asked == []
    auth2, _c, _cache = authorizer(Vars(**{"AuthCtrlr/Enabled": False}), csms)
    assert (await auth2.authorize("ANYONE")).accepted and csms.asked == []


def session(id_tag: str) -> Session:
    return Session("ref", 1, id_tag, 0.0, 0.0, 0.0, 0.0)


async def test_group_stop_and_master_pass() -> None:
    csms = Csms()
    fleet = {"status": "Accepted", "groupIdToken": {"idToken": "FLEET", "type": "Central"}}
    csms.answers.update({"A": fleet, "B": fleet, "C": {"status": "Accepted"},
                         "BOSS": {"status": "Accepted", "groupIdToken": {"idToken": "MASTER", "type": "Central"}}})
    auth, _clock, _cache = authorizer(Vars(**{"AuthCtrlr/MasterPassGroupId": "MASTER"}), csms)
    assert (await auth.authorize("A")).accepted
    assert await auth.may_stop(session("A"), "B")  # C09: same groupIdToken
    assert not await auth.may_stop(session("A"), "C")
    assert not (await auth.authorize("BOSS")).accepted  # C16: a master pass never starts one
    assert await auth.may_stop(session("C"), "BOSS") and auth.is_master_pass("BOSS")


def test_id_token_info_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="status 'Maybe'"):
        id_token_info({"status": "Maybe"}, 0.0, None)
    with pytest.raises(ValueError, match="cacheExpiryDateTime"):
        id_token_info({"status": "Accepted", "cacheExpiryDateTime": "soon"}, 0.0, None)
    info = id_token_info({"status": "Accepted", "cacheExpiryDateTime": "2030-01-01T00:00:00Z"}, 0.0, 60.0)
    assert info.expiry_wall == 1_893_456_000.0
