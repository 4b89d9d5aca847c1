"""Retention of files organisations deleted: the broker's own copies, kept for a while.

A client's delete moves the file under ``var/retained/<org>/`` (the rename sets
its ctime), so the retention period counts from the delete, not from the release.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path


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
