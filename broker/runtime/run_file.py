"""A running daemon's marks in its home: ``var/daemon.lock`` and ``var/run.json``.

The lock is held for the daemon process's whole life, from before its first write to the
state to its exit (the kernel drops it when the process dies, however it dies): a second
daemon on the home, or a ``db copy`` (which holds it while it reads), is refused instead
of racing it. The operator's one-shot commands that write (``release-due``, ``keys``) do
not take it: the copy's instructions say to run none meanwhile.

``run.json`` says where the daemon listens, for operators' tools and tests: written last
at start (tools take it as "ready") and removed at a clean stop; a daemon killed outright
leaves it behind, so its pid is checked before it is believed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from broker.errors import HomeBusy
from broker.storage.files import atomic_write, private_dir

RUN_FILE = "run.json"
LOCK_FILE = "daemon.lock"


def _take(var: Path, who: str) -> int:
    """The home's lock, on a descriptor of its own; HomeBusy at once if another holds it.
    ``who`` says what is refused ("start", "copy the state database")."""
    path = private_dir(var) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except OSError as exc:  # made by another user (a command run as root), a symlink
        raise HomeBusy(f"cannot {who}: {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        pid = running_pid(var)
        raise HomeBusy(f"cannot {who}: the daemon is running on this home"
                       f"{f' (pid {pid})' if pid else ''}, or a 'db copy' of it; stop it "
                       "first") from None
    return fd


@contextlib.contextmanager
def home_lock(var: Path, who: str) -> Iterator[None]:
    """Hold the home's lock while the block runs (``db copy``)."""
    fd = _take(var, who)
    try:
        yield
    finally:
        os.close(fd)  # closing drops the lock


def hold_home_lock(var: Path, who: str) -> None:
    """Take the home's lock for the rest of this process's life: the kernel drops it at
    exit, however the process ends. The daemon's threads that finish after its loop (a
    push in flight, which records its row) still write under it."""
    _take(var, who)  # the descriptor is left open on purpose


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
    except (OSError, OverflowError):
        return None
    return pid
