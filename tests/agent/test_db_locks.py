"""agent.db.connect never drops the POSIX locks SQLite holds on the database's files in this process.

Closing any descriptor of a file drops every fcntl lock the process holds on it. connect() used to open and
close the existing -shm (to make it 0600): a second connection in a process dropped the first one's lock on
the -shm, so the other process opening the database next believed it was alone, truncated the -shm, and the
first connection's next access to its mapping killed the process with SIGBUS (the control side, at start,
while the network side opened state.db: seen in the contract audit)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from agent import db

# Run in another process: try to take the -shm's "DMS" byte (offset 128) exclusively; every open connection
# of a WAL database holds it shared.
PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128)
    print("free")
except OSError:
    print("held")
"""


def _shm_lock(path: Path) -> str:
    return subprocess.run([sys.executable, "-c", PROBE, f"{path}-shm"], capture_output=True, text=True,
                          check=True, timeout=30).stdout.strip()


def test_a_second_connection_keeps_the_first_ones_shm_lock(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first = db.connect(path)
    first.execute("CREATE TABLE t (x)")
    assert _shm_lock(path) == "held"
    second = db.connect(path)
    assert _shm_lock(path) == "held"  # was "free": the second connect() had closed a descriptor of the -shm
    assert [oct(os.stat(f"{path}{suffix}").st_mode & 0o777) for suffix in ("", "-wal", "-shm")] == ["0o600"] * 3
    second.close()
    first.close()
