"""Hardware faults matrix: every fault of `cpsim ctl fault` (simulator.faults.FAULTS) injected at every IEC
state, against the real agent Station + OcppService in this event loop (real ptys, Modbus TCP, websockets
to the bundled CSMS). Per combination:

- safety: the simulated contactor opens within its deadline, timed from injection to the plant's relay
  opening: 100 ms for IEC events (rcd, ground, diode, overtemp, undervoltage, overvoltage, lock); the
  7 s over-current rule (not before 7 s, by 9 s with the EV's ramp and the 0.5 s meter poll); board-silent:
  the board's own 2 s keep-alive opens it (the agent cannot, the board ignores it), by 2.3 s. Where the relay
  is already open (idle, B1, B2) it must stay open, and in B2 the PWM is withdrawn within 100 ms.
- meter-silent and reader-silent do not stop charging (charge_control.NON_BLOCKING, not in
  connector._FAULTING): the relay stays closed and the status is not Faulted, but the errorCode is reported.
- the CSMS receives a StatusNotification with the fault's errorCode (simulator.faults.FAULTS): on the
  connector, or on connector 0 for the reader (it serves the whole charge point).
- recovery: `cpsim ctl clear`, plus `cpctl clear N` (the real CLI) where the fault latches (rcd, ground,
  weld, overcurrent) or is kept until the EV is unplugged (diode: once the PWM is off the board cannot check
  the diode again, so the flag's drop proves nothing); then NoError at the CSMS, and charging resumes if it
  was charging.

Combinations left out or reduced to what is observable:
- diode at idle (A): the diode is checked only on the negative PWM half; no EV, no PWM. Excluded.
- diode at B1 (connected, not authorized): no PWM yet, so the status stays Preparing/NoError; after an
  authorization the PWM starts, the fault shows and the relay never closes.
- overcurrent at A, B1, B2: no current flows with the relay open, so there is nothing to exceed. Excluded.
- weld at C2: a welded contact looks like a closed one while it is commanded closed; the weld shows when the
  agent next opens it (here: a local stop), as PowerSwitchFailure within the 1 s weld check.
- weld at A, B1, B2: the relay cannot "open" (it is welded); the agent keeps commanding it open and
  reports PowerSwitchFailure.
- reader-silent needs a reader that is polled (PN532, used here): an RDM6300 only speaks when a card is in
  the field, so its silence cannot be told from no card.

`make test` runs every fault in the charging state plus a sample of the others; CPAGENT_SOAK=1 runs all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.charge_control import NON_BLOCKING
from agent.connector import _FAULTING
from agent.events import ConnectorStatus
from agent.ocpp.v16.service import OcppService
from hal.types import Fault
from simulator.csms import Received
from simulator.faults import FAULTS
from tests.integration.conftest import Bench, start_bench, stop_bench
from tests.integration.test_cpctl import cpctl
from tests.reliability.harness import SOAK

CP = "CP001"
TAG = "DEADBEEF01"
STATES = ("idle", "connected", "charging", "paused")
IEC_DEADLINE_S = 0.100
OVERCURRENT_THRESHOLD_A = (32.0 + 0.5) * 1.10  # ControlLimits: (offered + margin) * factor, at 32 A offered
IEC_SAFETY = {"rcd", "ground", "diode", "overtemp", "undervoltage", "overvoltage", "lock"}
LATCHING = {"rcd", "ground", "weld", "overcurrent"}
UNTIL_UNPLUG = {"diode"}  # kept until the EV is unplugged or an operator clears it
NON_STOPPING = {"meter-silent", "reader-silent"}
EXCLUDED = {("diode", "idle"), ("overcurrent", "idle"), ("overcurrent", "connected"), ("overcurrent", "paused")}
# `make test`: every fault while charging plus this sample of the other states.
SAMPLE = {("rcd", "idle"), ("diode", "connected"), ("weld", "paused"), ("overtemp", "paused"),
          ("board-silent", "idle"), ("reader-silent", "idle"), ("lock", "connected")}


def _cases() -> list[tuple[str, str]]:
    every = [(f, s) for f in FAULTS for s in STATES if (f, s) not in EXCLUDED]
    return every if SOAK else [(f, s) for f, s in every if s == "charging" or (f, s) in SAMPLE]


def test_matrix_tables_match_the_agent() -> None:
    """The test's idea of which faults stop charging and which latch is the agent's own."""
    # site-meter is station-level, injected with `site silent` (tests/integration/test_site_limit.py)
    assert {Fault(n) for n in NON_STOPPING} == NON_BLOCKING - {Fault.METER_IMPLAUSIBLE, Fault.SITE_METER}
    assert not {Fault(n) for n in NON_STOPPING} & _FAULTING
    assert {Fault(n) for n in FAULTS} - {Fault(n) for n in NON_STOPPING} <= _FAULTING
    from agent.charge_control import LATCHING as AGENT_LATCHING

    assert {Fault(n) for n in LATCHING} == AGENT_LATCHING
    from agent.charge_control import UNTIL_UNPLUG as AGENT_UNTIL_UNPLUG

    assert {Fault(n) for n in UNTIL_UNPLUG} == AGENT_UNTIL_UNPLUG


@dataclass
class Online:
    bench: Bench
    service: OcppService

    @property
    def plant(self):  # type: ignore[no-untyped-def]
        return self.bench.rig.connectors[1].plant

    @property
    def connector(self):  # type: ignore[no-untyped-def]
        return self.bench.station.connectors[1]

    def notes(self) -> list[Received]:
        csms = self.bench.rig.csms
        assert csms is not None
        return csms.messages(CP, "StatusNotification")

    def last_note(self, cid: int) -> Received | None:
        notes = [m for m in self.notes() if m.payload["connectorId"] == cid]
        return notes[-1] if notes else None

    async def status_note(self, since: int, cid: int, error_code: str, *, within: float = 6.0,
                          not_status: str | None = None) -> Received:
        def found() -> Received | None:
            for m in self.notes()[since:]:
                p = m.payload
                if p["connectorId"] == cid and p["errorCode"] == error_code and p["status"] != not_status:
                    return m
            return None

        await self.bench.wait_for(found, within, f"StatusNotification {cid} {error_code}")
        note = found()
        assert note is not None
        return note


@pytest.fixture
async def online(tmp_path: Path) -> AsyncIterator[Online]:
    bench = await start_bench(tmp_path / "rig", bundled_csms=True, reader="pn532")
    service = OcppService(bench.station, bench.station.config)
    task = asyncio.create_task(service.run())
    try:
        await bench.wait_for(lambda: service.accepted, 10, "boot accepted")
        yield Online(bench, service)
    finally:
        await service.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await stop_bench(bench)


async def _reach(o: Online, state: str) -> None:
    b, c = o.bench, o.connector
    if state == "idle":
        await b.wait_for(lambda: c.status() is ConnectorStatus.AVAILABLE, 5, "Available")
        return
    if state == "paused":
        b.ctl(cmd="ev", connector=1, action="pause")
    b.ctl(cmd="plug", connector=1)
    await b.wait_for(lambda: c.status() is ConnectorStatus.PREPARING, 5, "Preparing")
    if state == "connected":
        return
    assert (await b.station.present_token(TAG)).accepted
    if state == "charging":
        await b.wait_for(lambda: o.plant.relay_closed and o.plant.current_a > 0, 10, "charging")
        await b.wait_for(lambda: c.status() is ConnectorStatus.CHARGING, 5, "Charging")
    else:
        await b.wait_for(lambda: c.controller.cp_state is not None and c.controller.cp_state.value == "B2"
                         and o.plant.pwm_duty, 10, "B2 with PWM")
        await b.wait_for(lambda: c.status() is ConnectorStatus.SUSPENDED_EV, 5, "SuspendedEV")


async def _until(predicate, limit_s: float) -> float | None:  # type: ignore[no-untyped-def]
    """Seconds until ``predicate()`` held (polled every 2 ms), or None if it did not within ``limit_s``."""
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > limit_s:
            return None
        await asyncio.sleep(0.002)
    return time.perf_counter() - start


async def _stays(predicate, for_s: float) -> bool:  # type: ignore[no-untyped-def]
    end = time.perf_counter() + for_s
    while time.perf_counter() < end:
        if not predicate():
            return False
        await asyncio.sleep(0.01)
    return True


@pytest.mark.parametrize(("fault", "state"), _cases(), ids=[f"{f}@{s}" for f, s in _cases()])
async def test_fault(online: Online, fault: str, state: str) -> None:
    o, b, c, plant = online, online.bench, online.connector, online.plant
    code = FAULTS[fault]
    cid = 0 if fault == "reader-silent" else 1
    await _reach(o, state)
    if fault == "overcurrent":  # the 7 s count starts at the threshold: let the EV reach its full draw first
        await b.wait_for(lambda: plant.current_a >= 31.5, 6, "full current")
    if fault == "reader-silent":
        await b.wait_for(lambda: not b.station.reader_faults, 5, "reader answering")
    since = len(o.notes())
    relay_open = lambda: not plant.relay_closed  # noqa: E731

    b.ctl(cmd="fault", connector=1, name=fault)
    if state == "charging" and fault in IEC_SAFETY:
        took = await _until(relay_open, 2.0)
        assert took is not None and took <= IEC_DEADLINE_S, f"{fault}: relay opened after {took} s"
    elif state == "charging" and fault == "overcurrent":
        over = await _until(lambda: plant.current_a > OVERCURRENT_THRESHOLD_A, 3.0)  # the EV ramps up to it
        assert over is not None
        took = await _until(relay_open, 9.0)
        assert took is not None and 7.0 <= took <= 7.7, f"over-current trip {took} s after the threshold"
    elif fault == "board-silent":
        took = await _until(lambda: relay_open() and plant.pwm_duty in (None, 0.0), 3.0)
        assert took is not None and took <= 2.3, f"board keep-alive opened after {took} s"
    elif state == "paused" and fault in IEC_SAFETY:
        took = await _until(lambda: plant.pwm_duty in (None, 0.0), 1.0)
        assert took is not None and took <= IEC_DEADLINE_S, f"{fault}: PWM withdrawn after {took} s"
    elif state == "connected" and fault == "diode":
        # No PWM, no diode check: nothing to see until an authorization starts the PWM.
        assert await _stays(lambda: c.status() is ConnectorStatus.PREPARING and not c.faults, 0.5)
        assert (await b.station.present_token(TAG)).accepted
    elif state == "charging" and fault == "weld":
        # Welded while closed as commanded: invisible until the agent opens it.
        assert await _stays(lambda: c.status() is ConnectorStatus.CHARGING and not c.faults, 0.5)
        await b.station.present_token(TAG)  # local stop: the agent opens the contactor
        await b.wait_for(lambda: not plant.relay_commanded_closed, 1, "open command")

    if fault in NON_STOPPING:
        note = await o.status_note(since, cid, code)
        assert note.payload["status"] != "Faulted"
        if state == "charging":  # charging goes on
            assert await _stays(lambda: plant.relay_closed and plant.current_a > 0
                                and c.status() is ConnectorStatus.CHARGING, 1.0)
    else:
        note = await o.status_note(since, 1, code, within=12.0)
        assert note.payload["status"] == "Faulted"
        # Whatever the fault, the agent commands the contactor open and nothing flows.
        assert not plant.relay_commanded_closed
        assert await _until(lambda: plant.current_a == 0, 0.1) is not None  # the plant's next 10 ms step
        if fault == "weld":
            assert plant.relay_closed  # welded: it cannot open, which is what is reported
        else:
            assert await _stays(relay_open, 0.3)

    # Recovery: the cause goes away; a latched fault also needs the operator.
    b.ctl(cmd="clear", connector=1)
    if fault in LATCHING | UNTIL_UNPLUG:
        await b.wait_for(lambda: not c.controller._board_flags and Fault.BOARD_SILENT not in c.faults, 3,
                         "cause gone")
        assert await _stays(lambda: c.status() is ConnectorStatus.FAULTED, 0.5), "latched until cleared"
        exit_code, out, err = await cpctl(b, "clear", "1")
        assert exit_code == 0, out + err
    await b.wait_for(lambda: not c.faults and not b.station.reader_faults, 8, "no faults left")
    # The CSMS's latest word on the connector is NoError.
    await b.wait_for(lambda: (n := o.last_note(cid)) is not None and n.payload["errorCode"] == "NoError"
                     and n.payload["status"] != "Faulted", 5, "NoError at the CSMS")
    if state == "charging" and fault != "weld":  # the session is still open: charging resumes
        await b.wait_for(lambda: plant.relay_closed and plant.current_a > 0, 10, "charging resumed")
        await b.wait_for(lambda: c.status() is ConnectorStatus.CHARGING, 3, "Charging")


async def test_cpctl_clear_keeps_a_latch_whose_cause_persists(online: Online) -> None:
    b, c = online.bench, online.connector
    b.ctl(cmd="fault", connector=1, name="rcd")
    await b.wait_for(lambda: Fault.RCD in c.faults, 3, "RCD")
    exit_code, out, _ = await cpctl(b, "clear", "1")
    assert exit_code == 1 and "rcd" in out  # the RCD still trips: nothing to clear yet
    b.ctl(cmd="clear", connector=1)
    await b.wait_for(lambda: not c.controller._board_flags, 3, "RCD flag gone")
    exit_code, out, _ = await cpctl(b, "clear", "1")
    assert exit_code == 0 and not c.faults
    # The connector leaves Faulted on the controller's next settle (F is held >= 300 ms after a fault).
    await b.wait_for(lambda: c.status().value == "Available", 3, "Available after the clear")
