"""An RDM6300 reader on a pty: the agent opens ``port_path`` as it would open /dev/ttyS1."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from types import TracebackType

from drivers.serial.rdm6300_codec import encode_frame

REPEATS = 3  # a real reader keeps sending the frame while the card stays in the field


class Rdm6300Emulator:
    def __init__(self) -> None:
        self.silent = False
        self.port_path: str | None = None
        self.frames_sent = 0
        self._master: int | None = None
        self._slave: int | None = None

    def open(self) -> None:
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        self._master, self._slave = master, slave  # holding the slave keeps the pty alive between opens
        self.port_path = os.ttyname(slave)

    def close(self) -> None:
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None

    def tap(self, uid: str, repeats: int = REPEATS) -> None:
        """Present a card: the frame is sent ``repeats`` times back to back."""
        frame = encode_frame(uid)
        for _ in range(repeats):
            self.send_raw(frame)
            if not self.silent:
                self.frames_sent += 1

    def send_raw(self, data: bytes) -> None:
        """Put bytes on the line (also for corrupt-input tests); nothing while silent."""
        if self.silent or self._master is None:
            return
        os.write(self._master, data)

    async def start(self) -> None:
        self.open()

    async def run(self) -> None:
        """Open the pty at once (``port_path`` is valid after the first await) and hold it until cancelled."""
        self.open()
        try:
            await asyncio.Event().wait()
        finally:
            self.close()

    async def stop(self) -> None:
        self.close()

    async def __aenter__(self) -> Rdm6300Emulator:
        self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
