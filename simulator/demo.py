"""`cpagent sim` / `make demo`: start the simulator as its own process (real ptys and Modbus between
the two), run the agent against it, play plug -> tap card -> charge -> unplug, and print a timeline
a person can read. Exit 0 only if the session completed with energy > 0.

``--ocpp 2.0.1``: the same story in OCPP 2.0.1 messages (the rig's CSMS and the agent speak ocpp2.0.1:
BootNotification, StatusNotification per EVSE/connector, TransactionEvent Started/Updated/Ended with the
station's transactionId, seqNo, triggerReason and chargingState); exit 0 only with energy > 0 and the
transaction Ended at the CSMS.

``--scenario smart-charging``: the demo runs the CSMS itself, charges a few seconds at full power, has the
CSMS send a 10 A TxProfile, shows the power dropping, clears it and shows it coming back; exit 0 only if
the measured power really dropped (meter and MeterValues at the CSMS)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, load
from agent.events import SessionStarted, SessionStopped, StationEvent, StatusChanged, TokenPresented
from agent.redact import mask
from agent.station import Station
from hal.tasks import cancel_and_wait

DEMO_TAG = "DEADBEEF01"


async def _show_wire(log_path: Path, tl: Timeline) -> None:
    """Print the OCPP exchange as the bundled CSMS saw it on the wire (its JSON-lines frame log)."""
    pending: dict[str, str] = {}
    offset = 0
    while True:
        await asyncio.sleep(0.05)
        try:
            lines, offset = _read_from(log_path, offset)
        except OSError:
            continue
        for line in lines:
            try:
                record = json.loads(line)
                frame = record["frame"]
                at = dt.datetime.fromisoformat(record["t"].replace("Z", "+00:00")).timestamp()
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            if not isinstance(frame, list) or len(frame) < 3:
                continue
            if frame[0] == 2:
                pending[frame[1]] = frame[2]
                tl.note_call(frame[2], frame[3])
                who = "agent -> CSMS" if record["dir"] == "in" else "CSMS -> agent"
                tl.line(f"OCPP {who}: {frame[2]} {_brief(frame[3])}", at)
            elif frame[0] in (3, 4):
                action = pending.pop(frame[1], "?")
                tl.line(f"OCPP      reply: {action}.conf {_brief(frame[2]) if frame[0] == 3 else frame[2]}", at)


def _read_from(path: Path, offset: int) -> tuple[list[str], int]:
    with open(path, encoding="utf-8") as f:
        f.seek(offset)
        return f.readlines(), f.tell()


_BRIEF_KEYS = (
    # 1.6
    "status", "connectorId", "idTag", "transactionId", "meterStart", "meterStop", "reason", "errorCode",
    "interval", "idTagInfo",
    # 2.0.1 (transactionInfo's fields are shown as if they were top-level)
    "eventType", "seqNo", "triggerReason", "chargingState", "stoppedReason", "offline", "evseId", "evse",
    "connectorStatus", "idToken", "idTokenInfo",
)


def _brief(payload: Any) -> str:
    if not isinstance(payload, dict):
        return ""
    flat = dict(payload)
    if isinstance(payload.get("transactionInfo"), dict):
        flat.update(payload["transactionInfo"])
    parts = []
    for k in _BRIEF_KEYS:
        if k in flat:
            v = flat[k]
            if k == "idTag":
                v = mask(str(v))
            elif k == "idToken" and isinstance(v, dict):
                v = mask(str(v.get("idToken", "")))
            elif k in ("idTagInfo", "idTokenInfo") and isinstance(v, dict):
                v = v.get("status")
            elif k == "evse" and isinstance(v, dict):
                v = v.get("id")
            parts.append(f"{k}={v}")
    return " ".join(parts)


class Timeline:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.t0_wall = time.time()
        self.transaction_events: list[dict[str, Any]] = []  # 2.0.1 TransactionEvents as the CSMS got them

    def note_call(self, action: Any, payload: Any) -> None:
        if action == "TransactionEvent" and isinstance(payload, dict):
            self.transaction_events.append(payload)

    def line(self, text: str, at_wall: float | None = None) -> None:
        t = time.monotonic() - self.t0 if at_wall is None else at_wall - self.t0_wall
        print(f"{t:7.2f}s  {text}", flush=True)


async def _ctl(directory: Path, **request: Any) -> dict[str, Any]:
    from simulator.control import send_async

    return await send_async(directory, request)


async def _wait_for(predicate: Any, limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def run_demo(
    connectors: int, charge_seconds: float, keep_dir: Path | None, scenario: str = "session", ocpp: str = "1.6"
) -> int:
    if scenario == "smart-charging" and ocpp == "2.0.1":
        from simulator.demo_smart_charging201 import run_smart_charging201_demo

        return await run_smart_charging201_demo(keep_dir)
    if scenario == "smart-charging":
        from simulator.demo_smart_charging import run_smart_charging_demo

        return await run_smart_charging_demo(connectors, keep_dir)
    if scenario == "solar":
        from simulator.demo_solar import run_solar_demo

        return await run_solar_demo(keep_dir)
    with contextlib.ExitStack() as stack:
        directory = keep_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cpagent-sim-")))
        with simulator_up(directory, "--connectors", str(connectors), "--ocpp", ocpp) as sim:
            return await _play(directory, charge_seconds, sim, ocpp)


@contextlib.contextmanager
def simulator_up(directory: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """`cpsim up --dir DIRECTORY ARGS...` as its own process for a demo (it writes a fresh agent.toml there),
    stopped (terminate, then kill after 10 s) when the block ends."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "agent.toml").unlink(missing_ok=True)
    sim = subprocess.Popen(
        [sys.executable, "-m", "simulator.cli", "up", "--dir", str(directory), *args], stdout=subprocess.DEVNULL)
    try:
        yield sim
    finally:
        sim.terminate()
        try:
            sim.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sim.kill()


@contextlib.asynccontextmanager
async def csms_and_simulator(keep_dir: Path | None, csms_options: dict[str, Any],
                             *args: str) -> AsyncIterator[tuple[Path, Any, subprocess.Popen[bytes]]]:
    """For a scenario that makes the CSMS send: the bundled CSMS in this process (``csms_options``; its frames
    logged to csms.jsonl) and `cpsim up ARGS... --csms URL` (``simulator_up``) in ``keep_dir`` or a temporary
    directory; (directory, CSMS, simulator process), both stopped when the block ends."""
    from simulator.csms import Csms

    with contextlib.ExitStack() as stack:
        directory = keep_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cpagent-sim-")))
        directory.mkdir(parents=True, exist_ok=True)
        csms = Csms(log_path=directory / "csms.jsonl", **csms_options)
        await csms.start()
        try:
            with simulator_up(directory, *args, "--csms", csms.url) as sim:
                yield directory, csms, sim
        finally:
            await csms.stop()


async def simulator_config(directory: Path, sim: subprocess.Popen[bytes]) -> AgentConfig | None:
    """The agent.toml the simulator writes once its devices are up; None (said on stderr) if it died first."""
    await _wait_for(lambda: (directory / "agent.toml").exists() or sim.poll() is not None, 20, "the simulator")
    if sim.poll() is not None:
        print("simulator failed to start", file=sys.stderr)
        return None
    return load(directory / "agent.toml")


async def show_changes(tl: Timeline, text: Callable[[], str], period_s: float = 0.5) -> None:
    """A timeline line each time ``text()`` says something new (polled every ``period_s``), until cancelled."""
    last = ""
    while True:
        line = text()
        if line != last:
            tl.line(line)
            last = line
        await asyncio.sleep(period_s)


def _service(station: Station, config: AgentConfig, ocpp: str) -> Any:
    """The OCPP side for this version, over the station (as the agent's single-process path builds it)."""
    if not config.ocpp.endpoint:
        return None
    if ocpp == "2.0.1":
        from agent.ocpp.v201.service import OcppService as OcppService201

        return OcppService201(station, config)
    from agent.ocpp.v16.service import OcppService

    return OcppService(station, config)


async def _play(directory: Path, charge_seconds: float, sim: subprocess.Popen[bytes], ocpp: str = "1.6") -> int:
    tl = Timeline()
    config = await simulator_config(directory, sim)
    if config is None:
        return 1
    station = Station(config)
    service = _service(station, config, ocpp)
    stopped: list[SessionStopped] = []
    started: list[SessionStarted] = []

    def on_event(event: StationEvent) -> None:
        if isinstance(event, StatusChanged):
            faults = f" faults={','.join(sorted(f.value for f in event.faults))}" if event.faults else ""
            tl.line(f"connector {event.connector_id} status -> {event.status.value}{faults}")
        elif isinstance(event, SessionStarted):
            started.append(event)
            tl.line(f"connector {event.connector_id} session started for {mask(event.session.id_tag)} "
                    f"at {event.session.start_energy_wh:.1f} Wh")
        elif isinstance(event, SessionStopped):
            stopped.append(event)
            tl.line(f"connector {event.connector_id} session stopped ({event.reason.value})")
        elif isinstance(event, TokenPresented):
            verdict = "accepted" if event.accepted else "rejected"
            tl.line(f"card {mask(event.id_tag)} {verdict} at connector {event.connector_id}")

    station.subscribe(on_event)
    task = asyncio.create_task(station.run())
    ocpp_task = asyncio.create_task(service.run()) if service else None
    wire_task = asyncio.create_task(_show_wire(directory / "csms.jsonl", tl))
    connector = station.connectors[1]
    last_line = ""

    async def sampler() -> None:
        nonlocal last_line
        while True:
            c = connector.controller
            duty = c.duty_percent
            pwm = "X1" if duty is None else ("F" if duty == 0 else f"{duty:.1f}%")
            relay = "closed" if c.relay_feedback_closed else "open"
            sample = connector.last_sample
            power = sample.power_w if sample else 0.0
            energy = connector.session_energy_wh()
            cp = c.cp_state.value if c.cp_state else "?"
            text = (f"CP={cp:3} PWM={pwm:>6} ({c.offered_current_a:.0f} A) relay={relay:6} "
                    f"power={power / 1000:6.2f} kW  session energy={energy:7.1f} Wh")
            if text != last_line:
                tl.line(text)
                last_line = text
            await asyncio.sleep(1.0)

    sample_task = asyncio.create_task(sampler())
    try:
        await _wait_for(lambda: connector.controller.cp_state is not None, 10, "the pilot board")
        if service is not None:
            await _wait_for(lambda: service.accepted, 15, "the CSMS to accept the BootNotification")
        tl.line("scenario: plug in the EV")
        await _ctl(directory, cmd="plug", connector=1)
        await _wait_for(lambda: connector.controller.cp_state is not None
                        and connector.controller.cp_state.ev_connected, 5, "EV connected")
        tl.line(f"scenario: tap card {mask(DEMO_TAG)}")
        await _ctl(directory, cmd="tap", id_tag=DEMO_TAG)
        await _wait_for(lambda: connector.controller.relay_feedback_closed is True, 15, "the contactor to close")
        tl.line(f"scenario: charging for {charge_seconds:.0f} s")
        await asyncio.sleep(charge_seconds)
        tl.line("scenario: unplug the EV")
        await _ctl(directory, cmd="unplug", connector=1)
        await _wait_for(lambda: bool(stopped), 10, "the session to stop")
        if service is not None:
            await _wait_for(lambda: service.outbox.depth() == 0, 15, "the StopTransaction to be delivered")
        await asyncio.sleep(0.5)
    except TimeoutError as exc:
        tl.line(f"FAILED: {exc}")
    finally:
        if service is not None:
            await service.stop()
        tasks = [t for t in (sample_task, task, ocpp_task, wire_task) if t is not None]
        await cancel_and_wait(*tasks)
        final = station.sessions.get(stopped[-1].session.ref) if stopped else None
        station.close()
    if not stopped:
        print("no session completed", file=sys.stderr)
        return 1
    s = final or stopped[-1].session
    if ocpp == "2.0.1":
        return _summary_201(s, tl.transaction_events)
    summary = {
        "session": s.ref,
        "transaction_id": s.transaction_id,
        "id_tag": mask(s.id_tag),
        "duration_s": round((s.stop_wall or s.start_wall) - s.start_wall, 1),
        "energy_wh": round(s.energy_wh, 1),
        "start_meter_wh": round(s.start_energy_wh, 1),
        "stop_meter_wh": round(s.stop_energy_wh or 0.0, 1),
        "stop_reason": s.stop_reason,
    }
    print("\nsession summary: " + json.dumps(summary, indent=2))
    return 0 if s.energy_wh > 0 else 1


def _summary_201(session: Any, events: list[dict[str, Any]]) -> int:
    """The 2.0.1 summary: the session as the station kept it and its transaction as the CSMS received it."""
    ids = list(dict.fromkeys(e["transactionInfo"]["transactionId"] for e in events if "transactionInfo" in e))
    mine = [e for e in events if ids and e["transactionInfo"]["transactionId"] == ids[-1]]
    ended = [e for e in mine if e.get("eventType") == "Ended"]
    summary = {
        "session": session.ref,
        "transaction_id": ids[-1] if ids else None,
        "events": [f"{e['eventType']}#{e['seqNo']} {e['triggerReason']}" for e in mine],
        "id_token": mask(session.id_tag),
        "duration_s": round((session.stop_wall or session.start_wall) - session.start_wall, 1),
        "energy_wh": round(session.energy_wh, 1),
        "stopped_reason": ended[0]["transactionInfo"].get("stoppedReason") if ended else None,
    }
    print("\nsession summary (OCPP 2.0.1): " + json.dumps(summary, indent=2))
    return 0 if session.energy_wh > 0 and len(ended) == 1 else 1
