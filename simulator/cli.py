"""`cpsim`: the bus-level simulator of a whole chargepoint, its control client and a small CSMS."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import sys
from pathlib import Path

from simulator.faults import FAULTS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cpsim", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start simulated hardware and write DIR/agent.toml")
    up.add_argument("--dir", required=True, type=Path)
    up.add_argument("--connectors", type=int, default=1)
    up.add_argument("--csms", help="CSMS endpoint URL for the agent (default: start the bundled CSMS)")
    up.add_argument("--no-csms", action="store_true", help="no OCPP at all")
    up.add_argument("--id", default="CP001", help="charge point id")
    up.add_argument("--meter", choices=["tcp", "rtu"], default="tcp", help="rtu: every meter on one pty, ids 1..N")
    up.add_argument("--meter-model", choices=["sdm630", "sdm120", "abb_b23", "em340", "ocmf"], default="sdm630")
    up.add_argument("--fixed-cable", action="store_true")
    up.add_argument("--max-current", type=float, default=32.0)
    up.add_argument("--board", choices=["pilot", "openevse", "can"], default="pilot",
                    help="pilot/relay board to emulate (can: needs python-can-remote for the agent to join)")
    up.add_argument("--reader", choices=["rdm6300", "pn532"], default="rdm6300", help="RFID reader to emulate")
    up.add_argument("--display", choices=["console", "nextion"], default="console", help="display to emulate")
    up.add_argument("--security-profile", type=int, choices=[0, 1, 2, 3], default=0,
                    help="OCPP security profile for the agent (2/3 need --csms wss://...)")
    up.add_argument("--password", help="Basic-auth password (profiles 1/2); the bundled CSMS then requires it")
    up.add_argument("--ca", type=Path, help="CA certificate (PEM) that signed the CSMS's TLS certificate")
    up.add_argument("--client-cert", type=Path, help="client certificate (PEM) for profile 3")
    up.add_argument("--client-key", type=Path, help="its private key (PEM) for profile 3")
    up.add_argument("--ocpp", choices=["1.6", "2.0.1", "auto"],
                    help="[ocpp] version written for the agent and spoken by the bundled CSMS "
                         "(default: none written, the agent offers both, the bundled CSMS speaks 1.6)")
    up.add_argument("--ev-phases", type=int, choices=[1, 3], default=3, help="phases each simulated EV charges on")
    up.add_argument("--site-fuse", type=float, metavar="A",
                    help="simulate the grid connection (main fuse A per phase) with a site meter, and write [site]")
    up.add_argument("--site-meter", choices=["tcp", "rtu"], default="tcp",
                    help="site meter transport (rtu: on the connector meters' line when --meter rtu)")
    up.add_argument("--site-mode", choices=["off", "grid-limit", "solar", "solar+min"], default="grid-limit")
    up.add_argument("--site-rotation", action="store_true",
                    help="wire connector n's L1 to site phase n (mod 3), written as connectors[].site_phases")
    up.add_argument("-v", "--verbose", action="store_true")

    # Listed for `cpsim --help` only: main() hands `csms` and `fleet` to their own parsers before this one.
    sub.add_parser("csms", help="the bundled OCPP 1.6J / 2.0.1 central system (cpsim csms --help)")
    sub.add_parser("fleet", help="N real agents in one process against one CSMS (cpsim fleet --help)")
    ctl = sub.add_parser("ctl", help="drive a running simulator")
    ctl.add_argument("--dir", required=True, type=Path)
    ctl.add_argument("--station", help="a station of a running `cpsim fleet` on DIR (e.g. CP-000042)")
    csub = ctl.add_subparsers(dest="action", required=True)
    for name in ("plug", "unplug", "clear"):
        csub.add_parser(name).add_argument("connector", type=int)
    csub.add_parser("tap").add_argument("id_tag")
    ev = csub.add_parser("ev")
    ev.add_argument("connector", type=int)
    ev.add_argument("mode", choices=["charge", "pause", "ventilation", "soc", "phases"])
    ev.add_argument("value", nargs="?", type=float)
    fault = csub.add_parser("fault")
    fault.add_argument("connector", type=int)
    fault.add_argument("name", choices=sorted(FAULTS))
    site = csub.add_parser("site", help="the grid connection: house load, PV (kW), a time,kW profile, meter silent")
    site_sub = site.add_subparsers(dest="site_action", required=True)
    site_sub.add_parser("load").add_argument("kw", type=float)
    site_sub.add_parser("pv").add_argument("kw", type=float)
    profile = site_sub.add_parser("profile", help="time,kW rows (house load) or time,load_kW,pv_kW rows")
    profile.add_argument("file", type=Path)
    profile.add_argument("--pv", action="store_true", help="a time,kW file is the PV production")
    profile.add_argument("--speed", type=float, default=1.0, help="profile seconds per real second")
    site_sub.add_parser("silent").add_argument("on", choices=["on", "off"])
    csub.add_parser("state")
    csub.add_parser("offline", help="fleet: cut the station's CSMS link, refuse its dials for SECONDS") \
        .add_argument("seconds", type=float)
    csub.add_parser("online", help="fleet: allow the station's dials again (ends an offline)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "csms":
        from simulator.csms import main as csms_main

        return csms_main(argv[1:])
    if argv and argv[0] == "fleet":
        from simulator.fleet.cli import main as fleet_main

        return fleet_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "up":
        from simulator.rig import RigOptions, run_rig

        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                            format="%(asctime)s cpsim %(levelname)s %(name)s: %(message)s")
        if args.connectors < 1 or args.connectors > 16:
            print("cpsim up: --connectors must be 1..16", file=sys.stderr)
            return 2
        if args.site_fuse is not None and not 6 <= args.site_fuse <= 1000:
            print("cpsim up: --site-fuse must be 6..1000 A", file=sys.stderr)
            return 2
        options = RigOptions(
            directory=args.dir.resolve(),
            connectors=args.connectors,
            csms_url=None if args.no_csms else args.csms,
            bundled_csms=not args.no_csms and not args.csms,
            charge_point_id=args.id,
            meter_transport=args.meter,
            meter_model=args.meter_model,
            fixed_cable=args.fixed_cable,
            max_current_a=args.max_current,
            board=args.board,
            reader=args.reader,
            display=args.display,
            can_bus="remote",  # the agent runs in another process: only a bridged bus reaches it
            security_profile=args.security_profile,
            password=args.password,
            ca_file=args.ca.resolve() if args.ca else None,
            client_cert=args.client_cert.resolve() if args.client_cert else None,
            client_key=args.client_key.resolve() if args.client_key else None,
            ocpp_version=args.ocpp,
            site_fuse_a=args.site_fuse,
            site_meter=args.site_meter,
            site_mode=args.site_mode,
            ev_phases=args.ev_phases,
            site_rotation=args.site_rotation,
        )
        problem = options.security_problem()
        if problem:
            print(f"cpsim up: {problem}", file=sys.stderr)
            return 2
        if args.board == "can" and importlib.util.find_spec("can_remote") is None:
            print("cpsim up: --board can needs python-can-remote (the agent joins the bus over a websocket on "
                  "127.0.0.1); pip install python-can-remote", file=sys.stderr)
            return 2
        return asyncio.run(run_rig(options))
    from simulator.control import RigUnreachable, send

    request: dict[str, object] = {"cmd": args.action}
    if args.station:
        request["station"] = args.station
    if args.action in ("plug", "unplug", "clear"):
        request["connector"] = args.connector
    elif args.action == "tap":
        request["id_tag"] = args.id_tag
    elif args.action == "ev":
        request.update(connector=args.connector, action=args.mode)
        if args.mode in ("soc", "phases"):
            if args.value is None:
                print(f"cpsim ctl ev N {args.mode} {'PCT' if args.mode == 'soc' else '1|3'}: missing value",
                      file=sys.stderr)
                return 2
            request["value"] = args.value
    elif args.action == "fault":
        request.update(connector=args.connector, name=args.name)
    elif args.action == "offline":
        request["value"] = args.seconds
    elif args.action == "site":
        request["action"] = args.site_action
        if args.site_action in ("load", "pv"):
            request["value"] = args.kw
        elif args.site_action == "profile":
            request.update(file=str(args.file.resolve()), pv=args.pv, speed=args.speed)
        elif args.site_action == "silent":
            request["value"] = args.on == "on"
    try:
        reply = send(args.dir, request)
    except RigUnreachable as exc:
        print(f"cpsim ctl: {exc}", file=sys.stderr)
        return 3
    print(json.dumps(reply, indent=2))
    return 0 if reply.get("ok") else 1


if __name__ == "__main__":
    raise SystemExit(main())
