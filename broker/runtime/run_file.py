"""``var/run.json``: where the running daemon listens, for operators' tools and tests.

Written last at start (tools and tests take it as "ready") and removed at a clean stop;
a daemon killed outright leaves it behind, so its pid is checked before it is believed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from broker.storage.files import atomic_write

RUN_FILE = "run.json"


def write_run_file(var: Path, *, sftp_port: int, metrics_port: int, host_key: str) -> None:
    atomic_write(var / RUN_FILE, json.dumps({
        "pid": os.getpid(), "sftp_port": sftp_port, "metrics_port": metrics_port,
        "host_key": host_key}).encode())


def remove_run_file(var: Path) -> None:
    (var / RUN_FILE).unlink(missing_ok=True)


def running_pid(var: Path) -> int | None:
    """The pid of the daemon running on this home; None when none is (no run file, or
    a stale one of a daemon that is gone)."""
    try:
        pid = int(json.loads((var / RUN_FILE).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid <= 0:  # 0 and below name process groups, not a process
        return None
    try:
        os.kill(pid, 0)  # signal 0: only asks whether it is there
    except PermissionError:
        return pid  # there, under another user
    except OSError:
        return None
    return pid
