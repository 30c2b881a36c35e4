"""An OpenEVSE controller board, emulated at the RAPI byte level on a pty and bound to a Plant.

Like the real board it runs its own J1772 logic: enabled, it drives PWM for its current capacity once
an EV is connected, closes its relay itself when the EV goes to C and opens it on B, A or a fault;
asleep ($FS) it drives steady +12 V and opens the relay once the EV has left C, draws <= 3 A, or after
3 s; disabled ($FD) it drives -12 V and opens at once. Energy is the Plant's (it integrates nothing
itself) with the firmware's bookkeeping: session watt-seconds from EV connect, added to the Wh total
when the EV leaves. It sends ``$AT`` whenever state, pilot state, capacity or the connect flag change.

Faults come from the Plant, mapped to the firmware's states: RCD -> 6 GFCI, GROUND -> 7 no ground,
welded relay -> 8 stuck relay, OVERTEMP -> 10 over temperature, a missing diode while PWM is on -> 5.
As in the firmware they are only detected while enabled (asleep or disabled it does not look), and
the board leaves a fault state by itself once the cause is gone (the firmware retries some faults
after minutes; the emulator does it at once).
"""

from __future__ import annotations

import asyncio
import logging
import math
from enum import Enum

from drivers.serial.openevse_codec import (
    VFLAG_CHARGING_ON,
    VFLAG_EV_CONNECTED,
    VFLAG_GFI_TRIPPED,
    VFLAG_HARD_FAULT,
    EvseState,
    Line,
    LineDecoder,
    StateReport,
    encode,
    format_state_reply,
    format_state_report,
)
from hal.types import Fault
from simulator.physics import EvMode, Plant
from simulator.pty import PtyWire, RawPty

log = logging.getLogger("cpsim.openevse")

MIN_CAPACITY_A = 6  # MIN_CURRENT_CAPACITY_J1772
SLEEP_OPEN_S = 3.0  # asleep, the relay opens this long after $FS at the latest
SLEEP_OPEN_CURRENT_A = 3.0  # ... or as soon as the EV draws no more than this
_CHANGED_TEST = 0x0008 | 0x0010 | 0x0100 | 0x2000 | VFLAG_HARD_FAULT  # firmware ECVF_CHANGED_TEST


class Mode(Enum):
    ENABLED = "enabled"
    SLEEPING = "sleeping"
    DISABLED = "disabled"


def duty_for_amps(amps: float) -> float:
    """The PWM duty the board drives for a current capacity (SAE J1772 / IEC 61851 formula)."""
    return amps / 0.6 if amps <= 51 else amps / 2.5 + 64


class OpenEvseEmulator(PtyWire):
    def __init__(
        self,
        plant: Plant,
        *,
        tick_s: float = 0.01,
        max_current_a: int = 32,
        firmware: str = "8.2.2",
        heartbeat: bool = True,
    ) -> None:
        self.plant = plant
        self.tick_s = tick_s
        self.max_current_a = max_current_a
        self.current_capacity_a = max_current_a
        self.firmware = firmware
        self.heartbeat = heartbeat
        self.silent = False  # fault injection "board-silent": sends nothing, ignores all input
        self.decoder = LineDecoder(max_line=32)
        self.mode = Mode.ENABLED  # a real board boots enabled unless told otherwise
        self.evse_state = EvseState.UNKNOWN
        self.relay_on = False
        self.gfi_trips = self.no_ground_trips = self.stuck_relay_trips = 0
        self._tripped_gfi = False
        self.hs_interval_s = 0
        self.hs_fallback_a = 0
        self.commands: list[Line] = []  # every command received, for tests
        self._sleep_since = 0.0
        self._session_start_wh: float | None = None
        self.total_wh = math.floor(plant.energy_wh)
        self._last_session_ws = 0
        self._sent: tuple[int, int, int, int] | None = None
        self._pty = RawPty()
        self.port_path = self._pty.path
        self.lines_sent = 0
        self.tx_dropped = 0
        self._now = 0.0

    # ------------------------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._pty.watch(loop, self._on_readable)
        self._now = loop.time()
        self.plant.step(self._now)
        self._send("AB", "00", self.firmware)  # boot notification: POST ok
        try:
            while True:
                self.tick(loop.time())
                await asyncio.sleep(self.tick_s)
        finally:
            self._pty.unwatch()

    # ------------------------------------------------------------------------------------ J1772 logic

    def _ev_letter(self) -> str:
        plant = self.plant
        if not plant.plugged:
            return "A"
        if plant.s2_closed:
            return "D" if plant.ev.mode is EvMode.VENTILATION else "C"
        return "B"

    def _fault_state(self) -> EvseState | None:
        plant = self.plant
        if Fault.RCD in plant.faults:
            return EvseState.GFCI_FAULT
        if Fault.GROUND in plant.faults:
            return EvseState.NO_GROUND
        if plant.relay_welded and not self.relay_on:
            return EvseState.STUCK_RELAY
        if Fault.OVERTEMP in plant.faults:
            return EvseState.OVER_TEMPERATURE
        # Checked while PWM is on; the fault state itself turns PWM off, so it holds until the cause goes.
        holding = self.evse_state is EvseState.DIODE_CHECK_FAILED
        if plant.plugged and not plant.diode_ok() and (bool(plant.pwm_duty) or holding):
            return EvseState.DIODE_CHECK_FAILED
        return None

    def tick(self, now: float) -> None:
        """Advance the plant and the board's state machine to ``now`` (loop time)."""
        self._now = now
        plant = self.plant
        plant.step(now)
        letter = self._ev_letter()
        if self.mode is Mode.DISABLED:
            self.evse_state = EvseState.DISABLED
            self.relay_on = False
            plant.pwm_duty = 0.0
        elif self.mode is Mode.SLEEPING:
            self.evse_state = EvseState.SLEEPING
            plant.pwm_duty = None
            if self.relay_on and (
                letter not in "CD" or plant.current_a <= SLEEP_OPEN_CURRENT_A or now - self._sleep_since >= SLEEP_OPEN_S
            ):
                self.relay_on = False
        else:
            fault = self._fault_state()
            if fault is not None:
                if fault is not self.evse_state:
                    self._count_trip(fault)
                self.evse_state = fault
                self.relay_on = False
                plant.pwm_duty = 0.0  # the firmware drives -12 V in its fault states
            else:
                self.evse_state = {"A": EvseState.A, "B": EvseState.B, "C": EvseState.C, "D": EvseState.D}[letter]
                self.relay_on = letter == "C"
                plant.pwm_duty = None if letter == "A" else duty_for_amps(self.current_capacity_a)
        plant.relay_commanded_closed = self.relay_on
        self._account_energy(letter != "A")
        self._report_changes()

    def _count_trip(self, fault: EvseState) -> None:
        if fault in (EvseState.GFCI_FAULT, EvseState.GFI_SELF_TEST_FAILED):
            self.gfi_trips += 1
            self._tripped_gfi = True
        elif fault is EvseState.NO_GROUND:
            self.no_ground_trips += 1
        elif fault is EvseState.STUCK_RELAY:
            self.stuck_relay_trips += 1

    def _account_energy(self, ev_connected: bool) -> None:
        # EnergyMeter.cpp: a session starts when the EV connects, and its Ws go into the Wh total when it leaves.
        if ev_connected and self._session_start_wh is None:
            self._session_start_wh = self.plant.energy_wh
            self._last_session_ws = 0
        elif not ev_connected and self._session_start_wh is not None:
            self.total_wh += self.session_ws() // 3600
            self._last_session_ws = self.session_ws()
            self._session_start_wh = None

    def session_ws(self) -> int:
        if self._session_start_wh is None:
            return self._last_session_ws
        return max(0, math.floor((self.plant.energy_wh - self._session_start_wh) * 3600))

    def vflags(self) -> int:
        flags = 0
        if self.relay_on:
            flags |= VFLAG_CHARGING_ON
        if self.plant.plugged and self.evse_state is not EvseState.DISABLED:
            flags |= VFLAG_EV_CONNECTED
        if self._tripped_gfi:
            flags |= VFLAG_GFI_TRIPPED
        if self.evse_state is EvseState.STUCK_RELAY:
            flags |= VFLAG_HARD_FAULT
        return flags

    def report(self) -> StateReport:
        pilot = {"A": 1, "B": 2, "C": 3, "D": 4}[self._ev_letter()]
        return StateReport(
            int(self.evse_state), pilot, self.vflags(), current_capacity_a=self.current_capacity_a, elapsed_s=0
        )

    def _report_changes(self) -> None:
        r = self.report()
        key = (r.evse_state, r.pilot_state, r.current_capacity_a or 0, r.vflags & _CHANGED_TEST)
        if key != self._sent and r.evse_state != EvseState.UNKNOWN:
            self._sent = key
            self._send("AT", *format_state_report(r))

    # ------------------------------------------------------------------------------------ input

    def feed(self, data: bytes) -> None:
        """Bytes from the host, as if they arrived on the UART."""
        if self.silent:
            return
        for line in self.decoder.feed(data):
            self.commands.append(line)
            ok, args = self._execute(line)
            self._send("OK" if ok else "NK", *args, seq=line.seq)
            # The firmware reports a state change caused by a command right after its reply.
            self.tick(self._now)

    def _execute(self, line: Line) -> tuple[bool, tuple[str, ...]]:
        token, args = line.token, line.args
        if token == "FE":
            if self.mode is not Mode.ENABLED:
                self.mode = Mode.ENABLED
                self.evse_state = EvseState.UNKNOWN
            return True, ()
        if token == "FS":
            if self.mode is not Mode.SLEEPING:
                self.mode = Mode.SLEEPING
                self._sleep_since = self._now
            return True, ()
        if token == "FD":
            self.mode = Mode.DISABLED
            self.relay_on = False
            self.plant.relay_commanded_closed = False
            return True, ()
        if token == "SC" and args and args[0].isdigit():
            wanted = int(args[0])
            self.current_capacity_a = min(max(wanted, MIN_CAPACITY_A), self.max_current_a)
            return self.current_capacity_a == wanted, (str(self.current_capacity_a),)
        if token == "GS":
            return True, format_state_reply(self.report())
        if token == "GG":
            return True, (str(round(self.plant.current_a * 1000)), str(round(self.plant.voltage_v * 1000)))
        if token == "GU":
            return True, (str(self.session_ws()), str(self.total_wh))
        if token == "GE":
            return True, (str(self.current_capacity_a), "0001")
        if token == "GF":
            return True, (f"{self.gfi_trips:x}", f"{self.no_ground_trips:x}", f"{self.stuck_relay_trips:x}")
        if token == "GV":
            return True, (self.firmware, "5.2.1")
        if token == "GC":
            amps = (MIN_CAPACITY_A, self.max_current_a, self.current_capacity_a, self.max_current_a)
            return True, tuple(str(a) for a in amps)
        if token == "SY" and self.heartbeat:
            if len(args) == 2 and args[0].isdigit() and args[1].isdigit():
                self.hs_interval_s, self.hs_fallback_a = int(args[0]), int(args[1])
            return True, (str(self.hs_interval_s), str(self.hs_fallback_a), "0")
        return False, ()  # unknown or malformed command: the firmware answers $NK

    # ------------------------------------------------------------------------------------ output

    def _send(self, token: str, *args: str, seq: int | None = None) -> None:
        if self.silent or self._pty.closed:
            return
        self.write_raw(encode(token, *args, seq=seq))
        self.lines_sent += 1
