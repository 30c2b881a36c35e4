"""security.log, shared by both OCPP versions: the security events as JSON lines (0600), rotated once to
security.log.1 past LOG_MAX_BYTES. GetLog SecurityLog / GetDiagnostics upload it."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

LOG_MAX_BYTES = 1_000_000  # then security.log becomes security.log.1


class SecurityLog:
    """The persistent security log (JSON lines, 0600, rotated once at LOG_MAX_BYTES)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, kind: str, tech_info: str | None, timestamp: str) -> None:
        line = json.dumps({"timestamp": timestamp, "type": kind, "techInfo": tech_info}) + "\n"
        with contextlib.suppress(OSError):
            if self.path.stat().st_size > LOG_MAX_BYTES:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)

    def files(self) -> list[Path]:
        return [p for p in (self.path.with_name(self.path.name + ".1"), self.path) if p.exists()]
