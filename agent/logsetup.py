"""Logging for `cpagent run`: journald with real priorities under systemd, timestamped stderr otherwise,
and a level per component from the [logging] table of the configuration."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# sd-daemon(3) priorities: journald strips a leading "<N>" from each stream line and files it at N.
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def syslog_priority(levelno: int) -> int:
    for threshold, priority in _PRIORITIES:
        if levelno >= threshold:
            return priority
    return 7


class JournalFormatter(logging.Formatter):
    """'<3>cpagent.ocpp: message' on every line: journald splits on newlines, so a traceback's
    continuation lines need the prefix too or they would land at the default priority."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines() or [""])


def stderr_is_journal(stream: TextIO | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """True when stderr is the journald stream systemd connected us to ($JOURNAL_STREAM is 'dev:ino' of
    it). Comparing matters: a child with redirected stderr inherits the variable but not the stream."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):
        return False


_HANDLER_NAME = "cpagent"

# Libraries that are chatty at INFO: `transitions` writes three lines per state change of the IEC 61851
# machine. A [logging] entry for the same name (e.g. transitions = "info") wins.
QUIET_BY_DEFAULT: Mapping[str, str] = {"transitions": "WARNING"}


def setup_logging(
    log_levels: Mapping[str, str] | None = None,
    *,
    verbose: bool = False,
    stream: TextIO | None = None,
    journal: bool | None = None,
) -> logging.Handler:
    """Replace the root handlers with one handler to `stream` (stderr) and set per-logger levels.

    `journal` None means detect it; `log_levels` maps logger names ('cpagent.ocpp') to level names."""
    stream = stream or sys.stderr
    if journal is None:
        journal = stderr_is_journal(stream)
    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JournalFormatter() if journal else logging.Formatter(PLAIN_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    levels = {**QUIET_BY_DEFAULT, **{name: level.upper() for name, level in (log_levels or {}).items()}}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    return handler
