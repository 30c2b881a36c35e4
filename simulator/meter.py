"""A Modbus energy meter serving a register map (same map files and codec as the driver) with values
computed from the simulated Plant on every request. Serves Modbus TCP on 127.0.0.1 and Modbus RTU on
a pty at the same time.

``silent = True`` makes it stop answering altogether, as a dead RS-485 slave does (no exception
response). On RTU it also ignores frames addressed to other device ids; on TCP pymodbus answers
those with exception 4.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tty
from types import TracebackType

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusException, NoSuchIdException
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from drivers.modbus.codec import RegisterMap, encode_register, load_map
from simulator.physics import Plant

log = logging.getLogger("cpsim.meter")

FREQUENCY_HZ = 50.0


def values_from_plant(plant: Plant) -> dict[str, float]:
    """What an ideal meter between supply and EV would read, in canonical units."""
    voltage = plant.voltage_v
    phases = max(1, min(3, plant.ev.phases))
    current = plant.current_a if plant.relay_closed else 0.0
    values: dict[str, float] = {
        "power": current * voltage * phases,
        "frequency": FREQUENCY_HZ,
        "energy_import": plant.energy_wh,
        "energy_export": 0.0,
        "energy_total": plant.energy_wh,
    }
    for index in (1, 2, 3):
        on = index <= phases
        values[f"voltage_l{index}"] = voltage
        values[f"current_l{index}"] = current if on else 0.0
        values[f"power_l{index}"] = current * voltage if on else 0.0
        values[f"energy_import_l{index}"] = plant.energy_wh / phases if on else 0.0
    return values


class MeterEmulator:
    def __init__(
        self,
        plant: Plant,
        model: str = "sdm630",
        *,
        device_id: int = 1,
        transport: str | None = None,
    ) -> None:
        """``transport``: "tcp", "rtu" or None for both at once."""
        if transport not in (None, "tcp", "rtu"):
            raise ValueError(f"transport must be 'tcp', 'rtu' or None, got {transport!r}")
        self.plant = plant
        self.register_map: RegisterMap = load_map(model)
        self.device_id = device_id
        self.serve_tcp = transport in (None, "tcp")
        self.serve_rtu = transport in (None, "rtu")
        self.silent = False
        self.overrides: dict[str, float | None] = {}  # quantity -> forced value (fault injection)
        self.requests_served = 0
        self.tcp_port: int | None = None
        self.port_path: str | None = None
        self._core = SimCore(self._sim_device())
        self._tcp: ModbusTcpServer | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._rtu_task: asyncio.Task[None] | None = None
        self._rtu_inbox: asyncio.Queue[bytes] = asyncio.Queue()

    @property
    def port(self) -> int | None:
        """The bound Modbus TCP port (same as ``tcp_port``)."""
        return self.tcp_port

    # ------------------------------------------------------------------ datastore

    def _sim_device(self) -> SimDevice:
        blocks: dict[int, list[SimData]] = {}
        for function in (3, 4):
            specs = [r for r in self.register_map.registers if r.function == function]
            if specs:
                start = min(r.address for r in specs)
                count = max(r.end for r in specs) - start
                blocks[function] = [SimData(start, count=count, values=0, datatype=DataType.REGISTERS)]
            else:
                blocks[function] = [SimData(0, values=0, datatype=DataType.REGISTERS)]
        bits = [SimData(0, values=False, datatype=DataType.BITS)]
        return SimDevice(
            self.device_id,
            simdata=(bits, list(bits), blocks[3], blocks[4]),
            action=self._on_access,
        )

    async def _on_access(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if self.silent:
            raise NoSuchIdException("meter emulator is silent")  # the server then sends nothing
        if set_values is not None:
            return ExcCodes.ILLEGAL_FUNCTION  # configuration writes are not emulated
        self.requests_served += 1
        self._fill(function_code, start_address, address, count, registers)
        return None

    def _fill(self, function: int, start: int, address: int, count: int, registers: list[int]) -> None:
        values: dict[str, float | None] = {**values_from_plant(self.plant), **self.overrides}
        for spec in self.register_map.registers:
            if spec.function != function or spec.end <= address or spec.address >= address + count:
                continue
            value = values.get(spec.quantity)
            if value is None and not spec.not_available:
                value = 0.0
            offset = spec.address - start
            registers[offset : offset + spec.width] = encode_register(spec, value)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.serve_tcp:
            self._tcp = ModbusTcpServer(self._sim_device(), address=("127.0.0.1", 0), ignore_missing_devices=True)
            await self._tcp.serve_forever(background=True)
            sockets = getattr(self._tcp.transport, "sockets", None) or ()
            if not sockets:
                raise RuntimeError("Modbus TCP server did not bind")
            self.tcp_port = int(sockets[0].getsockname()[1])
        if self.serve_rtu:
            self._open_pty()
            self._rtu_task = asyncio.create_task(self._serve_rtu(), name="meter-emulator-rtu")

    async def stop(self) -> None:
        if self._tcp is not None:
            await self._tcp.shutdown()  # type: ignore[no-untyped-call]
            self._tcp = None
        if self._rtu_task is not None:
            self._rtu_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rtu_task
            self._rtu_task = None
        if self._master is not None:
            asyncio.get_running_loop().remove_reader(self._master)
            for fd in (self._master, self._slave):
                if fd is not None:
                    os.close(fd)
            self._master = self._slave = None

    async def run(self) -> None:
        """Serve until cancelled."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    async def __aenter__(self) -> MeterEmulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ RTU on a pty

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)  # the driver opens the slave path; raw so no byte is translated
        os.set_blocking(master, False)
        self._master, self._slave = master, slave  # keeping the slave open avoids EIO between clients
        self.port_path = os.ttyname(slave)
        asyncio.get_running_loop().add_reader(master, self._on_readable)

    def _on_readable(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        if data:
            self._rtu_inbox.put_nowait(data)

    async def _serve_rtu(self) -> None:
        framer = FramerRTU(DecodePDU(True))
        buffer = b""
        while True:
            buffer += await self._rtu_inbox.get()
            while buffer:
                try:
                    used, request = framer.handleFrame(buffer, 0, 0)
                except ModbusException:
                    used, request = len(buffer), None  # undecodable request: a real slave ignores it
                if used == 0:
                    break
                buffer = buffer[used:]
                if request is not None:
                    await self._answer_rtu(framer, request)

    async def _answer_rtu(self, framer: FramerRTU, request: object) -> None:
        dev_id = getattr(request, "dev_id", None)
        if self.silent or dev_id != self.device_id:
            return
        try:
            response = await request.datastore_update(self._core, dev_id)  # type: ignore[attr-defined]
        except NoSuchIdException:
            return
        response.dev_id = dev_id
        self._write(framer.buildFrame(response))

    def _write(self, frame: bytes) -> None:
        if self._master is None:
            return
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._master, frame)
