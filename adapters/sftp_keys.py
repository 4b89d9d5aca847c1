"""Reading ``<keys_dir>/<org>/authorized_keys`` for logins, telling the operator's
faults from the client's.

A missing file means the organisation has no keys: a refused login is the
client's failure and counts towards a ban. A file that cannot be read (EMFILE
under load, EACCES) or parsed is the operator's (or the server's) fault: the
login fails, but nothing is counted against the client's address, and the
server emits ``login_error``. Read failures are not cached (EMFILE passes); a
parse failure is cached until the file changes, like good keys.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import asyncssh


@dataclass(frozen=True)
class KeyLookup:
    keys: asyncssh.SSHAuthorizedKeys | None
    error: str | None = None  # why the file could not be used (operator's side)


@dataclass
class _Entry:
    stamp: tuple[int, int, int]  # (inode, size, mtime_ns)
    lookup: KeyLookup


class KeyFiles:
    """Checked on every authentication attempt by (inode, size, mtime): an operator
    adds or revokes a key by editing the file; no restart, no reload."""

    def __init__(self, keys_dir: Path) -> None:
        self._dir = keys_dir
        self._cache: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def path_of(self, org: str) -> Path:
        return self._dir / org / "authorized_keys"

    def lookup(self, org: str) -> KeyLookup:
        path = self.path_of(org)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._forget(org)
            return KeyLookup(None)
        except OSError as exc:
            self._forget(org)
            return KeyLookup(None, f"authorized_keys cannot be read: {exc.strerror}")
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            entry = self._cache.get(org)
            if entry is not None and entry.stamp == stamp:
                return entry.lookup
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            return KeyLookup(None, f"authorized_keys cannot be read: {exc.strerror}")
        except UnicodeDecodeError:
            lookup = KeyLookup(None, "authorized_keys is not UTF-8 text")
        else:
            if not any(line.strip() and not line.lstrip().startswith("#")
                       for line in text.splitlines()):
                lookup = KeyLookup(None)  # every key removed: no keys, not a broken file
            else:
                try:
                    lookup = KeyLookup(asyncssh.import_authorized_keys(text))
                except (ValueError, asyncssh.KeyImportError) as exc:
                    # asyncssh's message names what is wrong, never key material.
                    lookup = KeyLookup(None, f"authorized_keys cannot be parsed: {exc}")
        with self._lock:
            self._cache[org] = _Entry(stamp, lookup)
        return lookup

    def _forget(self, org: str) -> None:
        with self._lock:
            self._cache.pop(org, None)
