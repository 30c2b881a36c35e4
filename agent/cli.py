"""`cpagent`: run the agent on a device, or play the built-in demo against the simulator."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from agent import __version__
from agent.paths import DEFAULT_CONFIG_PATH

# The rest is imported where it is used: `cpagent run` is a supervisor process for the agent's whole life
# and imports almost nothing (agent/split_supervisor.py).
if TYPE_CHECKING:
    from agent.config import AgentConfig

log = logging.getLogger("cpagent")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cpagent", description="EV chargepoint agent")
    p.add_argument("--version", action="version", version=f"cpagent {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent: the control and the network side as two processes")
    run.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH)
    run.add_argument("-v", "--verbose", action="store_true")
    run.add_argument("--single-process", action="store_true",
                     help="both sides in one process and one event loop (development; no safety isolation)")
    for role, what in (("control", "drivers, IEC 61851 control, sessions"), ("network", "OCPP, diagnostic socket")):
        side = sub.add_parser(role, help=f"one side of `cpagent run` ({what}); started by it")
        side.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH)
        side.add_argument("-v", "--verbose", action="store_true")
    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH)
    sim = sub.add_parser("sim", help="start the simulator and the agent and play a charging session")
    sim.add_argument("--connectors", type=int, default=1)
    sim.add_argument("--charge-seconds", type=float, default=20.0)
    sim.add_argument("--dir", type=Path, help="keep the rig in this directory (default: a temp dir)")
    sim.add_argument("--scenario", choices=("session", "smart-charging", "solar"), default="session",
                     help="smart-charging: a CSMS TxProfile limits the running session, then is cleared (with "
                     "--ocpp 2.0.1: two EVSEs share a ChargingStationMaxProfile, a TxProfile lowers one); "
                     "solar: two EVs share the PV surplus of a compressed day (writes a plot)")
    sim.add_argument("--ocpp", choices=("1.6", "2.0.1"), default="1.6",
                     help="the OCPP version the rig's CSMS and the agent speak in the demo")
    sim.add_argument("-v", "--verbose", action="store_true")
    return p


def _parse_or_exit(path: Path, role: str) -> AgentConfig:
    """The parsed configuration without the pre-flight checks (see `main`)."""
    from agent.config import ConfigError, load
    from agent.split_supervisor import side_config_error

    try:
        return load(path)
    except ConfigError as exc:
        line = f"cpagent: configuration error: {exc}"
        if not side_config_error(role, line):  # under `cpagent run` the supervisor prints it, once
            print(line, file=sys.stderr)
        raise SystemExit(2) from exc


def load_or_exit(path: Path) -> AgentConfig:
    """The parsed configuration, checked against what it refers to (OCPP key presets, TLS files, the
    state directory): a configuration that cannot run exits 2 here, for check-config and run alike."""
    from agent import preflight
    from agent.config import ConfigError, load

    try:
        config = load(path)
        preflight.check(config)
        return config
    except ConfigError as exc:
        print(f"cpagent: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


async def run_agent(config: AgentConfig) -> int:
    import asyncio

    from agent.config import ConfigError
    from agent.station import Station
    from hal import DeviceError
    from hal.tasks import cancel_and_wait

    try:
        station = Station(config)
    except (DeviceError, ConfigError) as exc:
        print(f"cpagent: configuration error: {exc}", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    from agent.ocpp.runner import make_runner, run_until_stopped
    from agent.sdnotify import SystemdIntegration

    # The outbox opens (in the service) before READY=1 is sent.
    try:
        service = make_runner(station, config)  # the OCPP version's service ([ocpp] version)
    except ConfigError as exc:  # preflight.check found none; never a traceback and exit 1 for one
        station.close()
        print(f"cpagent: configuration error: {exc}", file=sys.stderr)
        return 2
    systemd = SystemdIntegration(station)  # READY=1, watchdog and STATUS= when run by systemd
    task = asyncio.create_task(station.run(ready=systemd.ready))
    status = await run_until_stopped(station, config, stop, service)  # OCPP when ocpp.endpoint is set
    await systemd.stop()
    await cancel_and_wait(task)
    station.close()
    return status  # 75 after an OCPP Reset: systemd starts the agent again


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "check-config":
        from agent.config import ConfigError
        from hal import DeviceError

        config = load_or_exit(args.config)
        try:
            from agent.station import build_devices

            devices = build_devices(config)
            if config.site.enabled:  # the [site] meter must provide the site_meter role
                from agent.energy.site import find_site_meter

                find_site_meter(config.site, devices)
        except (DeviceError, ConfigError) as exc:
            print(f"cpagent: configuration error: {exc}", file=sys.stderr)
            return 2
        print(f"{args.config}: ok ({len(config.connectors)} connector(s), {len(config.devices)} device(s))")
        return 0
    if args.command == "run" and not args.single_process:
        from agent.split_supervisor import run_supervised

        return run_supervised(args.config, verbose=args.verbose)
    import asyncio

    if args.command in ("run", "control", "network"):
        # In the two-process agent the network side makes the pre-flight checks (OCPP key presets, TLS files,
        # state_dir) with the code it imports anyway, before either side starts (agent/split.py), so neither
        # the supervisor nor the control side carries the OCPP stack the checks import.
        split_side = args.command != "run" or not args.single_process
        config = _parse_or_exit(args.config, args.command) if split_side else load_or_exit(args.config)
        from agent.logsetup import setup_logging

        setup_logging(config.log_levels, verbose=args.verbose)
        if args.command == "run" and args.single_process:
            return asyncio.run(run_agent(config))
        from agent import split
        from agent.config import ConfigError
        from hal import DeviceError

        if not split.prepare(args.command, config):
            return 0  # the supervisor stopped before giving the go (a failed pre-flight check)
        try:
            return asyncio.run(split.run_control(config) if args.command == "control" else split.run_network(config))
        except (DeviceError, ConfigError) as exc:
            print(f"cpagent: configuration error: {exc}", file=sys.stderr)
            return 2
    # The only place agent/ touches simulator/: lazily, for `cpagent sim` (tests/test_layering.py).
    from simulator.demo import run_demo

    logging.getLogger().setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    return asyncio.run(run_demo(args.connectors, args.charge_seconds, args.dir, args.scenario, args.ocpp))


if __name__ == "__main__":
    raise SystemExit(main())
