"""What the drivers of self-reporting boards (pilot board over serial or CAN, OpenEVSE) share.

Events go synchronously to each listener on its own; the board is BOARD_SILENT when no valid input arrived
for ``silence_timeout_s`` or its transport is down; ``run()`` opens the transport, serves it, closes it and
reopens it with back-off. Subclasses give the transport (``_open_transport``/``_serve``/``_close_transport``)
and forget their board state in ``_on_silent``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import ClassVar

from hal.clock import Clock, SystemClock, TimerHandle
from hal.device import Device
from hal.types import DeviceFaultChanged, Fault, HalEvent

REOPEN_BACKOFF_S = (0.1, 5.0)  # first and longest wait between attempts to reopen the transport


class TransportUnavailable(Exception):
    """The transport could not be opened; the message says why (it becomes the BOARD_SILENT detail)."""


class BoardDevice(Device):
    log: ClassVar[logging.Logger]  # the driver module's logger, so records keep their origin
    silence_subject: ClassVar[str] = "frame"  # what a valid input is called in the silence detail

    def __init__(self, name: str, *, silence_timeout_s: float, clock: Clock | None) -> None:
        super().__init__(name)
        self.silence_timeout_s = silence_timeout_s
        self._clock = clock
        # Silence watch: None = never reported yet; True/False = last reported BOARD_SILENT state.
        self._silent: bool | None = None
        self._last_rx: float | None = None
        self._silence_timer: TimerHandle | None = None
        self._watching = False

    # ------------------------------------------------------------------------------------ transport

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        if self._clock is None:
            self._clock = SystemClock(loop)
        self._start_silence_watch()
        backoff = REOPEN_BACKOFF_S[0]
        try:
            while True:
                try:
                    self._open_transport(loop)
                except TransportUnavailable as exc:
                    self._open_failed(str(exc))
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, REOPEN_BACKOFF_S[1])
                    continue
                backoff = REOPEN_BACKOFF_S[0]
                try:
                    await self._serve()
                finally:
                    self._close_transport(loop)
        finally:
            self._stop_silence_watch()

    def _open_transport(self, loop: asyncio.AbstractEventLoop) -> None:
        raise NotImplementedError

    async def _serve(self) -> None:
        raise NotImplementedError

    def _close_transport(self, loop: asyncio.AbstractEventLoop) -> None:
        raise NotImplementedError

    def _open_failed(self, why: str) -> None:
        self._port_down(why)

    def _port_down(self, why: str) -> None:
        # Without a transport nothing the board says can reach us: treat it like silence at once.
        if self._silent is not True:
            self.log.warning("%s: %s", self.name, why)
        self._go_silent(why)

    # ------------------------------------------------------------------------------------ events

    def _emit(self, event: HalEvent) -> None:
        # Each listener on its own: one listener's bug must not keep the event from the others (the
        # safety path among them), nor stop the remaining events of this read or the reader itself.
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                self.log.exception("%s: listener %r failed on %r", self.name, listener, event)

    def _heard(self) -> None:
        """A valid input arrived: restart the silence measure and end BOARD_SILENT if it was reported."""
        assert self._clock is not None, "receive() before run() needs a clock"
        self._last_rx = self._clock.monotonic()
        if self._silent is not False:
            self._silent = False
            self._emit(DeviceFaultChanged(Fault.BOARD_SILENT, active=False, detail="board answering"))

    # ------------------------------------------------------------------------------------ silence

    def _start_silence_watch(self) -> None:
        assert self._clock is not None
        self._watching = True
        self._schedule_silence_check(self.silence_timeout_s)

    def _stop_silence_watch(self) -> None:
        self._watching = False
        if self._silence_timer is not None:
            self._silence_timer.cancel()
            self._silence_timer = None

    def _schedule_silence_check(self, delay: float) -> None:
        assert self._clock is not None
        self._silence_timer = self._clock.call_later(delay, self._check_silence)

    def _check_silence(self) -> None:
        if not self._watching or self._clock is None:
            return
        now = self._clock.monotonic()
        quiet_for = self.silence_timeout_s if self._last_rx is None else now - self._last_rx
        if quiet_for >= self.silence_timeout_s:
            self._go_silent(f"no valid {self.silence_subject} from the board for {quiet_for:.2f} s")
            # Check again one period after it starts talking (or keep checking cheaply meanwhile).
            self._schedule_silence_check(self.silence_timeout_s / 4)
        else:
            self._schedule_silence_check(self.silence_timeout_s - quiet_for)

    def _go_silent(self, detail: str) -> None:
        self._last_rx = None
        if self._silent is True:
            return
        detail = self._on_silent(detail)
        self._silent = True
        self._emit(DeviceFaultChanged(Fault.BOARD_SILENT, active=True, detail=detail))

    def _on_silent(self, detail: str) -> str:
        """The board went silent: forget its reported state; returns the detail to report."""
        return detail
