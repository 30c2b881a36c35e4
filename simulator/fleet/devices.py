"""In-process devices over the plant physics, for `cpsim fleet`: no pty, socket or task per device.

The same HAL roles as the bus drivers (ControlPilot + PowerSwitch + ConnectorLock on one board, Meter,
TokenReader), registered by name in the ``cpagent.drivers`` entry-point group (``sim-board``,
``sim-meter``, ``sim-reader``), so the station, its connectors and the IEC 61851 machine run unchanged.
A device finds its ``Plant`` by the ``plant`` setting in ``PLANTS`` (filled by the fleet before it builds
the devices), and a reader its tag queue by ``reader``.

One ``Ticker`` for the whole process advances every plant that is not at rest (plugged, PWM on or relay
closed) once per ``period_s`` (a settled one, charging steadily or idle, only at its next meter sample or when
its EV gets full: ``SimBoard.settled_due``) and reports what changed as HAL events, like the board's change
reports; commands (duty, relay, lock) step the plant and report on the next loop turn (``call_soon``), never
inside the caller's own call chain. The meter answers ``latest`` from the plant itself (its energy integrated
up to now: ``energy_now``) and pushes a sample when the current changed by more than 0.5 A, else every
``meter_period_s`` (every tick during an over-current); the fleet pushes one before it ends a session itself
(unplug, SIGTERM).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from hal.device import Device, DeviceError
from hal.flag import Flag
from hal.roles import ConnectorLock, ControlPilot, Meter, PowerSwitch, TokenReader
from hal.types import (
    CpState,
    DeviceFaultChanged,
    Fault,
    FaultFlagsChanged,
    IdToken,
    LockFeedback,
    MeterSample,
    PilotStateChanged,
    ProximityChanged,
    RelayFeedback,
    Role,
)
from simulator.physics import Plant

log = logging.getLogger("cpsim.fleet.devices")

# Faults the plant can carry that a board's own sensors see (as simulator/pilot_board.py).
SENSED_FAULTS = frozenset({Fault.RCD, Fault.OVERTEMP, Fault.GROUND, Fault.UNDERVOLTAGE, Fault.OVERVOLTAGE, Fault.LOCK})
PP_AMPACITY = {1500.0: 13.0, 680.0: 20.0, 220.0: 32.0, 100.0: 63.0}

PLANTS: dict[str, Plant] = {}  # "CP-000001/1" -> the plant behind that connector


class Taps:
    """The tags tapped on one station's reader, in order (asyncio.Queue's put_nowait / get): a list and a
    Flag, some 2 kB less per station than an asyncio.Queue and its three deques."""

    __slots__ = ("_ready", "_tags")

    def __init__(self) -> None:
        self._tags: list[str] = []
        self._ready = Flag()

    def put_nowait(self, tag: str) -> None:
        self._tags.append(tag)
        self._ready.set()

    async def get(self) -> str:
        while not self._tags:
            self._ready.clear()
            await self._ready.wait()
        return self._tags.pop(0)


def energy_now(plant: Plant, now: float) -> float:
    """The plant's energy at loop time ``now`` without stepping it: a settled plant is stepped only when
    something can change (``SimBoard.settled_due``), its power constant in between."""
    last = plant._last_step
    if last is None or not plant.relay_closed or plant.current_a <= 0.0:
        return plant.energy_wh
    return plant.energy_wh + plant.power_w() * max(0.0, now - last) / 3600.0


READERS: dict[str, Taps] = {}  # "CP-000001" -> tags tapped on that station's reader


class Ticker:
    """Steps the plants of every in-process board of this process (one timer, no task per device)."""

    def __init__(self, period_s: float = 1.0, meter_period_s: float = 60.0, settled_period_s: float = 60.0) -> None:
        self.period_s = period_s
        self.meter_period_s = meter_period_s
        self.settled_period_s = settled_period_s
        self.boards: set[SimBoard] = set()
        self.meters: dict[int, SimMeter] = {}  # id(plant) -> its meter
        self._handle: asyncio.TimerHandle | None = None
        self.steps = 0

    def add(self, board: SimBoard) -> None:
        self.boards.add(board)
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(self.period_s, self._tick)

    def discard(self, board: SimBoard) -> None:
        self.boards.discard(board)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        self._handle = loop.call_later(self.period_s, self._tick)
        now = loop.time()
        for board in list(self.boards):
            if now < board.due:
                continue
            try:
                board.tick(now)
            except Exception:  # one station's failure must not stop the others' physics
                log.exception("board %s: tick failed", board.name)


TICKER = Ticker()


class SimBoard(Device, ControlPilot, PowerSwitch, ConnectorLock):
    """The pilot/relay/lock board of one connector, bound to its plant."""

    def __init__(self, name: str, plant: Plant, ticker: Ticker = TICKER) -> None:
        super().__init__(name)
        self.plant = plant
        self.ticker = ticker
        self.silent = False  # fault "board-silent": nothing reported, the agent sees BOARD_SILENT
        self._reported: dict[type, Any] = {}
        self._report_pending = False
        self._last_meter_push = 0.0
        self.due = 0.0  # loop time of this board's next step by the ticker
        self._pushed_current = 0.0  # the current of the last pushed sample: a change of it is pushed at once

    @property
    def roles(self) -> frozenset[Role]:
        return frozenset({Role.PILOT, Role.POWER_SWITCH, Role.LOCK})

    # -- role API (commands step the plant; the change reports follow on the next loop turn)
    @property
    def cp_state(self) -> CpState | None:
        return None if self.silent else self.plant.cp_state()

    @property
    def feedback_closed(self) -> bool | None:
        return None if self.silent else self.plant.relay_closed

    @property
    def locked(self) -> bool | None:
        return None if self.silent else self.plant.locked

    def set_duty(self, duty_percent: float) -> None:
        if not 0.0 < duty_percent < 100.0:
            raise ValueError(f"PWM duty must be between 0 and 100 % (exclusive), got {duty_percent}")
        self._command(pwm_duty=round(duty_percent, 2))

    def set_x1(self) -> None:
        self._command(pwm_duty=None)

    def set_f(self) -> None:
        self._command(pwm_duty=0.0)

    def keep_alive(self) -> None:
        pass

    def close_relay(self) -> None:
        self._command(relay_commanded_closed=True)

    def open_relay(self) -> None:
        self._command(relay_commanded_closed=False)

    def lock(self) -> None:
        self._command(lock_commanded=True)

    def unlock(self) -> None:
        self._command(lock_commanded=False)

    def _command(self, **changes: Any) -> None:
        if self.silent:
            return
        for key, value in changes.items():
            setattr(self.plant, key, value)
        self.changed()

    def changed(self) -> None:
        """The plant changed (a command, the control API): step it and report on the next loop turn."""
        if self._report_pending:
            return
        self._report_pending = True
        try:
            asyncio.get_running_loop().call_soon(self._step_now)
        except RuntimeError:  # no loop (construction): the first tick reports
            self._report_pending = False

    def _step_now(self) -> None:
        self._report_pending = False
        self.tick(asyncio.get_running_loop().time(), force=True)

    # -- physics and reports
    def at_rest(self) -> bool:
        p = self.plant
        return not p.plugged and not p.relay_closed and not p.pwm_duty and p.current_a == 0.0

    def tick(self, now: float, force: bool = False) -> None:
        plant = self.plant
        before = (plant.current_a, plant.s2_closed)
        if force or not self.at_rest():
            plant.step(now)
        # Settled (nothing moved, the EV is not about to react to a new PWM, no over-current to measure): the
        # plant is stepped next when something can happen (see settled_due); else on the next tick.
        waiting = plant._pwm_seen_since is not None and not plant.s2_closed
        settled = (plant.current_a, plant.s2_closed) == before and not waiting and not plant.ev.extra_draw_a
        settled = settled and not force
        meter = None if self.silent else self.ticker.meters.get(id(plant))
        if not self.silent and not settled:  # settled: nothing a report carries can have moved
            self._report()
        if meter is not None:
            # An over-current (fault injection) is measured every tick, as the agent's trip needs 7 s of samples.
            period = self.period_for(plant)
            if now - self._last_meter_push >= period or abs(plant.current_a - self._pushed_current) > 0.5:
                self._last_meter_push = now
                self._pushed_current = plant.current_a
                meter.push()
        self.due = self.settled_due(now, meter is not None) if settled else now

    def settled_due(self, now: float, metered: bool) -> float:
        """When a settled plant must be stepped again: its next meter sample, the moment its EV is full (it
        then stops drawing), at the latest ``settled_period_s`` from now. In between nothing changes but the
        energy and SoC, and those integrate exactly over one long step (the power is constant); commands and
        the control API step it at once (``changed``), so a settled plant costs one step per meter sample
        instead of one per 10 s (cpsim fleet: 6 -> 1 per station-minute)."""
        plant = self.plant
        due = now + self.ticker.settled_period_s
        if metered:
            due = min(due, self._last_meter_push + self.period_for(plant))
        power_w = plant.power_w() if plant.relay_closed else 0.0
        if power_w > 0.0 and plant.ev.soc_percent < 100.0:
            full_in_s = (100.0 - plant.ev.soc_percent) / 100.0 * plant.ev.battery_wh * 3600.0 / power_w
            due = min(due, now + full_in_s)
        return max(due, now)

    def period_for(self, plant: Plant) -> float:
        if plant.ev.extra_draw_a > 0:
            return 0.0
        return self.ticker.meter_period_s if plant.current_a > 0 else 60.0

    def report_all(self) -> None:
        self._reported.clear()
        self._report()

    def _report(self) -> None:
        plant = self.plant
        faults = set(plant.faults & SENSED_FAULTS)
        if plant.pwm_duty and not plant.diode_ok():
            faults.add(Fault.DIODE)
        ohm = plant.pp_resistance_ohm
        for event in (
            ProximityChanged(ohm, None if ohm is None else PP_AMPACITY.get(ohm, 32.0)),
            FaultFlagsChanged(frozenset(faults)),
            LockFeedback(plant.locked),
            RelayFeedback(plant.relay_closed),
            PilotStateChanged(plant.cp_state()),
        ):
            if self._reported.get(type(event)) != event:
                self._reported[type(event)] = event
                self.emit(event)

    def set_silent(self, on: bool) -> None:
        if on == self.silent:
            return
        self.silent = on
        self.emit(DeviceFaultChanged(Fault.BOARD_SILENT, on, "in-process board silent" if on else ""))
        if not on:
            self.report_all()

    needs_task = False  # the ticker does the work: started in place, no task per board (hal Device.needs_task)

    def start(self) -> None:
        self.ticker.add(self)
        self.plant.step(asyncio.get_running_loop().time())
        self.emit(DeviceFaultChanged(Fault.BOARD_SILENT, False))
        self.report_all()

    def stop(self) -> None:
        self.ticker.discard(self)

    async def run(self) -> None:
        self.start()
        try:
            await asyncio.get_running_loop().create_future()  # until cancelled: the ticker does the work
        finally:
            self.stop()


class SimMeter(Device, Meter):
    """The connector's energy meter: readings straight from the plant."""

    def __init__(self, name: str, plant: Plant, ticker: Ticker = TICKER) -> None:
        super().__init__(name)
        self.plant = plant
        self.ticker = ticker
        self.silent = False

    @property
    def roles(self) -> frozenset[Role]:
        return frozenset({Role.METER})

    @property
    def latest(self) -> MeterSample | None:
        if self.silent:
            return None
        p = self.plant
        v = p.voltage_v
        phases = p.phase_currents()
        try:
            energy_wh = energy_now(p, asyncio.get_running_loop().time())
        except RuntimeError:  # no loop: as of the plant's last step
            energy_wh = p.energy_wh
        return MeterSample(
            energy_import_wh=round(energy_wh, 1),
            power_w=round(p.power_w() if p.relay_closed else 0.0, 1),
            voltage_v=(v, v, v),
            current_a=(round(phases[0], 2), round(phases[1], 2), round(phases[2], 2)),
            timestamp=time.time(),
            soc_percent=None,
        )

    def push(self) -> None:
        sample = self.latest
        if sample is not None:
            self.emit(sample)

    def set_silent(self, on: bool) -> None:
        if on != self.silent:
            self.silent = on
            self.emit(DeviceFaultChanged(Fault.METER_SILENT, on, "in-process meter silent" if on else ""))

    needs_task = False  # pushed by the ticker: no task per meter

    def start(self) -> None:
        self.ticker.meters[id(self.plant)] = self
        self.emit(DeviceFaultChanged(Fault.METER_SILENT, False))
        self.push()

    def stop(self) -> None:
        self.ticker.meters.pop(id(self.plant), None)

    async def run(self) -> None:
        self.start()
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            self.stop()


class SimReader(Device, TokenReader):
    """The station's card reader: tags put on its queue (the control API, a scenario) are presented."""

    def __init__(self, name: str, queue: Taps) -> None:
        super().__init__(name)
        self.queue = queue

    @property
    def roles(self) -> frozenset[Role]:
        return frozenset({Role.TOKEN_READER})

    async def tokens(self) -> AsyncIterator[IdToken]:
        while True:
            yield IdToken(await self.queue.get())

    needs_task = False  # the station's token task reads its taps: nothing to serve of its own

    def start(self) -> None:
        self.emit(DeviceFaultChanged(Fault.READER_SILENT, False))

    def stop(self) -> None:
        pass

    async def run(self) -> None:
        self.start()
        await asyncio.get_running_loop().create_future()


def _lookup(table: Mapping[str, Any], settings: Mapping[str, Any], key: str, name: str) -> Any:
    ref = settings.get(key)
    if not isinstance(ref, str) or ref not in table:
        raise DeviceError(f"device {name!r}: {key} = {ref!r} is not a station of this fleet process "
                          "(the sim-* drivers exist only inside `cpsim fleet`)")
    return table[ref]


def create_board(name: str, settings: Mapping[str, Any]) -> SimBoard:
    return SimBoard(name, _lookup(PLANTS, settings, "plant", name))


def create_meter(name: str, settings: Mapping[str, Any]) -> SimMeter:
    return SimMeter(name, _lookup(PLANTS, settings, "plant", name))


def create_reader(name: str, settings: Mapping[str, Any]) -> SimReader:
    return SimReader(name, _lookup(READERS, settings, "reader", name))
