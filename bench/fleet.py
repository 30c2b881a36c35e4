"""`cpsim fleet` at N = 100 and 1000 (and 5000 with --with-5000) against the bundled CSMS in its own process.

Per N, a fresh --dir, `cpsim fleet --start-sessions` (one transaction per station, started 1-10 s after its
boot), HeartbeatInterval 60 (the CSMS's BootNotification interval), MeterValues every 60 s
(Energy.Active.Import.Register + Power.Active.Import, MeterValueSampleInterval 60), no WebSocket
compression. Measured from /proc: peak RSS while booting (VmHWM when the last station is booted), time until
every station is booted (the fleet's own line) and the CPU seconds each process used until then (the fleet's
from its start, imports included, sessions started by then included; the CSMS's, fresh for each N), then
after a settle of 15 s a steady window of --window
seconds (default 60: one heartbeat and one MeterValues per station): mean RSS and CPU (utime+stime, % of one
core) of the fleet process, and of the CSMS process apart. The fleet then gets SIGTERM (every session stopped)
and its final JSON gives the CALL -> CALLRESULT latency (p50/p99/max) and the CALLs answered later than 1 s.

From the runs: per-station marginal cost by a least-squares fit over N (kB of steady RSS per station, CPU-ms
per station-minute), and the largest N measured with every CALL answered within 1 s.

    python bench/fleet.py [--window S] [--with-5000] [--n 100 1000 ...] [--tmpfs]

--tmpfs puts the stations' SQLite files on /dev/shm (kill -9 of the fleet still loses nothing: the files
outlive the process; only a crash of the machine would), to separate the disk's fsync cost from ours.
Prints JSON. The CSMS and the fleet never outlive the bench: SIGTERM / SIGHUP / Ctrl-C / an exception stop them
in its finally blocks, and the kernel kills them if the bench dies otherwise (kill -9: PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
SETTLE_S = 15.0


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key}")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares y = a + b x; returns (a, b)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return my - b * mx, b


_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: no dlopen between fork and exec
_PR_SET_PDEATHSIG = 1
_BENCH_PID = os.getpid()


def _die_with_the_bench() -> None:
    """preexec_fn of the CSMS and the fleet: SIGKILL when the bench ends, however (kill -9 included)."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != _BENCH_PID:  # the bench already gone before the line above
        os.kill(os.getpid(), signal.SIGKILL)


def _stop_on_signals() -> None:
    """SIGTERM / SIGHUP end the bench as Ctrl-C does: by an exception, so every finally stops what it started."""
    def stop(signum: int, _: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)


def start_csms() -> tuple[subprocess.Popen[str], str]:
    csms = subprocess.Popen(
        [sys.executable, "-m", "simulator.cli", "csms", "--port", "0", "--interval", "60", "--accept", "FLEET-TAG"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT, preexec_fn=_die_with_the_bench,
    )
    try:
        assert csms.stdout is not None
        return csms, json.loads(csms.stdout.readline())["url"]
    except BaseException:
        csms.kill()
        csms.wait()
        raise


def run_one(n: int, url: str, csms_pid: int, window_s: float, tmpfs: bool) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="fleetbench", dir="/dev/shm" if tmpfs else "/tmp"))
    fleet = subprocess.Popen(
        [sys.executable, "-m", "simulator.cli", "fleet", "--csms", url, "--stations", str(n), "--dir", str(base),
         "--start-sessions", "--ramp", "1000", "--quiet", "--tag", "FLEET-TAG"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT, preexec_fn=_die_with_the_bench,
    )
    lines: list[str] = []
    booted = threading.Event()

    def read() -> None:
        assert fleet.stdout is not None
        for line in fleet.stdout:
            lines.append(line)
            if "stations booted in" in line:
                booted.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    t0 = time.monotonic()
    try:
        if not booted.wait(timeout=600):
            raise RuntimeError(f"N={n}: not all stations booted within 600 s")
        boot_cpu_s, csms_boot_cpu_s = cpu_s(fleet.pid), cpu_s(csms_pid)  # the CSMS is fresh for each N
        boot_line = next(line for line in lines if "stations booted in" in line)
        all_booted_s = float(boot_line.split(" in ")[1].split()[0])
        peak_boot_kb = status_kb(fleet.pid, "VmHWM")
        time.sleep(SETTLE_S)
        c0, s0, w0 = cpu_s(fleet.pid), cpu_s(csms_pid), time.monotonic()
        samples: list[int] = []
        csms_samples: list[int] = []
        while time.monotonic() - w0 < window_s:
            samples.append(status_kb(fleet.pid, "VmRSS"))
            csms_samples.append(status_kb(csms_pid, "VmRSS"))
            time.sleep(1.0)
        c1, s1, w1 = cpu_s(fleet.pid), cpu_s(csms_pid), time.monotonic()
        peak_kb = status_kb(fleet.pid, "VmHWM")
        fleet.send_signal(signal.SIGTERM)
        fleet.wait(timeout=120)
        reader.join(timeout=10)
        report = json.loads(lines[-1])
    finally:
        if fleet.poll() is None:
            fleet.kill()
            fleet.wait()
        shutil.rmtree(base, ignore_errors=True)
    lat = report["latency"]["all"]
    return {
        "n": n,
        "all_booted_s": round(all_booted_s, 1),
        "boot_cpu_s": round(boot_cpu_s, 2), "csms_boot_cpu_s": round(csms_boot_cpu_s, 2),
        "boot_cpu_ms_per_station": round(1000.0 * boot_cpu_s / n, 2),
        "peak_rss_boot_mb": round(peak_boot_kb / 1024, 1),
        "peak_rss_run_mb": round(peak_kb / 1024, 1),
        "steady_rss_mb": round(sum(samples) / len(samples) / 1024, 1),
        "cpu_pct": round(100.0 * (c1 - c0) / (w1 - w0), 2),
        "csms_cpu_pct": round(100.0 * (s1 - s0) / (w1 - w0), 2),
        "csms_rss_mb": round(sum(csms_samples) / len(csms_samples) / 1024, 1),
        "sessions_started": report.get("sessions_started"),
        "calls_answered": report["answered"],
        "latency_p50_ms": lat["p50_ms"], "latency_p99_ms": lat["p99_ms"], "latency_max_ms": lat["max_ms"],
        "answered_later_than_1s": report["answered_later_than_1s"],
        "call_errors": sum(report["call_errors"].values()),
        "wall_s": round(time.monotonic() - t0, 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, nargs="*", default=[100, 1000])
    p.add_argument("--with-5000", action="store_true", help="also N = 5000 (several minutes)")
    p.add_argument("--window", type=float, default=60.0, help="steady window in seconds")
    p.add_argument("--tmpfs", action="store_true", help="stations' SQLite files on /dev/shm")
    args = p.parse_args()
    _stop_on_signals()
    ns = sorted(set(args.n + ([5000] if args.with_5000 else [])))
    runs = []
    for n in ns:
        csms, url = start_csms()  # a fresh CSMS per N: its memory of earlier runs is not counted
        try:
            runs.append(run_one(n, url, csms.pid, args.window, args.tmpfs))
        finally:
            csms.send_signal(signal.SIGTERM)
            try:
                csms.wait(timeout=30)
            except subprocess.TimeoutExpired:
                csms.kill()
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    out: dict[str, Any] = {"runs": runs, "window_s": args.window, "tmpfs": args.tmpfs}
    if len(runs) >= 2:
        xs = [float(r["n"]) for r in runs]
        _, kb = fit(xs, [r["steady_rss_mb"] * 1024 for r in runs])
        _, cpu = fit(xs, [r["cpu_pct"] for r in runs])  # % of a core per station = 10 ms CPU per s per %
        out["marginal_kb_per_station"] = round(kb, 1)
        out["marginal_cpu_ms_per_station_minute"] = round(cpu / 100.0 * 60_000.0, 2)
    held = [r["n"] for r in runs if r["answered_later_than_1s"] == 0 and r["call_errors"] == 0]
    out["largest_n_all_calls_within_1s"] = max(held) if held else None
    out["goals_n1000"] = {"steady_rss_mb": 150, "peak_rss_mb": 270, "cpu_pct": 2.3, "all_booted_s": 10}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
