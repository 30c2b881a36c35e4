"""Command-line contracts of issues 13/16 that the contract audit found off: `cpsim --help` names csms and fleet,
`cpsim fleet --id-prefix` keeps the agent's station.id rule, the progress line before any answer."""

from __future__ import annotations

import pytest

from simulator.cli import _parser
from simulator.fleet.cli import main as fleet_main
from simulator.fleet.metrics import FleetMetrics


def test_cpsim_help_lists_every_subcommand() -> None:
    text = _parser().format_help()
    for command in ("up", "csms", "fleet", "ctl"):
        assert f"    {command} " in text, command


@pytest.mark.parametrize("prefix", ["A B", "X" * 43])
def test_fleet_refuses_an_id_prefix_making_invalid_station_ids(
        prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert fleet_main(["--csms", "ws://127.0.0.1:9", "--stations", "3", "--id-prefix", prefix]) == 2
    assert "--id-prefix: station ids must be at most 48 characters without spaces" in capsys.readouterr().err


def test_progress_line_before_any_answer() -> None:
    line = FleetMetrics().progress_line(1.0)
    assert "p50 - p99 - max - " in line and "None" not in line
    metrics = FleetMetrics()
    metrics.latencies.append(0.0125)
    assert "p50 12.5ms" in metrics.progress_line(2.0)


def test_a_preset_of_an_unknown_component_instance_names_the_instance() -> None:
    from agent.config import ConfigError
    from agent.ocpp.v201.device_model import check_presets

    with pytest.raises(ConfigError) as error:
        check_presets({"OCPPCommCtrlr.x/HeartbeatInterval": 60})
    assert error.value.key == "ocpp.variables.OCPPCommCtrlr.x/HeartbeatInterval"
    assert error.value.problem == "unknown component 'OCPPCommCtrlr' instance 'x'"
    check_presets({"OCPPCommCtrlr/MessageAttempts.TransactionEvent": 5})  # the variable-instance form is fine


@pytest.mark.parametrize(("flag", "tag"), [("--tag", "T" * 21), ("--invalid-tag", "A B")])
def test_fleet_refuses_a_card_the_agent_cannot_send(flag: str, tag: str, capsys: pytest.CaptureFixture[str]) -> None:
    # a 21-character --tag was tapped, dropped by the agent and --start-sessions silently started nothing
    assert fleet_main(["--csms", "ws://127.0.0.1:9", "--stations", "1", flag, tag]) == 2
    assert f"{flag}: expected 1..20 characters without spaces" in capsys.readouterr().err
