"""The site behind the chargepoint: the grid connection point with a house load, PV production and the
simulated EVs, and the site meter there (an emulated Modbus meter, same register maps as the drivers).

Per-phase grid current = house + EVs - PV, positive when importing from the grid. The house load and the
PV are spread evenly over the three phases; each EV loads the site phases its socket is wired to
(``Plant.site_phases``), on 1 or 3 phases. Both can be constants (``cpsim ctl site load KW`` / ``pv KW``) or
profiles of ``time,kW`` rows (``cpsim ctl site profile FILE``) played at ``speed`` profile seconds per real
second, so a 24 h profile can run in minutes.
"""

from __future__ import annotations

import bisect
import csv
import io
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from simulator.meter import FREQUENCY_HZ
from simulator.physics import NOMINAL_VOLTAGE_V, Plant

log = logging.getLogger("cpsim.site")

MAX_PROFILE_ROWS = 100_000


class ProfileError(ValueError):
    """A profile file that cannot be read; the message names the row."""


def _parse_time(text: str) -> float:
    """Seconds from ``"3600"``, ``"3600.5"``, ``"01:00"`` or ``"01:00:00"``."""
    text = text.strip()
    if ":" in text:
        parts = text.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"time {text!r}: expected HH:MM or HH:MM:SS")
        numbers = [float(p) for p in parts] + [0.0] * (3 - len(parts))
        return numbers[0] * 3600 + numbers[1] * 60 + numbers[2]
    return float(text)


@dataclass(frozen=True)
class Profile:
    """kW over profile time (s), linear between rows, held flat before the first and after the last."""

    times_s: tuple[float, ...]
    kw: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.times_s or len(self.times_s) != len(self.kw):
            raise ProfileError("a profile needs at least one row")
        if any(b <= a for a, b in zip(self.times_s, self.times_s[1:], strict=False)):
            raise ProfileError("profile times must increase from row to row")

    @property
    def duration_s(self) -> float:
        return self.times_s[-1] - self.times_s[0]

    def at(self, t: float) -> float:
        times = self.times_s
        if t <= times[0]:
            return self.kw[0]
        if t >= times[-1]:
            return self.kw[-1]
        i = bisect.bisect_right(times, t)
        t0, t1 = times[i - 1], times[i]
        k0, k1 = self.kw[i - 1], self.kw[i]
        return k0 + (k1 - k0) * (t - t0) / (t1 - t0)


def parse_profiles(text: str, *, source: str = "profile") -> tuple[Profile, Profile | None]:
    """``time,kW`` rows (house load) or ``time,load_kW,pv_kW`` rows (both). Time in seconds or HH:MM[:SS]
    from the start of the profile; a first row that is not numeric is a header; ``#`` starts a comment."""
    times: list[float] = []
    load: list[float] = []
    pv: list[float] = []
    columns: int | None = None
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        try:
            values = [_parse_time(row[0])] + [float(c) for c in row[1:]]
        except ValueError as exc:
            if not times and columns is None:
                columns = -1  # the header
                continue
            raise ProfileError(f"{source}, row {number}: {exc}") from None
        if len(values) not in (2, 3):
            raise ProfileError(f"{source}, row {number}: expected time,kW or time,load_kW,pv_kW")
        if columns not in (None, -1) and len(values) != columns:
            raise ProfileError(f"{source}, row {number}: {len(values)} columns, earlier rows have {columns}")
        columns = len(values)
        if not all(math.isfinite(v) for v in values):
            raise ProfileError(f"{source}, row {number}: values must be finite numbers")
        if any(v < 0 for v in values[1:]):
            raise ProfileError(f"{source}, row {number}: kW must not be negative (PV is its own column)")
        if times and values[0] <= times[-1]:
            raise ProfileError(f"{source}, row {number}: time {values[0]:g} s is not after {times[-1]:g} s")
        times.append(values[0])
        load.append(values[1])
        if len(values) == 3:
            pv.append(values[2])
        if len(times) > MAX_PROFILE_ROWS:
            raise ProfileError(f"{source}: more than {MAX_PROFILE_ROWS} rows")
    if not times:
        raise ProfileError(f"{source}: no rows")
    first = Profile(tuple(times), tuple(load))
    return first, (Profile(tuple(times), tuple(pv)) if pv else None)


def load_profiles(path: Path) -> tuple[Profile, Profile | None]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ProfileError(f"{path}: {exc.strerror or exc}") from None
    return parse_profiles(text, source=str(path))


@dataclass
class Site:
    """The grid connection point. ``plants`` gives the EVs behind it (read at every call)."""

    plants: Callable[[], Iterable[Plant]]
    fuse_a: float | None = None
    voltage_v: float = NOMINAL_VOLTAGE_V
    house_kw: float = 0.0  # constant house load (used while no load profile is set)
    pv_kw: float = 0.0  # constant PV production (used while no PV profile is set)
    load_profile: Profile | None = None
    pv_profile: Profile | None = None
    speed: float = 1.0  # profile seconds per real second
    profile_origin: float = 0.0  # monotonic time at which the profiles' time 0 played
    import_wh: float = 0.0
    export_wh: float = 0.0
    _last_step: float | None = field(default=None, repr=False)

    # ---------------------------------------------------------------------------------- scripting
    def set_house_kw(self, kw: float) -> None:
        self.house_kw = _kw(kw, "house load")
        self.load_profile = None

    def set_pv_kw(self, kw: float) -> None:
        self.pv_kw = _kw(kw, "PV")
        self.pv_profile = None

    def set_profile(
        self, profile: Profile, pv_profile: Profile | None, *, now: float, pv: bool = False, speed: float = 1.0
    ) -> None:
        """Play ``profile`` as the house load (or as PV with ``pv``); a 3-column file sets both."""
        if not (math.isfinite(speed) and 0 < speed <= 100_000):
            raise ValueError(f"speed must be > 0 and <= 100000, got {speed}")
        self.step(now)
        if pv:
            self.pv_profile = profile
        else:
            self.load_profile = profile
            if pv_profile is not None:
                self.pv_profile = pv_profile
        self.speed = speed
        self.profile_origin = now

    def profile_time_s(self, now: float) -> float:
        return (now - self.profile_origin) * self.speed

    # ---------------------------------------------------------------------------------- physics
    def house_kw_at(self, now: float) -> float:
        p = self.load_profile
        return p.at(p.times_s[0] + self.profile_time_s(now)) if p else self.house_kw

    def pv_kw_at(self, now: float) -> float:
        p = self.pv_profile
        return p.at(p.times_s[0] + self.profile_time_s(now)) if p else self.pv_kw

    def ev_currents(self) -> tuple[float, float, float]:
        total = [0.0, 0.0, 0.0]
        for plant in self.plants():
            for i, amps in enumerate(plant.site_currents()):
                total[i] += amps
        return (total[0], total[1], total[2])

    def grid_currents(self, now: float) -> tuple[float, float, float]:
        """Signed current per site phase: + import from the grid, - export."""
        per_phase = (self.house_kw_at(now) - self.pv_kw_at(now)) * 1000.0 / 3.0 / self.voltage_v
        ev = self.ev_currents()
        return (per_phase + ev[0], per_phase + ev[1], per_phase + ev[2])

    def step(self, now: float) -> None:
        """Integrate imported / exported energy up to ``now``."""
        dt = 0.0 if self._last_step is None else max(0.0, now - self._last_step)
        self._last_step = now
        if dt <= 0:
            return
        power = sum(self.grid_currents(now)) * self.voltage_v
        if power >= 0:
            self.import_wh += power * dt / 3600.0
        else:
            self.export_wh += -power * dt / 3600.0

    def meter_values(self, now: float) -> dict[str, float]:
        """What a three-phase meter at the connection point reads, in canonical units: current as a
        magnitude per phase (as SDM630/EM340/B23 report it) and active power signed (+ import)."""
        self.step(now)
        currents = self.grid_currents(now)
        v = self.voltage_v
        values: dict[str, float] = {
            "power": sum(currents) * v,
            "frequency": FREQUENCY_HZ,
            "energy_import": self.import_wh,
            "energy_export": self.export_wh,
            "energy_total": self.import_wh + self.export_wh,
        }
        for index, amps in enumerate(currents, start=1):
            values[f"voltage_l{index}"] = v
            values[f"current_l{index}"] = abs(amps)
            values[f"power_l{index}"] = amps * v
            values[f"energy_import_l{index}"] = self.import_wh / 3.0
        return values

    def state(self, now: float) -> dict[str, object]:
        currents = self.grid_currents(now)
        return {
            "grid_current_a": [round(a, 2) for a in currents],
            "house_kw": round(self.house_kw_at(now), 3),
            "pv_kw": round(self.pv_kw_at(now), 3),
            "fuse_a": self.fuse_a,
            "grid_power_w": round(sum(currents) * self.voltage_v, 1),
            "profile_time_s": round(self.profile_time_s(now), 1) if self.load_profile or self.pv_profile else None,
            "import_wh": round(self.import_wh, 3),
            "export_wh": round(self.export_wh, 3),
        }


def _kw(value: float, what: str) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0 or value > 10_000:
        raise ValueError(f"{what} must be 0..10000 kW, got {value}")
    return value
