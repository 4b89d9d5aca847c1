"""What a client uploaded, remembered after the broker has taken the file away.

Clients keep talking about a file after they have written it: paramiko's
``put(confirm=True)`` STATs it to compare sizes, WinSCP and ``put -p`` SETSTAT its
times after CLOSE or after renaming ``.filepart`` to the final name, asyncssh's
``put(preserve=True)`` sets times and permissions. Over a real network those
requests arrive tens of milliseconds later, when the broker may already have
moved the upload to its archive. The client must not see "no such file" for a
file it has just written successfully, so STAT answers from this memory (size
and times as uploaded, times as the client last set them) and SETSTAT is
accepted and remembered.

An entry lives while the file is still in the inbox and for ``grace`` seconds
after it was first found gone (the acknowledgement is written when the broker
takes the file, so a client that polls for its ack has that long to finish its
own sequence). The table is bounded so a client cannot grow it without limit.
"""

from __future__ import annotations

import os
import stat
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import asyncssh

GRACE_SECONDS = 600.0
MAX_ENTRIES = 10_000


@dataclass
class _Entry:
    size: int
    atime: int
    mtime: int
    gone_at: float | None = None


class RecentUploads:
    """Per-service memory of recently uploaded files, keyed by their local path."""

    def __init__(self, grace: float = GRACE_SECONDS, max_entries: int = MAX_ENTRIES) -> None:
        self.grace, self.max_entries = grace, max_entries
        self._entries: OrderedDict[Path, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, local: Path, st: os.stat_result, now: float) -> None:
        """Record an upload at CLOSE (or the target of a RENAME)."""
        self._prune(now)
        self._entries[local] = _Entry(st.st_size, int(st.st_atime), int(st.st_mtime))
        self._entries.move_to_end(local)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def renamed(self, old: Path, new: Path, st: os.stat_result, now: float) -> None:
        """A client renamed an upload (``.filepart`` -> final): the new name is what it
        will ask about; the old name is gone for good."""
        self._entries.pop(old, None)
        self.remember(new, st, now)

    def attrs(self, local: Path, now: float) -> asyncssh.SFTPAttrs | None:
        """The remembered attributes of an upload that is no longer on disk."""
        entry = self._alive(local, now)
        if entry is None:
            return None
        return asyncssh.SFTPAttrs(type=asyncssh.FILEXFER_TYPE_REGULAR, size=entry.size,
                                  permissions=stat.S_IFREG | 0o600,
                                  atime=entry.atime, mtime=entry.mtime)

    def set_times(self, local: Path, atime: int | None, mtime: int | None, now: float) -> bool:
        """SETSTAT on an upload that is gone: remember the times; False if unknown."""
        entry = self._alive(local, now)
        if entry is None:
            return False
        if atime is not None:
            entry.atime = int(atime)
        if mtime is not None:
            entry.mtime = int(mtime)
        return True

    def note_times(self, local: Path, atime: int | None, mtime: int | None) -> None:
        """SETSTAT applied to the file still on disk: remember it too, so STAT answers
        the same once the broker has taken the file (the grace does not start)."""
        entry = self._entries.get(local)
        if entry is not None:
            if atime is not None:
                entry.atime = int(atime)
            if mtime is not None:
                entry.mtime = int(mtime)

    def _alive(self, local: Path, now: float) -> _Entry | None:
        entry = self._entries.get(local)
        if entry is None:
            return None
        if entry.gone_at is None:
            entry.gone_at = now  # asked for because the file is gone: the grace starts
        if now - entry.gone_at > self.grace:
            del self._entries[local]
            return None
        return entry

    def _prune(self, now: float) -> None:
        # Oldest first; stop at the first entry that may still be asked about.
        while self._entries:
            local, entry = next(iter(self._entries.items()))
            if entry.gone_at is not None and now - entry.gone_at > self.grace:
                del self._entries[local]
            elif entry.gone_at is None and not local.exists():
                entry.gone_at = now
                break
            else:
                break
