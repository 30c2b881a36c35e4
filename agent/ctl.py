"""`cpctl`: the technician's view of a running agent, over its local diagnostic socket.

Exit codes: 0 ok, 1 the station reports a problem (or refused the command), 2 usage, 3 agent not
reachable. Every command takes --json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import os
import re
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from agent.config import DEFAULT_DIAG_SOCKET
from agent.redact import is_secret_name

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


class Unreachable(Exception):
    pass


class Client:
    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout

    def _connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(str(self.path))
        except FileNotFoundError as exc:
            s.close()
            raise Unreachable(f"no agent socket at {self.path}: is cpagent running "
                              "(systemctl status cpagent)? Is the path right (--socket)?") from exc
        except PermissionError as exc:
            s.close()
            raise Unreachable(f"permission denied on {self.path}: add yourself to the 'cpagent' group "
                              "(or use sudo)") from exc
        except OSError as exc:
            s.close()
            raise Unreachable(f"cannot connect to {self.path}: {exc.strerror or exc}; "
                              "check that cpagent is running (systemctl status cpagent)") from exc
        return s

    def request(self, cmd: str, **args: Any) -> dict[str, Any]:
        with self._connect() as s:
            s.sendall(json.dumps({"v": 1, "cmd": cmd, **args}).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                try:
                    chunk = s.recv(1 << 16)
                except TimeoutError as exc:
                    raise Unreachable(f"the agent at {self.path} did not answer within {self.timeout:.0f} s") from exc
                if not chunk:
                    raise Unreachable(f"the agent at {self.path} closed the connection without answering")
                buf += chunk
        reply: dict[str, Any] = json.loads(buf)
        return reply

    def stream(self, cmd: str, **args: Any) -> Iterator[dict[str, Any]]:
        s = self._connect()
        s.settimeout(None)
        with s:
            s.sendall(json.dumps({"v": 1, "cmd": cmd, **args}).encode() + b"\n")
            buf = b""
            while True:
                chunk = s.recv(1 << 16)
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    yield json.loads(line)


def parse_since(text: str) -> float:
    """'10m', '2h', '1d', epoch seconds, or an ISO 8601 time."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text)
    if m:
        return time.time() - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"cannot read time {text!r} (use 10m, 2h, epoch or ISO 8601)") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cpctl", description="Technician CLI for the chargepoint agent")
    p.add_argument("--socket", type=Path, default=Path(os.environ.get("CPAGENT_SOCKET", DEFAULT_DIAG_SOCKET)))
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_text)
        sp.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
        return sp

    add("status", "connectors and station at a glance")
    w = add("watch", "live refreshing status")
    w.add_argument("--interval", type=float, default=1.0)
    w.add_argument("--count", type=int, default=0, help="stop after N refreshes (0 = forever)")
    ev = add("events", "the persisted event log")
    ev.add_argument("--since", type=parse_since)
    ev.add_argument("--follow", "-f", action="store_true")
    ev.add_argument("--limit", type=int, default=200)
    add("faults", "active faults with explanation and remedy")
    m = add("meter", "latest meter reading of a connector")
    m.add_argument("connector", type=int)
    cfg = add("config", "OCPP configuration keys (1.6) or device model variables (2.0.1: Component/Variable)")
    csub = cfg.add_subparsers(dest="config_action", required=True)
    g = csub.add_parser("get")
    g.add_argument("key", nargs="?")
    g.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    st = csub.add_parser("set")
    st.add_argument("key")
    st.add_argument("value", help="the new value; '-' reads it from stdin (one line; not echoed on a terminal), "
                                  "which keeps a secret out of ps and the shell history")
    st.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    add("outbox", "queued transaction messages")
    se = add("sessions", "recent charging sessions")
    se.add_argument("--last", type=int, default=10)
    add("selftest", "board, meter, reader communication; relay weld check when no EV")
    mt = add("maintenance", "connector maintenance mode (Unavailable)")
    mt.add_argument("state", choices=["on", "off"])
    mt.add_argument("connector", type=int)
    r = add("relay", "drive the contactor (maintenance mode only)")
    r.add_argument("connector", type=int)
    r.add_argument("action", choices=["open", "close"])
    pw = add("pwm", "drive the pilot (maintenance mode only): 0 = F, 100 = X1")
    pw.add_argument("connector", type=int)
    pw.add_argument("duty", type=float)
    cl = add("clear", "clear latched faults (RCD, ground, weld, over-current) once the cause is fixed")
    cl.add_argument("connector", type=int)
    t = add("trigger", "ask the agent to send an OCPP message now")
    t.add_argument("what", choices=["boot", "status", "heartbeat"])
    return p


def config_value(key: str, value: str, stdin: TextIO | None = None) -> str | None:
    """The value of `config set`: as given, or for "-" one line from stdin (a terminal is asked without
    echo). None (after a message) when stdin gave nothing."""
    if value != "-":
        if is_secret_name(key):
            print(f"cpctl: note: {key} given on the command line stays in the shell history and shows in ps; "
                  f"`cpctl config set {key} -` reads it from stdin", file=sys.stderr)
        return value
    stream = stdin if stdin is not None else sys.stdin
    line = getpass.getpass(f"{key}: ") if stream.isatty() else stream.readline()
    line = line.rstrip("\r\n")
    if not line:
        print(f"cpctl: config set {key} -: no value on stdin", file=sys.stderr)
        return None
    return line


def shown_value(row: dict[str, Any]) -> str:
    """A configuration row's value as `config get` prints it; a write-only one only says whether it is set."""
    if row.get("secret"):
        marker = "<set, not shown>" if row.get("set") else "<not set>"
        return marker + (f" ({row['note']})" if row.get("note") else "")
    value = row.get("value")
    return "<no value>" if value is None else str(value)


def _when(wall: float | None) -> str:
    if wall is None:
        return "-"
    return dt.datetime.fromtimestamp(wall, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def render_status(data: dict[str, Any]) -> str:
    st = data["station"]
    o = st.get("ocpp", {})
    lines = [f"station {st['id']}  version {st['version']}  up {st['uptime_s']:.0f} s  faults {st['faults']}"]
    if o.get("link") == "not configured":
        lines.append("CSMS: not configured")
    else:
        ocpp = f" (OCPP {o['version']})" if o.get("version") else ""
        lines.append(f"CSMS{ocpp}: {o.get('link', '?')}  last contact {o.get('last_contact_age_s', '-')} s ago  "
                     f"boot {o.get('boot_status', '?')}  outbox {o.get('outbox_depth', '?')} "
                     f"(oldest {_when(o.get('outbox_oldest_wall'))})")
        budget = o.get("request_budget") or {}
        if budget.get("delayed") or budget.get("refused"):
            lines.append(f"CSMS requests over budget ({budget.get('rate_ms_per_s', '?')} ms/s): "
                         f"{budget.get('delayed', 0)} delayed, {budget.get('refused', 0)} refused "
                         f"(last refused {_when(budget.get('last_refused_wall'))})")
    down = [n for n, s in st.get("tasks", {}).items() if s != "alive"]
    if down:
        lines.append("tasks not alive: " + ", ".join(f"{n} ({st['tasks'][n]})" for n in down))
    for c in data["connectors"]:
        duty = c["duty"]
        pwm = "X1" if duty is None else "F" if duty == 0 else f"{duty:.1f}%"
        relay = {True: "closed", False: "open", None: "?"}[c["relay_feedback"]]
        power = f"{c['power_w'] / 1000:.2f} kW" if c["power_w"] is not None else "-"
        energy = f"{c['energy_wh'] / 1000:.3f} kWh" if c["energy_wh"] is not None else "-"
        lines.append(
            f"[{c['connector']}] {c['status']:<13} CP {c['cp_state'] or '?':<3} {c['charge_state']:<11} "
            f"offer {c['offered_a']:.0f} A PWM {pwm:<6} relay {relay:<6} {power:>9} meter {energy}"
            + (" MAINTENANCE" if c.get("maintenance") else "")
        )
        if c.get("binding_limit") is not None:
            site = c.get("site_limit_a")
            lines.append(f"     limit {c.get('limit_a', 0):.1f} A set by {c['binding_limit']}"
                         + (f"  site allocation {site:.1f} A" if site is not None else ""))
        if c["session"]:
            lines.append(f"     session tx {c.get('transaction_id') or '-'} idTag {c['id_tag']} "
                         f"{c.get('session_energy_wh', 0):.0f} Wh")
        if c["faults"]:
            lines.append(f"     FAULTS: {', '.join(c['faults'])}  (cpctl faults)")
    return "\n".join(lines)


def _outbox_what(entry: dict[str, Any]) -> str:
    """A 2.0.1 TransactionEvent by eventType, seqNo and transactionId; anything else by its session ref."""
    if entry.get("seq_no") is not None:
        return f"{entry.get('event_type') or '?':<7} seqNo {entry['seq_no']:<4} tx {entry.get('transaction_id') or '-'}"
    return f"tx_ref {entry['tx_ref'] or '-'}"


def _problem(data: dict[str, Any]) -> bool:
    st = data["station"]
    return bool(st.get("faults")) or any(s != "alive" for s in st.get("tasks", {}).values())


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code not in (0, None) else EXIT_OK
    client = Client(args.socket)
    as_json = bool(getattr(args, "json", False))
    try:
        return _run(args, client, as_json)
    except Unreachable as exc:
        print(f"cpctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return EXIT_OK


def _reply(reply: dict[str, Any], as_json: bool) -> tuple[int, Any]:
    if reply.get("ok"):
        return EXIT_OK, reply.get("data")
    if as_json:
        print(json.dumps(reply))
    else:
        print(f"cpctl: {reply.get('error')}", file=sys.stderr)
    return (EXIT_USAGE if reply.get("problem") == "usage" else EXIT_PROBLEM), None


def _run(args: argparse.Namespace, client: Client, as_json: bool) -> int:
    cmd = args.command
    if cmd == "events" and args.follow:
        for event in client.stream("events", since=args.since, follow=True):
            print(json.dumps(event) if as_json else f"{_when(event['wall'])} {event['level']:<7} {event['text']}",
                  flush=True)
        return EXIT_OK
    if cmd == "watch":
        n = 0
        while True:
            code, data = _reply(client.request("status"), as_json)
            if code:
                return code
            if as_json:
                print(json.dumps(data), flush=True)
            else:
                print("\x1b[2J\x1b[H" + time.strftime("%H:%M:%S ") + render_status(data), flush=True)
            n += 1
            if args.count and n >= args.count:
                return EXIT_PROBLEM if _problem(data) else EXIT_OK
            time.sleep(args.interval)
    request: dict[str, Any]
    if cmd == "status":
        request = {"cmd": "status"}
    elif cmd == "events":
        request = {"cmd": "events", "since": args.since, "limit": args.limit}
    elif cmd == "faults":
        request = {"cmd": "faults"}
    elif cmd == "meter":
        request = {"cmd": "meter", "connector": args.connector}
    elif cmd == "config":
        if args.config_action == "get":
            request = {"cmd": "config_get", "keys": [args.key] if args.key else None}
        else:
            value = config_value(args.key, args.value)
            if value is None:
                return EXIT_USAGE
            request = {"cmd": "config_set", "key": args.key, "value": value}
    elif cmd == "outbox":
        request = {"cmd": "outbox"}
    elif cmd == "sessions":
        request = {"cmd": "sessions", "last": args.last}
    elif cmd == "selftest":
        request = {"cmd": "selftest"}
    elif cmd == "maintenance":
        request = {"cmd": "maintenance", "connector": args.connector, "on": args.state == "on"}
    elif cmd == "relay":
        request = {"cmd": "relay", "connector": args.connector, "action": args.action}
    elif cmd == "pwm":
        request = {"cmd": "pwm", "connector": args.connector, "duty": args.duty}
    elif cmd == "clear":
        request = {"cmd": "clear", "connector": args.connector}
    else:
        request = {"cmd": "trigger", "what": args.what}
    name = request.pop("cmd")
    code, data = _reply(client.request(name, **request), as_json)
    if code:
        return code
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        print(_human(cmd, data))
    if cmd == "status":
        return EXIT_PROBLEM if _problem(data) else EXIT_OK
    if cmd == "faults":
        return EXIT_PROBLEM if data else EXIT_OK
    if cmd == "selftest":
        return EXIT_OK if data["ok"] else EXIT_PROBLEM
    if cmd == "meter":
        return EXIT_OK if data.get("fresh") else EXIT_PROBLEM
    if cmd == "clear":
        return EXIT_OK if not data["faults"] else EXIT_PROBLEM
    if cmd == "trigger":  # e.g. "failed: not connected to the CSMS", or a boot answered Pending/Rejected
        return EXIT_OK if data.get("result") == "Accepted" else EXIT_PROBLEM
    if cmd == "config" and args.config_action == "get":
        return EXIT_PROBLEM if data.get("unknownKey") else EXIT_OK
    return EXIT_OK


def _human(cmd: str, data: Any) -> str:
    if cmd == "status":
        return render_status(data)
    if cmd == "faults":
        if not data:
            return "no active faults"
        return "\n".join(f"connector {f['connector']}: {f['fault']} ({f['error_code']})\n  what: {f['explanation']}"
                         f"\n  do:   {f['remedy']}" for f in data)
    if cmd == "events":
        return "\n".join(f"{_when(e['wall'])} {e['level']:<7} {e['text']}" for e in data) or "no events"
    if cmd == "sessions":
        return "\n".join(
            f"{_when(s['start'])}  connector {s['connector']}  {s['id_tag']}  {s['energy_wh']:.0f} Wh  "
            f"{s['reason'] or 'running'}  tx {s['transaction_id'] or '-'}"
            + (f"  cost {s['cost']}" if s.get("cost") else "") for s in data) or "no sessions"
    if cmd == "selftest":
        return "\n".join(f"{'PASS' if c['ok'] else 'FAIL'}  {c['check']}: {c['detail']}" for c in data["checks"])
    if cmd == "meter":
        if not data.get("fresh"):
            return f"connector {data['connector']}: {data['explanation']}"
        volts = " ".join("-" if v is None else f"{v:.0f}" for v in data["voltage_v"])
        amps = " ".join("-" if a is None else f"{a:.1f}" for a in data["current_a"])
        return (f"connector {data['connector']}: {data['energy_import_wh'] / 1000:.3f} kWh  "
                f"{data['power_w']:.0f} W  V {volts}  A {amps}  at {_when(data['timestamp'])}")
    if cmd == "clear":
        left = ", ".join(data["faults"]) or "none"
        return f"connector {data['connector']}: {data['status']}, faults still active: {left}"
    if cmd == "config" and isinstance(data, dict) and "configurationKey" in data:
        rows = [f"{k['key']} = {shown_value(k)}{' (read-only)' if k.get('readonly') else ''}"
                for k in data["configurationKey"]]
        rows += [f"{k}: unknown key" for k in data.get("unknownKey", [])]
        return "\n".join(rows)
    if cmd == "config":
        return f"{data['key']}: {data['result']}"
    if cmd == "trigger":
        return f"trigger {data['trigger']}: {data['result']}"
    if cmd == "outbox":
        head = f"outbox: {data['depth']} queued, oldest {_when(data['oldest_wall'])}"
        return "\n".join([head, *(f"  #{e['id']} {e['action']:<18} {_outbox_what(e)}  "
                                    f"attempts {e['attempts']}  queued {_when(e['created_wall'])}"
                                    for e in data["entries"])])
    if cmd == "maintenance":
        return f"connector {data['connector']}: maintenance {'on' if data['maintenance'] else 'off'}, {data['status']}"
    if cmd == "relay":
        fb = {True: "closed", False: "open", None: "no feedback"}[data["feedback_closed"]]
        return f"connector {data['connector']}: relay commanded {data['commanded']}, feedback {fb}"
    if cmd == "pwm":
        return f"connector {data['connector']}: pilot duty {data['duty']:g} %"
    return json.dumps(data, indent=2)


if __name__ == "__main__":
    raise SystemExit(main())
