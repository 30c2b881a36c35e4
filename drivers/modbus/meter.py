"""Energy meter over Modbus (TCP or RTU), driven by a register map file (see ``maps/``).

Freshness rules: ``latest`` is None once the meter has not answered for ``SILENT_AFTER_S``; a stale
value is never republished with a fresh timestamp; energy going backwards is a fault, not a value.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from drivers.modbus.bus import BusSettingsMismatch, shared_bus
from drivers.modbus.codec import (
    IncompleteReading,
    MapError,
    ReadRequest,
    RegisterMap,
    build_grid_sample,
    build_sample,
    decode_batch,
    load_map,
    plan_reads,
    supports_grid,
)
from drivers.modbus.ocmf import (
    COMMAND_BEGIN,
    COMMAND_END,
    COMMAND_UPDATE,
    STATUS_READY,
    OcmfError,
    SigningLayout,
    parse_ocmf,
    transaction_ref_words,
    words_to_bytes,
)
from drivers.modbus.transport import (
    Link,
    ModbusIOError,
    PymodbusReader,
    RegisterReader,
    RegisterWriter,
    RtuLink,
    TcpLink,
)
from hal import Device, DeviceError, DeviceFaultChanged, Fault, GridSample, Meter, MeterSample, Role
from hal.clock import Clock, SystemClock, TimerHandle
from hal.roles import SignedMeter, SiteMeter
from hal.tasks import raise_if_cancelling

log = logging.getLogger("cpagent.drivers.modbus")

SILENT_AFTER_S = 2.5  # the rule is "PowerMeterFailure within 3 s"; leave margin for timer and poll jitter
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 10.0
SIGNING_POLLS = 40  # status polls, 50 ms apart, before a signing request is given up
SIGNING_POLL_S = 0.05

KNOWN_SETTINGS = frozenset(
    {
        "model", "transport", "host", "port", "serial_port", "baudrate", "parity", "stopbits",
        "bytesize", "device_id", "poll_interval_s", "timeout_s", "driver",
    }
)  # fmt: skip


class ModbusMeter(Device, Meter, SignedMeter):
    def __init__(
        self,
        name: str,
        register_map: RegisterMap,
        reader: RegisterReader,
        *,
        poll_interval_s: float = 1.0,
        silent_after_s: float = SILENT_AFTER_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(name)
        self.register_map = register_map
        self.reader = reader
        self.poll_interval_s = poll_interval_s
        self.silent_after_s = silent_after_s
        self.backoff_max_s = backoff_max_s
        self.clock: Clock = clock or SystemClock()
        self._plan: tuple[ReadRequest, ...] = plan_reads(register_map)
        self._latest: MeterSample | None = None
        self._grid_capable = supports_grid(register_map)
        self._grid: GridSample | None = None
        self._grid_incomplete_logged = False
        self._site_view = _SiteMeterView(self)
        self._last_answer: float | None = None  # clock.monotonic() of the last valid answer
        self._accepted_energy_wh: float | None = None
        self._silent = False
        self._implausible = False
        self._silence_timer: TimerHandle | None = None
        self._failing_since_logged = False
        self._counters = {"polls_ok": 0, "polls_failed": 0, "frames": 0, "reconnects": 0, "implausible": 0}
        self._io = asyncio.Lock()  # a signing exchange and a poll must not interleave on one link

    # ------------------------------------------------------------------ roles

    @property
    def roles(self) -> frozenset[Role]:
        if self._grid_capable:
            return frozenset({Role.METER, Role.SITE_METER})
        return frozenset({Role.METER})

    def role(self, role: Role) -> Any:
        """The SiteMeter role is a small view object (its ``latest()`` is a method, the Meter role's
        ``latest`` a property, so one object cannot be both)."""
        provided = super().role(role)
        return self._site_view if role is Role.SITE_METER else provided

    def grid_latest(self) -> GridSample | None:
        """The SiteMeter reading: signed per-phase current and power, None while silent or implausible."""
        if self._last_answer is None or self.clock.monotonic() - self._last_answer > self.silent_after_s:
            return None
        return self._grid

    @property
    def latest(self) -> MeterSample | None:
        if self._last_answer is None or self.clock.monotonic() - self._last_answer > self.silent_after_s:
            return None  # also covers a silence timer that has not fired yet
        return self._latest

    @property
    def silent(self) -> bool:
        return self._silent

    def counters(self) -> Mapping[str, int]:
        return dict(self._counters)

    # ------------------------------------------------------------------ task

    async def run(self) -> None:
        self._arm_silence_timer()
        backoff = BACKOFF_START_S
        try:
            while True:
                raise_if_cancelling()  # pymodbus awaits with wait_for, which can lose a cancel on 3.11
                if not self.reader.connected:
                    try:
                        await self.reader.connect()
                        backoff = BACKOFF_START_S
                    except ModbusIOError as exc:
                        self._poll_failed(str(exc))
                        await asyncio.sleep(backoff)
                        backoff = min(self.backoff_max_s, backoff * 2)
                        continue
                    self._counters["reconnects"] += 1
                try:
                    await self.poll_once()
                except Exception:  # e.g. a listener bug: log it, keep the meter alive
                    log.exception("meter %s: error while publishing a reading", self.name)
                await asyncio.sleep(self.poll_interval_s)
        finally:
            if self._silence_timer is not None:
                self._silence_timer.cancel()
            self.reader.close()

    async def poll_once(self) -> MeterSample | None:
        """Read every batch of the map once; returns the accepted sample, if any."""
        try:
            async with self._io:
                values = await self._read_values()
        except ModbusIOError as exc:
            self._poll_failed(str(exc))
            return None
        except Exception as exc:  # a malformed answer must not kill the task
            self._poll_failed(f"unusable answer: {exc!r}")
            return None
        return self._answered(values)

    async def _read_values(self) -> dict[str, float | None]:
        values: dict[str, float | None] = {}
        for request in self._plan:
            self._counters["frames"] += 1
            words = await self.reader.read(request.function, request.address, request.count)
            values.update(decode_batch(request, words))
        return values

    # ------------------------------------------------------------------ signed meter values (OCMF)

    @property
    def signs(self) -> bool:
        return self.register_map.signing is not None

    async def start_signed(self, tx_ref: str) -> str:
        """Have the meter sign the transaction start; returns the OCMF record, also published as the
        ``signed_data`` of a fresh MeterSample. Raises DeviceError."""
        return await self._signed(COMMAND_BEGIN, tx_ref)

    async def stop_signed(self, tx_ref: str) -> str:
        """Same for the transaction end (the record's reading has TX "E")."""
        return await self._signed(COMMAND_END, tx_ref)

    async def update_signed(self, tx_ref: str) -> str:
        """An intermediate signed reading during the transaction (TX "C"; clock-aligned values)."""
        return await self._signed(COMMAND_UPDATE, tx_ref)

    async def public_key(self) -> bytes:
        """The meter's signing key, DER SubjectPublicKeyInfo (secp256r1)."""
        layout, _ = self._signing()
        try:
            async with self._io:
                _, _, length = await self.reader.read(layout.function, layout.status, 3)
                if not 0 < length <= 2 * layout.public_key_registers:
                    raise OcmfError(f"public key length {length} is out of range")
                words = await self.reader.read(layout.function, layout.public_key, (length + 1) // 2)
        except (ModbusIOError, OcmfError) as exc:
            raise DeviceError(f"meter {self.name}: cannot read the public key: {exc}") from exc
        return words_to_bytes(words, length)

    def _signing(self) -> tuple[SigningLayout, RegisterWriter]:
        layout = self.register_map.signing
        if layout is None or not isinstance(self.reader, RegisterWriter):
            raise DeviceError(f"meter {self.name}: model {self.register_map.model} does not sign meter values")
        return layout, self.reader

    async def _signed(self, command: int, tx_ref: str) -> str:
        layout, writer = self._signing()
        try:
            tx_words = transaction_ref_words(tx_ref)
        except ValueError as exc:
            raise DeviceError(f"meter {self.name}: {exc}") from exc
        try:
            async with self._io:
                await writer.write(layout.command, [command, *tx_words])
                for _ in range(SIGNING_POLLS):
                    status, length, _ = await self.reader.read(layout.function, layout.status, 3)
                    if status == STATUS_READY:
                        break
                    if status != 1:  # neither busy nor ready: the meter refused
                        raise OcmfError(f"meter reports signing status {status}")
                    await asyncio.sleep(SIGNING_POLL_S)
                else:
                    raise OcmfError("meter did not finish signing in time")
                if not 0 < length <= 2 * layout.record_registers:
                    raise OcmfError(f"record length {length} is out of range")
                words: list[int] = []
                needed = (length + 1) // 2
                while len(words) < needed:
                    count = min(self.register_map.max_registers_per_read, needed - len(words))
                    words += await self.reader.read(layout.function, layout.record + len(words), count)
                record = words_to_bytes(words, length).decode("ascii")
                parse_ocmf(record)
                values = await self._read_values()
        except (ModbusIOError, OcmfError, UnicodeDecodeError) as exc:
            raise DeviceError(f"meter {self.name}: signed reading failed: {exc}") from exc
        self._answered(values, signed_data=record)
        return record

    # ------------------------------------------------------------------ rules

    def _answered(self, values: dict[str, float | None], signed_data: str | None = None) -> MeterSample | None:
        self._last_answer = self.clock.monotonic()
        self._arm_silence_timer()
        if self._silent:
            self._silent = False
            log.info("meter %s answers again", self.name)
            self.emit(DeviceFaultChanged(Fault.METER_SILENT, False))
        try:
            sample = dataclasses.replace(build_sample(values, self.clock.wall()), signed_data=signed_data)
        except IncompleteReading as exc:
            self._set_implausible(str(exc))
            return None
        if self._grid_capable:
            self._grid = self._grid_sample(values, sample.timestamp)
        previous = self._accepted_energy_wh
        if previous is not None and sample.energy_import_wh < previous:
            self._set_implausible(f"energy went backwards: {sample.energy_import_wh:.1f} Wh after {previous:.1f} Wh")
            return None
        if self._implausible:
            self._implausible = False
            log.info("meter %s readings plausible again", self.name)
            self.emit(DeviceFaultChanged(Fault.METER_IMPLAUSIBLE, False))
        self._counters["polls_ok"] += 1
        self._failing_since_logged = False
        self._accepted_energy_wh = sample.energy_import_wh
        self._latest = sample
        self.emit(sample)
        return sample

    def _grid_sample(self, values: dict[str, float | None], timestamp: float) -> GridSample | None:
        try:
            grid = build_grid_sample(values, timestamp)
        except IncompleteReading as exc:
            if not self._grid_incomplete_logged:
                self._grid_incomplete_logged = True
                log.warning("meter %s: no site reading: %s", self.name, exc)
            return None
        self._grid_incomplete_logged = False
        return grid

    def _set_implausible(self, detail: str) -> None:
        self._counters["implausible"] += 1
        self._latest = None
        self._grid = None
        if not self._implausible:
            self._implausible = True
            log.warning("meter %s: %s", self.name, detail)
            self.emit(DeviceFaultChanged(Fault.METER_IMPLAUSIBLE, True, detail))

    def _poll_failed(self, detail: str) -> None:
        self._counters["polls_failed"] += 1
        if not self._failing_since_logged:
            self._failing_since_logged = True
            log.warning("meter %s: %s (further errors are counted, not logged)", self.name, detail)
        else:
            log.debug("meter %s: %s", self.name, detail)

    def _arm_silence_timer(self) -> None:
        if self._silence_timer is not None:
            self._silence_timer.cancel()
        self._silence_timer = self.clock.call_later(self.silent_after_s, self._went_silent)

    def _went_silent(self) -> None:
        self._silence_timer = None
        self._latest = None
        self._grid = None
        if not self._silent:
            self._silent = True
            detail = f"no answer for {self.silent_after_s:g} s"
            log.warning("meter %s: %s", self.name, detail)
            self.emit(DeviceFaultChanged(Fault.METER_SILENT, True, detail))


class _SiteMeterView(SiteMeter):
    """The SiteMeter role of a ModbusMeter (see ``ModbusMeter.role``)."""

    def __init__(self, meter: ModbusMeter) -> None:
        self.meter = meter

    def latest(self) -> GridSample | None:
        return self.meter.grid_latest()


# ---------------------------------------------------------------------- settings


def _where(name: str, key: str) -> str:
    return f"devices.{name}.{key}"


def _get_int(name: str, settings: Mapping[str, Any], key: str, default: int, allowed: range) -> int:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        raise DeviceError(
            f"{_where(name, key)}: expected an integer {allowed.start}..{allowed.stop - 1}, got {value!r}"
        )
    return value


def _get_float(name: str, settings: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low < value <= high:
        raise DeviceError(f"{_where(name, key)}: expected seconds > {low} and <= {high}, got {value!r}")
    return float(value)


def _get_choice(name: str, settings: Mapping[str, Any], key: str, default: Any, choices: tuple[Any, ...]) -> Any:
    value = settings.get(key, default)
    if value not in choices or isinstance(value, bool):
        options = ", ".join(repr(c) for c in choices)
        raise DeviceError(f"{_where(name, key)}: expected one of {options}, got {value!r}")
    return value


def _get_str(name: str, settings: Mapping[str, Any], key: str, default: str | None) -> str:
    value = settings.get(key, default)
    if not isinstance(value, str) or not value:
        raise DeviceError(f"{_where(name, key)}: expected a non-empty string, got {value!r}")
    return value


def parse_link(name: str, settings: Mapping[str, Any]) -> Link:
    transport = _get_choice(name, settings, "transport", None, ("tcp", "rtu"))
    if transport == "tcp":
        return TcpLink(
            host=_get_str(name, settings, "host", "127.0.0.1"),
            port=_get_int(name, settings, "port", 502, range(1, 65536)),
        )
    return RtuLink(
        serial_port=_get_str(name, settings, "serial_port", None),
        baudrate=_get_int(name, settings, "baudrate", 9600, range(300, 1_000_001)),
        parity=_get_choice(name, settings, "parity", "N", ("N", "E", "O")),
        stopbits=_get_choice(name, settings, "stopbits", 1, (1, 2)),
        bytesize=_get_choice(name, settings, "bytesize", 8, (7, 8)),
    )


def create(name: str, settings: Mapping[str, Any]) -> ModbusMeter:
    unknown = sorted(set(settings) - KNOWN_SETTINGS)
    if unknown:
        raise DeviceError(
            f"{_where(name, unknown[0])}: unknown setting (known: {', '.join(sorted(KNOWN_SETTINGS - {'driver'}))})"
        )
    model = _get_str(name, settings, "model", "sdm630")
    try:
        register_map = load_map(model)
    except MapError as exc:
        raise DeviceError(f"{_where(name, 'model')}: {exc}") from exc
    link = parse_link(name, settings)
    device_id = _get_int(name, settings, "device_id", 1, range(1, 248))
    # A healthy meter must answer well inside the silence window, so both are bounded.
    poll_interval_s = _get_float(name, settings, "poll_interval_s", 1.0, 0.0, 2.0)
    timeout_s = _get_float(name, settings, "timeout_s", 1.0, 0.0, 2.5)
    reader: RegisterReader
    if isinstance(link, RtuLink):  # every RTU meter goes through its port's one bus scheduler
        try:
            bus = shared_bus(link)
        except BusSettingsMismatch as exc:
            raise DeviceError(f"{_where(name, exc.key)}: {exc}") from exc
        reader = bus.reader(device_id, timeout_s)
    else:
        reader = PymodbusReader(link, device_id=device_id, timeout_s=timeout_s)
    return ModbusMeter(name, register_map, reader, poll_interval_s=poll_interval_s)
