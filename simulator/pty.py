"""The pty pair an emulated serial device sits on: the agent opens ``path`` as it would open the real UART."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from abc import ABC, abstractmethod
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


class PtyPeripheral(ABC):
    """A serial peripheral that only answers the host (card reader, display): ``run()`` opens its pty
    (``port_path`` is valid after the first await) and hands what the host writes to ``feed()`` until
    cancelled; ``write_raw()`` sends towards the host (nothing while ``silent``, dropped if nobody reads)."""

    def __init__(self) -> None:
        self.silent = False  # fault injection: sends nothing, ignores all input
        self.port_path: str | None = None
        self._pty: RawPty | None = None

    @abstractmethod
    def feed(self, data: bytes) -> None:
        raise NotImplementedError

    def open(self) -> None:
        self._pty = RawPty()  # holding the slave keeps the pty alive between opens
        self.port_path = self._pty.path

    def close(self) -> None:
        if self._pty is not None:
            self._pty.close()
        self._pty = None

    async def run(self) -> None:
        self.open()
        assert self._pty is not None
        self._pty.watch(asyncio.get_running_loop(), self._readable)
        try:
            await asyncio.Event().wait()
        finally:
            self.close()

    def _readable(self) -> None:
        data = None if self._pty is None else self._pty.read()
        if data is not None:
            self.feed(data)

    def write_raw(self, data: bytes) -> None:
        """Bytes towards the host (tests inject junk with it); nothing while silent."""
        if self.silent or self._pty is None:
            return
        with contextlib.suppress(OSError):
            self._pty.write(data)


class PtyWire(ABC):
    """The wire of a board emulator that makes its RawPty (``_pty``) when built and counts ``tx_dropped``:
    what the host writes goes to ``feed()``; what nobody reads is dropped, as a real UART drops it."""

    _pty: RawPty
    tx_dropped: int

    @abstractmethod
    def feed(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Close the pty: the driver then sees its port fail."""
        self._pty.close()

    def _on_readable(self) -> None:
        data = self._pty.read()
        if data is not None:
            self.feed(data)

    def write_raw(self, data: bytes) -> None:
        """Put bytes on the wire towards the host (tests use it to inject corruption)."""
        try:
            self._pty.write(data)
        except OSError:
            # Nobody is reading (agent not running): the pty buffer is full; a real UART drops too.
            self.tx_dropped += 1
