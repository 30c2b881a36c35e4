"""`make bench`: run every benchmark in bench/, collect their JSON into bench/results.json and a table
in the README (between the BENCH markers), with the machine described."""

from __future__ import annotations

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


def main() -> int:
    results: dict[str, object] = {"machine": machine(), "benchmarks": {}}
    failed = []
    for script in sorted(HERE.glob("*.py")):
        if script.name in {"run_all.py"} or script.name.startswith("_"):
            continue
        print(f"== {script.name}", flush=True)
        proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            failed.append(script.name)
            continue
        try:
            figures = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            failed.append(script.name)
            continue
        print(json.dumps(figures, indent=2))
        results["benchmarks"][script.stem] = figures  # type: ignore[index]
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    update_readme(results)
    return 1 if failed else 0


def update_readme(results: dict[str, object]) -> None:
    m = results["machine"]
    rows = [f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, measured {m['date']}.", "",  # type: ignore[index]
            "| benchmark | figure | value | goal | met |", "|---|---|---|---|---|"]
    for bench, figures in results["benchmarks"].items():  # type: ignore[attr-defined]
        goals = figures.get("goals", {})
        for key, value in figures.items():
            if key in ("goals", "n", "notes") or isinstance(value, dict | list):
                continue
            goal = goals.get(key, "")
            met = ""
            if isinstance(goal, str) and goal[:2] in ("<=", ">="):
                limit = float(goal[2:].strip().split()[0])
                met = "yes" if (value <= limit if goal.startswith("<=") else value >= limit) else "NO"
            rows.append(f"| {bench} | {key} | {value} | {goal} | {met} |")
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
