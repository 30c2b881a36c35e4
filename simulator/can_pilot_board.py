"""The pilot/relay board's MCU on a CAN bus, bound to a simulated Plant (docs/can-pilot-board.md).

Same behaviour as the serial emulator (simulator/pilot_board.py), same codec as the driver. In one
process use ``interface="virtual"`` with a channel name shared with the driver; across processes run
``python -m simulator.can_pilot_board --interface remote --channel ws://127.0.0.1:PORT/`` against a
python-can-remote server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

import can

from drivers.can.pilot_codec import (
    BoardMessage,
    Direction,
    FrameDecoder,
    KeepAlive,
    Message,
    TelemetryLevels,
    TelemetryStatus,
    encode_frame,
    load_database,
)
from drivers.serial.pilot_codec import (
    DUTY_F,
    DUTY_X1,
    CpStateReport,
    FaultReport,
    Hello,
    LockReport,
    PhaseReport,
    ProximityReport,
    RelayReport,
    Reset,
    SetDuty,
    SetLock,
    SetPhases,
    SetRelay,
    StatusRequest,
    pp_ampacity,
)
from hal.types import Fault
from simulator.physics import Plant

log = logging.getLogger("cpsim.can_pilot_board")

_SENSED_FAULTS = frozenset({Fault.RCD, Fault.OVERTEMP, Fault.GROUND, Fault.UNDERVOLTAGE, Fault.OVERVOLTAGE, Fault.LOCK})
_CP_HIGH_MV = {"A": 12_000, "B": 9_000, "C": 6_000, "D": 3_000, "E": 0, "F": -12_000}


class CanPilotBoardEmulator:
    port_path: str | None = None  # no pty: the board sits on a CAN bus (same shape as the serial emulators)

    def __init__(
        self,
        plant: Plant,
        *,
        interface: str = "virtual",
        channel: str = "cpsim",
        node_id: int = 0,
        tick_s: float = 0.01,
        status_period_s: float = 0.25,
        keepalive_timeout_s: float = 2.0,
        firmware: tuple[int, int, int] = (1, 0, 0),
        phase_switching: bool = True,
    ) -> None:
        self.plant = plant
        self.phase_switching = phase_switching  # the board has a 1p/3p phase contactor
        self.phases_commanded = plant.supply_phases
        self.phase_commands_refused = 0  # SetPhases while the relay was closed
        self.interface = interface
        self.channel = channel
        self.node_id = node_id
        self.tick_s = tick_s
        self.status_period_s = status_period_s
        self.keepalive_timeout_s = keepalive_timeout_s
        self.firmware = firmware
        self.silent = False  # fault injection "board-silent": sends nothing, ignores all input
        self._db = load_database("can pilot board emulator")
        self.decoder = FrameDecoder(self._db, Direction.HOST_TO_BOARD, node_id)
        self._bus: Any = None
        self.frames_sent = 0
        self.tx_dropped = 0
        self.keepalive_repeats = 0
        self._now = 0.0
        self._last_keepalive: float | None = None
        self._last_counter: int | None = None
        self.keepalive_lapsed = True  # until the first KeepAlive: relay close is refused
        self._last_status: float | None = None
        self._last_reported: dict[type, BoardMessage] = {}

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._bus = can.Bus(interface=self.interface, channel=self.channel, receive_own_messages=False)
        notifier = can.Notifier(self._bus, [self._on_message], timeout=0.05, loop=loop)
        self._now = loop.time()
        self.plant.step(self._now)
        self._send(self._hello())
        try:
            while True:
                self.tick(loop.time())
                await asyncio.sleep(self.tick_s)
        finally:
            notifier.stop(timeout=1.0)
            with contextlib.suppress(Exception):
                self._bus.shutdown()
            self._bus = None

    @property
    def counters(self) -> dict[str, int]:
        return {**self.decoder.counters, "frames_sent": self.frames_sent, "keepalive_repeats": self.keepalive_repeats}

    # ------------------------------------------------------------------------------------ input

    def _on_message(self, msg: can.Message) -> None:
        if not (msg.is_error_frame or msg.is_remote_frame):
            self.feed(msg.arbitration_id, bytes(msg.data), msg.is_extended_id)

    def feed(self, arbitration_id: int, data: bytes, is_extended_id: bool = False) -> None:
        """One frame from the host, as if it arrived on the bus."""
        if self.silent:
            return
        message = self.decoder.decode(arbitration_id, data, is_extended_id)
        if message is not None:
            self._apply(message)

    def _apply(self, message: Message) -> None:
        plant = self.plant
        if isinstance(message, KeepAlive):
            if message.counter == self._last_counter:
                self.keepalive_repeats += 1  # a stuck transmitter repeating itself proves nothing
            else:
                self._last_counter = message.counter
                self._last_keepalive = self._now
                self.keepalive_lapsed = False
        elif isinstance(message, SetDuty):
            if message.duty == DUTY_X1:
                plant.pwm_duty = None
            elif message.duty == DUTY_F:
                plant.pwm_duty = 0.0
            else:
                plant.pwm_duty = message.duty / 100.0
        elif isinstance(message, SetRelay):
            plant.relay_commanded_closed = message.close and not self.keepalive_lapsed
        elif isinstance(message, SetLock):
            plant.lock_commanded = message.lock
        elif isinstance(message, StatusRequest):
            self._send(self._hello())
            self._send_status()
        elif isinstance(message, SetPhases):
            self._set_phases(message.phases)
        elif isinstance(message, Reset):
            self._boot()
        self._report_changes()

    def _set_phases(self, phases: int) -> None:
        if not self.phase_switching:
            self.decoder.counters["unknown_frames"] += 1  # a board without a phase contactor does not know it
            return
        if self.plant.relay_commanded_closed or self.plant.relay_closed:
            self.phase_commands_refused += 1  # never under load
            log.warning("CAN pilot board emulator: SetPhases(%d) refused, relay closed", phases)
            return
        self.phases_commanded = phases
        self.plant.set_supply_phases(phases)

    def _boot(self) -> None:
        self.plant.relay_commanded_closed = False
        self.plant.pwm_duty = None
        self.keepalive_lapsed = True
        self._last_keepalive = None
        if self.phase_switching:  # the phase contactor's rest position
            self.phases_commanded = 3
            self.plant.set_supply_phases(3)
        self._last_reported.clear()
        self._send(self._hello())
        self._send_status()

    # ------------------------------------------------------------------------------------ output

    def tick(self, now: float) -> None:
        self._now = now
        self.plant.step(now)
        if (
            not self.keepalive_lapsed
            and self._last_keepalive is not None
            and now - self._last_keepalive >= self.keepalive_timeout_s
        ):
            log.warning("CAN pilot board emulator: host keep-alive lost, opening relay and driving F")
            self.keepalive_lapsed = True
            self.plant.relay_commanded_closed = False
            self.plant.pwm_duty = 0.0
        self._report_changes()
        if self._last_status is None or now - self._last_status >= self.status_period_s:
            self._send_status()

    def status(self) -> list[BoardMessage]:
        plant = self.plant
        pwm_on = bool(plant.pwm_duty)
        faults = set(plant.faults & _SENSED_FAULTS)
        if pwm_on and not plant.diode_ok():
            faults.add(Fault.DIODE)
        if plant.lock_commanded and plant.lock_jammed:
            faults.add(Fault.LOCK)
        ohm = plant.pp_resistance_ohm
        state = plant.cp_state()
        high = _CP_HIGH_MV[state.letter]
        low = high if not pwm_on else (-12_000 if plant.diode_ok() else -high)
        duty = plant.pwm_duty
        phase = [PhaseReport(plant.supply_phases, self.phases_commanded)] if self.phase_switching else []
        return [
            CpStateReport(state),
            ProximityReport(None if ohm is None else round(ohm), pp_ampacity(ohm)),
            RelayReport(closed=plant.relay_closed, commanded=plant.relay_commanded_closed),
            LockReport(locked=plant.locked, commanded=plant.lock_commanded),
            FaultReport(frozenset(faults)),
            *phase,
            TelemetryLevels(high, low, 850 if Fault.OVERTEMP in plant.faults else 250, round(plant.voltage_v * 10)),
            TelemetryStatus(
                duty=DUTY_X1 if duty is None else round(duty * 100),
                keepalive_lapsed=self.keepalive_lapsed,
                rx_bad_frames=self.decoder.bad_frames,
                rx_unknown_frames=self.decoder.counters["unknown_frames"],
            ),
        ]

    def _report_changes(self) -> None:
        changed = [m for m in self.status()[:-2] if self._last_reported.get(type(m)) != m]
        self._send_all(changed)

    def _send_status(self) -> None:
        self._last_status = self._now
        self._send_all(self.status())

    def _send_all(self, messages: Iterable[BoardMessage]) -> None:
        for message in messages:
            self._send(message)

    def _hello(self) -> Hello:
        major, minor, patch = self.firmware
        return Hello(major, minor, patch, 1, round(self.keepalive_timeout_s * 1000), round(self.status_period_s * 1000))

    def _send(self, message: BoardMessage) -> None:
        if self.silent or self._bus is None:
            return
        self._last_reported[type(message)] = message
        arbitration_id, data = encode_frame(self._db, message, self.node_id)
        self.send_raw(arbitration_id, data)

    def send_raw(self, arbitration_id: int, data: bytes, is_extended_id: bool = False) -> None:
        """Put a frame on the bus towards the host (tests use it to inject corrupt frames)."""
        if self._bus is None:
            return
        try:
            self._bus.send(can.Message(arbitration_id=arbitration_id, data=data, is_extended_id=is_extended_id))
        except can.CanError:
            self.tx_dropped += 1
            return
        self.frames_sent += 1


# ---------------------------------------------------------------------------------------- standalone


async def _main(args: argparse.Namespace) -> None:
    plant = Plant()
    plant.plugged = args.plugged
    board = CanPilotBoardEmulator(plant, interface=args.interface, channel=args.channel, node_id=args.node)
    task = asyncio.create_task(board.run())
    print("ready", flush=True)
    await task


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="CAN pilot board emulator with a simulated EV")
    parser.add_argument("--interface", default="virtual")
    parser.add_argument("--channel", required=True)
    parser.add_argument("--node", type=int, default=0)
    parser.add_argument("--plugged", action="store_true", help="an EV is plugged in from the start")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))


if __name__ == "__main__":
    main()
