"""Retention: the broker's own copies are kept for a while, then removed.

- ``var/retained/<org>/``: files an organisation deleted from /from-kela/; a client's
  delete moves the file there (the rename sets its ctime), so the period counts from
  the delete, not from the release (``retention_days``);
- ``var/archive/`` and ``var/quarantine/``: inputs taken and inputs refused, counted
  from when they were moved there (``archive_days``, ``quarantine_days``);
- temporary uploads (``*.part``, ``*.partial``, ``*.filepart``, ``*.tmp``, ``.*``) in an
  organisation's /to-kela/ that nobody renamed within ``stale_upload_hours`` are removed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from broker.storage.files import is_hidden_or_partial
from broker.storage.incomplete import purge_incomplete

if TYPE_CHECKING:
    from broker.config.settings import Config


def purge(root: Path, keep: timedelta, now: datetime) -> list[Path]:
    """Remove files under ``root`` retained longer than ``keep``; returns what went."""
    cutoff = (now - keep).timestamp()
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        folder = Path(dirpath)
        for name in filenames:
            path = folder / name
            st = path.lstat()
            if st.st_ctime < cutoff:
                path.unlink()
                removed.append(path)
        if folder != root and not any(folder.iterdir()):
            folder.rmdir()
    return removed


def stale_uploads(inbox: Path, keep: timedelta, now: datetime) -> list[Path]:
    """Remove temporary upload names older than ``keep`` (by mtime) from one /to-kela/."""
    cutoff = (now - keep).timestamp()
    removed: list[Path] = []
    if not inbox.is_dir():
        return removed
    for path in inbox.iterdir():
        if not is_hidden_or_partial(path.name):
            continue
        st = path.lstat()
        if st.st_mtime < cutoff and path.is_file():
            path.unlink()
            removed.append(path)
    return removed


def purge_all(config: Config, now: datetime) -> int:
    """Every retention rule of the home at once; returns how many files went."""
    var = config.var
    n = len(purge(var / "retained", timedelta(days=config.retention_days), now))
    n += len(purge(var / "archive", timedelta(days=config.archive_days), now))
    n += len(purge(var / "quarantine", timedelta(days=config.quarantine_days), now))
    for org in config.organisations:
        n += len(stale_uploads(config.inbox / org.id,
                               timedelta(hours=config.stale_upload_hours), now))
    return n


def purge_everything(config: Config, now: datetime, incomplete: Path,
                     is_writing: Callable[[Path], bool]) -> int:
    """The daemon's hourly purge: every retention rule, and the fragments of cut uploads
    nobody resumed (``incomplete``: their markers; a file an SFTP client is still
    writing is left alone)."""
    fragments = purge_incomplete(incomplete, config.inbox,
                                 config.stale_upload_hours * 3600, now.timestamp(), is_writing)
    return purge_all(config, now) + len(fragments)
