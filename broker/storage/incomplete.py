"""Durable markers for uploads that are not complete.

An upload is complete only when its client closed the handle (SFTP CLOSE). While
a client writes, and after a connection was lost before CLOSE, the file in
``inbox/<org>/`` is a fragment; ``<incomplete_dir>/<org>/<name>`` says so. The
marker is written (and fsynced) when the upload opens, so a daemon killed during
an upload finds it on restart, and removed only by a CLOSE of a later upload of
the same name. The inbox rescan asks ``upload_incomplete`` and leaves marked
files alone; these functions need no running server.

Markers are tiny JSON documents (state, bytes received, when) for an operator
who wonders why a file sits in an inbox.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from broker.storage.files import fsync_dir

WRITING = "writing"  # a client holds it open (or the daemon died while it did)
CUT = "cut"  # the connection was lost before CLOSE


def marker_path(incomplete_dir: Path, org: str, path: Path | str) -> Path:
    """Where the marker of upload ``path`` (a name or a path in the inbox) lives."""
    return incomplete_dir / org / Path(path).name


def upload_incomplete(incomplete_dir: Path, org: str, path: Path | str) -> bool:
    """True when the upload ``path`` of ``org`` must not be processed as a whole file."""
    return os.path.lexists(marker_path(incomplete_dir, org, path))


def mark_incomplete(incomplete_dir: Path, org: str, path: Path | str, state: str,
                    size: int = 0) -> None:
    """Write the marker durably (blocking: call it off the event loop)."""
    marker = marker_path(incomplete_dir, org, path)
    # Both levels 0700 (mkdir's parents= would give the root the umask's mode): the
    # names are the organisations' upload names.
    incomplete_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    marker.parent.mkdir(exist_ok=True, mode=0o700)
    body = json.dumps({"state": state, "size": size, "at": int(time.time())}).encode()
    # Written in place, not via a temp name: the marker's name is the upload's, which
    # may already be as long as a name can be. What matters is that it exists; a torn
    # body still marks the upload incomplete.
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        os.write(fd, body)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(marker.parent)


def clear_incomplete(incomplete_dir: Path, org: str, path: Path | str) -> bool:
    """Remove the marker durably; True when there was one."""
    marker = marker_path(incomplete_dir, org, path)
    try:
        os.unlink(marker)
    except FileNotFoundError:
        return False
    fsync_dir(marker.parent)
    return True


def move_incomplete(incomplete_dir: Path, org: str, old: Path | str, new: Path | str) -> bool:
    """A rename in the inbox: the new name is exactly as (in)complete as the old one.
    Returns True when it is incomplete."""
    src, dst = marker_path(incomplete_dir, org, old), marker_path(incomplete_dir, org, new)
    if os.path.lexists(src):
        os.replace(src, dst)
        fsync_dir(dst.parent)
        return True
    clear_incomplete(incomplete_dir, org, new)
    return False


def marker_state(incomplete_dir: Path, org: str, path: Path | str) -> str | None:
    """The marker's state (``WRITING``/``CUT``), or None without a (readable) marker."""
    try:
        data = json.loads(marker_path(incomplete_dir, org, path).read_text())
    except (OSError, ValueError):
        return None
    state = data.get("state") if isinstance(data, dict) else None
    return state if isinstance(state, str) else None


def list_incomplete(incomplete_dir: Path) -> list[tuple[str, str, str | None]]:
    """Every marked upload as (org, name, state), for status pages and health."""
    found = []
    try:
        orgs = sorted(p for p in incomplete_dir.iterdir() if p.is_dir())
    except FileNotFoundError:
        return []
    for org_dir in orgs:
        for marker in sorted(org_dir.iterdir()):
            found.append((org_dir.name, marker.name,
                          marker_state(incomplete_dir, org_dir.name, marker.name)))
    return found


def purge_incomplete(incomplete_dir: Path, inbox_dir: Path, max_age: float, now: float,
                     is_writing: Callable[[Path], bool] = lambda path: False,
                     ) -> list[tuple[str, str, int]]:
    """Remove fragments (and their markers) nobody re-uploaded within ``max_age``
    seconds of the marker's last change; they would otherwise fill the
    organisation's upload quota for good. A file still open for writing is left
    alone. Returns (org, name, bytes) of each fragment removed."""
    removed = []
    for org, name, _state in list_incomplete(incomplete_dir):
        marker = marker_path(incomplete_dir, org, name)
        fragment = inbox_dir / org / name
        try:
            if now - marker.stat().st_mtime < max_age or is_writing(fragment):
                continue
            size = fragment.lstat().st_size if os.path.lexists(fragment) else 0
            if os.path.lexists(fragment):
                os.unlink(fragment)
        except OSError:
            continue  # re-uploaded or taken meanwhile: next time
        clear_incomplete(incomplete_dir, org, name)
        removed.append((org, name, size))
    return removed
