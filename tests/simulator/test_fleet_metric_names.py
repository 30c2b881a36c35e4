"""`cpsim fleet --metrics-port` names follow the Prometheus conventions: running totals (reconnects, sessions
started/stopped) are counters ending in _total, levels are gauges without it, durations in _seconds; the
final JSON report keeps its keys."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from simulator.fleet.metrics import FleetMetrics

REFRESH = {"stations": 3.0, "booted": 2.0, "connected": 2.0, "reconnects": 5.0, "queued_messages": 1.0,
           "sessions_active": 1.0, "sessions_started": 4.0, "sessions_stopped": 3.0}


def test_prometheus_names_and_types() -> None:
    metrics = FleetMetrics(prometheus=True)
    metrics.set_gauges(REFRESH)
    metrics.call_sent("BootNotification")
    metrics.answered("BootNotification", 0.02, error=True)
    assert metrics.registry is not None
    text = generate_latest(metrics.registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {s.name: s.value for f in families.values() for s in f.samples if not s.labels}
    assert families["cpsim_fleet_reconnects"].type == "counter"
    assert "# TYPE cpsim_fleet_reconnects_total counter" in text and samples["cpsim_fleet_reconnects_total"] == 5.0
    assert samples["cpsim_fleet_sessions_started_total"] == 4.0
    assert samples["cpsim_fleet_sessions_stopped_total"] == 3.0
    assert "cpsim_fleet_reconnects " not in text  # no gauge of that name any more
    for family in families.values():
        names = {s.name for s in family.samples}
        if family.type == "counter":
            assert all(n.endswith(("_total", "_created")) for n in names), family.name
        elif family.type == "gauge" and not family.name.endswith("_created"):
            assert not family.name.endswith("_total") and samples[family.name] == REFRESH[
                family.name.removeprefix("cpsim_fleet_")], family.name
    assert families["cpsim_fleet_ocpp_call_latency_seconds"].type == "histogram"
    assert families["cpsim_fleet_ocpp_call_errors"].type == "counter"
    # the JSON report's keys are unchanged
    snapshot = metrics.snapshot()
    assert {k: snapshot[k] for k in REFRESH} == REFRESH
