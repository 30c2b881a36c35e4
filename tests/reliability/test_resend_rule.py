"""The at-least-once rule the trials apply (harness.explain_resends) on hand-made CSMS frame logs: a resend
is allowed only when the first copy's CALLRESULT could not have reached the agent before a kill or drop."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from simulator.csms import Received
from tests.reliability.harness import Cut, explain_resends

T0 = 1_800_000_000.0
STOP = {"meterStop": 5, "timestamp": "2027-01-15T08:00:00.000Z", "transactionId": 1, "reason": "Local"}


def frame_log(path: Path, answers: dict[str, float]) -> Path:
    lines = []
    for unique_id, at in answers.items():
        stamp = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        lines.append(json.dumps({"t": stamp, "dir": "out", "cp": "CP", "frame": [3, unique_id, {}]}))
    path.write_text("".join(line + "\n" for line in lines))
    return path


def stops(first_at: float, resent_at: float) -> list[Received]:
    return [Received("StopTransaction", STOP, "a", first_at), Received("BootNotification", {}, "b", resent_at - 0.1),
            Received("StopTransaction", dict(STOP), "c", resent_at)]


def test_kill_before_the_answer_was_written_allows_the_resend(tmp_path: Path) -> None:
    log = frame_log(tmp_path / "f.jsonl", {"a": T0 + 0.020, "c": T0 + 2.0})
    result = explain_resends(stops(T0, T0 + 2.0), log, [Cut("kill", T0 + 0.010, T0 + 0.015)])
    assert result.problems == [] and len(result.allowed) == 1


def test_answer_long_before_the_kill_makes_the_resend_a_problem(tmp_path: Path) -> None:
    log = frame_log(tmp_path / "f.jsonl", {"a": T0 + 0.002, "c": T0 + 5.0})
    result = explain_resends(stops(T0, T0 + 5.0), log, [Cut("kill", T0 + 3.0, T0 + 3.01)])
    assert result.allowed == [] and "answered 2.998 s before the kill" in result.problems[0]


def test_resend_without_any_cut_is_a_problem(tmp_path: Path) -> None:
    log = frame_log(tmp_path / "f.jsonl", {"a": T0 + 0.002})
    result = explain_resends(stops(T0, T0 + 3.5), log, [])
    assert result.allowed == [] and "without a cut" in result.problems[0]


def test_first_copy_read_just_after_the_kill_still_belongs_to_the_killed_process(tmp_path: Path) -> None:
    # The CSMS shares the killer's event loop: it reads the killed process's last frame after the kill.
    log = frame_log(tmp_path / "f.jsonl", {"a": T0 + 0.031})
    result = explain_resends(stops(T0 + 0.030, T0 + 1.5), log, [Cut("kill", T0, T0 + 0.020)])
    assert result.problems == [] and len(result.allowed) == 1


def test_answer_destroyed_by_a_mid_frame_cut_allows_the_resend(tmp_path: Path) -> None:
    log = frame_log(tmp_path / "f.jsonl", {"a": T0 + 0.002})
    chunk = b'\x81\x2a[3,"a",{}]'
    cut = Cut("mid-frame", T0 + 0.5, T0 + 0.5)
    assert explain_resends(stops(T0, T0 + 2.0), log, [cut]).problems != []
    result = explain_resends(stops(T0, T0 + 2.0), log, [cut], [chunk])
    assert result.problems == [] and "destroyed chunk" in result.allowed[0]


def test_a_later_cut_does_not_excuse_an_earlier_duplicate(tmp_path: Path) -> None:
    log = frame_log(tmp_path / "f.jsonl", {"a": T0 + 0.002})
    result = explain_resends(stops(T0, T0 + 2.0), log, [Cut("drop", T0 + 3.0, T0 + 3.0)])
    assert result.allowed == [] and result.problems != []
