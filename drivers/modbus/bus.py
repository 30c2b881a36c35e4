"""One RS-485 line shared by several Modbus RTU meters.

A real bus carries one frame at a time: two pymodbus clients on one serial port would interleave
frames and garble both. So one ``SharedRtuBus`` per port owns the only serial client in one task;
each meter gets a ``BusReader`` (a RegisterReader) that queues its requests there, and they run
strictly one after the other. Each meter keeps its own poll period. ``shared_bus()`` finds or
creates the bus of a port (module-level registry keyed by the resolved port path).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import astuple, dataclass, field
from typing import Any

from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ModbusException

from drivers.modbus.transport import ROUND_TRIPS_KEPT, ModbusIOError, RtuLink, open_client, rtu_client
from hal.tasks import raise_if_cancelling

LINE_SETTINGS = ("baudrate", "parity", "stopbits", "bytesize")
RTU_OVERHEAD = 5  # address, function, byte count, CRC (2) in a read response; a read request is 8 bytes


class BusSettingsMismatch(ValueError):
    def __init__(self, key: str, ours: object, theirs: object) -> None:
        super().__init__(f"every meter on one serial port must use the same {key}: this one has {ours!r}, "
                         f"another meter on the port has {theirs!r}")
        self.key = key


@dataclass
class BusStats:
    """Time the line was busy with request+response (measured), and bytes that crossed it."""

    frames: int = 0
    failed: int = 0
    busy_s: float = 0.0
    wire_bytes: int = 0
    since: float = field(default_factory=time.monotonic)

    def wire_time_s(self, baudrate: int, bits_per_byte: int = 10) -> float:
        """What those bytes take at the line rate, with the 3.5-character gap after every frame."""
        return (self.wire_bytes + 2 * 3.5 * self.frames) * bits_per_byte / baudrate


Job = Callable[[AsyncModbusSerialClient], Awaitable[Any]]


class SharedRtuBus:
    def __init__(self, link: RtuLink) -> None:
        self.link = link
        self.stats = BusStats()
        self._readers: weakref.WeakSet[BusReader] = weakref.WeakSet()
        self._client: AsyncModbusSerialClient | None = None
        self._queue: asyncio.Queue[tuple[Job, asyncio.Future[Any]]] | None = None
        self._task: asyncio.Task[None] | None = None

    def reader(self, device_id: int, timeout_s: float = 1.0) -> BusReader:
        reader = BusReader(self, device_id, timeout_s)
        self._readers.add(reader)
        return reader

    @property
    def in_use(self) -> bool:
        """Some meter (configured or running) still counts on this bus."""
        return any(not r.released for r in self._readers)

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected and self._task is not None and not self._task.done()

    def describe(self) -> str:
        return f"rtu {self.link.serial_port}"

    # ------------------------------------------------------------------ the owner task

    async def submit(self, job: Job) -> Any:
        """Run ``job`` with the bus's client once every request queued before it has finished."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._drop_client()
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._serve(self._queue), name=f"modbus-bus {self.link.serial_port}")
        assert self._queue is not None
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put_nowait((job, future))
        return await future

    async def _serve(self, queue: asyncio.Queue[tuple[Job, asyncio.Future[Any]]]) -> None:
        try:
            while True:
                raise_if_cancelling()  # a cancel pymodbus's wait_for swallowed (Python 3.11)
                job, future = await queue.get()
                if future.done():  # the meter gave up waiting (cancelled): skip, nothing was sent
                    continue
                try:
                    result = await job(self._client)  # type: ignore[arg-type]
                except Exception as exc:
                    if not future.done():
                        future.set_exception(exc)
                else:
                    if not future.done():
                        future.set_result(result)
        finally:
            while not queue.empty():
                _, future = queue.get_nowait()
                if not future.done():
                    future.set_exception(ModbusIOError(f"{self.describe()} closed"))
            self._drop_client()

    def _drop_client(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):  # a client of a finished event loop may fail to close
                self._client.close()
            self._client = None

    def release(self) -> None:
        """Close the port once no reader uses it any more."""
        if any(r.is_open for r in self._readers):
            return
        if self._task is not None and not self._task.done():
            with contextlib.suppress(RuntimeError):  # the task's event loop is already closed
                self._task.cancel()
        else:
            self._drop_client()
        self._task = None

    # ------------------------------------------------------------------ jobs (run inside the owner task)

    async def _open(self, _: Any) -> None:
        if self._client is not None and self._client.connected:
            return
        self._drop_client()
        timeout = max((r.timeout_s for r in self._readers if r.is_open), default=1.0)
        client = rtu_client(self.link, timeout)
        await open_client(client, self.describe())
        self._client = client

    async def _timed(self, call: Awaitable[Any], request_bytes: int) -> Any:
        """Await one request; the line counts as busy until its answer (or timeout)."""
        started = time.perf_counter()
        try:
            return await call
        except BaseException:
            self.stats.failed += 1
            raise
        finally:
            self.stats.frames += 1
            self.stats.wire_bytes += request_bytes
            self.stats.busy_s += time.perf_counter() - started

    def note_answer(self, response_bytes: int) -> None:
        self.stats.wire_bytes += response_bytes


class BusReader:
    """A meter's view of the shared bus; satisfies RegisterReader and RegisterWriter."""

    def __init__(self, bus: SharedRtuBus, device_id: int, timeout_s: float) -> None:
        self.bus = bus
        self.device_id = device_id
        self.timeout_s = timeout_s
        self.is_open = False
        self.released = False
        self.round_trips_s: deque[float] = deque(maxlen=ROUND_TRIPS_KEPT)

    @property
    def link(self) -> RtuLink:
        return self.bus.link

    def describe(self) -> str:
        return f"{self.bus.describe()} id {self.device_id}"

    @property
    def connected(self) -> bool:
        return self.is_open and self.bus.connected

    async def connect(self) -> None:
        self.is_open, self.released = True, False
        await self.bus.submit(self.bus._open)

    def _client(self, client: AsyncModbusSerialClient | None) -> AsyncModbusSerialClient:
        if client is None or not client.connected:
            raise ModbusIOError(f"{self.describe()} is not connected")
        return client

    async def read(self, function: int, address: int, count: int) -> list[int]:
        async def job(client: AsyncModbusSerialClient | None) -> Any:
            serial = self._client(client)
            started = time.perf_counter()
            call = (serial.read_holding_registers if function == 3 else serial.read_input_registers)(
                address, count=count, device_id=self.device_id
            )
            try:
                response = await self.bus._timed(call, 8)
            except (OSError, ModbusException) as exc:
                raise ModbusIOError(f"no answer from {self.describe()}: {exc}") from exc
            self.round_trips_s.append(time.perf_counter() - started)
            return response

        response = await self.bus.submit(job)
        if response.isError():
            self.bus.note_answer(RTU_OVERHEAD)
            code = getattr(response, "exception_code", "?")
            raise ModbusIOError(f"{self.describe()} answered FC{function:02d} {address:#06x} with exception {code}")
        self.bus.note_answer(RTU_OVERHEAD + 2 * count)
        registers = list(response.registers)
        if len(registers) != count:
            raise ModbusIOError(f"{self.describe()} returned {len(registers)} registers, expected {count}")
        return registers

    async def write(self, address: int, values: list[int]) -> None:
        async def job(client: AsyncModbusSerialClient | None) -> Any:
            serial = self._client(client)
            call = serial.write_registers(address, values, device_id=self.device_id)
            try:
                return await self.bus._timed(call, 9 + 2 * len(values))
            except (OSError, ModbusException) as exc:
                raise ModbusIOError(f"no answer from {self.describe()}: {exc}") from exc

        response = await self.bus.submit(job)
        self.bus.note_answer(8)
        if response.isError():
            code = getattr(response, "exception_code", "?")
            raise ModbusIOError(f"{self.describe()} answered FC16 {address:#06x} with exception {code}")

    def close(self) -> None:
        self.is_open, self.released = False, True
        self.bus.release()


# ---------------------------------------------------------------------- registry

_BUSES: dict[str, SharedRtuBus] = {}


def shared_bus(link: RtuLink) -> SharedRtuBus:
    """The bus of ``link.serial_port``; raises BusSettingsMismatch when a meter already on that port
    uses other line settings."""
    key = os.path.realpath(link.serial_port)
    bus = _BUSES.get(key)
    if bus is not None and bus.in_use:
        for name, ours, theirs in zip(LINE_SETTINGS, astuple(link)[1:], astuple(bus.link)[1:], strict=True):
            if ours != theirs:
                raise BusSettingsMismatch(name, ours, theirs)
        return bus
    bus = SharedRtuBus(link)
    _BUSES[key] = bus
    return bus
