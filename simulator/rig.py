"""`cpsim up`: a whole simulated chargepoint at the bus level.

Per connector a pilot-board emulator (on a pty, or on a CAN bus with --board can), an EV (the Plant)
and an SDM630 meter (Modbus TCP on 127.0.0.1 or RTU on a pty); one RDM6300 or PN532 reader on a pty,
and optionally a Nextion display on a pty. Writes DIR/agent.toml once everything
listens, serves a JSON control socket at DIR/ctl.sock, and keeps the meters' registers in
DIR/sim-state.json so a restart (or a simulated power loss) keeps the energy counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hal.tasks import cancel_and_wait
from hal.types import Fault
from simulator.can_pilot_board import CanPilotBoardEmulator
from simulator.faults import FAULTS
from simulator.meter import MeterEmulator, RtuBusEmulator
from simulator.nextion import NextionEmulator
from simulator.openevse import OpenEvseEmulator
from simulator.physics import EvMode, Plant
from simulator.pilot_board import PilotBoardEmulator
from simulator.pn532 import Pn532Emulator
from simulator.rdm6300 import Rdm6300Emulator
from simulator.site import Site, load_profiles

log = logging.getLogger("cpsim")

_PLANT_FAULTS = {
    "rcd": Fault.RCD,
    "ground": Fault.GROUND,
    "diode": Fault.DIODE,
    "overtemp": Fault.OVERTEMP,
    "undervoltage": Fault.UNDERVOLTAGE,
    "overvoltage": Fault.OVERVOLTAGE,
}


@dataclass
class RigOptions:
    directory: Path
    connectors: int = 1
    csms_url: str | None = None
    bundled_csms: bool = False  # start simulator.csms in this process and point the agent at it
    charge_point_id: str = "CP001"
    meter_transport: str = "tcp"
    meter_model: str = "sdm630"  # a map in drivers/modbus/maps/
    fixed_cable: bool = False
    max_current_a: float = 32.0
    tokens: list[str] = field(default_factory=lambda: ["DEADBEEF01", "04A1B2C3D4"])
    extra_toml: str = ""
    board: str = "pilot"  # "pilot" (the project's board), "openevse" (RAPI; also the meter) or "can" (pilot over CAN)
    reader: str = "rdm6300"  # "rdm6300" (125 kHz) or "pn532" (ISO 14443A, HSU)
    display: str = "console"  # "console" (log lines) or "nextion" (HMI on a pty)
    # --board can: "virtual" = python-can virtual bus (agent in this process only); "remote" = also serve it
    # over python-can-remote on 127.0.0.1 so an agent in another process can join.
    can_bus: str = "virtual"
    # OCPP transport security written into agent.toml [ocpp] (the bundled CSMS then requires the password).
    security_profile: int = 0
    password: str | None = None
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    # [ocpp] version written into agent.toml ("1.6" | "2.0.1" | "auto") and spoken by the bundled CSMS;
    # None: no version line (the agent's default) and a bundled CSMS speaking 1.6.
    ocpp_version: str | None = None
    # Local energy management (issue 15): a grid connection with a site meter; None = no site.
    site_fuse_a: float | None = None
    site_meter: str = "tcp"  # "tcp" or "rtu" (on the connector meters' RS-485 line when they are RTU too)
    site_mode: str = "grid-limit"
    ev_phases: int = 3  # phases each simulated EV charges on (1 or 3)
    site_rotation: bool = False  # connector n's L1 on site phase n (mod 3): 1-phase EVs spread over the phases

    def site_phases(self, n: int) -> tuple[int, ...]:
        """Site phases behind connector ``n``'s L1, L2, L3."""
        k = (n - 1) % 3 if self.site_rotation else 0
        return tuple((k + i) % 3 + 1 for i in range(3))

    def security_problem(self) -> str | None:
        """Why these security options cannot work (names the option), or None."""
        for name in ("ca_file", "client_cert", "client_key"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                return f"--{name.replace('_file', '').replace('_', '-')}: no such file: {path}"
        if self.security_profile >= 2 and not (self.csms_url or "").startswith("wss://"):
            return f"--security-profile {self.security_profile} needs --csms wss://..."
        if self.security_profile in (1, 2) and not self.password:
            return f"--security-profile {self.security_profile} needs --password"
        if self.security_profile == 3 and (self.client_cert is None or self.client_key is None):
            return "--security-profile 3 needs --client-cert and --client-key"
        return None


PN532_TOKENS = ("04A1B2C3D4E5F6", "DEADBEEF")  # ISO 14443A UIDs (7 and 4 bytes) the pn532 rig accepts


@dataclass
class SimConnector:
    plant: Plant
    board: PilotBoardEmulator | OpenEvseEmulator | CanPilotBoardEmulator
    meter: MeterEmulator


class Rig:
    def __init__(self, options: RigOptions) -> None:
        self.options = options
        self.dir = options.directory
        self.connectors: dict[int, SimConnector] = {}
        self.reader: Rdm6300Emulator | Pn532Emulator
        self.reader = Pn532Emulator() if options.reader == "pn532" else Rdm6300Emulator()
        if options.reader == "pn532":
            options.tokens += [t for t in PN532_TOKENS if t not in options.tokens]
        self.display = NextionEmulator() if options.display == "nextion" else None
        self.can_channel = f"cpsim-{os.getpid()}-{id(self):x}"  # a virtual bus of its own per rig
        self.can_url: str | None = None
        self._can_server: Any = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._server: asyncio.AbstractServer | None = None
        self.site: Site | None = None
        self.site_meter: MeterEmulator | None = None

    # ----------------------------------------------------------------- persistence of meter registers
    @property
    def state_file(self) -> Path:
        return self.dir / "sim-state.json"

    def _load_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_file.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def save_state(self) -> None:
        # The meters' registers and the physical world (a car stays plugged in while the charger reboots).
        data = {
            "energy_wh": {str(n): c.plant.energy_wh for n, c in self.connectors.items()},
            "plugged": {str(n): c.plant.plugged for n, c in self.connectors.items()},
            "soc": {str(n): c.plant.ev.soc_percent for n, c in self.connectors.items()},
        }
        if self.site is not None:
            data["site_wh"] = {"import": self.site.import_wh, "export": self.site.export_wh}
        _atomic_write(self.state_file, json.dumps(data))

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        saved = self._load_state()
        bus = RtuBusEmulator() if self.options.meter_transport == "rtu" else None  # one RS-485 line, ids 1..N
        for n in range(1, self.options.connectors + 1):
            plant = Plant(fixed_cable=self.options.fixed_cable)
            plant.energy_wh = float(saved.get("energy_wh", {}).get(str(n), 0.0))
            plant.plugged = bool(saved.get("plugged", {}).get(str(n), False))
            plant.ev.soc_percent = float(saved.get("soc", {}).get(str(n), plant.ev.soc_percent))
            plant.ev.phases = self.options.ev_phases
            plant.site_phases = self.options.site_phases(n)
            board: PilotBoardEmulator | OpenEvseEmulator | CanPilotBoardEmulator
            if self.options.board == "openevse":
                board = OpenEvseEmulator(plant, max_current_a=round(self.options.max_current_a))
            elif self.options.board == "can":
                board = CanPilotBoardEmulator(plant, interface="virtual", channel=self.can_channel, node_id=n)
            else:
                board = PilotBoardEmulator(plant)
            o = self.options
            meter = MeterEmulator(plant, o.meter_model, device_id=n if bus else 1, transport=o.meter_transport, bus=bus)
            self.connectors[n] = SimConnector(plant, board, meter)
        for c in self.connectors.values():
            self._tasks.append(asyncio.create_task(c.board.run()))
            await c.meter.start()
        if self.options.site_fuse_a is not None:
            await self._start_site(bus, saved)
        self.csms = None
        if self.options.bundled_csms and not self.options.csms_url:
            from simulator.csms import Csms

            self.csms = Csms(log_path=self.dir / "csms.jsonl", accept=tuple(self.options.tokens),
                             password=self.options.password, version=self.options.ocpp_version or "1.6")
            await self.csms.start()
            self.options.csms_url = self.csms.url
        if self.options.board == "can" and self.options.can_bus == "remote":
            self._start_can_server()
        self._tasks.append(asyncio.create_task(self.reader.run()))
        if self.display is not None:
            self._tasks.append(asyncio.create_task(self.display.run()))
        self._tasks.append(asyncio.create_task(self._persist_loop()))
        await asyncio.sleep(0)  # the reader and display emulators open their ptys on their first step
        sock = self.dir / "ctl.sock"
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        self._server = await asyncio.start_unix_server(self._serve_control, path=str(sock))
        await asyncio.sleep(0)
        _atomic_write(self.dir / "agent.toml", self.agent_toml())
        if self.options.password:
            os.chmod(self.dir / "agent.toml", 0o600)  # it holds the Basic-auth password

    async def _start_site(self, bus: RtuBusEmulator | None, saved: dict[str, Any]) -> None:
        """The grid connection and its meter (SDM630 map): on the connectors' RS-485 line (next free id)
        when both are RTU, else on a pty or a TCP port of its own."""
        o = self.options
        loop = asyncio.get_running_loop()
        site = Site(lambda: [c.plant for c in self.connectors.values()], fuse_a=o.site_fuse_a)
        site.profile_origin = _now()
        wh = saved.get("site_wh", {})
        site.import_wh, site.export_wh = float(wh.get("import", 0.0)), float(wh.get("export", 0.0))
        shared = bus if o.site_meter == "rtu" else None
        device_id = o.connectors + 1 if shared is not None else 1
        self.site = site
        self.site_meter = MeterEmulator(None, "sdm630", device_id=device_id, transport=o.site_meter, bus=shared,
                                        source=lambda: site.meter_values(loop.time()))
        await self.site_meter.start()

    def _start_can_server(self) -> None:
        """Serve the rig's virtual CAN bus over python-can-remote on 127.0.0.1 (each client joins it)."""
        import threading

        from can_remote.server import RemoteServer

        server = RemoteServer("127.0.0.1", 0, interface="virtual", channel=self.can_channel)
        threading.Thread(target=server.serve_forever, name="cpsim-can-remote", daemon=True).start()
        self._can_server = server
        self.can_url = f"ws://127.0.0.1:{server.server_port}/"

    async def stop(self) -> None:
        if self._can_server is not None:
            self._can_server.shutdown()
            self._can_server.server_close()
        if self._server is not None:
            self._server.close()
        await cancel_and_wait(*self._tasks)
        for c in self.connectors.values():
            await c.meter.stop()
        if self.site_meter is not None:
            await self.site_meter.stop()
        if self.csms is not None:
            await self.csms.stop()
        self.save_state()

    async def _persist_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.save_state()

    # ----------------------------------------------------------------- agent configuration
    def agent_toml(self) -> str:
        o = self.options
        lines = [
            "# Written by cpsim up: points the agent at the simulated hardware of this rig.",
            "[station]",
            f'id = "{o.charge_point_id}"',
            'vendor = "cpsim"',
            'model = "SimStation"',
            f'serial_number = "SIM-{o.charge_point_id[:20]}"',
            f'state_dir = "{self.dir / "state"}"',
            f'diag_socket = "{self.dir / "diag.sock"}"',
            'token_reader = "reader"',
            'support_contact = "Simulator support +00 000 000"',
            "",
            "[authorization]",
            "allow = [" + ", ".join(f'"{t}"' for t in o.tokens) + "]",
            "",
        ]
        if o.csms_url:
            lines += ["[ocpp]", f'endpoint = "{o.csms_url}"']
            if o.ocpp_version:
                lines += [f'version = "{o.ocpp_version}"']
            if o.security_profile:
                lines += [f"security_profile = {o.security_profile}"]
            if o.password:
                lines += [f"password = {json.dumps(o.password)}"]  # a JSON string is a valid TOML basic string
            for name in ("ca_file", "client_cert", "client_key"):
                if getattr(o, name) is not None:
                    lines += [f"{name} = {json.dumps(str(getattr(o, name)))}"]
            lines += [""]
        lines += ["[devices.reader]", f'driver = "{o.reader}"', f'port = "{self.reader.port_path}"', ""]
        if self.display is not None:
            lines += ["[devices.display]", 'driver = "nextion"', f'port = "{self.display.port_path}"', ""]
        else:
            lines += ["[devices.display]", 'driver = "console-display"', ""]
        for n, c in self.connectors.items():
            if o.board == "openevse":
                lines += [f"[devices.board{n}]", 'driver = "openevse"', f'port = "{c.board.port_path}"']
                lines += ["phases = 3", ""]
                continue
            if o.board == "can":
                interface, channel = ("remote", self.can_url) if self.can_url else ("virtual", self.can_channel)
                lines += [f"[devices.board{n}]", 'driver = "pilot-board-can"', f'interface = "{interface}"']
                lines += [f'channel = "{channel}"', f"node_id = {n}", ""]
            else:
                lines += [f"[devices.board{n}]", 'driver = "pilot-board-serial"', f'port = "{c.board.port_path}"', ""]
            lines += [f"[devices.meter{n}]", 'driver = "modbus-meter"', f'model = "{o.meter_model}"']
            if self.options.meter_transport == "tcp":
                lines += ['transport = "tcp"', 'host = "127.0.0.1"', f"port = {c.meter.port}"]
            else:
                lines += ['transport = "rtu"', f'serial_port = "{c.meter.port_path}"', "baudrate = 9600"]
                lines += [f"device_id = {c.meter.device_id}"]
            lines += ["poll_interval_s = 0.5", ""]
        lines += self._site_toml()
        for n in self.connectors:
            if o.board == "openevse":  # tethered cable; the board is pilot, relay and meter
                lines += ["[[connectors]]", f"id = {n}", f"max_current_a = {o.max_current_a}", "phases = 3"]
                lines += [f'{role} = "board{n}"' for role in ("pilot", "power_switch", "meter")]
                lines += ["fixed_cable = true", 'display = "display"', ""]
                continue
            lines += [
                "[[connectors]]",
                f"id = {n}",
                f"max_current_a = {o.max_current_a}",
                "phases = 3",
                f'pilot = "board{n}"',
                f'lock = "board{n}"' if not o.fixed_cable else "fixed_cable = true",
                f'meter = "meter{n}"',
                'display = "display"',
            ]
            if o.site_fuse_a is not None:
                lines += ["site_phases = [" + ", ".join(map(str, o.site_phases(n))) + "]"]
            lines += [""]
        return "\n".join(lines) + o.extra_toml

    def _site_toml(self) -> list[str]:
        """``[devices.grid]`` (the site meter) and ``[site]`` for the agent; nothing without a site."""
        m, o = self.site_meter, self.options
        if m is None or o.site_fuse_a is None:
            return []
        lines = ["[devices.grid]", 'driver = "modbus-meter"', 'model = "sdm630"']
        if m.serve_tcp:
            lines += ['transport = "tcp"', 'host = "127.0.0.1"', f"port = {m.port}"]
        else:
            lines += ['transport = "rtu"', f'serial_port = "{m.port_path}"', "baudrate = 9600"]
            lines += [f"device_id = {m.device_id}"]
        lines += ["poll_interval_s = 0.5", ""]
        lines += ["[site]", 'meter = "grid"', f"main_fuse_a = {o.site_fuse_a:g}", "phases = 3",
                  f'mode = "{o.site_mode}"', ""]
        return lines

    # ----------------------------------------------------------------- control
    async def _serve_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                    reply = self.control(request)
                except Exception as exc:
                    reply = {"ok": False, "error": str(exc)}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def _conn(self, request: dict[str, Any]) -> SimConnector:
        n = int(request.get("connector", 1))
        if n not in self.connectors:
            raise ValueError(f"no connector {n} (have 1..{len(self.connectors)})")
        return self.connectors[n]

    def control(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if cmd == "plug":
            self._conn(request).plant.plugged = True
        elif cmd == "unplug":
            self._conn(request).plant.plugged = False
        elif cmd == "tap":
            self.reader.tap(str(request["id_tag"]))
        elif cmd == "ev":
            plant = self._conn(request).plant
            action = request["action"]
            if action == "soc":
                plant.ev.soc_percent = float(request["value"])
            elif action == "phases":
                phases = int(request["value"])
                if phases not in (1, 3):
                    raise ValueError(f"an EV charges on 1 or 3 phases, not {phases}")
                plant.ev.phases = phases
            else:
                plant.ev.mode = EvMode(action)
        elif cmd == "fault":
            self._set_fault(self._conn(request), str(request["name"]), True)
        elif cmd == "clear":
            c = self._conn(request)
            for name in FAULTS:
                self._set_fault(c, name, False)
        elif cmd == "site":
            self._control_site(request)
        elif cmd == "state":
            pass
        else:
            raise ValueError(f"unknown command {cmd!r}")
        return {"ok": True, "state": self.state()}

    def _control_site(self, request: dict[str, Any]) -> None:
        site = self.site
        if site is None:
            raise ValueError("this rig has no site (start it with cpsim up --site-fuse A)")
        action = request.get("action")
        if action == "load":
            site.set_house_kw(float(request["value"]))
        elif action == "pv":
            site.set_pv_kw(float(request["value"]))
        elif action == "profile":
            load, pv = load_profiles(Path(str(request["file"])))
            site.set_profile(load, pv, now=_now(), pv=bool(request.get("pv", False)),
                             speed=float(request.get("speed", 1.0)))
        elif action == "silent":  # the site meter stops answering (or answers again)
            assert self.site_meter is not None
            self.site_meter.silent = bool(request.get("value", True))
        else:
            raise ValueError(f"unknown site action {action!r}; known: load, pv, profile, silent")

    def _set_fault(self, c: SimConnector, name: str, on: bool) -> None:
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")
        plant = c.plant
        if name in _PLANT_FAULTS:
            (plant.faults.add if on else plant.faults.discard)(_PLANT_FAULTS[name])
        elif name == "weld":
            plant.relay_welded = on
        elif name == "lock":
            plant.lock_jammed = on
            (plant.faults.add if on else plant.faults.discard)(Fault.LOCK)
        elif name == "overcurrent":
            plant.ev.extra_draw_a = 10.0 if on else 0.0
        elif name == "meter-silent":
            c.meter.silent = on
        elif name == "board-silent":
            c.board.silent = on
        elif name == "reader-silent":
            self.reader.silent = on

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"connectors": {}}
        for n, c in self.connectors.items():
            p = c.plant
            out["connectors"][str(n)] = {
                "plugged": p.plugged,
                "cp_state": p.cp_state().value,
                "pwm_duty": p.pwm_duty,
                "relay_closed": p.relay_closed,
                "locked": p.locked,
                "current_a": round(p.current_a, 2),
                "ev_phases": p.ev.phases,
                "supply_phases": p.supply_phases,
                "phase_currents_a": [round(a, 2) for a in p.phase_currents()],
                "phase_switches": p.phase_switches,
                "phase_switches_under_load": p.phase_switches_under_load,
                "power_w": round(p.power_w(), 1),
                "energy_wh": round(p.energy_wh, 3),
                "soc": round(p.ev.soc_percent, 2),
                "ev_mode": p.ev.mode.value,
                "faults": sorted(f.value for f in p.faults)
                + (["weld"] if p.relay_welded else [])
                + (["meter-silent"] if c.meter.silent else [])
                + (["board-silent"] if c.board.silent else [])
                + (["overcurrent"] if p.ev.extra_draw_a else []),
            }
        out["reader_silent"] = self.reader.silent
        if self.site is not None:
            out["site"] = self.site.state(_now())
            out["site"]["meter_silent"] = self.site_meter is not None and self.site_meter.silent
        return out


def _now() -> float:
    """The emulators' time base (the running loop's clock, monotonic)."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


async def run_rig(options: RigOptions) -> int:
    rig = Rig(options)
    await rig.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"ready": True, "config": str(options.directory / "agent.toml")}), flush=True)
    await stop.wait()
    await rig.stop()
    return 0
