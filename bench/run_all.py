"""`make bench`: run every benchmark in bench/, collect their JSON into bench/results.json and a table
in the README (between the BENCH markers), with the machine described. Some scripts also run in other
modes (MODES: safety_latency.py and safety_latency.py --hostile [--ocpp 2.0.1]; boot_time, outbox_replay and
footprint with --ocpp 2.0.1 beside 1.6); those are shown side by side.

``--only NAME ...`` runs just those benchmarks (all their modes) and merges them into the existing
results.json; the README then says which were measured on which day.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BEGIN, END = "<!-- BENCH:BEGIN -->", "<!-- BENCH:END -->"
# script -> (result name, extra arguments) of each run; scripts not listed run once without arguments.
MODES: dict[str, list[tuple[str, list[str]]]] = {
    "safety_latency.py": [("safety_latency", []), ("safety_latency_hostile", ["--hostile"]),
                          ("safety_latency_hostile_single", ["--hostile", "--single-process"]),
                          # issue 14: a 2.0.1 CSMS asking for the largest composite schedules and reports
                          ("safety_latency_hostile_201", ["--hostile", "--ocpp", "2.0.1"])],
    # issue 13: the same figures with the agent speaking OCPP 2.0.1 (`--ocpp 2.0.1`), beside 1.6.
    **{f"{stem}.py": [(stem, []), (f"{stem}_201", ["--ocpp", "2.0.1"])]
       for stem in ("boot_time", "outbox_replay", "footprint")},
    "send_path.py": [("send_path", ["--ocpp", "1.6"]), ("send_path_201", ["--ocpp", "2.0.1"])],
}
# Result names shown in one table, one column each, instead of in the main table.
SIDE_BY_SIDE = {"safety_latency": {"safety_latency": "default", "safety_latency_hostile": "--hostile",
                                    "safety_latency_hostile_single": "--hostile --single-process",
                                    "safety_latency_hostile_201": "--hostile --ocpp 2.0.1"},
                **{stem: {stem: "OCPP 1.6", f"{stem}_201": "OCPP 2.0.1"}
                   for stem in ("boot_time", "outbox_replay", "footprint", "send_path")}}


def machine() -> dict[str, object]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date": time.strftime("%Y-%m-%d"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run the benchmarks in bench/")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="just these scripts (stem), merged into results.json")
    args = parser.parse_args(argv)
    results: dict[str, object] = {"machine": machine(), "benchmarks": {}, "measured": {}}
    if args.only and (HERE / "results.json").exists():
        previous = json.loads((HERE / "results.json").read_text())
        dates = previous.get("measured", {})
        for name in previous.get("benchmarks", {}):
            dates.setdefault(name, previous["machine"]["date"])
        results = {**previous, "measured": dates}
    failed = []
    for script in sorted(HERE.glob("*.py")):
        if script.name in {"run_all.py"} or script.name.startswith("_"):
            continue
        if args.only and script.stem not in args.only:
            continue
        for name, extra in MODES.get(script.name, [(script.stem, [])]):
            print(f"== {script.name} {' '.join(extra)}", flush=True)
            proc = subprocess.run([sys.executable, str(script), *extra], cwd=ROOT, capture_output=True, text=True,
                                  timeout=900)
            if proc.returncode != 0:
                print(proc.stderr[-2000:], file=sys.stderr)
                failed.append(name)
                continue
            try:
                figures = json.loads(proc.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                failed.append(name)
                continue
            print(json.dumps(figures, indent=2))
            results["benchmarks"][name] = figures  # type: ignore[index]
            results["measured"][name] = time.strftime("%Y-%m-%d")  # type: ignore[index]
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    update_readme(results)
    return 1 if failed else 0


def met(value: object, goal: object) -> str:
    if not isinstance(goal, str) or goal[:2] not in ("<=", ">=") or not isinstance(value, int | float):
        return ""
    limit = float(goal[2:].strip().split()[0])
    return "yes" if (value <= limit if goal.startswith("<=") else value >= limit) else "NO"


def side_by_side(title: str, columns: list[tuple[str, dict[str, object]]], when: str) -> list[str]:
    """One row per figure, one column per mode; per-kind figures flattened as "p99_ms C->B"."""
    rows: dict[str, list[object]] = {}
    goals: dict[str, object] = {}
    for i, (_, figures) in enumerate(columns):
        goals.update(figures.get("goals", {}))  # type: ignore[call-overload]
        flat: dict[str, object] = {}
        for key, value in figures.items():
            if key in ("goals", "notes", "mode"):
                continue
            if key == "per_kind" and isinstance(value, dict):
                for kind, per in value.items():
                    for figure in ("p99_ms", "max_ms"):
                        flat[f"{figure} {kind}"] = per.get(figure, "")
            elif not isinstance(value, dict | list):
                flat[key] = value
        for key, value in flat.items():
            rows.setdefault(key, [""] * len(columns))[i] = value
    names = " | ".join(name for name, _ in columns)
    out = ["", f"{title}, measured {when}:", "", f"| figure | {names} | goal | met |",
           "|---|" + "---|" * len(columns) + "---|---|"]
    for key, values in rows.items():
        goal = goals.get(key, "")
        verdict = " / ".join(met(v, goal) for v in values) if goal else ""
        out.append(f"| {key} | {' | '.join(str(v) for v in values)} | {goal} | {verdict} |")
    return out


def update_readme(results: dict[str, object]) -> None:
    m = results["machine"]
    benchmarks: dict[str, dict[str, object]] = results["benchmarks"]  # type: ignore[assignment]
    dates: dict[str, str] = results.get("measured", {})  # type: ignore[assignment]
    grouped = {name for modes in SIDE_BY_SIDE.values() for name in modes}
    rows = [f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, measured {m['date']}"  # type: ignore[index]
            + "".join(f" ({name}: {day})" for name, day in dates.items()
                      if name in benchmarks and name not in grouped and day != m["date"])  # type: ignore[index]
            + ".", "", "| benchmark | figure | value | goal | met |", "|---|---|---|---|---|"]
    for bench, figures in benchmarks.items():
        if bench in grouped:
            continue
        goals = figures.get("goals", {})
        for key, value in figures.items():
            if key in ("goals", "n", "notes") or isinstance(value, dict | list):
                continue
            goal = goals.get(key, "")  # type: ignore[attr-defined]
            rows.append(f"| {bench} | {key} | {value} | {goal} | {met(value, goal)} |")
    for script, modes in SIDE_BY_SIDE.items():
        present = [name for name in modes if name in benchmarks]
        if present:
            when = ", ".join(sorted({dates.get(name, str(m["date"])) for name in present}))  # type: ignore[index]
            rows += side_by_side(f"`bench/{script}.py`, both modes side by side", [
                (modes[name], benchmarks[name]) for name in present], when)
    readme = ROOT / "README.md"
    text = readme.read_text()
    table = "\n".join(rows)
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = f"{head}{BEGIN}\n{table}\n{END}{tail}"
    else:
        text += f"\n## Benchmarks (`make bench`)\n\n{BEGIN}\n{table}\n{END}\n"
    readme.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
