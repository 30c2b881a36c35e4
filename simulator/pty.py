"""The pty pair an emulated serial device sits on: the agent opens ``path`` as it would open the real UART."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import Callable


class RawPty:
    def __init__(self, *, nonblocking: bool = True) -> None:
        self.master, self.slave = os.openpty()
        # Raw on both ends, or the line discipline rewrites 0x0A/0x0D and eats control bytes.
        tty.setraw(self.master)
        tty.setraw(self.slave)
        if nonblocking:
            os.set_blocking(self.master, False)
        # The slave fd stays open here so reads on the master never hit EIO while the agent reconnects.
        self.path = os.ttyname(self.slave)
        self.closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch(self, loop: asyncio.AbstractEventLoop, on_readable: Callable[[], None]) -> None:
        """Call ``on_readable`` on the loop whenever the host has written something."""
        self._loop = loop
        loop.add_reader(self.master, on_readable)

    def unwatch(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(OSError, ValueError, RuntimeError):
                self._loop.remove_reader(self.master)

    def read(self) -> bytes | None:
        """What the host wrote; None when nothing is there (or the pty is gone)."""
        try:
            return os.read(self.master, 4096)
        except OSError:  # BlockingIOError among them
            return None

    def write(self, data: bytes) -> None:
        """Bytes towards the host; raises OSError (BlockingIOError when the host is not reading)."""
        os.write(self.master, data)

    def close(self) -> None:
        """Close both ends: the driver then sees its port fail."""
        if self.closed:
            return
        self.closed = True
        self.unwatch()
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)
