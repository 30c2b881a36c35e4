"""Register reads over Modbus TCP or RTU with pymodbus; knows nothing about meters or maps."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException


class ModbusIOError(Exception):
    """No valid answer: timeout, exception response, lost connection."""


class RegisterReader(Protocol):
    @property
    def connected(self) -> bool: ...

    async def connect(self) -> None:
        """Open the link; raises ModbusIOError."""

    async def read(self, function: int, address: int, count: int) -> list[int]:
        """Read ``count`` registers with FC03/FC04; raises ModbusIOError."""

    def close(self) -> None: ...


@runtime_checkable
class RegisterWriter(Protocol):
    async def write(self, address: int, values: list[int]) -> None:
        """Write holding registers with FC16; raises ModbusIOError."""


ROUND_TRIPS_KEPT = 1000  # recent request->response times, for benchmarks and diagnostics


@dataclass(frozen=True, slots=True)
class TcpLink:
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class RtuLink:
    serial_port: str
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8


Link = TcpLink | RtuLink


def rtu_client(link: RtuLink, timeout_s: float) -> AsyncModbusSerialClient:
    """A pymodbus RTU client for ``link``, not connected; no retries of its own (the driver owns the back-off)."""
    return AsyncModbusSerialClient(
        link.serial_port,
        baudrate=link.baudrate,
        parity=link.parity,
        stopbits=link.stopbits,
        bytesize=link.bytesize,
        timeout=timeout_s,
        retries=0,
        reconnect_delay=0,
    )


async def open_client(client: AsyncModbusTcpClient | AsyncModbusSerialClient, what: str) -> None:
    """Connect ``client`` (``what`` names it in the error); ModbusIOError, the client closed, if it cannot."""
    try:
        ok = await client.connect()
    except (OSError, ModbusException) as exc:
        client.close()
        raise ModbusIOError(f"cannot open {what}: {exc}") from exc
    if not ok:
        client.close()
        raise ModbusIOError(f"cannot open {what}")


class PymodbusReader:
    """One pymodbus client per connection attempt; pymodbus' own reconnect is off because the meter
    driver owns the back-off."""

    def __init__(self, link: Link, device_id: int, timeout_s: float) -> None:
        self.link = link
        self.device_id = device_id
        self.timeout_s = timeout_s
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self.round_trips_s: deque[float] = deque(maxlen=ROUND_TRIPS_KEPT)

    def describe(self) -> str:
        if isinstance(self.link, TcpLink):
            return f"tcp {self.link.host}:{self.link.port} id {self.device_id}"
        return f"rtu {self.link.serial_port} id {self.device_id}"

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    def _new_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        if isinstance(self.link, TcpLink):
            return AsyncModbusTcpClient(
                self.link.host, port=self.link.port, timeout=self.timeout_s, retries=0, reconnect_delay=0
            )
        return rtu_client(self.link, self.timeout_s)

    async def connect(self) -> None:
        self.close()
        client = self._new_client()
        await open_client(client, self.describe())
        self._client = client

    async def read(self, function: int, address: int, count: int) -> list[int]:
        client = self._client
        if client is None or not client.connected:
            raise ModbusIOError(f"{self.describe()} is not connected")
        started = time.perf_counter()
        try:
            if function == 3:
                response = await client.read_holding_registers(address, count=count, device_id=self.device_id)
            else:
                response = await client.read_input_registers(address, count=count, device_id=self.device_id)
        except (OSError, ModbusException) as exc:
            raise ModbusIOError(f"no answer from {self.describe()}: {exc}") from exc
        self.round_trips_s.append(time.perf_counter() - started)
        if response.isError():
            code = getattr(response, "exception_code", "?")
            raise ModbusIOError(f"{self.describe()} answered FC{function:02d} {address:#06x} with exception {code}")
        registers = list(response.registers)
        if len(registers) != count:
            raise ModbusIOError(f"{self.describe()} returned {len(registers)} registers, expected {count}")
        return registers

    async def write(self, address: int, values: list[int]) -> None:
        client = self._client
        if client is None or not client.connected:
            raise ModbusIOError(f"{self.describe()} is not connected")
        try:
            response = await client.write_registers(address, values, device_id=self.device_id)
        except (OSError, ModbusException) as exc:
            raise ModbusIOError(f"no answer from {self.describe()}: {exc}") from exc
        if response.isError():
            code = getattr(response, "exception_code", "?")
            raise ModbusIOError(f"{self.describe()} answered FC16 {address:#06x} with exception {code}")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
