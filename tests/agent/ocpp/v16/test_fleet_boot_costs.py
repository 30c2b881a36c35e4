"""What many stations in one process (cpsim fleet) cost at boot, kept cheap without losing a guarantee.

install_redaction: one SharedRedaction per logger/handler however many stations install their filters;
every member's secrets are still hidden, a SecretsFilter's extra rules still apply, uninstall leaves nothing.
handlers_from_object: the per-class cache still finds handlers set on the instance.
HeartbeatInterval: committed without an fsync, other keys still with one."""

from __future__ import annotations

import io
import logging

from agent.ocpp.v16.rpc import RedactingFilter, SharedRedaction, install_redaction
from agent.ocpp.v16.security import SecretsFilter


def _logger(name: str) -> tuple[logging.Logger, io.StringIO, logging.Handler]:
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger.addHandler(handler)
    return logger, out, handler


def test_many_stations_share_one_filter_and_every_secret_is_hidden() -> None:
    logger, out, handler = _logger("test.shared_redaction")
    secrets = {i: [f"station-secret-{i:04d}"] for i in range(200)}
    filters = [RedactingFilter(lambda i=i: secrets[i]) for i in range(200)]
    keyed = SecretsFilter(lambda: ["key-only-secret-xyz"])
    undo = [install_redaction(f, [logger.name]) for f in filters]
    undo.append(install_redaction(keyed, [logger.name], handlers=[handler]))
    try:
        assert [type(f) for f in logger.filters] == [SharedRedaction]
        assert len(logger.filters[0]) == 201  # type: ignore[arg-type]
        assert [type(f) for f in handler.filters] == [SharedRedaction]
        secrets[7] = ["rotated-after-install"]  # asked afresh on every record
        logger.info("a %s b %s c %s d AuthorizationKey='zzz-plain'", "station-secret-0199",
                    "rotated-after-install", "key-only-secret-xyz")
        try:
            raise ValueError("station-secret-0000 in a traceback")
        except ValueError:
            logger.exception("failed")
        text = out.getvalue()
        for leaked in ("station-secret-0199", "rotated-after-install", "key-only-secret-xyz", "zzz-plain",
                       "station-secret-0000"):
            assert leaked not in text
        assert text.count("***") >= 5
        install_redaction(filters[0], [logger.name])()  # installed twice, removed once: gone, like addFilter
        assert len(logger.filters[0]) == 200  # type: ignore[arg-type]
    finally:
        for u in undo:
            u()
        logger.removeHandler(handler)
    assert logger.filters == [] and handler.filters == []


def test_a_plain_filter_is_added_as_itself() -> None:
    logger, _, handler = _logger("test.shared_redaction.plain")
    plain = logging.Filter("x")
    undo = install_redaction(plain, [logger.name])
    assert logger.filters == [plain]
    undo()
    assert logger.filters == []
    logger.removeHandler(handler)


def test_handler_table_cached_per_class_still_sees_instance_attributes() -> None:
    from agent.ocpp.v16.rpc import OCPP16_ACTIONS, handlers_from_object

    class Service:
        def __init__(self, extra: bool) -> None:
            self.plain = 1
            if extra:
                self.on_authorize = lambda payload: {}
                self.after_heartbeat = None  # not callable: hides nothing, adds nothing

        def on_heartbeat(self, payload: object) -> object:
            return {}

        def after_heartbeat(self, payload: object) -> None:
            return None

    def full_scan(obj: object) -> tuple[set[str], set[str]]:
        on = {a for a in OCPP16_ACTIONS if callable(getattr(obj, "on_" + _snake(a), None))}
        after = {a for a in OCPP16_ACTIONS if callable(getattr(obj, "after_" + _snake(a), None))}
        return on, after

    for obj in (Service(False), Service(True), Service(False)):
        on, after = handlers_from_object(obj)
        assert (set(on), set(after)) == full_scan(obj)
    on, after = handlers_from_object(Service(True))
    assert set(on) == {"Authorize", "Heartbeat"} and after == {}


def _snake(action: str) -> str:
    import re

    return re.sub(r"(?<!^)(?=[A-Z])", "_", action).lower()


def test_heartbeat_interval_is_stored_without_fsync_other_keys_with(tmp_path: object) -> None:
    from pathlib import Path

    from agent import db
    from agent.ocpp.v16.configuration import ConfigurationStore

    path = Path(str(tmp_path)) / "state.db"
    conn = db.connect(path)  # durable: synchronous=FULL
    store = ConfigurationStore(conn, {}, number_of_connectors=1)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    assert store.change("HeartbeatInterval", "60", source="local") == "Accepted"
    unsynced = [s for s in statements if "synchronous" in s.lower() or "INSERT" in s]
    assert [s.split()[0] for s in unsynced] == ["PRAGMA", "PRAGMA", "INSERT", "PRAGMA"]
    assert unsynced[1].endswith("NORMAL") and unsynced[3].endswith("=2")
    statements.clear()
    assert store.change("MeterValueSampleInterval", "30", source="local") == "Accepted"
    assert not [s for s in statements if "synchronous" in s.lower()]
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    conn.close()
    again = ConfigurationStore(db.connect(path), {}, number_of_connectors=1)
    assert again.get_int("HeartbeatInterval") == 60 and again.get_int("MeterValueSampleInterval") == 30
