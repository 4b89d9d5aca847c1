"""The anchored head of the audit chain (``var/audit.head``): truncation becomes visible.

A hash chain proves every row back to the first, but not that rows are missing from
its end. After each commit the head (row id and hash) is written here, atomically
(temp, fsync, rename) and only ever forward: ``verify`` then requires the table to
still hold that row with that hash.

The anchor is written AFTER the commit, never before, so it can lag the table (a
crash between the commit and the write leaves the previous head) but never lead it: a
lagging anchor is no false alarm, and the rows it does not yet cover are only those
of the last commit before the crash.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from broker.storage.files import atomic_write, private_dir


@dataclass(frozen=True)
class Anchor:
    id: int
    hash: str


def read_anchor(path: Path) -> Anchor | None:
    """The anchored head, or None when there is none yet (a damaged file counts as none
    only if empty: anything else unreadable is reported, not silently replaced)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    if not text.strip():
        return None
    data = json.loads(text)
    return Anchor(id=int(data["id"]), hash=str(data["hash"]))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Two processes (daemon, an operator's command) anchor the same home: the read,
    # compare and write happen under one lock so that the anchor only moves forward.
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_anchor(path: Path, anchor: Anchor) -> None:
    """Anchor ``anchor`` unless a later head is anchored already."""
    private_dir(path.parent)  # var/ holds no state.db on a PostgreSQL home: it may be new
    with _locked(path):
        try:
            current = read_anchor(path)
        except (ValueError, KeyError):
            current = None  # unreadable: the new head replaces it
        if current is not None and current.id >= anchor.id:
            return
        atomic_write(path, (json.dumps({"id": anchor.id, "hash": anchor.hash}) + "\n")
                     .encode())
