"""`cpsim fleet --csms URL --stations N [--connectors M] [--ocpp 1.6|2.0.1|auto] [--id-prefix CP-] [--dir DIR]
[--shard I/K] [--ramp PER_S] [--scenario FILE] [--start-sessions] [--metrics-port P]`"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import sys
from collections.abc import Callable
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cpsim fleet", description="N real agents in one process against one CSMS")
    p.add_argument("--csms", required=True, help="CSMS endpoint (ws:// or wss://); each station dials URL/<id>")
    p.add_argument("--stations", required=True, type=int, help="N: the fleet's size (all shards together)")
    p.add_argument("--connectors", type=int, default=1, help="connectors per station (1..4)")
    p.add_argument("--ocpp", choices=["1.6", "2.0.1", "auto"], default="1.6",
                   help="what every station speaks (default 1.6; auto: offers both, speaks what the CSMS selects)")
    p.add_argument("--id-prefix", default="CP-", help="station ids are PREFIX000001 ... (index 1..N)")
    p.add_argument("--dir", type=Path, default=Path("fleet"),
                   help="state: one SQLite file per station, the EVs (default ./fleet)")
    p.add_argument("--shard", default="0/1", help="I/K: run the stations whose index %% K == I")
    p.add_argument("--ramp", type=float, default=200.0, metavar="PER_S", help="stations started per second")
    p.add_argument("--scenario", type=Path, help="automatic transaction generator (TOML or JSON)")
    p.add_argument("--start-sessions", action="store_true",
                   help="every station plugs an EV and starts one long session 1-10 s after its boot")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus text on this port")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address of --metrics-port (0.0.0.0 in a pod)")
    p.add_argument("--tag", default="FLEET-TAG", help="the card --start-sessions taps (and cases' {tag}): "
                                                      "1..20 characters, 1..36 with --ocpp 2.0.1")
    p.add_argument("--case", action="append", default=[], metavar="NAME[:STATIONS]",
                   help="run a built-in scripted case on every station, or on STATIONS (e.g. 1-10,42,CP-000050) "
                        "(repeatable; 'all': every one, in order): cold-boot, regular-session, invalid-tag, "
                        "offline-session, fault-during-session; the fleet stops once every station ran its cases "
                        "(exit 0: all passed, 1: a failure)")
    p.add_argument("--invalid-tag", default="FLEET-BAD", help="a card the CSMS refuses (cases' {invalid_tag})")
    p.add_argument("--keep-running", action="store_true", help="with cases: do not stop once they have run")
    p.add_argument("--progress", type=float, default=5.0, metavar="S", help="progress line every S seconds")
    p.add_argument("--fsync", action="store_true",
                   help="fsync every durable commit, as a charger does (survives a power cut of this machine, not "
                        "only kill -9 of the fleet; slower on a real disk)")
    p.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], default="asyncio",
                   help="event loop: uvloop (libuv, about 15 %% less CPU per station) or the standard asyncio "
                        "loop (the default: the built-in case runner is not yet verified on uvloop); auto: uvloop "
                        "when installed (the 'fleet' extra)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def tag_limit(ocpp: str) -> int:
    """The longest card the agent sends: a 2.0.1 idToken (CiString36), a 1.6 idTag (CiString20); auto may
    end up speaking 1.6."""
    return 36 if ocpp == "2.0.1" else 20


def check_tag(what: str, tag: str, ocpp: str) -> None:
    limit = tag_limit(ocpp)
    if not 0 < len(tag) <= limit or any(c.isspace() for c in tag):
        kind = "idToken of OCPP 2.0.1" if ocpp == "2.0.1" else "idTag of OCPP 1.6" + (" (auto may speak 1.6)"
                                                                                       if ocpp == "auto" else "")
        raise ValueError(f"{what}: expected 1..{limit} characters without spaces (the {kind}), got {tag!r}")


# Open files a fleet process needs: one per station (its websocket; the SQLite files are the fleet's, shared by
# every station) and the fleet's own (its SQLite files, control socket, metrics server, a file being written).
FDS_PER_STATION = 1
FDS_SPARE = 64


def ensure_open_files(stations: int) -> int:
    """Raise the soft RLIMIT_NOFILE (towards the hard one) when ``stations`` need more open files than it allows;
    ValueError naming the limit when even the hard one is too low: the stations past it could not dial (EMFILE)
    and would redial with back-off for ever, never booting (N = 5000 at 4 files per station hit 20000)."""
    need = stations * FDS_PER_STATION + FDS_SPARE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return soft
    if hard == resource.RLIM_INFINITY or hard >= need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        return need
    raise ValueError(f"--stations: {stations} stations in this process need about {need} open files "
                     f"({FDS_PER_STATION} per station + {FDS_SPARE}), the limit is {soft} (hard {hard}): "
                     "raise `ulimit -n` or split the fleet with --shard I/K")


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from simulator.fleet.cases import CaseError, CasePlan, resolve_case_names
    from simulator.fleet.fleet import FleetOptions, parse_shard, run_fleet
    from simulator.fleet.scenario import ScenarioError, load_scenario

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.ERROR,
                        format="%(asctime)s fleet %(levelname)s %(name)s: %(message)s")
    try:
        shard = parse_shard(args.shard)
        if not 1 <= args.stations <= 1_000_000:
            raise ValueError("--stations must be 1..1000000")
        ensure_open_files(sum(1 for index in range(1, args.stations + 1) if index % shard[1] == shard[0]))
        if not 1 <= args.connectors <= 4:
            raise ValueError("--connectors must be 1..4")
        longest_id = f"{args.id_prefix}{args.stations:06d}"
        if len(longest_id) > 48 or any(c.isspace() for c in args.id_prefix):  # the agent's station.id rule
            raise ValueError(f"--id-prefix: station ids must be at most 48 characters without spaces, "
                             f"got {longest_id!r}")
        for flag, tag in (("--tag", args.tag), ("--invalid-tag", args.invalid_tag)):
            check_tag(flag, tag, args.ocpp)
        if args.ramp <= 0:
            raise ValueError("--ramp must be > 0")
        if not args.csms.startswith(("ws://", "wss://")):
            raise ValueError(f"--csms must be a ws:// or wss:// URL, got {args.csms!r}")
        if args.metrics_port is not None and not 0 < args.metrics_port < 65536:
            raise ValueError("--metrics-port must be 1..65535")
        scenario = load_scenario(args.scenario) if args.scenario else None
        for tag in (scenario.tags + scenario.invalid_tags) if scenario else ():
            check_tag(f"{args.scenario}: tags", tag, args.ocpp)
        cases = resolve_case_names(args.case, args.ocpp) + (scenario.cases if scenario else ())
        if len({c.name for c in cases}) != len(cases):
            raise ValueError("a [[case]] of --scenario has the name of a --case given too")
        if cases and args.start_sessions:
            raise ValueError("--start-sessions and scripted cases (--case, [[case]]) both drive connector 1: "
                             "give one of them")
        if scenario is not None and not scenario.generator:
            scenario = None  # the file holds only cases
        plan = CasePlan(cases, tag=args.tag, invalid_tag=args.invalid_tag,
                        stop_when_done=not args.keep_running) if cases else None
    except (ValueError, ScenarioError, CaseError) as exc:
        print(f"cpsim fleet: {exc}", file=sys.stderr)
        return 2
    options = FleetOptions(
        csms_url=args.csms, stations=args.stations, directory=args.dir.resolve(), connectors=args.connectors,
        ocpp=args.ocpp, id_prefix=args.id_prefix, shard=shard, ramp_per_s=args.ramp, scenario=scenario,
        start_sessions=args.start_sessions, metrics_port=args.metrics_port, metrics_host=args.metrics_host,
        progress_s=args.progress, tags=(args.tag,), quiet=args.quiet, cases=plan,
        fsync=args.fsync,
    )
    try:
        loop_factory = choose_loop(args.loop)
    except RuntimeError as exc:
        print(f"cpsim fleet: {exc}", file=sys.stderr)
        return 2
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(run_fleet(options))


def choose_loop(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop the fleet runs on: None is asyncio's own. The stations' code is the same either way
    (it uses only the asyncio API); uvloop runs its timers, callbacks and sockets in C, which is most of
    what N stations that each send a few frames a minute spend outside their own logic."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise RuntimeError("--loop uvloop: the uvloop package is not installed "
                               "(pip install 'chargepoint-agent[fleet]')") from None
        logging.getLogger("cpsim.fleet").warning("uvloop is not installed: the standard asyncio loop "
                                            "(pip install 'chargepoint-agent[fleet]' for less CPU)")
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
