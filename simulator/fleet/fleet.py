"""`cpsim fleet`: N real agents in one process, for load and conformance tests of central systems.

Each station is the agent's own ``Station`` (connectors, IEC 61851 controller, charge control, sessions)
with the real OCPP service of the chosen version (``agent.ocpp.runner.VersionRunner``) and its durable
outbox, over in-process devices (``simulator/fleet/devices.py``: drivers ``sim-board``, ``sim-meter``,
``sim-reader``, found through the driver registry like any other). Shared by all stations: the event loop,
one clock, one physics ticker, the imported modules, the SQLite files (``DIR/fleet-state-NNN.db``, 50
stations' tables each under their own prefix, simulator/fleet/shared_db.py; synchronous=FULL for transaction
data: kill -9 of the fleet loses nothing a station had accepted); per station: its websocket.

Station ids are ``<prefix><index:06d>`` for index 1..N; ``--shard I/K`` runs the indices with
``index % K == I`` (I in 0..K-1), so K processes (or K pods) with the same N and K run the whole fleet
once. The EVs' world (plugged, energy, SoC) is kept in ``DIR/fleet-plants.json`` so a rerun on the same
DIR finds every EV where it was; one fleet process per DIR (``DIR/fleet.lock``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import json
import logging
import os
import random
import shutil
import signal
import sqlite3
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent import db as agent_db
from agent.config import AgentConfig, DeviceConfig, parse
from agent.eventlog import EventLog
from agent.events import SessionStarted, SessionStopped, StationEvent, StopReason
from agent.ocpp.runner import VersionRunner
from agent.ocpp.v16.link import LinkState
from agent.station import Station
from hal.clock import SystemClock
from hal.flag import Flag
from hal.registry import load_driver
from hal.tasks import cancel_and_wait
from hal.types import Fault
from simulator.fleet import devices as simdev
from simulator.fleet import metrics as fm
from simulator.fleet import shared_db, tuning
from simulator.fleet.cases import CasePlan, CaseRunner
from simulator.fleet.scenario import Scenario
from simulator.physics import EvMode, Plant

log = logging.getLogger("cpsim.fleet")

DEFAULT_TAG = "FLEET-TAG"
SQLITE_PAGE_SIZE = 1024  # of the stations' files: SQLite allocates 20 pages per connection at its first read
SQLITE_CACHE_KIB = 64  # per connection (the default is 2 MB): a station's working set is a few pages
STATEMENT_CACHE = 8  # prepared statements per SQLite connection (sqlite3's default 128: ~100 kB per station;
# 16 -> 8: 27 kB less per station in bench/fleet.py, steady CPU within the noise; see README "Fleet")
_PLANT_FAULTS = {"rcd": Fault.RCD, "ground": Fault.GROUND, "diode": Fault.DIODE, "overtemp": Fault.OVERTEMP,
                 "undervoltage": Fault.UNDERVOLTAGE, "overvoltage": Fault.OVERVOLTAGE}


@dataclass
class FleetOptions:
    csms_url: str
    stations: int
    directory: Path
    connectors: int = 1
    ocpp: str = "1.6"
    id_prefix: str = "CP-"
    shard: tuple[int, int] = (0, 1)
    ramp_per_s: float = 200.0
    scenario: Scenario | None = None
    start_sessions: bool = False
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    progress_s: float = 5.0
    stop_timeout_s: float = 30.0
    tags: tuple[str, ...] = (DEFAULT_TAG,)
    # Meter samples pushed while the current is steady: each may write the session's progress (an fsync), and a
    # stop takes the energy of the last one (the fleet pushes one before the stops it makes itself).
    meter_period_s: float = 60.0
    quiet: bool = False
    cases: CasePlan | None = None  # --case / [[case]]: scripted cases (simulator/fleet/cases.py)
    fsync: bool = False  # --fsync: every durable commit fsynced, as on a charger (shared_db.SYNCHRONOUS)


def station_ids(prefix: str, n: int, shard: tuple[int, int]) -> list[tuple[int, str]]:
    """(index, id) of the stations shard ``I/K`` runs: index in 1..n with index % K == I."""
    i, k = shard
    return [(index, f"{prefix}{index:06d}") for index in range(1, n + 1) if index % k == i]


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i_text, k_text = text.split("/")
        i, k = int(i_text), int(k_text)
    except ValueError:
        raise ValueError(f"--shard: expected I/K (e.g. 3/8), got {text!r}") from None
    if k < 1 or not 0 <= i < k:
        raise ValueError(f"--shard {text}: need K >= 1 and 0 <= I < K")
    return i, k


def base_config(options: FleetOptions) -> AgentConfig:
    """One validated configuration; each station is a ``replace`` of it (its id, directory, devices)."""
    data: dict[str, Any] = {
        "station": {"id": "FLEET", "vendor": "cpsim", "model": "FleetStation", "token_reader": "reader"},
        "authorization": {"allow": []},
        "ocpp": {
            "endpoint": options.csms_url,
            "version": options.ocpp,
            "keys": {"MeterValuesSampledData": "Energy.Active.Import.Register,Power.Active.Import",
                     "MeterValueSampleInterval": 60},
        },
        "devices": {"reader": {"driver": "sim-reader"}},
        "connectors": [],
    }
    if options.ocpp == "2.0.1":
        data["ocpp"].pop("keys")
        data["ocpp"]["variables"] = {
            "SampledDataCtrlr/TxUpdatedMeasurands": "Energy.Active.Import.Register,Power.Active.Import",
            "SampledDataCtrlr/TxUpdatedInterval": "60",
        }
    for n in range(1, options.connectors + 1):
        data["devices"][f"board{n}"] = {"driver": "sim-board"}
        data["devices"][f"meter{n}"] = {"driver": "sim-meter"}
        data["connectors"].append({"id": n, "max_current_a": 32.0, "phases": 3, "pilot": f"board{n}",
                                   "lock": f"board{n}", "meter": f"meter{n}"})
    return parse(data)


class FleetStation:
    """One station of the fleet: the agent's Station, its OCPP runner and its plants."""

    def __init__(self, index: int, cp_id: str, plants: dict[int, Plant]) -> None:
        self.index = index
        self.id = cp_id
        self.plants = plants
        self.station: Station | None = None
        self.runner: VersionRunner | None = None
        self.tasks: list[asyncio.Task[Any]] = []
        self.booted_at: float | None = None
        self.started = 0
        self.stopped = 0
        self.offline_until = 0.0
        self.seed = cp_id  # of the station's random stream (the scenario's seed and its id)
        self._rng: random.Random | None = None

    @property
    def rng(self) -> random.Random:
        """The station's random stream, made when first used (a Random is 2.5 kB: only scenarios keep one)."""
        if self._rng is None:
            self._rng = random.Random(self.seed)
        return self._rng

    @property
    def service(self) -> Any:
        return None if self.runner is None else self.runner.service

    def booted(self) -> bool:
        service = self.service
        return service is not None and str(getattr(service, "boot_status", "")) == "Accepted"

    def on_event(self, event: StationEvent) -> None:
        if isinstance(event, SessionStarted):
            self.started += 1
        elif isinstance(event, SessionStopped):
            self.stopped += 1

    def board(self, connector: int) -> simdev.SimBoard:
        assert self.station is not None
        device = self.station.devices[f"board{connector}"]
        assert isinstance(device, simdev.SimBoard)
        return device

    def meter(self, connector: int) -> simdev.SimMeter:
        assert self.station is not None
        device = self.station.devices[f"meter{connector}"]
        assert isinstance(device, simdev.SimMeter)
        return device


class Fleet:
    def __init__(self, options: FleetOptions) -> None:
        self.options = options
        self.dir = options.directory
        self.clock = SystemClock()
        self.metrics = fm.FleetMetrics(prometheus=options.metrics_port is not None)
        self.ticker = simdev.TICKER
        self.ticker.meter_period_s = options.meter_period_s
        self.stations: dict[str, FleetStation] = {}
        self._boot_pending: list[FleetStation] = []  # started, BootNotification not accepted yet (_boot_watch)
        self.stop = Flag()  # every station's OCPP runner ends when it is set (a Flag: no wait task per station)
        self._started = time.monotonic()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._handles: list[asyncio.TimerHandle] = []
        self._plants_dirty = False
        self._plant_rows: dict[str, dict[str, list[Any]]] = {}  # fleet-plants.json's rows (_plants_snapshot)
        self._plants_touched: set[str] = set()  # stations whose plug changed since the last write
        self._plants_lock = asyncio.Lock()
        self._lock_fd: int | None = None
        self._template = self.dir / ".template" / "state.db"
        self._state_db: shared_db.SharedStateDb | None = None  # DIR/fleet-state.db: every station's tables
        self._events_db: sqlite3.Connection | None = None  # DIR/fleet-events.db: every station's event log
        self._server: asyncio.AbstractServer | None = None
        self.all_booted_s: float | None = None
        self.failed: list[str] = []  # stations that could not be built (logged)
        self.ramp_done_s: float | None = None
        self.cases = CaseRunner(self, options.cases) if options.cases is not None else None

    # ----------------------------------------------------------------- persistence of the EVs' world
    @property
    def plants_file(self) -> Path:
        return self.dir / "fleet-plants.json"

    def _load_plants(self) -> dict[str, Any]:
        try:
            data = json.loads(self.plants_file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def save_plants(self) -> None:
        self._write_plants(self._plants_snapshot())

    @staticmethod
    def _plant_row(fs: FleetStation) -> dict[str, list[Any]]:
        return {str(n): [p.plugged, round(p.energy_wh, 3), round(p.ev.soc_percent, 3)] for n, p in fs.plants.items()}

    def _plants_snapshot(self, *, full: bool = True) -> dict[str, dict[str, list[Any]]]:
        """Every station's row, fresh (``full``) or fresh only for the stations whose plug changed since the
        last write (the others as of the last full one, at most 10 s old: what the file promises for energy
        and SoC). A row is replaced, never changed in place, so the copy stays consistent in another thread;
        a plug change no longer rebuilds all N rows (N = 5000: ~9 ms of the loop, every 0.2 s of the ramp)."""
        self._plants_dirty = False
        touched, self._plants_touched = self._plants_touched, set()
        rows = self._plant_rows
        for fs in self.stations.values() if full else (self.stations[i] for i in touched if i in self.stations):
            rows[fs.id] = self._plant_row(fs)
        return dict(rows)

    def _write_plants(self, rows: dict[str, dict[str, list[Any]]]) -> None:
        text = json.dumps(rows, separators=(",", ":"))
        tmp = self.plants_file.with_name(self.plants_file.name + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.plants_file)

    async def _save_plants_async(self, *, full: bool = True) -> None:
        """The snapshot in the loop (consistent), the JSON, the write and its fsync in a thread."""
        async with self._plants_lock:
            await asyncio.to_thread(self._write_plants, self._plants_snapshot(full=full))

    def plants_changed(self, fs: FleetStation) -> None:
        """A plug state of ``fs`` changed: written within 0.2 s (energy and SoC are written every 10 s anyway)."""
        self._plants_touched.add(fs.id)
        if not self._plants_dirty:
            self._plants_dirty = True
            self._handles.append(asyncio.get_running_loop().call_later(0.2, self._save_if_dirty))

    def _save_if_dirty(self) -> None:
        if self._plants_dirty:
            self._spawn(self._persist_once(full=False))

    async def _persist_once(self, *, full: bool = True) -> None:
        try:
            await self._save_plants_async(full=full)
        except OSError as exc:
            log.error("cannot save %s: %s", self.plants_file, exc)

    # ----------------------------------------------------------------- lifecycle
    def _tune_agent(self) -> None:
        """Per-station costs that are settings of the agent's modules (read where they are used):
        - SQLite connections (the events' and the shared state files', see run): a small statement cache,
          a small page cache and 1 KiB pages for new files (agent.db reads them at each connect);
        - longer fleet-only periods of the agent's watchers (simulator/fleet/tuning.py says which and why);
        - without --fsync, commits written but not fsynced (shared_db.SYNCHRONOUS says what that keeps)."""
        import agent.db
        import agent.outbox

        agent.db.STATEMENT_CACHE = STATEMENT_CACHE
        agent.db.PAGE_CACHE_KIB = SQLITE_CACHE_KIB
        agent.db.PAGE_SIZE = SQLITE_PAGE_SIZE
        shared_db.SYNCHRONOUS = "FULL" if self.options.fsync else "NORMAL"
        agent.outbox.MIN_SYNCHRONOUS = 2 if self.options.fsync else 1
        tuning.tune_agent_periods(with_201=self.options.ocpp != "1.6")  # a 1.6 fleet never builds 2.0.1

    def _take_lock(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "fleet.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RuntimeError(f"another cpsim fleet runs on {self.dir} (DIR/fleet.lock is held)") from None
        self._lock_fd = fd

    def _observe_frames(self) -> None:
        """Dial through ObservedConnection (the agent's Link calls ``connect`` from its module)."""
        from websockets.asyncio.client import connect as ws_connect

        import agent.ocpp.v16.link as link_module

        def observed_connect(*args: Any, **kwargs: Any) -> Any:
            cp_id = args[0].rstrip("/").rsplit("/", 1)[-1] if args else ""
            fs = self.stations.get(cp_id)
            if fs is not None and fs.offline_until > time.monotonic():
                raise ConnectionRefusedError(f"{cp_id}: offline (scenario)")
            kwargs.setdefault("create_connection", fm.ObservedConnection)
            return ws_connect(*args, **kwargs)

        fm.METRICS = self.metrics
        link_module.connect = observed_connect  # type: ignore[attr-defined,assignment]

    async def run(self) -> int:
        self._take_lock()
        self._tune_agent()
        self._observe_frames()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop)
        self._stopping = asyncio.Event()
        if self.options.metrics_port is not None:
            self.metrics.serve(self.options.metrics_port, self.options.metrics_host)
        sock = self.dir / "ctl.sock"
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        self._server = await asyncio.start_unix_server(self._serve_control, path=str(sock))
        base = base_config(self.options)
        factories = {name: load_driver(name) for name in {d.driver for d in base.devices.values()}}
        saved = self._load_plants()
        # One event log for the fleet (rows keyed by station): a station's own would be a second SQLite
        # connection per station (~140 kB each). Not durable, as on a charger: a convenience for reading.
        self._events_db = agent_db.connect(self.dir / "fleet-events.db", durable=False)
        self._template = self._make_template(base, factories)
        # Every station's tables in one SQLite file on one connection (simulator/fleet/shared_db.py).
        self._state_db = shared_db.SharedStateDb.open(self.dir, self._template)
        self._state_db.install()
        self._spawn(self._progress_loop())
        self._spawn(self._persist_loop())
        self._spawn(self._boot_watch())
        if self.cases is not None:  # named scenario:*: the graceful stop cancels it first
            self._spawn_named("scenario:cases", self.cases.run())
        ids = station_ids(self.options.id_prefix, self.options.stations, self.options.shard)
        self._state_db.provision(cp_id for _, cp_id in ids)  # new stations' tables, a batch per transaction
        interval = 1.0 / self.options.ramp_per_s if self.options.ramp_per_s > 0 else 0.0
        next_at = time.monotonic()
        for index, cp_id in ids:
            if self._stopping.is_set():
                break
            try:
                self._start_station(index, cp_id, base, factories, saved.get(cp_id, {}))
            except Exception as exc:  # one station that cannot start is reported; the others go on
                log.error("%s: cannot start: %s", cp_id, exc)
                self.failed.append(cp_id)
            if len(self.stations) % tuning.GC_FREEZE_EVERY == 0:
                gc.freeze()  # the stations built so far: out of the next full collections (see tuning.py)
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif interval:
                await asyncio.sleep(0)
        self.ramp_done_s = time.monotonic() - self._started
        await self._stopping.wait()
        await self._graceful_stop()
        return 0 if self.cases is None else self.cases.exit_code()

    def _request_stop(self) -> None:
        if not self._stopping.is_set():
            log.warning("stopping: ending every session, then the stations")
            self._stopping.set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _make_template(self, base: AgentConfig, factories: dict[str, Any]) -> Path:
        """An empty state database made by the agent's own migrations (a station built and closed in
        DIR/.template, never connected): copied for each new station, so that a fresh fleet does not pay each
        migration's fsync per station (some 30 of them: most of a station's start-up on a real disk). A
        station then opens its copy and its migrations find nothing to do; it holds no station's data (only
        the schema and schema_version), and it is rebuilt at every start, so it always matches this agent."""
        directory = self.dir / ".template"
        shutil.rmtree(directory, ignore_errors=True)
        cp_id = "TEMPLATE"
        for n in range(1, self.options.connectors + 1):
            simdev.PLANTS[f"{cp_id}/{n}"] = Plant()
        simdev.READERS[cp_id] = simdev.Taps()
        config = self._station_config(base, cp_id, directory)
        station = Station(config, clock=self.clock, eventlog=self._eventlog(cp_id),
                          devices={name: factories[d.driver](name, d.settings) for name, d in config.devices.items()})
        try:
            VersionRunner(station, config)  # the OCPP service's tables (outbox, configuration, ...)
        finally:
            station.close()
        for n in range(1, self.options.connectors + 1):
            simdev.PLANTS.pop(f"{cp_id}/{n}", None)
        simdev.READERS.pop(cp_id, None)
        return directory / "state.db"

    def _eventlog(self, cp_id: str) -> EventLog:
        assert self._events_db is not None
        return EventLog(self._events_db, station=cp_id)

    def _station_config(self, base: AgentConfig, cp_id: str, directory: Path) -> AgentConfig:
        devices_cfg = {
            name: DeviceConfig(name, d.driver, {"reader": cp_id} if d.driver == "sim-reader"
                               else {"plant": f"{cp_id}/{name.removeprefix('board').removeprefix('meter')}"})
            for name, d in base.devices.items()
        }
        return replace(
            base,
            station=replace(base.station, charge_point_id=cp_id, serial_number=cp_id[-25:]),
            state_dir=directory,
            diag_socket=directory / "diag.sock",
            devices=devices_cfg,
        )

    def _start_station(self, index: int, cp_id: str, base: AgentConfig, factories: dict[str, Any],
                       saved: dict[str, Any]) -> None:
        plants: dict[int, Plant] = {}
        for n in range(1, self.options.connectors + 1):
            plant = Plant()
            state = saved.get(str(n))
            if isinstance(state, list) and len(state) == 3:
                plant.plugged, plant.energy_wh, plant.ev.soc_percent = bool(state[0]), float(state[1]), float(state[2])
            plants[n] = plant
            simdev.PLANTS[f"{cp_id}/{n}"] = plant
        simdev.READERS[cp_id] = simdev.Taps()
        fs = FleetStation(index, cp_id, plants)
        seed = self.options.scenario.seed if self.options.scenario else 1
        fs.seed = f"{seed}/{cp_id}"
        directory = self.dir / cp_id
        config = self._station_config(base, cp_id, directory)
        devices = {name: factories[d.driver](name, d.settings) for name, d in config.devices.items()}
        station = Station(config, clock=self.clock, devices=devices, eventlog=self._eventlog(cp_id))
        fs.station = station
        station.subscribe(fs.on_event)
        fs.runner = VersionRunner(station, config)
        self.stations[cp_id] = fs
        self._plant_rows[cp_id] = self._plant_row(fs)
        self._boot_pending.append(fs)
        loop = asyncio.get_running_loop()
        station.start_devices()  # Station.run without a task of its own (the in-process devices need none either)
        fs.tasks.append(loop.create_task(fs.runner.run_until_stopped(self.stop), name=f"{cp_id}:ocpp"))

    async def _graceful_stop(self) -> None:
        """SIGTERM: stop every session (StopTransaction / TransactionEvent Ended, reason Local), wait until the
        outboxes have delivered them (at most stop_timeout_s), then stop the services and the stations."""
        for handle in self._handles:
            handle.cancel()
        scenario_tasks = [t for t in self._tasks if t.get_name().startswith("scenario:")]
        await cancel_and_wait(*scenario_tasks)
        stopped = 0
        for fs in self.stations.values():
            assert fs.station is not None
            for cid, view in fs.station.connector_views().items():
                if view.session is not None:
                    with contextlib.suppress(Exception):
                        fs.plants[cid].step(asyncio.get_running_loop().time())
                        fs.meter(cid).push()  # the session's last energy, fresh
                        fs.station.stop_session(cid, StopReason.LOCAL)
                        stopped += 1
        deadline = time.monotonic() + self.options.stop_timeout_s
        while time.monotonic() < deadline and self.queued() > 0:  # noqa: ASYNC110 (polls the outboxes)
            await asyncio.sleep(0.2)
        left = self.queued()
        if left:
            log.warning("%d message(s) still queued at stop: the next run on %s delivers them", left, self.dir)
        self.stop.set()
        for fs in self.stations.values():
            await asyncio.wait([t for t in fs.tasks if "ocpp" in t.get_name()], timeout=5.0)
        for fs in self.stations.values():
            await cancel_and_wait(*fs.tasks)
            if fs.station is not None:
                await fs.station.stop_devices()
                fs.station.close()
        if self._events_db is not None:
            self._events_db.close()
        if self._state_db is not None:
            self._state_db.close()
        self.ticker.stop()
        self.save_plants()
        await cancel_and_wait(*self._tasks)
        if self._server is not None:
            self._server.close()
        self._refresh_gauges()
        report = self.report()
        report["stopped_sessions_at_exit"] = stopped
        print(json.dumps(report), flush=True)

    # ----------------------------------------------------------------- background work
    async def _persist_loop(self) -> None:
        while True:
            await asyncio.sleep(10.0)
            await self._persist_once()

    async def _boot_watch(self) -> None:
        expected = len(station_ids(self.options.id_prefix, self.options.stations, self.options.shard))
        while True:
            await asyncio.sleep(0.1)
            # Only the stations not booted yet are looked at (a scan of all N every 0.1 s was O(N^2) in all).
            waiting: list[FleetStation] = []
            for fs in self._boot_pending:
                if fs.booted():
                    fs.booted_at = time.monotonic() - self._started
                    self._booted(fs)
                else:
                    waiting.append(fs)
            self._boot_pending = waiting
            if self.all_booted_s is None and len(self.stations) + len(self.failed) == expected and not waiting:
                self.all_booted_s = max(fs.booted_at or 0.0 for fs in self.stations.values())
                # The stations' objects live as long as the fleet: out of the collector's way, so that a full
                # collection does not walk a million long-lived objects every few minutes (CPU, latency).
                gc.collect()
                gc.freeze()
                print(f"[fleet] all {expected} stations booted in {self.all_booted_s:.1f} s", flush=True)
                if self.options.scenario is None:
                    return
                await asyncio.sleep(1.0)

    def _booted(self, fs: FleetStation) -> None:
        loop = asyncio.get_running_loop()
        if self.options.start_sessions:
            # The stream's first value, as before; without a scenario the stream is not kept for later.
            rng = fs.rng if self.options.scenario is not None else random.Random(fs.seed)
            self._handles.append(loop.call_later(rng.uniform(1.0, 10.0), self._start_long_session, fs))
        if self.options.scenario is not None and not (self.cases is not None and self.cases.selects(fs.id)):
            self._spawn_named(f"scenario:{fs.id}", self._generate(fs, self.options.scenario))

    def _spawn_named(self, name: str, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_long_session(self, fs: FleetStation) -> None:
        """--start-sessions: plug an EV into connector 1 and tap the card (unless a session runs already,
        e.g. one resumed after kill -9)."""
        if self._stopping.is_set() or fs.station is None:
            return
        if fs.station.connector_view(1).session is not None:
            return
        self.plug(fs, 1, True)
        self._handles.append(asyncio.get_running_loop().call_later(0.5, self.tap, fs, self.options.tags[0]))

    async def _generate(self, fs: FleetStation, sc: Scenario) -> None:
        """The automatic transaction generator of one station (see simulator/fleet/scenario.py)."""
        rng = fs.rng
        assert fs.station is not None
        while True:
            rate = sc.plug_in_per_hour / 3600.0
            await asyncio.sleep(rng.expovariate(rate) if rate > 0 else 3600.0)
            if rate <= 0 or fs.station.connector_view(1).session is not None:
                continue
            offline = rng.random() < sc.p_offline_start
            if offline:
                self.go_offline(fs, sc.offline_s)
            invalid = rng.random() < sc.p_invalid_tag
            tag = rng.choice(sc.invalid_tags if invalid else sc.tags)
            self.plug(fs, 1, True)
            await asyncio.sleep(rng.uniform(1.0, 5.0))
            self.tap(fs, tag)
            if invalid:
                await asyncio.sleep(rng.uniform(10.0, 30.0))
                self.plug(fs, 1, False)
                continue
            plant = fs.plants[1]
            start_wh = simdev.energy_now(plant, asyncio.get_running_loop().time())
            length_s = rng.uniform(*sc.session_minutes) * 60.0
            target_wh = rng.uniform(*sc.energy_kwh) * 1000.0
            fault_at = rng.uniform(0.1, 0.9) * length_s if rng.random() < sc.p_fault else None
            began = time.monotonic()
            while time.monotonic() - began < length_s and (
                    simdev.energy_now(plant, asyncio.get_running_loop().time()) - start_wh < target_wh):
                if fault_at is not None and time.monotonic() - began >= fault_at:
                    name = rng.choice(sc.faults)
                    self.fault(fs, 1, name, True)
                    await asyncio.sleep(sc.fault_s)
                    self.fault(fs, 1, name, False)
                    fault_at = None
                    continue
                await asyncio.sleep(5.0)
            self.plug(fs, 1, False)

    def go_offline(self, fs: FleetStation, seconds: float) -> None:
        """The station loses its CSMS link for ``seconds`` (its dials are refused until then): the TCP
        connection is dropped, no closing handshake (that waits for a busy CSMS up to its close timeout)."""
        fs.offline_until = time.monotonic() + seconds
        link = getattr(fs.service, "link", None)
        connection = getattr(link, "_connection", None)
        if connection is not None:
            connection.transport.abort()

    def queued(self) -> int:
        total = 0
        for fs in self.stations.values():
            outbox = getattr(fs.service, "outbox", None)
            if outbox is not None:
                with contextlib.suppress(Exception):
                    total += int(outbox.depth())
        return total

    def _refresh_gauges(self) -> None:
        booted = connected = reconnects = active = started = stopped = 0
        for fs in self.stations.values():
            booted += fs.booted()
            link = getattr(fs.service, "link", None)
            if link is not None:
                connected += link.state is LinkState.CONNECTED
                reconnects += max(0, link.counters.connects - 1)
            if fs.station is not None:
                active += sum(1 for c in fs.station.connectors.values() if c.session is not None)
            started += fs.started
            stopped += fs.stopped
        self.metrics.set_gauges({
            "stations": len(self.stations), "booted": booted, "connected": connected, "reconnects": reconnects,
            "queued_messages": self.queued(), "sessions_active": active, "sessions_started": started,
            "sessions_stopped": stopped,
        })

    async def _progress_loop(self) -> None:
        if self.options.quiet and self.options.metrics_port is None:
            return  # no reader between refreshes (the control API's "state" and the final report refresh)
        while True:
            await asyncio.sleep(self.options.progress_s)
            self._refresh_gauges()
            if not self.options.quiet:
                line = self.metrics.progress_line(time.monotonic() - self._started)
                print(line + (self.cases.progress() if self.cases else ""), file=sys.stderr, flush=True)

    def report(self) -> dict[str, Any]:
        return {
            "fleet": {"stations": len(self.stations), "failed_to_start": len(self.failed),
                      "shard": f"{self.options.shard[0]}/{self.options.shard[1]}",
                      "ocpp": self.options.ocpp, "all_booted_s": self.all_booted_s,
                      "ramp_done_s": self.ramp_done_s, "run_s": round(time.monotonic() - self._started, 1),
                      "loop": "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop")
                      else "asyncio"},
            **self.metrics.snapshot(),
            **({"cases": self.cases.report()} if self.cases is not None else {}),
        }

    # ----------------------------------------------------------------- the EVs and the control API
    def plug(self, fs: FleetStation, connector: int, on: bool) -> None:
        if not on:
            fs.meter(connector).push()  # the session's last energy, fresh
        fs.plants[connector].plugged = on
        fs.board(connector).changed()
        self.plants_changed(fs)

    def tap(self, fs: FleetStation, id_tag: str) -> None:
        simdev.READERS[fs.id].put_nowait(id_tag)

    def fault(self, fs: FleetStation, connector: int, name: str, on: bool) -> None:
        plant = fs.plants[connector]
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
            fs.meter(connector).set_silent(on)
        elif name == "board-silent":
            fs.board(connector).set_silent(on)
        elif name == "reader-silent":
            raise ValueError("reader-silent is not simulated by the fleet's in-process reader")
        else:
            raise ValueError(f"unknown fault {name!r}")
        fs.board(connector).changed()

    def control(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        cp_id = request.get("station")
        if cmd == "state" and cp_id is None:
            self._refresh_gauges()
            return {"ok": True, "state": self.report()}
        if cp_id not in self.stations:
            raise ValueError(f"no station {cp_id!r} in this fleet process (give \"station\": one of "
                             f"{next(iter(self.stations), '?')}...)")
        fs = self.stations[str(cp_id)]
        n = int(request.get("connector", 1))
        if cmd in ("plug", "unplug", "ev", "fault", "clear") and n not in fs.plants:
            raise ValueError(f"no connector {n} (have 1..{len(fs.plants)})")
        if cmd == "plug":
            self.plug(fs, n, True)
        elif cmd == "unplug":
            self.plug(fs, n, False)
        elif cmd == "tap":
            self.tap(fs, str(request["id_tag"]))
        elif cmd == "ev":
            plant, action = fs.plants[n], request["action"]
            if action == "soc":
                plant.ev.soc_percent = float(request["value"])
            elif action == "phases":
                plant.ev.phases = int(request["value"])
            else:
                plant.ev.mode = EvMode(action)
            fs.board(n).changed()
        elif cmd == "fault":
            self.fault(fs, n, str(request["name"]), True)
        elif cmd == "clear":
            for name in ("rcd", "ground", "diode", "overtemp", "undervoltage", "overvoltage", "weld", "lock",
                         "overcurrent", "meter-silent", "board-silent"):
                self.fault(fs, n, name, False)
        elif cmd == "online":
            fs.offline_until = 0.0  # dials allowed again (the link's back-off decides when)
        elif cmd == "offline":
            self.go_offline(fs, float(request.get("value", 60.0)))
        elif cmd != "state":
            raise ValueError(f"unknown command {cmd!r}")
        return {"ok": True, "state": self.station_state(fs)}

    def station_state(self, fs: FleetStation) -> dict[str, Any]:
        assert fs.station is not None
        out: dict[str, Any] = {"station": fs.id, "booted": fs.booted(), "connectors": {}}
        for n, p in fs.plants.items():
            view = fs.station.connector_view(n)
            out["connectors"][str(n)] = {
                "status": view.status.value, "session": view.session.ref if view.session else None,
                "plugged": p.plugged, "cp_state": p.cp_state().value, "relay_closed": p.relay_closed,
                "current_a": round(p.current_a, 2), "energy_wh": round(p.energy_wh, 3),
                "faults": sorted(f.value for f in p.faults),
            }
        return out

    async def _serve_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict):
                        raise ValueError("expected a JSON object")
                    reply = self.control(request)
                except Exception as exc:
                    reply = {"ok": False, "error": str(exc)}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def run_fleet(options: FleetOptions) -> int:
    fleet = Fleet(options)
    try:
        return await fleet.run()
    except RuntimeError as exc:
        print(f"cpsim fleet: {exc}", file=sys.stderr)
        return 2
