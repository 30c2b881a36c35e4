"""The agent's TOML configuration, validated once at start-up.

Every error names the key path (``connectors[0].max_current_a``) and what was expected; the CLI turns
a ConfigError into exit status 2 before anything starts.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.paths import DEFAULT_CONFIG_PATH as DEFAULT_CONFIG_PATH  # defined there: cli.py reads it cheaply

DEFAULT_STATE_DIR = Path("/var/lib/cpagent")
DEFAULT_DIAG_SOCKET = Path("/run/cpagent/diag.sock")
ROLE_KEYS = ("pilot", "power_switch", "lock", "meter", "display")


class ConfigError(Exception):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class DeviceConfig:
    name: str
    driver: str
    settings: Mapping[str, Any]


@dataclass(frozen=True)
class ConnectorConfig:
    id: int
    max_current_a: float
    phases: int
    ventilation_available: bool
    fixed_cable: bool
    pilot: str
    power_switch: str
    lock: str | None
    meter: str | None
    display: str | None
    # over-current trip: measured > (offered + margin) * factor for time_s (EVerest defaults)
    overcurrent_margin_a: float = 0.5
    overcurrent_factor: float = 1.10
    overcurrent_time_s: float = 7.0
    # [site] load sharing: the site (connection point) phases this connector's L1, L2, L3 are wired to;
    # a 1-phase EV loads the first one
    site_phases: tuple[int, ...] = (1, 2, 3)
    # 1p/3p switching (boards with a phase contactor): pause between relay open and close, cap per session
    phase_switch_settle_s: float = 5.0
    max_phase_switches: int = 4


OCPP_VERSIONS = ("1.6", "2.0.1", "auto")
# [ocpp] request_budget_ms_per_s (agent/ocpp/budget.py): default and bounds. Defined here, not there: the
# control side reads the configuration and never imports agent.ocpp.
REQUEST_BUDGET_MS_PER_S = 250.0
REQUEST_BUDGET_RANGE = (10.0, 1000.0)  # 1000: a whole core, which no single-threaded side can overspend


@dataclass(frozen=True)
class OcppConfig:
    endpoint: str | None
    password: str | None
    security_profile: int
    reconnect_cap_s: float
    keys: Mapping[str, str]
    # TLS (security profiles 2 and 3): extra trust anchors for the CSMS certificate, and a preinstalled
    # client certificate/key used until the CSMS has signed one of ours.
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    # "1.6" | "2.0.1" | "auto" (offer ocpp2.0.1 and ocpp1.6, speak what the CSMS selects)
    version: str = "auto"
    # OCPP 2.0.1 device model presets "Component[.instance]/Variable[.instance]" -> value (as OCPP writes
    # it); validated against the variable table by agent.preflight (agent/ocpp/v201/device_model.py)
    variables: Mapping[str, str] = field(default_factory=dict)
    # Network-side CPU the CSMS's requests may use per connection, ms per second (agent/ocpp/budget.py)
    request_budget_ms_per_s: float = REQUEST_BUDGET_MS_PER_S


@dataclass(frozen=True)
class FirmwareConfig:
    # argv run to install a downloaded firmware file; "{file}" is replaced by its path. None: no installer.
    installer: tuple[str, ...] | None = None
    # the agent's own log file, added (filtered by time) to diagnostics archives
    log_file: Path | None = None
    # OCPP 2.0.1: an UpdateFirmware without signingCertificate and signature (L02) is Rejected (TC_L_18_CS)
    require_signature: bool = False


SITE_MODES = ("off", "grid-limit", "solar", "solar+min")


@dataclass(frozen=True)
class SiteConfig:
    """[site]: local energy management (issue 15). ``meter`` None = no site limit at all."""

    meter: str | None = None
    main_fuse_a: float = 35.0
    phases: int = 3
    margin_a: float = 1.0
    mode: str = "off"
    min_current_a: float = 6.0
    phase_switching: bool = False
    failsafe_current_a: float = 6.0
    stale_after_s: float = 2.0
    solar_start_delay_s: float = 30.0
    solar_stop_delay_s: float = 60.0  # with the min run: see agent.energy.solar.longest_import_s
    solar_min_run_s: float = 100.0
    solar_min_pause_s: float = 120.0
    solar_import_margin_w: float = 200.0

    @property
    def enabled(self) -> bool:
        return self.meter is not None and self.mode != "off"


@dataclass(frozen=True)
class StationConfig:
    charge_point_id: str
    vendor: str
    model: str
    serial_number: str
    firmware_version: str
    support_contact: str


@dataclass(frozen=True)
class AgentConfig:
    station: StationConfig
    state_dir: Path
    diag_socket: Path
    devices: Mapping[str, DeviceConfig]
    connectors: tuple[ConnectorConfig, ...]
    token_reader: str | None
    allowed_tokens: frozenset[str]
    ocpp: OcppConfig
    log_levels: Mapping[str, str] = field(default_factory=dict)
    source: Path | None = None
    firmware: FirmwareConfig = field(default_factory=FirmwareConfig)
    site: SiteConfig = field(default_factory=SiteConfig)


class _Reader:
    """Typed access to one TOML table with the key path kept for error messages."""

    def __init__(self, table: Mapping[str, Any], path: str) -> None:
        self.table = table
        self.path = path
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def _get(self, name: str, kinds: tuple[type, ...], expected: str, default: Any, required: bool) -> Any:
        self.used.add(name)
        if name not in self.table:
            if required:
                raise ConfigError(self.key(name), f"missing; expected {expected}")
            return default
        value = self.table[name]
        if isinstance(value, bool) and bool not in kinds:
            raise ConfigError(self.key(name), f"expected {expected}, got {value!r}")
        if not isinstance(value, kinds):
            raise ConfigError(self.key(name), f"expected {expected}, got {type(value).__name__} {value!r}")
        return value

    def string(self, name: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self._get(name, (str,), "a string", default, required)
        if name in self.table and not value.strip():
            raise ConfigError(self.key(name), "expected a non-empty string")
        return value  # type: ignore[no-any-return]

    def req_string(self, name: str) -> str:
        value = self.string(name, required=True)
        assert value is not None
        return value

    def number(
        self, name: str, default: float, *, low: float | None = None, high: float | None = None
    ) -> float:
        value = float(self._get(name, (int, float), "a number", default, False))
        if (low is not None and value < low) or (high is not None and value > high):
            raise ConfigError(self.key(name), f"expected a number in [{low}, {high}], got {value:g}")
        return value

    def integer(self, name: str, default: int, *, low: int | None = None, high: int | None = None) -> int:
        value = int(self._get(name, (int,), "an integer", default, False))
        if (low is not None and value < low) or (high is not None and value > high):
            raise ConfigError(self.key(name), f"expected an integer in [{low}, {high}], got {value}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        return bool(self._get(name, (bool,), "true or false", default, False))

    def table_(self, name: str) -> _Reader:
        value = self._get(name, (dict,), "a table", {}, False)
        return _Reader(value, self.key(name))

    def reject_unknown(self, allowed: set[str] | None = None) -> None:
        allowed = self.used if allowed is None else allowed
        for name in self.table:
            if name not in allowed:
                raise ConfigError(self.key(name), "unknown key")


def load(path: Path) -> AgentConfig:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read configuration file: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from exc
    config = parse(data)
    return AgentConfig(**{**config.__dict__, "source": path})


def parse(data: Mapping[str, Any]) -> AgentConfig:
    root = _Reader(data, "")
    station_t = root.table_("station")
    cp_id = station_t.req_string("id")
    if len(cp_id) > 48 or any(c.isspace() for c in cp_id):
        raise ConfigError("station.id", "expected at most 48 characters without spaces")
    serial = station_t.string("serial_number", "0000") or "0000"
    if len(serial) > 25:
        raise ConfigError("station.serial_number", "expected at most 25 characters (OCPP 1.6 limit)")
    vendor = station_t.string("vendor", "chargepoint-agent") or ""
    model = station_t.string("model", "cpagent") or ""
    if len(vendor) > 20:
        raise ConfigError("station.vendor", "expected at most 20 characters (OCPP 1.6 limit)")
    if len(model) > 20:
        raise ConfigError("station.model", "expected at most 20 characters (OCPP 1.6 limit)")
    from agent import __version__

    firmware_version = station_t.string("firmware_version", __version__) or __version__
    if len(firmware_version) > 50:
        raise ConfigError("station.firmware_version", "expected at most 50 characters (OCPP 1.6 limit)")

    station = StationConfig(
        charge_point_id=cp_id,
        vendor=vendor,
        model=model,
        serial_number=serial,
        firmware_version=firmware_version,
        support_contact=station_t.string("support_contact", "") or "",
    )
    state_dir = Path(station_t.string("state_dir", str(DEFAULT_STATE_DIR)) or DEFAULT_STATE_DIR)
    diag_socket = Path(station_t.string("diag_socket", str(DEFAULT_DIAG_SOCKET)) or DEFAULT_DIAG_SOCKET)
    token_reader = station_t.string("token_reader")
    station_t.reject_unknown()

    devices_t = root.table_("devices")
    devices: dict[str, DeviceConfig] = {}
    for name in devices_t.table:
        dev = devices_t.table_(name)
        driver = dev.req_string("driver")
        settings = {k: v for k, v in dev.table.items() if k != "driver"}
        devices[name] = DeviceConfig(name=name, driver=driver, settings=settings)

    def device_ref(reader: _Reader, key: str, *, required: bool) -> str | None:
        ref = reader.string(key, required=required)
        if ref is not None and ref not in devices:
            known = ", ".join(sorted(devices)) or "none"
            raise ConfigError(reader.key(key), f"names device {ref!r}, which is not in [devices] ({known})")
        return ref

    raw_connectors = root._get("connectors", (list,), "an array of tables [[connectors]]", None, True)
    if not raw_connectors:
        raise ConfigError("connectors", "expected at least one [[connectors]] table")
    connectors: list[ConnectorConfig] = []
    for index, item in enumerate(raw_connectors):
        if not isinstance(item, dict):
            raise ConfigError(f"connectors[{index}]", "expected a table")
        c = _Reader(item, f"connectors[{index}]")
        connector_id = c.integer("id", index + 1, low=1, high=64)
        if connector_id != index + 1:
            raise ConfigError(c.key("id"), f"expected {index + 1}: connector ids are 1..N in order")
        pilot = device_ref(c, "pilot", required=True)
        assert pilot is not None
        connectors.append(
            ConnectorConfig(
                id=connector_id,
                max_current_a=c.number("max_current_a", 16.0, low=6.0, high=80.0),
                phases=c.integer("phases", 3, low=1, high=3),
                ventilation_available=c.boolean("ventilation_available", False),
                fixed_cable=c.boolean("fixed_cable", False),
                pilot=pilot,
                power_switch=device_ref(c, "power_switch", required=False) or pilot,
                lock=device_ref(c, "lock", required=False),
                meter=device_ref(c, "meter", required=False),
                display=device_ref(c, "display", required=False),
                overcurrent_margin_a=c.number("overcurrent_margin_a", 0.5, low=0.0, high=10.0),
                overcurrent_factor=c.number("overcurrent_factor", 1.10, low=1.0, high=2.0),
                overcurrent_time_s=c.number("overcurrent_time_s", 7.0, low=1.0, high=60.0),
                site_phases=_site_phases(c),
                phase_switch_settle_s=c.number("phase_switch_settle_s", 5.0, low=1.0, high=120.0),
                max_phase_switches=c.integer("max_phase_switches", 4, low=0, high=100),
            )
        )
        c.reject_unknown()
    if token_reader is not None and token_reader not in devices:
        raise ConfigError("station.token_reader", f"names device {token_reader!r}, which is not in [devices]")

    auth_t = root.table_("authorization")
    allow = auth_t._get("allow", (list,), "a list of idTag strings", [], False)
    for i, tag in enumerate(allow):
        if not isinstance(tag, str) or not 1 <= len(tag) <= 20:
            raise ConfigError(f"authorization.allow[{i}]", "expected an idTag string of 1..20 characters")
    auth_t.reject_unknown()

    ocpp_t = root.table_("ocpp")
    endpoint = ocpp_t.string("endpoint")
    if endpoint is not None and not endpoint.startswith(("ws://", "wss://")):
        raise ConfigError("ocpp.endpoint", f"expected a ws:// or wss:// URL, got {endpoint!r}")
    keys_t = ocpp_t.table_("keys")
    keys: dict[str, str] = {}
    for key, value in keys_t.table.items():
        keys[key] = _ocpp_text(value, f"ocpp.keys.{key}")
    def existing_file(name: str) -> Path | None:
        value = ocpp_t.string(name)
        if value is None:
            return None
        path = Path(value)
        if not path.is_file():
            raise ConfigError(f"ocpp.{name}", f"no such file: {value}")
        return path

    tls_files = {name: existing_file(name) for name in ("ca_file", "client_cert", "client_key")}
    if (tls_files["client_cert"] is None) != (tls_files["client_key"] is None):
        raise ConfigError("ocpp.client_key" if tls_files["client_cert"] else "ocpp.client_cert",
                          "client_cert and client_key go together")
    security_profile = ocpp_t.integer("security_profile", 0, low=0, high=3)
    if security_profile >= 2 and endpoint is not None and not endpoint.startswith("wss://"):
        raise ConfigError("ocpp.security_profile", f"profile {security_profile} needs a wss:// endpoint")
    ocpp_version = ocpp_t.string("version") or "auto"
    if ocpp_version not in OCPP_VERSIONS:
        raise ConfigError("ocpp.version", f"expected one of {', '.join(OCPP_VERSIONS)}, got {ocpp_version!r}")
    ocpp = OcppConfig(
        endpoint=endpoint,
        password=ocpp_t.string("password"),
        security_profile=security_profile,
        reconnect_cap_s=ocpp_t.number("reconnect_cap_s", 300.0, low=1.0, high=86400.0),
        keys=keys,
        version=ocpp_version,
        variables=_ocpp_variables(ocpp_t.table_("variables")),
        request_budget_ms_per_s=ocpp_t.number("request_budget_ms_per_s", REQUEST_BUDGET_MS_PER_S,
                                              low=REQUEST_BUDGET_RANGE[0], high=REQUEST_BUDGET_RANGE[1]),
        **tls_files,
    )
    ocpp_t.reject_unknown({"endpoint", "password", "security_profile", "reconnect_cap_s", "keys", "version",
                           "variables", "request_budget_ms_per_s", *tls_files})

    firmware = _firmware(root.table_("firmware"))
    site = _site(root.table_("site"), devices)

    logging_t = root.table_("logging")
    levels: dict[str, str] = {}
    for component, level in logging_t.table.items():
        if not isinstance(level, str) or level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError(f"logging.{component}", "expected one of debug, info, warning, error")
        levels[component] = level.upper()
    root.reject_unknown({"station", "devices", "connectors", "authorization", "ocpp", "logging", "firmware",
                        "site"})

    return AgentConfig(
        station=station,
        state_dir=state_dir,
        diag_socket=diag_socket,
        devices=devices,
        connectors=tuple(connectors),
        token_reader=token_reader,
        allowed_tokens=frozenset(allow),
        ocpp=ocpp,
        log_levels=levels,
        firmware=firmware,
        site=site,
    )


def _ocpp_variables(table: _Reader) -> dict[str, str]:
    """[ocpp.variables]: "Component[.instance]/Variable[.instance]" = value, kept as OCPP's text."""
    variables: dict[str, str] = {}
    for key, value in table.table.items():
        if "/" not in key:
            raise ConfigError(table.key(key), 'expected a key "Component[.instance]/Variable[.instance]"')
        variables[key] = _ocpp_text(value, table.key(key))
    return variables


def _ocpp_text(value: object, key: str) -> str:
    """A TOML value of [ocpp.keys] / [ocpp.variables] as OCPP's text: true/false, the number, the string, or a
    comma-separated list."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    raise ConfigError(key, "expected a string, number, boolean or list of strings")


def _firmware(table: _Reader) -> FirmwareConfig:
    installer = table._get("installer", (list,), 'a list of strings like ["rauc", "install", "{file}"]', None, False)
    if installer is not None:
        if not installer or not all(isinstance(arg, str) and arg for arg in installer):
            raise ConfigError(table.key("installer"), "expected a non-empty list of non-empty strings")
        if not any("{file}" in arg for arg in installer):
            raise ConfigError(table.key("installer"), 'expected a "{file}" placeholder for the firmware file')
    log_file = table.string("log_file")
    require_signature = table.boolean("require_signature", False)
    table.reject_unknown()
    return FirmwareConfig(
        installer=tuple(installer) if installer is not None else None,
        log_file=Path(log_file) if log_file is not None else None,
        require_signature=require_signature,
    )


def _site_phases(c: _Reader) -> tuple[int, ...]:
    phases = c._get("site_phases", (list,), "a list of site phases such as [1, 2, 3]", [1, 2, 3], False)
    if (
        not phases
        or len(phases) > 3
        or not all(isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 3 for p in phases)
        or len(set(phases)) != len(phases)
    ):
        raise ConfigError(c.key("site_phases"), f"expected 1..3 distinct site phases out of 1, 2, 3, got {phases!r}")
    return tuple(phases)


def _site(table: _Reader, devices: Mapping[str, DeviceConfig]) -> SiteConfig:
    """[site]; whether the named device provides the site_meter role is checked when devices exist."""
    if not table.table:
        return SiteConfig()
    meter = table.string("meter")
    if meter is not None and meter not in devices:
        known = ", ".join(sorted(devices)) or "none"
        raise ConfigError(table.key("meter"), f"names device {meter!r}, which is not in [devices] ({known})")
    mode = table.string("mode", "grid-limit") or "grid-limit"
    if mode not in SITE_MODES:
        raise ConfigError(table.key("mode"), f"expected one of {', '.join(SITE_MODES)}, got {mode!r}")
    if meter is None and mode != "off":
        raise ConfigError(table.key("meter"), f'mode {mode!r} needs a site meter: meter = "<a [devices] name>"')
    phases = table.integer("phases", 3, low=1, high=3)
    if phases == 2:
        raise ConfigError(table.key("phases"), "expected 1 or 3, got 2")
    fuse = table.number("main_fuse_a", 35.0, low=6.0, high=2000.0)
    margin = table.number("margin_a", 1.0, low=0.0, high=100.0)
    if margin >= fuse - 6.0:
        raise ConfigError(table.key("margin_a"), f"must leave at least 6 A of the {fuse:g} A fuse, got {margin:g}")
    min_current = table.number("min_current_a", 6.0, low=6.0, high=80.0)
    failsafe = table.number("failsafe_current_a", 6.0, low=0.0, high=80.0)
    if 0.0 < failsafe < 6.0:
        raise ConfigError(table.key("failsafe_current_a"), f"expected 0 (pause) or at least 6 A, got {failsafe:g}")
    if failsafe > fuse - margin:
        raise ConfigError(
            table.key("failsafe_current_a"), f"must not exceed main_fuse_a - margin_a ({fuse - margin:g} A)"
        )
    site = SiteConfig(
        meter=meter,
        main_fuse_a=fuse,
        phases=phases,
        margin_a=margin,
        mode=mode,
        min_current_a=min_current,
        phase_switching=table.boolean("phase_switching", False),
        failsafe_current_a=failsafe,
        stale_after_s=table.number("stale_after_s", 2.0, low=0.5, high=2.0),
        solar_start_delay_s=table.number("solar_start_delay_s", 30.0, low=0.0, high=3600.0),
        solar_stop_delay_s=table.number("solar_stop_delay_s", 60.0, low=0.0, high=3600.0),
        solar_min_run_s=table.number("solar_min_run_s", 100.0, low=0.0, high=86400.0),
        solar_min_pause_s=table.number("solar_min_pause_s", 120.0, low=0.0, high=86400.0),
        solar_import_margin_w=table.number("solar_import_margin_w", 200.0, low=0.0, high=100_000.0),
    )
    table.reject_unknown()
    if site.mode == "solar":
        from agent.energy.solar import SOLAR_STOP_ALLOWANCE_S, longest_import_s

        bound = longest_import_s(site.solar_stop_delay_s, site.solar_min_run_s)
        if site.solar_min_pause_s < bound:
            raise ConfigError(
                table.key("solar_min_pause_s"),
                f"must be at least max(solar_stop_delay_s, solar_min_run_s) + {SOLAR_STOP_ALLOWANCE_S:g} s (the EV's "
                f"stop) = {bound:g} s in mode \"solar\": else charging can import beyond solar_import_margin_w "
                "for longer than the minimum pause",
            )
    return site
