"""1-phase / 3-phase switching of one connector, in the IEC 61851 order: never under load.

Sequence (docs/pilot-board-protocol.md, shared/reference/energy-management.md): stop offering (PWM off, X1:
the EV goes to state B), wait until it stops drawing or the relay is open (the charge controller opens it
when the EV leaves C, at the latest after its 6 s stop-under-load limit), make sure the relay is open, move
the phase contactor (``PhaseSwitch.set_phases``), wait for the board to report the new position and for
``phase_switch_settle_s`` (some EVs fault on a quick re-close), then offer PWM again; the relay closes when
the EV asks for power. At most ``max_phase_switches`` per session; refused when the board cannot switch.

The pause is an ``EnergyHold.PHASE_SWITCH`` on the controller, so every other rule (5 s between duty
changes, 3 s X1 before PWM comes back, faults) stays where it is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from agent.charge_control import ChargeController
from agent.station_api import EnergyHold
from hal.roles import PhaseSwitch

log = logging.getLogger("cpagent.phase_switch")

RELAY_OPEN_TIMEOUT_S = 10.0  # the controller opens within its 6 s stop-under-load limit; margin for a loaded host
BOARD_CONFIRM_TIMEOUT_S = 3.0  # the board reports a change within one status period (250 ms)
POLL_S = 0.05


class PhaseSwitchError(Exception):
    """A phase switch that was refused or did not complete; the message says why."""


class PhaseSwitchRefused(PhaseSwitchError):
    """Refused before anything moved: not supported, cap reached, busy, or an impossible phase count."""


class PhaseSwitchFailed(PhaseSwitchError):
    """Started but not completed (relay did not open, board did not switch); energy is offered again on the
    phases the board reports."""


class PhaseSwitcher:
    def __init__(
        self,
        connector_id: int,
        controller: ChargeController,
        switch: PhaseSwitch | None,
        *,
        installed_phases: int,
        settle_s: float,
        max_switches: int,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.connector_id = connector_id
        self._controller = controller
        self._switch = switch
        self.installed_phases = installed_phases
        self.settle_s = settle_s
        self.max_switches = max_switches
        self._monotonic = monotonic
        self.switches_this_session = 0
        self.busy = False

    def new_session(self) -> None:
        """A session started: its own budget of switches."""
        self.switches_this_session = 0

    @property
    def supported(self) -> bool:
        return self._switch is not None and self._switch.supports_phase_switching() and self.installed_phases == 3

    def active_phases(self) -> int:
        """Phases the socket is supplied with now (what the board reports, else the installation)."""
        reported = self._switch.phases() if self._switch is not None else None
        return reported if reported is not None else self.installed_phases

    def refusal(self, phases: int) -> str | None:
        """Why a switch to ``phases`` would be refused now, or None."""
        if phases not in (1, 3):
            return f"phases must be 1 or 3, got {phases!r}"
        if self._switch is None or not self._switch.supports_phase_switching():
            return "the board cannot switch phases"
        if self.installed_phases != 3:
            return f"the connector is installed with {self.installed_phases} phase(s)"
        if self.busy:
            return "a phase switch is already in progress"
        if self.switches_this_session >= self.max_switches:
            return f"{self.max_switches} phase switches this session already (max_phase_switches)"
        return None

    async def switch(self, phases: int) -> bool:
        """Switch to ``phases``; False if the board is there already (nothing moved, nothing counted).
        Raises PhaseSwitchRefused / PhaseSwitchFailed."""
        why = self.refusal(phases)
        if why is not None:
            log.info("connector %d: phase switch to %s refused: %s", self.connector_id, phases, why)
            raise PhaseSwitchRefused(why)
        switch = self._switch
        assert switch is not None
        if switch.phases() == phases:
            return False
        self.busy = True
        self.switches_this_session += 1
        c = self._controller
        log.info("connector %d: switching to %d phase(s) (%d/%d this session)", self.connector_id, phases,
                 self.switches_this_session, self.max_switches)
        c.hold_energy(EnergyHold.PHASE_SWITCH)  # PWM off now; the relay opens once the EV has let go
        try:
            if not await self._until(
                lambda: not c.relay_commanded_closed and c.relay_feedback_closed is False, RELAY_OPEN_TIMEOUT_S
            ):
                raise PhaseSwitchFailed("the relay did not open; phases not switched")
            switch.set_phases(phases)
            moved_at = self._monotonic()
            if not await self._until(lambda: switch.phases() == phases, BOARD_CONFIRM_TIMEOUT_S):
                raise PhaseSwitchFailed(f"the board did not report {phases} phase(s) (reports {switch.phases()})")
            await asyncio.sleep(max(0.0, self.settle_s - (self._monotonic() - moved_at)))
            log.info("connector %d: on %d phase(s); offering energy again", self.connector_id, phases)
            return True
        except PhaseSwitchFailed as exc:
            log.error("connector %d: phase switch failed: %s", self.connector_id, exc)
            raise
        finally:
            self.busy = False
            c.release_energy(EnergyHold.PHASE_SWITCH)

    async def _until(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        deadline = self._monotonic() + timeout_s
        while not condition():
            if self._monotonic() >= deadline:
                return False
            await asyncio.sleep(POLL_S)
        return True
