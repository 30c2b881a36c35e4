"""`cpsim fleet --tag/--invalid-tag` and a scenario's tags are held to the card limit of the OCPP version the
fleet speaks: 36 characters (2.0.1 idToken), 20 (1.6 idTag, and auto, which may speak 1.6); the error names it."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.fleet.cli import check_tag, tag_limit
from simulator.fleet.cli import main as fleet_main
from simulator.fleet.scenario import load_scenario

BASE = ["--csms", "ws://127.0.0.1:9", "--stations", "1"]


@pytest.mark.parametrize(("ocpp", "tag", "limit"), [
    ("1.6", "T" * 21, "1..20"), ("auto", "T" * 21, "1..20"), ("2.0.1", "T" * 37, "1..36")])
def test_too_long_a_tag_is_refused_naming_the_limit(ocpp: str, tag: str, limit: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert fleet_main([*BASE, "--ocpp", ocpp, "--tag", tag]) == 2
    err = capsys.readouterr().err
    assert f"--tag: expected {limit} characters without spaces" in err
    assert ("idToken of OCPP 2.0.1" if ocpp == "2.0.1" else "idTag of OCPP 1.6") in err


def test_limits_per_version() -> None:
    assert (tag_limit("1.6"), tag_limit("auto"), tag_limit("2.0.1")) == (20, 20, 36)
    check_tag("--tag", "T" * 36, "2.0.1")  # a 2.0.1 fleet may tap a 36-character card
    check_tag("--tag", "T" * 20, "1.6")
    with pytest.raises(ValueError, match=r"1\.\.36 characters"):
        check_tag("--invalid-tag", "A B", "2.0.1")


def test_a_scenario_tag_follows_the_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.toml"
    path.write_text(f'tags = ["{"C" * 30}"]\n')
    assert load_scenario(path).tags == ("C" * 30,)  # a valid 2.0.1 idToken
    assert fleet_main([*BASE, "--ocpp", "1.6", "--scenario", str(path)]) == 2
    assert "tags: expected 1..20 characters" in capsys.readouterr().err
    path.write_text(f'tags = ["{"C" * 37}"]\n')
    assert fleet_main([*BASE, "--ocpp", "2.0.1", "--scenario", str(path)]) == 2
    assert "1..36 characters" in capsys.readouterr().err
