"""`cpsim fleet` scripted cases (simulator/fleet/cases.py): the step language and its errors, the frame log,
and the built-in OCTT-style cases run by real stations against the bundled CSMS (its own process), 2.0.1,
each case on a selection of the fleet, one [[case]] of a scenario file failing on purpose with its reason;
meanwhile every `cpsim ctl` verb that makes sense for a fleet station drives one (--station CP-000009)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from simulator.fleet.cases import (
    CaseError,
    FrameLog,
    builtin_cases,
    contains,
    judge,
    parse_cases,
    parse_step,
    resolve_case_names,
    substitute,
)
from simulator.fleet.cli import main as fleet_main
from simulator.fleet.scenario import ScenarioError, load_scenario

REPO = Path(__file__).resolve().parents[2]


def test_steps_parse_and_their_errors_name_the_key() -> None:
    step = parse_step({"expect": "StartTransaction", "result": {"idTagInfo": {"status": "Accepted"}},
                       "within": 20}, "s")
    assert (step.kind, step.value, step.timeout) == ("expect", "StartTransaction", 20.0)
    assert parse_step({"absent": "StartTransaction"}, "s").timeout == 5.0  # how long to watch
    assert parse_step({"offline": True}, "s").value > 86400  # until `online`
    assert parse_step({"fault": "rcd", "on": False, "connector": 2}, "s").connector == 2
    for data, message in (
        ({"plug": 1, "tap": "X"}, "exactly one of"),
        ({"plug": 0}, "plug: expected a connector number 1..4"),
        ({"tap": "X", "within": 3}, "tap: unknown key"),
        ({"fault": "melt"}, "unknown fault 'melt'"),
        ({"fault": "reader-silent"}, "unknown fault"),  # the fleet's reader is in-process
        ({"status": "Sleeping"}, "status: expected one of Available"),
        ({"expect": "Start Transaction"}, "OCPP action name"),
        ({"expect": "Authorize", "payload": []}, "payload: expected a non-empty table"),
        ({"wait": -1}, "wait (seconds)"),
        ({"session": "yes"}, "session: expected true or false"),
    ):
        with pytest.raises(CaseError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_step(data, "case 1 (x): step 2")


def test_scenario_file_with_cases_only_and_with_the_generator(tmp_path: Path) -> None:
    only = tmp_path / "cases.toml"
    only.write_text('[[case]]\nname = "remote"\nstations = [2, "4-6", "CP-000009"]\n'
                    'steps = [{plug = 1}, {expect = "RemoteStartTransaction", from_csms = true, within = 1}]\n')
    scenario = load_scenario(only)
    assert not scenario.generator
    (case,) = scenario.cases
    assert [case.selects(i, f"CP-{i:06d}") for i in range(1, 11)] == [
        False, True, False, True, True, True, False, False, True, False]
    both = tmp_path / "both.json"
    both.write_text(json.dumps({"plug_in_per_hour": 2, "case": [{"name": "a", "steps": [{"wait": 1}]}]}))
    assert load_scenario(both).generator and load_scenario(both).cases[0].name == "a"
    for data, message in (({"case": [{"name": "a", "steps": []}]}, "steps: expected a non-empty list"),
                          ({"case": [{"name": "a b", "steps": [{"wait": 1}]}]}, "name: expected"),
                          ({"case": [{"name": "a", "steps": [{"wait": 1}], "stations": ["0-3"]}]}, "range"),
                          ({"case": [{"name": "a", "steps": [{"wait": 1}], "when": 1}]}, "unknown key"),
                          ({"case": [{"name": "a", "steps": [{"wait": 1}]}] * 2}, "given twice")):
        (tmp_path / "bad.json").write_text(json.dumps(data))
        with pytest.raises(ScenarioError, match=message):
            load_scenario(tmp_path / "bad.json")
    with pytest.raises(CaseError, match="case 1 \\(a\\): step 1: expected exactly one"):
        parse_cases([{"name": "a", "steps": [{"nap": 1}]}])


def test_builtin_cases_per_version_and_the_case_option() -> None:
    assert list(builtin_cases("1.6")) == list(builtin_cases("2.0.1")) == [
        "cold-boot", "regular-session", "invalid-tag", "offline-session", "fault-during-session"]
    v16, v201 = builtin_cases("1.6"), builtin_cases("2.0.1")
    assert {s.value for s in v16["regular-session"].steps if s.kind == "expect"} >= {"StartTransaction",
                                                                                     "StopTransaction"}
    assert "TransactionEvent" in {s.value for s in v201["regular-session"].steps if s.kind == "expect"}
    picked = resolve_case_names(["cold-boot", "regular-session:1-3,7,CP-000042"], "2.0.1")
    assert [c.name for c in picked] == ["cold-boot", "regular-session"]
    assert picked[0].selects(99, "CP-000099")
    assert [i for i in range(1, 10) if picked[1].selects(i, f"CP-{i:06d}")] == [1, 2, 3, 7]
    assert picked[1].selects(42, "CP-000042")
    assert len(resolve_case_names(["all"], "1.6")) == 5
    with pytest.raises(CaseError, match="unknown case 'nope'"):
        resolve_case_names(["nope"], "1.6")
    with pytest.raises(CaseError, match="given twice"):
        resolve_case_names(["all", "cold-boot"], "1.6")


def test_contains_and_substitute() -> None:
    frame = {"eventType": "Ended", "transactionInfo": {"stoppedReason": "Local", "id": "t"}, "seqNo": 0,
             "meterValue": [{"sampledValue": [{"value": 1.0}]}, {"x": 1}], "offline": True}
    assert contains(frame, {"transactionInfo": {"stoppedReason": "Local"}})
    assert contains(frame, {"meterValue": [{"x": 1}]})
    assert not contains(frame, {"transactionInfo": {"stoppedReason": "EVDisconnected"}})
    assert not contains(frame, {"seqNo": False})  # 0 is not false
    assert not contains(frame, {"offline": 1})
    assert not contains(frame, {"missing": None})
    assert substitute({"idTag": "{tag}", "l": ["{invalid_tag}"]}, {"tag": "A", "invalid_tag": "B"}) == {
        "idTag": "A", "l": ["B"]}


async def test_frame_log_pairs_answers_even_early_ones_and_trims() -> None:
    frames = FrameLog()
    frames.add("out", [2, "u1", "Authorize", {"idTag": "A"}])
    frames.add("in", [3, "u2", {"early": True}])  # the answer overtook the record of its CALL
    frames.add("out", [2, "u2", "StartTransaction", {"connectorId": 1}])
    frames.add("in", [4, "u1", "InternalError", "boom", {}])
    frames.add("in", [2, "c1", "RemoteStopTransaction", {"transactionId": 1}])
    a, s, r = frames.since(0)
    assert a.answered and a.error and a.result[0] == "InternalError"
    assert s.answered and s.result == {"early": True} and s.by_station
    assert not r.by_station and not r.answered
    frames.trim(2)
    assert frames.since(0) == [r] and frames.end == 3
    waiter = asyncio.ensure_future(frames.changed(5.0))
    await asyncio.sleep(0)
    frames.add("out", [3, "c1", {"status": "Accepted"}])
    await asyncio.wait_for(waiter, 1.0)
    assert r.answered and r.result == {"status": "Accepted"}


def test_judge_the_first_matching_call_decides_by_its_answer() -> None:
    frames = FrameLog()
    expect = parse_step({"expect": "Authorize", "payload": {"idTag": "A"},
                         "result": {"idTagInfo": {"status": "Accepted"}}}, "s")
    absent = parse_step({"absent": "StartTransaction"}, "s")
    frames.add("out", [2, "u0", "Authorize", {"idTag": "B"}])  # another card: not the one
    frames.add("in", [3, "u0", {"idTagInfo": {"status": "Accepted"}}])
    assert judge(frames.since(0), expect, expect.payload, expect.result) == (None, None)
    frames.add("out", [2, "u1", "Authorize", {"idTag": "A"}])
    assert judge(frames.since(0), expect, expect.payload, expect.result) == (None, None)  # unanswered yet
    frames.add("out", [2, "u2", "Authorize", {"idTag": "A"}])
    frames.add("in", [3, "u2", {"idTagInfo": {"status": "Accepted"}}])
    assert judge(frames.since(0), expect, expect.payload, expect.result) == (None, None)  # u1 decides
    frames.add("in", [3, "u1", {"idTagInfo": {"status": "Blocked"}}])
    assert judge(frames.since(0), expect, expect.payload, expect.result) == (
        False, 'Authorize {"idTag":"A"} answered {"idTagInfo":{"status":"Blocked"}}')
    assert judge(frames.since(2), expect, expect.payload, expect.result) == (True, None)
    assert judge(frames.since(0), expect, expect.payload, None) == (True, None)
    assert judge(frames.since(0), absent, None, None) == (None, None)  # holds at its deadline
    frames.add("out", [2, "u3", "StartTransaction", {"connectorId": 1}])
    assert judge(frames.since(0), absent, None, None) == (False, 'sent: {"connectorId":1}')
    from_csms = parse_step({"expect": "StartTransaction", "from_csms": True}, "s")
    assert judge(frames.since(0), from_csms, None, None) == (None, None)  # the station sent it, not the CSMS


def test_case_options_that_do_not_combine_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--csms", "ws://127.0.0.1:9/", "--stations", "2", "--dir", "/nonexistent/fleet"]
    assert fleet_main([*base, "--case", "nope"]) == 2
    assert "unknown case 'nope'" in capsys.readouterr().err
    assert fleet_main([*base, "--case", "all", "--start-sessions"]) == 2
    assert "--start-sessions and scripted cases" in capsys.readouterr().err


async def _ctl(directory: Path, *args: str) -> tuple[int, dict[str, Any]]:
    """`cpsim ctl --dir DIR --station CP-000009 ARGS...`, in this process (its blocking socket client)."""
    from simulator.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = await asyncio.to_thread(main, ["ctl", "--dir", str(directory), "--station", "CP-000009", *args])
    return code, json.loads(out.getvalue()) if out.getvalue() else {}


async def _ctl_verbs_drive_one_station(directory: Path) -> None:
    """Every `cpsim ctl` verb that makes sense for a fleet station, on CP-000009 (its only case, cold-boot, ran)
    while the fleet's other stations run their cases."""
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(ValueError, KeyError):
            code, reply = await _ctl(directory, "state")
            if code == 0 and reply["state"]["booted"]:
                break
        assert time.monotonic() < deadline, "CP-000009 not booted within 30 s"
        await asyncio.sleep(0.3)
    assert reply["state"]["station"] == "CP-000009"
    code, reply = await _ctl(directory, "plug", "1")
    assert code == 0 and reply["state"]["connectors"]["1"]["plugged"] is True
    for verb in (("ev", "1", "soc", "40"), ("ev", "1", "phases", "1"), ("ev", "1", "pause"), ("ev", "1", "charge"),
                 ("tap", "NOBODY")):  # the CSMS refuses NOBODY: no session
        assert (await _ctl(directory, *verb))[0] == 0, verb
    code, reply = await _ctl(directory, "fault", "1", "overtemp")
    assert code == 0 and reply["state"]["connectors"]["1"]["faults"] == ["overtemp"]
    code, reply = await _ctl(directory, "clear", "1")
    assert code == 0 and reply["state"]["connectors"]["1"]["faults"] == []
    code, reply = await _ctl(directory, "unplug", "1")
    assert code == 0 and reply["state"]["connectors"]["1"]["plugged"] is False
    assert (await _ctl(directory, "offline", "60"))[0] == 0
    assert (await _ctl(directory, "online"))[0] == 0
    code, reply = await _ctl(directory, "plug", "2")
    assert code == 1 and reply["error"] == "no connector 2 (have 1..1)"
    code, reply = await _ctl(directory, "site", "load", "3")
    assert code == 1 and "unknown command 'site'" in reply["error"]


@pytest.mark.timeout(90)
async def test_builtin_cases_on_selections_of_a_201_fleet_and_a_failing_case_with_its_reason(tmp_path: Path) -> None:
    n = 9  # CP-000009 runs only cold-boot, then `cpsim ctl` drives it
    log = tmp_path / "csms.jsonl"
    csms = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulator.cli", "csms", "--ocpp", "2.0.1", "--port", "0", "--interval", "60",
        "--accept", "FLEET-TAG", "--log", str(log), stdout=asyncio.subprocess.PIPE, cwd=REPO,
    )
    directory = Path(tempfile.mkdtemp(prefix="fleetc", dir="/tmp"))
    scenario = tmp_path / "cases.toml"
    scenario.write_text('[[case]]\nname = "csms-starts-remotely"\nstations = ["CP-000008"]\n'
                        'steps = [{expect = "RequestStartTransaction", from_csms = true, within = 1}]\n')
    fleet = None
    try:
        assert csms.stdout is not None
        url = json.loads(await asyncio.wait_for(csms.stdout.readline(), 20))["url"]
        fleet = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "simulator.cli", "fleet", "--csms", url, "--stations", str(n), "--ocpp", "2.0.1",
            "--dir", str(directory), "--ramp", "500", "--progress", "1", "--scenario", str(scenario),
            "--case", "cold-boot", "--case", "regular-session:1-4", "--case", "offline-session:1-2",
            "--case", "invalid-tag:3-6", "--case", "fault-during-session:5-8",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
        )
        await _ctl_verbs_drive_one_station(directory)
        out, err = await asyncio.wait_for(fleet.communicate(), 75)  # it stops by itself once the cases ran
        assert fleet.returncode == 1, err.decode()[-3000:]  # the one failing case
        report = json.loads(out.decode().strip().splitlines()[-1])
        assert re.search(r" cases \d+/24 pass \d+ fail [01]\n", err.decode())  # the progress line
    finally:
        for process in (fleet, csms):
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()
        shutil.rmtree(directory, ignore_errors=True)
    cases = report["cases"]
    assert (cases["stations"], cases["stations_done"], cases["runs"], cases["passed"]) == (n, n, 24, 23)
    by_case = {name: (c["passed"], c["failed"]) for name, c in cases["by_case"].items()}
    assert by_case == {"cold-boot": (9, 0), "regular-session": (4, 0), "offline-session": (2, 0),
                       "invalid-tag": (4, 0), "fault-during-session": (4, 0), "csms-starts-remotely": (0, 1)}, \
        json.dumps(cases)
    assert cases["by_case"]["csms-starts-remotely"]["first_failures"] == [
        {"station": "CP-000008", "reason": "step 1 (expect CSMS RequestStartTransaction): "
                                           "no RequestStartTransaction within 1 s"}]
    assert cases["by_case"]["cold-boot"]["reference"].startswith("OCTT 2.0.1 TC_B_01_CS")

    # What the CSMS received: every transaction Started once and Ended once, its seqNo gap-free from 0.
    events: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        frame = entry["frame"]
        if entry["dir"] == "in" and frame[0] == 2 and frame[2] == "TransactionEvent":
            events[(entry["cp"], frame[3]["transactionInfo"]["transactionId"])].append(frame[3])
    per_station: dict[str, int] = defaultdict(int)
    for (cp, _), tx in events.items():
        per_station[cp] += 1
        kinds = [e["eventType"] for e in tx]
        assert kinds.count("Started") == 1 and kinds.count("Ended") == 1, (cp, kinds)
        assert sorted(e["seqNo"] for e in tx) == list(range(len(tx))), (cp, tx)
    # 1-2: regular + offline, 3-4: regular, 5-6: fault, 7-8: fault; the invalid cards start nothing (CP-000009's
    # NOBODY either).
    assert dict(per_station) == {"CP-000001": 2, "CP-000002": 2, "CP-000003": 1, "CP-000004": 1,
                                 "CP-000005": 1, "CP-000006": 1, "CP-000007": 1, "CP-000008": 1}
    offline = [e for (cp, _), tx in events.items() for e in tx if e["eventType"] == "Started" and e.get("offline")]
    assert sorted(e["evse"]["id"] for e in offline) == [1, 1]
