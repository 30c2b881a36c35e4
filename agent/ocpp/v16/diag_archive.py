"""The diagnostics archive for GetDiagnostics and GetLog: a .tar.gz of the event log, recent sessions, the
effective configuration with every secret removed, the agent's log file and (if present) the security log,
each filtered to the requested time window. idTags are masked everywhere, as cpctl shows them.

    snapshot = collect(service, start_wall, stop_wall)          # in the event loop (SQLite reads)
    path = await asyncio.to_thread(write_archive, snapshot, directory, name)
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
import time
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.redact import SECRET_WORDS, mask, mask_id_tags, mask_id_tags_in_text

if TYPE_CHECKING:
    from agent.ocpp.v16.service import OcppService

log = logging.getLogger("cpagent.ocpp.v16.diag_archive")

MAX_EVENTS = 50_000
MAX_SESSIONS = 1_000
MAX_LOG_BYTES = 16 * 1024 * 1024  # of the agent's log file and of the security log, the newest part
ID_TAG_LISTS = (("authorization", "allow"),)  # TOML lists of idTags, masked in agent-config.json
_LOG_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"  # logging's asctime (local time) at the start of a line


@dataclass(frozen=True)
class Snapshot:
    """Everything the archive holds, gathered in the event loop; files are read in the worker thread."""

    start_wall: float | None
    stop_wall: float | None
    events: list[dict[str, Any]]
    sessions: list[dict[str, Any]]
    ocpp_configuration: dict[str, str]
    agent_config: dict[str, Any] | None
    log_file: Path | None
    security_log: Path | None


def in_window(wall: float, start: float | None, stop: float | None) -> bool:
    return (start is None or wall >= start) and (stop is None or wall <= stop)


def without_secrets(value: Any) -> Any:
    """A copy of a TOML/JSON tree without any key that names a secret."""
    if isinstance(value, Mapping):
        return {
            k: without_secrets(v)
            for k, v in value.items()
            if not any(word in str(k).lower().replace("_", "").replace("-", "") for word in SECRET_WORDS)
        }
    if isinstance(value, list):
        return [without_secrets(v) for v in value]
    return value


def read_agent_config(path: Path | None) -> dict[str, Any] | None:
    """The TOML configuration as a tree without secrets ([ocpp].password, AuthorizationKey presets, ...)
    and with idTags ([authorization] allow) masked."""
    if path is None:
        return None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return {"error": f"configuration not readable: {type(exc).__name__}"}
    cleaned: dict[str, Any] = mask_id_tags(without_secrets(data))
    for table, key in ID_TAG_LISTS:
        section = cleaned.get(table)
        if isinstance(section, dict) and isinstance(section.get(key), list):
            section[key] = [mask(t) if isinstance(t, str) else t for t in section[key]]
    return cleaned


def filter_log_lines(lines: Iterable[str], start: float | None, stop: float | None) -> Iterator[str]:
    """Lines of a plain log whose leading asctime is in the window; continuation lines (tracebacks) follow
    the line they belong to; lines before the first timestamp are kept."""
    keep = True
    for line in lines:
        try:
            stamp = time.mktime(datetime.strptime(line[:19], _LOG_TIME_FORMAT).timetuple())
        except ValueError:
            stamp = None
        if stamp is not None:
            keep = in_window(stamp, start, stop)
        if keep:
            yield line


def filter_json_lines(lines: Iterable[str], start: float | None, stop: float | None) -> Iterator[str]:
    """Security log lines (JSON objects with "timestamp" ISO 8601 or "wall" seconds) in the window;
    lines without a readable time are kept."""
    for line in lines:
        stamp: float | None = None
        try:
            record = json.loads(line)
            if isinstance(record, dict):
                if isinstance(record.get("wall"), int | float):
                    stamp = float(record["wall"])
                elif isinstance(record.get("timestamp"), str):
                    stamp = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()
        except ValueError:
            stamp = None
        if stamp is None or in_window(stamp, start, stop):
            yield line


def collect(service: OcppService, start_wall: float | None, stop_wall: float | None) -> Snapshot:
    shared = service.station.shared
    events = [
        mask_id_tags(e.as_dict())
        for e in shared.eventlog.query(since_wall=start_wall, limit=MAX_EVENTS)
        if in_window(e.wall, start_wall, stop_wall)
    ]
    sessions = [
        mask_id_tags(asdict(s))
        for s in shared.sessions.recent(MAX_SESSIONS)
        if (stop_wall is None or s.start_wall <= stop_wall)
        and (start_wall is None or (s.stop_wall if s.stop_wall is not None else s.last_wall) >= start_wall)
    ]
    security_log = service.config.state_dir / "security.log"
    return Snapshot(
        start_wall=start_wall,
        stop_wall=stop_wall,
        events=events,
        sessions=sessions,
        ocpp_configuration=service.store.export(),
        agent_config=read_agent_config(service.config.source),
        log_file=service.config.firmware.log_file,
        security_log=security_log,
    )


def _tail_lines(path: Path) -> list[str] | None:
    try:
        with path.open("rb") as f:
            f.seek(0, io.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - MAX_LOG_BYTES))
            data = f.read()
    except OSError:
        return None
    lines = data.decode("utf-8", errors="replace").splitlines(keepends=True)
    return lines[1:] if size > MAX_LOG_BYTES else lines  # the first line may be cut


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_archive(snapshot: Snapshot, directory: Path, name: str, *, include_security_log: bool = True,
                  include_diagnostics: bool = True) -> Path:
    """Write ``directory/name`` (.tar.gz) from the snapshot (blocking: run it in a thread)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    window = {"start": snapshot.start_wall, "stop": snapshot.stop_wall}
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "window.json", json.dumps(window).encode())
        if include_diagnostics:
            _add(tar, "events.jsonl", "".join(json.dumps(e, default=str) + "\n" for e in snapshot.events).encode())
            _add(tar, "sessions.json", json.dumps(snapshot.sessions, indent=1).encode())
            _add(tar, "ocpp-configuration.json", json.dumps(snapshot.ocpp_configuration, indent=1).encode())
            if snapshot.agent_config is not None:
                _add(tar, "agent-config.json", json.dumps(snapshot.agent_config, indent=1, default=str).encode())
            if snapshot.log_file is not None:
                lines = _tail_lines(snapshot.log_file)
                if lines is None:
                    log.warning("diagnostics: log file %s not readable; left out", snapshot.log_file)
                else:
                    text = "".join(filter_log_lines(lines, snapshot.start_wall, snapshot.stop_wall))
                    _add(tar, "agent.log", mask_id_tags_in_text(text).encode())
        if include_security_log and snapshot.security_log is not None and snapshot.security_log.exists():
            lines = _tail_lines(snapshot.security_log)
            if lines is not None:
                text = "".join(filter_json_lines(lines, snapshot.start_wall, snapshot.stop_wall))
                _add(tar, "security.log", mask_id_tags_in_text(text).encode())
    return path
