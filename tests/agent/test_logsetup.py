"""Log output for journald (priority prefixes) vs a terminal (timestamps), and per-component levels."""

from __future__ import annotations

import io
import logging
import os
import re
import tempfile
from collections.abc import Iterator

import pytest

from agent.logsetup import JournalFormatter, setup_logging, stderr_is_journal, syslog_priority


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    touched = ["cpagent.ocpp", "cpagent.connector", "websockets", "transitions"]
    levels = {name: logging.getLogger(name).level for name in touched}
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    for name, lvl in levels.items():
        logging.getLogger(name).setLevel(lvl)


def test_priorities_follow_syslog() -> None:
    assert [syslog_priority(lvl) for lvl in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR,
                                             logging.CRITICAL)] == [7, 6, 4, 3, 2]


def test_journal_lines_carry_the_priority_prefix_on_every_line() -> None:
    out = io.StringIO()
    setup_logging({}, stream=out, journal=True)
    log = logging.getLogger("cpagent.connector")
    log.info("connector %d: session started", 1)
    try:
        raise ValueError("bad frame")
    except ValueError:
        log.exception("decoder failed")
    lines = out.getvalue().splitlines()
    assert lines[0] == "<6>cpagent.connector: connector 1: session started"
    assert lines[1] == "<3>cpagent.connector: decoder failed"
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines[2:])  # the traceback too
    assert lines[-1] == "<3>ValueError: bad frame"


def test_terminal_lines_have_timestamps_and_no_prefix() -> None:
    out = io.StringIO()
    setup_logging({}, stream=out, journal=False)
    logging.getLogger("cpagent.ocpp").warning("link down")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING cpagent\.ocpp: link down\n", out.getvalue())


def test_levels_per_component() -> None:
    out = io.StringIO()
    setup_logging({"cpagent.ocpp": "DEBUG", "websockets": "error"}, stream=out, journal=True)
    logging.getLogger("cpagent.ocpp.link").debug("frame in")  # child of a DEBUG component
    logging.getLogger("cpagent.connector").debug("not shown")  # root stays at INFO
    logging.getLogger("websockets.client").warning("not shown either")
    logging.getLogger("websockets.client").error("shown")
    assert out.getvalue().splitlines() == ["<7>cpagent.ocpp.link: frame in", "<3>websockets.client: shown"]


def test_setup_replaces_earlier_handlers() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging({}, stream=first, journal=False)
    setup_logging({}, stream=second, journal=True)
    logging.getLogger("cpagent").info("once")
    assert first.getvalue() == ""
    assert second.getvalue() == "<6>cpagent: once\n"


def test_verbose_lowers_the_root_level() -> None:
    out = io.StringIO()
    setup_logging({}, stream=out, journal=True, verbose=True)
    logging.getLogger("cpagent.station").debug("detail")
    assert out.getvalue() == "<7>cpagent.station: detail\n"


def test_journal_detected_only_when_stderr_is_that_stream() -> None:
    with tempfile.TemporaryFile("w+") as journal, tempfile.TemporaryFile("w+") as other:
        st = os.fstat(journal.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert stderr_is_journal(journal, env)
        # A child whose stderr was redirected inherits the variable but not the stream.
        assert not stderr_is_journal(other, env)
        assert not stderr_is_journal(journal, {})
        assert not stderr_is_journal(journal, {"JOURNAL_STREAM": "garbage"})
        assert not stderr_is_journal(io.StringIO(), env)  # no file descriptor at all


def test_formatter_handles_an_empty_message() -> None:
    record = logging.LogRecord("cpagent", logging.WARNING, __file__, 1, "", None, None)
    assert JournalFormatter().format(record) == "<4>cpagent: "


PACKAGES = ("agent", "drivers", "hal", "simulator")


def test_every_module_logs_under_cpagent_or_cpsim() -> None:
    """One hierarchy, so README's `[logging] "cpagent.ocpp" = "debug"` reaches every OCPP module: import
    every module of the project in a fresh interpreter (other tests in this process may create loggers of
    any name) and look at the loggers that exist afterwards."""
    import json
    import subprocess
    import sys

    program = (
        "import importlib, json, logging, pkgutil\n"
        f"for package in {PACKAGES!r}:\n"
        "    root = importlib.import_module(package)\n"
        "    for info in pkgutil.walk_packages(root.__path__, prefix=package + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "print(json.dumps(sorted(logging.Logger.manager.loggerDict)))\n"
    )
    output = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=120)
    names = set(json.loads(output.stdout.strip().splitlines()[-1]))
    stray = sorted(n for n in names if n.split(".")[0] in PACKAGES)
    assert stray == []
    assert {"cpagent.ocpp.v16.rpc", "cpagent.ocpp.v16.link", "cpagent.iec61851", "cpagent.outbox",
            "cpagent.drivers.serial.pilot_board", "cpsim.csms"} <= names


def test_every_get_logger_call_in_the_source_names_the_hierarchy() -> None:
    """The same rule for loggers created lazily (inside functions): no `getLogger(__name__)`, and every
    literal name starts with cpagent or cpsim."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    bad: list[str] = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                for match in re.finditer(r"getLogger\(([^)]*)\)", line):
                    arg = match.group(1).strip()
                    if arg == "" or re.fullmatch(r"name|\w+\.name", arg):
                        continue  # the root logger (handlers) / a name passed in
                    if not re.fullmatch(r"[\"'](cpagent|cpsim)(\.[\w.]+)?[\"']", arg):
                        bad.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    assert bad == []


def test_transitions_is_quiet_unless_configured() -> None:
    """`transitions` writes three INFO lines per state change: WARNING by default, [logging] can lower it."""
    out = io.StringIO()
    setup_logging({}, stream=out, journal=True)
    logging.getLogger("transitions.core").info("Finished processing state IDLE exit callbacks.")
    assert out.getvalue() == ""
    setup_logging({"transitions": "INFO"}, stream=out, journal=True)
    logging.getLogger("transitions.core").info("Executed callback")
    assert out.getvalue() == "<6>transitions.core: Executed callback\n"
