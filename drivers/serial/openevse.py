"""Driver of an OpenEVSE controller board over RAPI (serial, ASCII; see drivers/serial/openevse_codec.py).

The board keeps its own J1772 state machine and closes/opens its relay itself; the host sets the
current, enables, sleeps or disables it, and reads state, energy and faults. The HAL roles map onto
that so the agent's IEC controller runs unchanged on top (docs/openevse.md has the tables):

- ControlPilot: ``set_duty`` -> ``$SC amps V`` (volatile, no EEPROM wear; amps from the duty by the
  inverse IEC formula, rounded down) plus ``$FE`` when the board is not enabled; ``set_x1`` -> ``$FS``
  (sleep: steady +12 V); ``set_f`` -> ``$FD`` (disable: -12 V, relay open at once). While the board sits
  in one of its own fault states the mode commands are held (the board already has PWM off and the
  relay open, and ``$FD`` would wipe the fault it reports) and re-asserted once it leaves it.
- PowerSwitch: ``open_relay`` -> ``$FS`` if the board's relay is (or may be) closed, else nothing (the
  board already opened it, e.g. on C->B, and sleeping it would end the PWM the agent still wants).
  ``close_relay`` is accepted only while the board is enabled and the EV is in C (the board closes by
  itself); otherwise it raises ``DeviceError``. Feedback is the board's report: relay closed while the
  CHARGING_ON vflag is set or the state is C, and in the stuck-relay state.
- Meter: ``$GU`` (session Ws + Wh total, folded like the firmware's EnergyMeter) and ``$GG``
  (mA, mV) make one MeterSample per meter poll; one current transformer, so all ``phases`` get the
  same current.
- Events: PilotStateChanged (board states 1/2/3/4 -> A/B2/C2/D2; asleep -> A/B1/C1/D1 from the EV
  connected flag and the pilot state; disabled and fault states -> F), FaultFlagsChanged (fault states
  -> hal Fault), RelayFeedback, DeviceFaultChanged(BOARD_SILENT) when no valid line arrived for
  ``silence_timeout_s``. On a state change events go fault flags (if any appeared) -> pilot -> relay, so
  the agent sees C2 (and takes the relay as closed by itself) before the closed feedback, and a
  fault before anything else.

Limits: asleep or disabled the board does not look for faults, nor measure a welded relay; a board
fault the firmware retries on its own comes back without the host; the energy total has 1 Wh resolution.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from drivers.board_base import BoardDevice
from drivers.serial.openevse_codec import (
    FAULT_STATES,
    EnergyUsage,
    EvseState,
    Line,
    LineDecoder,
    Measurement,
    RapiFormatError,
    StateReport,
    Version,
    encode,
    parse_async_state,
    parse_energy,
    parse_measurement,
    parse_reply,
    parse_state,
    parse_version,
)
from drivers.serial.port import NonBlockingPort
from drivers.settings import DeviceSettings
from hal.clock import Clock
from hal.device import DeviceError
from hal.roles import ControlPilot, Meter, PowerSwitch, check_duty
from hal.types import (
    CpState,
    Fault,
    FaultFlagsChanged,
    HalEvent,
    MeterSample,
    PilotStateChanged,
    RelayFeedback,
    Role,
)

log = logging.getLogger("cpagent.drivers.serial.openevse")

MIN_AMPS, MAX_AMPS = 6, 80
HEARTBEAT_ACK_COOKIE = 165  # firmware HS_ACK_COOKIE 0xA5
PENDING_LIMIT = 32  # replies we wait for at most; older ones are given up
MODE_RESEND_S = 0.5  # re-assert a mode the board has not taken no more often than this

_FAULTS: dict[int, Fault] = {
    EvseState.DIODE_CHECK_FAILED: Fault.DIODE,
    EvseState.GFCI_FAULT: Fault.RCD,
    EvseState.NO_GROUND: Fault.GROUND,
    EvseState.STUCK_RELAY: Fault.WELD,
    EvseState.GFI_SELF_TEST_FAILED: Fault.RCD,
    EvseState.OVER_TEMPERATURE: Fault.OVERTEMP,
    EvseState.OVER_CURRENT: Fault.OVERCURRENT,
}
_ACTIVE_CP = {EvseState.A: CpState.A, EvseState.B: CpState.B2, EvseState.C: CpState.C2, EvseState.D: CpState.D2}
_SLEEP_CP = {2: CpState.B1, 3: CpState.C1, 4: CpState.D1}

PWM, SLEEP, DISABLE = "pwm", "sleep", "disable"


def amps_from_duty(duty_percent: float) -> int:
    """The whole amps a PWM duty signals (inverse of IEC 61851-1 Annex A), never above it."""
    amps = duty_percent * 0.6 if duty_percent <= 85.0 else (duty_percent - 64.0) * 2.5
    # The agent rounds the duty to 0.01 %: allow that much below a whole amp before rounding down.
    return int(min(max(math.floor(amps + 0.01), MIN_AMPS), MAX_AMPS))


def cp_from_report(report: StateReport) -> CpState | None:
    """The control-pilot state the board's report stands for; None while it is between states."""
    state = report.evse_state
    if state in _ACTIVE_CP:
        return _ACTIVE_CP[EvseState(state)]
    if state == EvseState.SLEEPING:
        if not report.ev_connected:
            return CpState.A
        return _SLEEP_CP.get(report.pilot_state, CpState.B1)
    if state == EvseState.DISABLED or state in FAULT_STATES:
        return CpState.F
    return None


def faults_from_report(report: StateReport) -> frozenset[Fault]:
    state = report.evse_state
    if state in FAULT_STATES:
        return frozenset({_FAULTS.get(state, Fault.INTERNAL)})
    return frozenset()


def relay_from_report(report: StateReport) -> bool:
    return report.relay_closed or report.evse_state == EvseState.STUCK_RELAY


class OpenEvse(BoardDevice, ControlPilot, PowerSwitch, Meter):
    log = log
    silence_subject = "line"

    def __init__(
        self,
        name: str,
        port: str,
        *,
        baudrate: int = 115200,
        poll_interval_s: float = 0.25,
        silence_timeout_s: float = 1.0,
        phases: int = 1,
        heartbeat_interval_s: int = 0,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(name, silence_timeout_s=silence_timeout_s, clock=clock)
        self.port = port
        self.baudrate = baudrate
        self.poll_interval_s = poll_interval_s
        self.phases = phases
        self.heartbeat_interval_s = heartbeat_interval_s
        self._decoder = LineDecoder()
        self._seq = 0
        self._pending: OrderedDict[int, str] = OrderedDict()
        self._counters = {
            "lines_sent": 0,
            "tx_dropped": 0,
            "port_opens": 0,
            "bad_fields": 0,
            "nk_replies": 0,
            "unmatched_replies": 0,
            "replies_lost": 0,
            "unknown_lines": 0,
        }
        self._port = NonBlockingPort(
            port, baudrate, owner=name, on_data=self.receive, on_lost=self._port_down, counters=self._counters, log=log
        )
        # What the agent wants; re-asserted on (re)open, board reboot and when a fault state ends.
        self._want: str | None = None
        self._want_amps: int | None = None
        self._mode_sent_at = -math.inf
        # Board state as last reported; None = unknown (never heard, or silent).
        self.report: StateReport | None = None
        self._cp_state: CpState | None = None
        self._relay_closed: bool | None = None
        self._faults: frozenset[Fault] | None = None
        self._latest: MeterSample | None = None
        self._measurement: Measurement | None = None
        self.version: Version | None = None
        # Energy bookkeeping: see _energy_wh.
        self._total_seen: int | None = None
        self._session_folded = True
        self._last_ws = 0
        self._energy_wh: int | None = None

    # ------------------------------------------------------------------------------------ role API

    @property
    def roles(self) -> frozenset[Role]:
        return frozenset({Role.PILOT, Role.POWER_SWITCH, Role.METER})

    @property
    def cp_state(self) -> CpState | None:
        return self._cp_state

    @property
    def feedback_closed(self) -> bool | None:
        return self._relay_closed

    @property
    def latest(self) -> MeterSample | None:
        return self._latest

    @property
    def active_faults(self) -> frozenset[Fault] | None:
        return self._faults

    def set_duty(self, duty_percent: float) -> None:
        check_duty(duty_percent)
        amps = amps_from_duty(duty_percent)
        if amps != self._want_amps:
            self._want_amps = amps
            self._command("SC", amps, "V")
        if self._want != PWM:
            self._want = PWM
            self._assert_mode(force=True)

    def set_x1(self) -> None:
        self._want = SLEEP
        self._assert_mode(force=True)

    def set_f(self) -> None:
        self._want = DISABLE
        self._assert_mode(force=True)

    def keep_alive(self) -> None:
        if self.heartbeat_interval_s > 0:
            self._command("SY")

    def close_relay(self) -> None:
        report = self.report
        if report is None or report.evse_state != EvseState.C or self._want != PWM:
            raise DeviceError(
                f"{self.name}: an OpenEVSE board closes its relay itself when an enabled board sees the EV in C; "
                f"it cannot be closed now (board state {report.evse_state if report else 'unknown'})"
            )

    def open_relay(self) -> None:
        if self._relay_closed is not False:
            self._want = SLEEP  # the board opens once the EV has stopped drawing (3 s at most)
            self._assert_mode(force=True)

    def counters(self) -> Mapping[str, int]:
        return {**self._decoder.counters, **self._counters}

    # ------------------------------------------------------------------------------------ commands

    def _command(self, token: str, *args: str | int) -> None:
        self._seq = self._seq % 0xFF + 1  # 1..255; 00 means "no id"
        self._pending[self._seq] = token
        while len(self._pending) > PENDING_LIMIT:
            self._pending.popitem(last=False)
            self._counters["replies_lost"] += 1
        self._write(encode(token, *args, seq=self._seq))

    def _write(self, frame: bytes) -> None:
        written = self._port.write(frame)
        if written is None:
            return
        if written == len(frame):
            self._counters["lines_sent"] += 1
        else:  # a cut line is dropped by the board's parser at the next '$'
            self._counters["tx_dropped"] += 1

    def _board_mode(self) -> str | None:
        if self.report is None:
            return None
        state = self.report.evse_state
        if state == EvseState.SLEEPING:
            return SLEEP
        if state == EvseState.DISABLED:
            return DISABLE
        return PWM

    def _assert_mode(self, *, force: bool = False) -> None:
        """Bring the board into the mode the agent wants (held while the board is in a fault state)."""
        want = self._want
        if want is None:
            return
        report = self.report
        if report is not None and report.evse_state in FAULT_STATES:
            return
        now = self._now()
        if not force and (self._board_mode() == want or now - self._mode_sent_at < MODE_RESEND_S):
            return
        self._mode_sent_at = now
        self._command({PWM: "FE", SLEEP: "FS", DISABLE: "FD"}[want])

    def _reassert(self) -> None:
        if self._want_amps is not None:
            self._command("SC", self._want_amps, "V")
        self._assert_mode(force=True)

    def _now(self) -> float:
        return self._clock.monotonic() if self._clock is not None else 0.0

    # ------------------------------------------------------------------------------------ transport

    def _open_transport(self, loop: asyncio.AbstractEventLoop) -> None:
        self._port.open(loop)
        self._pending.clear()

    def _close_transport(self, loop: asyncio.AbstractEventLoop) -> None:
        self._port.close(loop)

    def _lose_port(self, why: str) -> None:
        self._port.lose(why)

    async def _serve(self) -> None:
        lost = self._port.lost
        assert lost is not None
        self._write(b"\r")  # end whatever half line the board holds
        self._command("GV")
        if self.heartbeat_interval_s > 0:
            self._command("SY", self.heartbeat_interval_s, 0)
        self._reassert()
        rounds = 0
        last_pulse = -math.inf
        while not lost.is_set():
            self._command("GS")
            if rounds % 2 == 0:  # the meter at half the state rate
                self._command("GG")
                self._command("GU")
            now = self._now()
            if self.heartbeat_interval_s > 0 and now - last_pulse >= self.heartbeat_interval_s / 3:
                last_pulse = now
                self._command("SY")
            rounds += 1
            try:  # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
                async with asyncio.timeout(self.poll_interval_s):
                    await lost.wait()
            except TimeoutError:
                pass

    # ------------------------------------------------------------------------------------ protocol

    def receive(self, data: bytes) -> None:
        """Decode bytes from the board and emit events (the reader callback; usable by unit tests)."""
        lines = self._decoder.feed(data)
        if not lines:
            return
        self._heard()
        for line in lines:
            try:
                self._apply(line)
            except RapiFormatError as exc:
                self._counters["bad_fields"] += 1
                log.debug("%s: %s", self.name, exc)

    def _apply(self, line: Line) -> None:
        if line.token == "AT":
            self._apply_report(parse_async_state(line))
        elif line.token == "AB":
            log.info("%s: board booted (%s)", self.name, " ".join(line.args))
            self._reassert()  # it forgot our volatile current and our mode
        elif line.is_reply:
            self._apply_reply(line)
        elif not line.is_async:
            self._counters["unknown_lines"] += 1

    def _apply_reply(self, line: Line) -> None:
        reply = parse_reply(line)
        if reply.seq is not None:
            token = self._pending.pop(reply.seq, None)
        elif self._pending:  # firmware without sequence ids answers in order
            token = self._pending.popitem(last=False)[1]
        else:
            token = None
        if token is None:
            self._counters["unmatched_replies"] += 1
            return
        if not reply.ok:
            self._counters["nk_replies"] += 1
            if token == "SY":
                log.warning("%s: the board missed a heartbeat; acknowledging", self.name)
                self._command("SY", HEARTBEAT_ACK_COOKIE)
            elif token == "SC":
                log.warning("%s: board limited the current capacity to %s A", self.name, " ".join(reply.args))
            elif token != "GG":
                log.warning("%s: board refused $%s", self.name, token)
            return
        if token == "GS":
            self._apply_report(parse_state(reply.args))
        elif token == "GG":
            self._measurement = parse_measurement(reply.args)
        elif token == "GU":
            self._apply_energy(parse_energy(reply.args))
        elif token == "GV":
            version = parse_version(reply.args)
            if version != self.version:
                log.info("%s: OpenEVSE firmware %s, RAPI %s", self.name, version.firmware, version.protocol)
            self.version = version

    def _apply_report(self, report: StateReport) -> None:
        previous = self.report
        self.report = report
        if report.ev_connected and (previous is None or not previous.ev_connected):
            # The firmware starts a new energy session (session Ws back to 0) when the EV connects.
            self._session_folded, self._last_ws = False, 0
        cp = cp_from_report(report)
        relay = relay_from_report(report)
        faults = faults_from_report(report)
        events: list[HalEvent] = []
        if faults != self._faults and faults:
            events.append(FaultFlagsChanged(faults))
        if cp is not None and cp != self._cp_state:
            self._cp_state = cp
            events.append(PilotStateChanged(cp))
        if relay != self._relay_closed:
            events.append(RelayFeedback(relay))
        if faults != self._faults and not faults:
            events.append(FaultFlagsChanged(faults))
        self._relay_closed, self._faults = relay, faults
        for event in events:
            self._emit(event)
        self._assert_mode()

    def _apply_energy(self, usage: EnergyUsage) -> None:
        # EnergyMeter.cpp: the total only grows when a session ends (by floor(Ws / 3600)); the session Ws
        # stay readable until the next EV connects. So: total + this session's Wh until it is folded in.
        if self._total_seen is not None and usage.total_wh != self._total_seen:
            self._session_folded = True
        elif usage.session_ws < self._last_ws:
            self._session_folded = False  # a new session began between two readings
        elif self._total_seen is None:
            self._session_folded = not (self.report is not None and self.report.ev_connected)
        self._total_seen, self._last_ws = usage.total_wh, usage.session_ws
        energy = usage.total_wh + (0 if self._session_folded else usage.session_ws // 3600)
        if self._energy_wh is not None and energy < self._energy_wh:
            energy = self._energy_wh  # a meter register never runs backwards
        self._energy_wh = energy
        m = self._measurement
        amps = None if m is None or m.current_ma is None else m.current_ma / 1000.0
        volts = None if m is None or m.voltage_mv is None else m.voltage_mv / 1000.0
        power = 0.0 if amps is None or volts is None else amps * volts * self.phases

        def per_phase(value: float | None) -> tuple[float | None, float | None, float | None]:
            return (value, value if self.phases >= 2 else None, value if self.phases >= 3 else None)

        assert self._clock is not None
        sample = MeterSample(
            energy_import_wh=float(energy),
            power_w=power,
            voltage_v=per_phase(volts),
            current_a=per_phase(amps),
            timestamp=self._clock.wall(),
        )
        self._measurement = None  # each sample pairs with the $GG of its own round
        self._latest = sample
        self._emit(sample)

    def _on_silent(self, detail: str) -> str:
        self.report = None
        self._cp_state = None
        self._relay_closed = None
        self._faults = None
        self._latest = None
        self._measurement = None
        return detail


# ---------------------------------------------------------------------------------------- factory

_KNOWN_SETTINGS = ("port", "baudrate", "poll_interval_s", "silence_timeout_s", "phases", "heartbeat_interval_s")


def create(name: str, settings: Mapping[str, Any]) -> OpenEvse:
    s = DeviceSettings(name, settings, _KNOWN_SETTINGS)
    port = s.serial_port()
    baudrate = s.integer("baudrate", 115200, 1, 4_000_000, noun="a whole number")
    # 2-10 polls a second: silence must be flagged within 2 s even if a reply or two is lost.
    poll = s.seconds("poll_interval_s", 0.25, 0.1, 0.5)
    silence = s.seconds("silence_timeout_s", 1.0, 0.3, 1.5)
    if silence < 2 * poll:
        raise DeviceError(f"{s.key('silence_timeout_s')}: must be at least twice poll_interval_s ({poll} s)")
    phases = s.integer("phases", 1, 1, 3, noun="a whole number")
    heartbeat = s.integer("heartbeat_interval_s", 0, 0, 3600, noun="a whole number")
    return OpenEvse(
        name,
        port,
        baudrate=baudrate,
        poll_interval_s=poll,
        silence_timeout_s=silence,
        phases=phases,
        heartbeat_interval_s=heartbeat,
    )
