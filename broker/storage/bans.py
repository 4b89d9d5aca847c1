"""Login bans of the SFTP server, kept in ``var/bans.json`` so operators can see and lift them.

Failed key logins count per (address, organisation): a municipality's IT provider
serving several organisations from one address does not lose all of them because
one organisation's key is wrong. Unknown user names and protocol garbage before
login count per address alone (``org`` None): that is scanning, not a customer.

The file is the source of truth shared by the daemon and ``kela-broker bans``:
every change is a read-modify-write under an flock on ``bans.json.lock``, written
atomically; the daemon re-reads it when its (inode, size, mtime) changes, so a
lift from the command line takes effect at the next connection. Failure counters
are in memory only: a restart forgets half-way counts, never a ban.

Times are Unix seconds (wall clock, since bans outlive the process); every
method takes ``now`` so tests and the server decide the clock.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from broker.storage.files import atomic_write

BANS_FILE = "bans.json"  # under the home's var/: SftpOptions.bans_path, `kela-broker bans`
_MAX_COUNTERS = 10_000  # bounded memory under a scan from many addresses


@dataclass(frozen=True)
class Ban:
    address: str
    org: str | None  # None: the whole address (unknown users, garbage)
    since: float
    until: float
    reason: str

    def until_text(self) -> str:
        return datetime.fromtimestamp(self.until, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def message(self) -> str:
        """What the banned client is told (no internal detail, no other party's data)."""
        who = f"{self.address} as {self.org}" if self.org else self.address
        return (f"{who} is banned until {self.until_text()} ({self.reason}); "
                "ask the broker operator to lift it sooner")


def _decode(raw: object) -> list[Ban]:
    if not isinstance(raw, dict) or not isinstance(raw.get("bans"), list):
        raise ValueError("not a bans file")
    out = []
    for b in raw["bans"]:
        out.append(Ban(address=str(b["address"]), org=b.get("org") or None,
                       since=float(b["since"]), until=float(b["until"]),
                       reason=str(b.get("reason", ""))))
    return out


class BanStore:
    """``bans.json``: read and change it safely from any process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")

    def stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def read(self) -> list[Ban]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        try:
            return _decode(json.loads(text))
        except (ValueError, KeyError, TypeError):
            # A damaged file must not stop logins, nor hide that it is damaged.
            raise ValueError(f"{self.path}: not a valid bans file; remove it to clear "
                             "every ban") from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _write(self, bans: list[Ban]) -> None:
        body = {"version": 1, "bans": [asdict(b) for b in bans]}
        atomic_write(self.path, (json.dumps(body, indent=1) + "\n").encode())

    def add(self, ban: Ban, now: float) -> tuple[list[Ban], tuple[int, int, int] | None]:
        """Add (or extend) a ban; expired ones are dropped. Returns the bans now in
        force and the file's stamp as written (taken under the lock: no change missed)."""
        with self._locked():
            bans = [b for b in self._read_lenient() if b.until > now
                    and (b.address, b.org) != (ban.address, ban.org)]
            bans.append(ban)
            bans = sorted(bans, key=lambda b: b.since)[-MAX_STORED_BANS:]
            self._write(bans)
            return bans, self.stamp()

    def lift(self, address: str, org: str | None, now: float) -> list[Ban]:
        """Remove the bans of ``address`` (only the one for ``org`` when given).
        Returns the bans lifted (those still in force)."""
        with self._locked():
            stored = self.read()
            scope = ban_scope(address)
            lifted = [b for b in stored if b.until > now
                      and b.address in (address, scope) and (org is None or b.org == org)]
            keep = [b for b in stored if b.until > now and b not in lifted]
            if keep != stored:
                self._write(keep)
            return lifted

    def _read_lenient(self) -> list[Ban]:
        try:
            return self.read()
        except ValueError:
            return []  # the daemon replaces a damaged file rather than never banning


# Bans kept on file at most: a flood of new addresses (an IPv6 /64 has 2**64) must not
# grow the file, and its rewrite on every new ban, without bound. Beyond, the oldest go.
MAX_STORED_BANS = 2000
# Protocol errors before login (scanners, health probes of a load balancer) ban an
# address only at this multiple of the failed-login threshold: a provider's NAT address
# carries many organisations' logins and must not be locked out by a probe.
GARBAGE_FACTOR = 4


def ban_scope(address: str) -> str:
    """What a ban covers: the address, or its whole /64 for IPv6 (one host's share)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # ::ffff:10.0.0.1 is 10.0.0.1
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class BanList:
    """The server's view: counts failures, starts bans, answers "is this one banned?"."""

    def __init__(self, failures: int, window: float, ban_seconds: float,
                 path: Path | None = None) -> None:
        self._failures = failures
        self._window = window
        self._ban_seconds = ban_seconds
        self._store = BanStore(path) if path is not None else None
        self._recent: dict[tuple[str, str | None], deque[float]] = {}
        self._bans: dict[tuple[str, str | None], Ban] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._lock = threading.Lock()
        self._refresh()

    def banned(self, address: str, org: str | None, now: float) -> Ban | None:
        """The ban that applies to ``address`` (as ``org``, when known), if any."""
        address = ban_scope(address)
        self._refresh()
        with self._lock:
            for key in ((address, None), (address, org)) if org else ((address, None),):
                ban = self._bans.get(key)
                if ban is not None and ban.until > now:
                    return ban
        return None

    def record_failure(self, address: str, org: str | None, now: float,
                       garbage: bool = False) -> Ban | None:
        """Count one failed login (``org`` None: an unknown user), or with ``garbage`` a
        protocol error before login. Returns the ban this failure starts, if any."""
        if self._failures <= 0:
            return None
        address = ban_scope(address)
        key = (address, "\0garbage" if garbage else org)  # counted apart, never a ban key
        limit = self._failures * (GARBAGE_FACTOR if garbage else 1)
        with self._lock:
            recent = self._recent.setdefault(key, deque())
            recent.append(now)
            while recent and recent[0] <= now - self._window:
                recent.popleft()
            if len(recent) < limit:
                self._prune(now)
                return None
            del self._recent[key]
            scope = ("connections that broke the SSH protocol before login" if garbage
                     else f"failed logins as {org}" if org else "failed logins")
            ban = Ban(address, org, now, now + self._ban_seconds,
                      f"{limit} {scope} within {self._window:g}s")
            self._bans[(address, org)] = ban
        if self._store is not None:
            try:
                bans, stamp = self._store.add(ban, now)
            except OSError:
                return ban  # still banned in memory; the caller logs the ban itself
            with self._lock:
                self._bans = {(b.address, b.org): b for b in bans}
                self._stamp = stamp
        return ban

    def record_success(self, address: str, org: str) -> None:
        """A good login forgets that address's earlier failures for that organisation."""
        with self._lock:
            self._recent.pop((ban_scope(address), org), None)

    def active(self, now: float) -> list[Ban]:
        self._refresh()
        with self._lock:
            return sorted((b for b in self._bans.values() if b.until > now),
                          key=lambda b: (b.address, b.org or ""))

    def _refresh(self) -> None:
        # One stat per check: the operator's `bans lift` is seen at the next connection.
        if self._store is None:
            return
        stamp = self._store.stamp()
        if stamp == self._stamp:
            return
        try:
            bans = self._store.read()
        except (OSError, ValueError):
            return  # keep what we know; `bans list` reports the damaged file
        with self._lock:
            self._bans = {(b.address, b.org): b for b in bans}
            self._stamp = stamp

    def _prune(self, now: float) -> None:
        if len(self._recent) > _MAX_COUNTERS:
            for key in [k for k, d in self._recent.items() if d[-1] <= now - self._window]:
                del self._recent[key]
