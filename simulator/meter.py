"""A Modbus energy meter serving a register map (same map files and codec as the driver) with values
computed from the simulated Plant on every request. Serves Modbus TCP on 127.0.0.1 and Modbus RTU on
a pty at the same time.

``silent = True`` makes it stop answering altogether, as a dead RS-485 slave does (no exception
response). On RTU it also ignores frames addressed to other device ids; on TCP pymodbus answers
those with exception 4. Several emulators (each with its own plant and device id) can share one pty
through an ``RtuBusEmulator``, as meters share one RS-485 line. A map with a ``[signing]`` block makes
it an OCMF-signing meter (see drivers/modbus/maps/ocmf.toml).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import tty
from collections.abc import Callable
from types import TracebackType

from cryptography.hazmat.primitives.asymmetric import ec
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusException, NoSuchIdException
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from drivers.modbus.codec import RegisterMap, encode_register, load_map
from drivers.modbus.ocmf import (
    COMMAND_BEGIN,
    COMMAND_END,
    COMMAND_UPDATE,
    STATUS_ERROR,
    STATUS_READY,
    TX_REF_REGISTERS,
    public_key_der,
    sign_ocmf,
    text_to_words,
    words_to_bytes,
)
from simulator.physics import Plant

log = logging.getLogger("cpsim.meter")

FREQUENCY_HZ = 50.0


def values_from_plant(plant: Plant) -> dict[str, float]:
    """What an ideal meter between supply and EV would read, in canonical units."""
    voltage = plant.voltage_v
    phases = plant.phases_in_use
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
        plant: Plant | None,
        model: str = "sdm630",
        *,
        device_id: int = 1,
        transport: str | None = None,
        bus: RtuBusEmulator | None = None,
        source: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        """``transport``: "tcp", "rtu" or None for both at once. RTU is served on ``bus`` (a pty shared
        with other emulators) or, without one, on a pty of its own. ``source``: where the values come
        from instead of a plant (the site meter at the grid connection point, simulator/site.py)."""
        if plant is None and source is None:
            raise ValueError("a meter emulator needs a plant or a source of values")
        if transport not in (None, "tcp", "rtu"):
            raise ValueError(f"transport must be 'tcp', 'rtu' or None, got {transport!r}")
        if bus is not None and transport == "tcp":
            raise ValueError("a bus is for RTU; transport 'tcp' takes none")
        self.plant = plant
        self.source = source
        self.register_map: RegisterMap = load_map(model)
        self.device_id = device_id
        self.serve_tcp = transport in (None, "tcp")
        self.serve_rtu = transport in (None, "rtu")
        self.silent = False
        self.overrides: dict[str, float | None] = {}  # quantity -> forced value (fault injection)
        self.requests_served = 0
        self.tcp_port: int | None = None
        self.port_path: str | None = None
        self.core = SimCore(self._sim_device())
        self._tcp: ModbusTcpServer | None = None
        self._bus = (bus or RtuBusEmulator()) if self.serve_rtu else None
        self.signer: OcmfSigner | None = None
        if self.register_map.signing is not None:
            self.signer = OcmfSigner(self, self.register_map.signing.record_registers)

    @property
    def port(self) -> int | None:
        """The bound Modbus TCP port (same as ``tcp_port``)."""
        return self.tcp_port

    # ------------------------------------------------------------------ datastore

    def _blocks(self, function: int) -> list[SimData]:
        ranges = [(r.address, r.end) for r in self.register_map.registers if r.function == function]
        signing = self.register_map.signing
        if signing is not None and signing.function == function:
            ranges.append((signing.base, signing.end))
        if not ranges:
            return [SimData(0, values=0, datatype=DataType.REGISTERS)]
        start = min(a for a, _ in ranges)
        count = max(e for _, e in ranges) - start
        return [SimData(start, count=count, values=0, datatype=DataType.REGISTERS)]

    def _sim_device(self) -> SimDevice:
        bits = [SimData(0, values=False, datatype=DataType.BITS)]
        return SimDevice(
            self.device_id,
            simdata=(bits, list(bits), self._blocks(3), self._blocks(4)),
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
            if self.signer is not None and self.signer.owns(address, count):
                self.requests_served += 1
                return self.signer.write(address, [int(v) for v in set_values])
            return ExcCodes.ILLEGAL_FUNCTION  # configuration writes are not emulated
        self.requests_served += 1
        self._fill(function_code, start_address, address, count, registers)
        return None

    def _fill(self, function: int, start: int, address: int, count: int, registers: list[int]) -> None:
        measured = self.source() if self.source is not None else values_from_plant(self.plant) if self.plant else {}
        values: dict[str, float | None] = {**measured, **self.overrides}
        for spec in self.register_map.registers:
            if spec.function != function or spec.end <= address or spec.address >= address + count:
                continue
            value = values.get(spec.quantity)
            if value is None and not spec.not_available:
                value = 0.0
            offset = spec.address - start
            registers[offset : offset + spec.width] = encode_register(spec, value)
        if self.signer is not None and function == self.signer.layout.function:
            self.signer.fill(start, address, count, registers)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.serve_tcp:
            self._tcp = ModbusTcpServer(self._sim_device(), address=("127.0.0.1", 0), ignore_missing_devices=True)
            await self._tcp.serve_forever(background=True)
            sockets = getattr(self._tcp.transport, "sockets", None) or ()
            if not sockets:
                raise RuntimeError("Modbus TCP server did not bind")
            self.tcp_port = int(sockets[0].getsockname()[1])
        if self._bus is not None:
            await self._bus.attach(self)
            self.port_path = self._bus.port_path

    async def stop(self) -> None:
        if self._tcp is not None:
            await self._tcp.shutdown()  # type: ignore[no-untyped-call]
            self._tcp = None
        if self._bus is not None:
            await self._bus.detach(self)

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


class OcmfSigner:
    """The vendor signing block of an OCMF meter (layout in drivers/modbus/maps/ocmf.toml)."""

    def __init__(self, meter: MeterEmulator, record_registers: int) -> None:
        assert meter.register_map.signing is not None
        self.meter = meter
        self.layout = meter.register_map.signing
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        self.public_key = public_key_der(self.private_key)
        self.serial = f"SIM-{id(self) % 100000:05d}"
        self.pagination = 0
        self.records: list[str] = []
        self._words = [0] * (self.layout.end - self.layout.base)  # the block, index = address - base
        key_at = self.layout.public_key - self.layout.base
        self._words[key_at : key_at + self.layout.public_key_registers] = text_to_words(
            self.public_key, self.layout.public_key_registers
        )
        self._set_status(0, 0)

    def owns(self, address: int, count: int) -> bool:
        return self.layout.base <= address and address + count <= self.layout.end

    def _set_status(self, status: int, length: int) -> None:
        at = self.layout.status - self.layout.base
        self._words[at : at + 3] = [status, length, len(self.public_key)]

    def fill(self, start: int, address: int, count: int, registers: list[int]) -> None:
        for a in range(max(address, self.layout.base), min(address + count, self.layout.end)):
            registers[a - start] = self._words[a - self.layout.base]

    def write(self, address: int, values: list[int]) -> ExcCodes | None:
        if address != self.layout.command or not 1 <= len(values) <= 1 + TX_REF_REGISTERS:
            return ExcCodes.ILLEGAL_ADDRESS  # only the command (+ reference) is writable
        command, tx_ref = values[0], words_to_bytes(values[1:]).decode("ascii", "replace")
        if command not in (COMMAND_BEGIN, COMMAND_END, COMMAND_UPDATE) or not tx_ref:
            self._set_status(STATUS_ERROR, 0)
            return None
        record = sign_ocmf(self.payload(command, tx_ref), self.private_key)
        at = self.layout.record - self.layout.base
        self._words[at : at + self.layout.record_registers] = text_to_words(record, self.layout.record_registers)
        self._set_status(STATUS_READY, len(record))
        self.records.append(record)
        return None

    def payload(self, command: int, tx_ref: str) -> dict[str, object]:
        self.pagination += 1
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f",{int(now * 1000) % 1000:03d}+0000 S"
        return {
            "FV": "1.0",
            "GI": "cpsim OCMF meter",
            "GS": self.serial,
            "GV": "1.0",
            "PG": f"T{self.pagination}",
            "MV": "cpsim",
            "MM": self.meter.register_map.model,
            "MS": self.serial,
            "MF": "1.0",
            "IS": False,
            "IL": "NONE",
            "IF": [],
            "IT": "UNDEFINED",
            "ID": tx_ref,
            "RD": [
                {
                    "TM": stamp,
                    "TX": {COMMAND_BEGIN: "B", COMMAND_UPDATE: "C"}.get(command, "E"),
                    "RV": round((self.meter.plant.energy_wh if self.meter.plant else 0.0) / 1000.0, 4),
                    "RI": "1-b:1.8.0",
                    "RU": "kWh",
                    "RT": "AC",
                    "EF": "",
                    "ST": "G",
                }
            ],
        }


class RtuBusEmulator:
    """One pty as one RS-485 line: each attached MeterEmulator answers frames for its device id; frames
    for an id nobody has (or a silent meter) get no answer, as on a real bus. The pty opens with the
    first meter attached and closes with the last one detached."""

    def __init__(self) -> None:
        self.meters: dict[int, MeterEmulator] = {}
        self.port_path: str | None = None
        self.frames_seen = 0
        self._master: int | None = None
        self._slave: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._inbox: asyncio.Queue[bytes] = asyncio.Queue()

    async def attach(self, meter: MeterEmulator) -> None:
        if self.meters.get(meter.device_id, meter) is not meter:
            raise ValueError(f"device id {meter.device_id} is already on this bus")
        self.meters[meter.device_id] = meter
        if self._master is None:
            self._open_pty()
            self._task = asyncio.create_task(self._serve(), name="meter-emulator-rtu")

    async def detach(self, meter: MeterEmulator) -> None:
        if self.meters.get(meter.device_id) is meter:
            del self.meters[meter.device_id]
        if self.meters:
            return
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._master is not None:
            asyncio.get_running_loop().remove_reader(self._master)
            for fd in (self._master, self._slave):
                if fd is not None:
                    os.close(fd)
            self._master = self._slave = None

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)  # the driver opens the slave path; raw so no byte is translated
        os.set_blocking(master, False)
        self._master, self._slave = master, slave  # keeping the slave open avoids EIO between clients
        self.port_path = os.ttyname(slave)
        self._inbox = asyncio.Queue()
        asyncio.get_running_loop().add_reader(master, self._on_readable)

    def _on_readable(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 4096)
        except OSError:  # includes BlockingIOError / InterruptedError
            return
        if data:
            self._inbox.put_nowait(data)

    async def _serve(self) -> None:
        framer = FramerRTU(DecodePDU(True))
        buffer = b""
        while True:
            buffer += await self._inbox.get()
            while buffer:
                try:
                    used, request = framer.handleFrame(buffer, 0, 0)
                except ModbusException:
                    used, request = len(buffer), None  # undecodable request: a real slave ignores it
                if used == 0:
                    break
                buffer = buffer[used:]
                if request is not None:
                    self.frames_seen += 1
                    await self._answer(framer, request)

    async def _answer(self, framer: FramerRTU, request: object) -> None:
        dev_id = getattr(request, "dev_id", None)
        meter = self.meters.get(dev_id) if isinstance(dev_id, int) else None
        if meter is None or meter.silent:
            return
        try:
            response = await request.datastore_update(meter.core, dev_id)  # type: ignore[attr-defined]
        except NoSuchIdException:
            return
        response.dev_id = dev_id
        self._write(framer.buildFrame(response))

    def _write(self, frame: bytes) -> None:
        if self._master is None:
            return
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._master, frame)
