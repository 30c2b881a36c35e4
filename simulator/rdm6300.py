"""An RDM6300 reader on a pty: the agent opens ``port_path`` as it would open /dev/ttyS1."""

from __future__ import annotations

import asyncio
from types import TracebackType

from drivers.serial.rdm6300_codec import encode_frame
from simulator.pty import RawPty

REPEATS = 3  # a real reader keeps sending the frame while the card stays in the field


class Rdm6300Emulator:
    def __init__(self) -> None:
        self.silent = False
        self.port_path: str | None = None
        self.frames_sent = 0
        self._pty: RawPty | None = None

    def open(self) -> None:
        self._pty = RawPty(nonblocking=False)  # holding the slave keeps the pty alive between opens
        self.port_path = self._pty.path

    def close(self) -> None:
        if self._pty is not None:
            self._pty.close()
        self._pty = None

    def tap(self, uid: str, repeats: int = REPEATS) -> None:
        """Present a card: the frame is sent ``repeats`` times back to back."""
        frame = encode_frame(uid)
        for _ in range(repeats):
            self.send_raw(frame)
            if not self.silent:
                self.frames_sent += 1

    def send_raw(self, data: bytes) -> None:
        """Put bytes on the line (also for corrupt-input tests); nothing while silent."""
        if self.silent or self._pty is None:
            return
        self._pty.write(data)

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
