"""cpctl and write-only configuration: `config get` says whether a secret (1.6 AuthorizationKey, 2.0.1
SecurityCtrlr.BasicAuthPassword) is set, never its value, by name and in the full listing; `config set KEY -`
reads the value from stdin so that it stays out of ps and the shell history."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent import db
from agent.ctl import _human, config_value, shown_value
from agent.ocpp.v16.configuration import ConfigurationStore
from agent.ocpp.v16.diagnostics import OcppDiagnosticsAdapter
from agent.ocpp.v201.configuration import diag_config_get
from agent.ocpp.v201.device_model import DeviceModel

KEY_16 = "0123456789abcdef0123"
PASSWORD_201 = "Basic-Password-201-xyz"


def _adapter_16(tmp_path: Path, toml_password: str | None) -> tuple[OcppDiagnosticsAdapter, ConfigurationStore]:
    store = ConfigurationStore(db.connect(tmp_path / "s.db", durable=False), {}, number_of_connectors=1,
                               enabled_profiles=("Core", "Security"))
    service = SimpleNamespace(store=store, config=SimpleNamespace(ocpp=SimpleNamespace(password=toml_password)))
    return OcppDiagnosticsAdapter(service), store  # type: ignore[arg-type]


def _row(answer: dict[str, object], key: str) -> dict[str, object]:
    rows = [r for r in answer["configurationKey"] if r["key"] == key]  # type: ignore[attr-defined]
    assert len(rows) == 1, rows
    return rows[0]  # type: ignore[no-any-return]


def test_16_authorization_key_shown_as_set_or_not_never_its_value(tmp_path: Path) -> None:
    adapter, store = _adapter_16(tmp_path, toml_password=None)
    by_name = adapter.diag_config_get(["AuthorizationKey"])
    assert by_name["configurationKey"] == [{"key": "AuthorizationKey", "readonly": False, "secret": True,
                                            "set": False}]
    assert _human("config", by_name) == "AuthorizationKey = <not set>"
    assert store.change("AuthorizationKey", KEY_16, source="local") == "Accepted"
    for answer in (adapter.diag_config_get(["authorizationkey"]), adapter.diag_config_get(None)):
        row = _row(answer, "AuthorizationKey")
        assert row["secret"] is True and row["set"] is True and "value" not in row
        assert KEY_16 not in json.dumps(answer) and KEY_16 not in _human("config", answer)
        assert "AuthorizationKey = <set, not shown>" in _human("config", answer).splitlines()
    # the listing still has the readable keys, with values
    assert _row(adapter.diag_config_get(None), "HeartbeatInterval")["value"]
    # the CSMS's GetConfiguration listing still leaves the write-only key out
    assert all(kv.key != "AuthorizationKey" for kv in store.get(None)[0])


def test_16_empty_key_names_the_toml_password(tmp_path: Path) -> None:
    adapter, _ = _adapter_16(tmp_path, toml_password="from-the-toml-file-1")
    answer = adapter.diag_config_get(["AuthorizationKey"])
    assert _human("config", answer) == "AuthorizationKey = <not set> ([ocpp] password used)"
    assert "from-the-toml-file-1" not in json.dumps(answer)


def test_201_basic_auth_password_shown_as_set_or_not_never_its_value() -> None:
    dm = DeviceModel(db.connect(":memory:", durable=False), {}, evse_ids=(1,))
    key = "SecurityCtrlr/BasicAuthPassword"
    assert diag_config_get(dm, [key])["configurationKey"] == [{"key": key, "readonly": False, "secret": True,
                                                               "set": False}]
    dm.preset("SecurityCtrlr", "BasicAuthPassword", PASSWORD_201)
    for answer in (diag_config_get(dm, [key]), diag_config_get(dm, None)):
        row = _row(answer, key)
        assert row["set"] is True and "value" not in row
        assert PASSWORD_201 not in json.dumps(answer)
        assert f"{key} = <set, not shown>" in _human("config", answer).splitlines()


def test_config_value_from_stdin(capsys: pytest.CaptureFixture[str]) -> None:
    assert config_value("AuthorizationKey", "-", io.StringIO(KEY_16 + "\r\nignored\n")) == KEY_16
    assert capsys.readouterr().err == ""
    assert config_value("AuthorizationKey", "-", io.StringIO("")) is None
    assert "no value on stdin" in capsys.readouterr().err
    # the argument form keeps working; for a secret it says how to keep it off the command line
    assert config_value("SecurityCtrlr/BasicAuthPassword", PASSWORD_201) == PASSWORD_201
    err = capsys.readouterr().err
    assert "config set SecurityCtrlr/BasicAuthPassword -" in err and PASSWORD_201 not in err
    assert config_value("HeartbeatInterval", "60") == "60"
    assert capsys.readouterr().err == ""


def test_shown_value() -> None:
    assert shown_value({"key": "A", "value": "0"}) == "0"
    assert shown_value({"key": "A"}) == "<no value>"
    assert shown_value({"key": "A", "secret": True, "set": True, "value": "leak"}) == "<set, not shown>"
