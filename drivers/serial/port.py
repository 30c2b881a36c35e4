"""A serial port read through ``loop.add_reader`` and written without blocking (pilot board, OpenEVSE).

Reads go to ``on_data`` in the reader callback; a failed read or write, or end of file, loses the port:
the reader is removed, ``lost`` is set (the serve loop ends and the owner reopens) and ``on_lost`` is told.
The owner's counters get ``port_opens`` (each attempt) and ``tx_dropped`` (writes with no port or failed).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

import serial

from drivers.board_base import TransportUnavailable


class NonBlockingPort:
    def __init__(
        self,
        url: str,
        baudrate: int,
        *,
        owner: str,
        on_data: Callable[[bytes], None],
        on_lost: Callable[[str], None],
        counters: dict[str, int],
        log: logging.Logger,
    ) -> None:
        self.url = url
        self.baudrate = baudrate
        self._owner = owner
        self._on_data = on_data
        self._on_lost = on_lost
        self._counters = counters
        self._log = log
        self._serial: Any = None
        self.fd: int | None = None
        self.lost: asyncio.Event | None = None

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Open and watch the port; raises TransportUnavailable."""
        self._counters["port_opens"] += 1
        try:
            port = serial.serial_for_url(self.url, baudrate=self.baudrate, timeout=0, write_timeout=0)
            try:
                fd = port.fileno()
            except (AttributeError, NotImplementedError, serial.SerialException) as exc:
                port.close()
                raise ValueError(f"port {self.url!r} has no file descriptor to wait on") from exc
        except (serial.SerialException, OSError, ValueError) as exc:
            raise TransportUnavailable(f"cannot open {self.url}: {exc}") from exc
        self._serial, self.fd = port, fd
        self.lost = asyncio.Event()
        loop.add_reader(fd, self._on_readable)
        self._log.info("%s: opened %s", self._owner, self.url)

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.fd is not None:
            loop.remove_reader(self.fd)
        if self._serial is not None:
            try:
                self._serial.close()
            except (serial.SerialException, OSError):
                pass
        self._serial = self.fd = None

    def write(self, frame: bytes) -> int | None:
        """Bytes written (0 when the line is full); None, counted as dropped, with no port or a failed write."""
        if self.fd is None:
            self._counters["tx_dropped"] += 1
            return None
        try:
            return os.write(self.fd, frame)
        except BlockingIOError:
            return 0
        except OSError as exc:
            self._counters["tx_dropped"] += 1
            self.lose(f"write to {self.url} failed: {exc}")
            return None

    def lose(self, why: str) -> None:
        if self.fd is not None:
            asyncio.get_running_loop().remove_reader(self.fd)
            self.fd = None
        if self.lost is not None:
            self.lost.set()
        self._on_lost(why)

    def _on_readable(self) -> None:
        if self.fd is None:
            return
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            self.lose(f"read from {self.url} failed: {exc}")
            return
        if not data:
            self.lose(f"{self.url} reached end of file")
            return
        self._on_data(data)
