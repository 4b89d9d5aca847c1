"""Resource limits of the SFTP server: descriptors, connections, handles, upload quota.

Every connection costs one descriptor and every open file handle one more, so the
caps below are what keeps a client (or a scan of idle TCP connections) from
exhausting the daemon's descriptors: once the process is out of them, the state
database, the audit log and the inbox rescan fail too, not only the SFTP server.

- ``raise_nofile_limit`` lifts the soft ``RLIMIT_NOFILE`` to the hard limit (the
  usual soft limit of 1024 is far below what 1000 sessions need).
- ``descriptor_budget`` checks the configured caps against that limit. The
  connection caps must fit (else ``DescriptorBudgetError``); the handles may be
  overbooked, because ``HandlePool`` also caps open handles server-wide at what is
  left, so a full pool refuses an OPEN instead of breaking the daemon.
- ``ConnectionGate`` counts unauthenticated connections per address and in total.
- ``UploadQuota`` bounds the bytes waiting in one organisation's inbox.
"""

from __future__ import annotations

import logging
import os
import resource
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from broker.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Descriptors kept for everything that is not an SFTP client: state and audit
# databases, log files, the watcher, metrics and push connections, a directory
# listing or a file being hashed, the listening sockets.
RESERVED_DESCRIPTORS = 256
# The listen backlog. asyncio accepts up to this many sockets in one burst before any
# protocol (and so the connection gate) sees one, so a burst must fit in the reserve
# beside the daemon's own descriptors: half of it. A storm beyond it waits in the
# kernel's queue or retries its SYN, which costs a client a second, not the daemon its
# descriptors.
LISTEN_BACKLOG = RESERVED_DESCRIPTORS // 2
# SFTP channels one connection may have open at once (OpenSSH's MaxSessions: 10).
MAX_SFTP_CHANNELS = 8
# When the hard limit is "unlimited", setrlimit needs a number; Linux's nr_open default.
_UNLIMITED_CAP = 1 << 20


class DescriptorBudgetError(ConfigError):
    """The SFTP connection caps do not fit in the process's descriptor limit."""


class _Caps(Protocol):
    @property
    def max_unauthenticated(self) -> int: ...
    @property
    def max_sessions_total(self) -> int: ...
    @property
    def max_handles_per_session(self) -> int: ...


def nofile_limit() -> int:
    """The current soft RLIMIT_NOFILE."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return _UNLIMITED_CAP if soft == resource.RLIM_INFINITY else soft


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _UNLIMITED_CAP if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:  # e.g. hard above fs.nr_open
            log.warning("sftp: cannot raise the open-file limit to %d: %s", target, exc)
        else:
            log.info("sftp: open-file limit raised from %d to %d", soft, target)
    return nofile_limit()


@dataclass(frozen=True)
class DescriptorBudget:
    limit: int  # soft RLIMIT_NOFILE
    connections: int  # unauthenticated + sessions: one socket each
    handles_wanted: int  # every session with all its handles open

    @property
    def handle_pool(self) -> int:
        """Handles that may be open server-wide without eating the reserve."""
        return max(0, self.limit - RESERVED_DESCRIPTORS - self.connections)

    @property
    def connections_fit(self) -> bool:
        return self.connections + RESERVED_DESCRIPTORS <= self.limit

    @property
    def handles_fit(self) -> bool:
        return self.handles_wanted <= self.handle_pool

    def describe(self) -> str:
        return (f"open-file limit {self.limit}: {RESERVED_DESCRIPTORS} reserved, "
                f"{self.connections} for connections (max_unauthenticated + "
                f"max_sessions_total), {self.handles_wanted} for handles "
                f"(max_sessions_total x max_handles_per_session), {self.handle_pool} left")


def descriptor_budget(caps: _Caps, limit: int | None = None) -> DescriptorBudget:
    """How the caps in ``caps`` (SftpOptions) fit in ``limit`` (default: the soft limit)."""
    return DescriptorBudget(
        limit=nofile_limit() if limit is None else limit,
        connections=caps.max_unauthenticated + caps.max_sessions_total,
        handles_wanted=caps.max_sessions_total * caps.max_handles_per_session,
    )


def check_descriptor_budget(caps: _Caps, limit: int | None = None) -> DescriptorBudget:
    """Raise ``DescriptorBudgetError`` when the connections cannot fit; warn when the
    handles are overbooked (the server-wide ``HandlePool`` then holds the line)."""
    budget = descriptor_budget(caps, limit)
    if not budget.connections_fit:
        raise DescriptorBudgetError(
            f"the SFTP caps need more descriptors than the process may open ({budget.describe()});"
            " lower max_sessions_total or max_unauthenticated, or raise the hard limit "
            "(LimitNOFILE= in the systemd unit, ulimit -Hn)", key="sftp.max_sessions_total")
    if not budget.handles_fit:
        log.warning("sftp: open handles are capped server-wide at %d (%s)",
                    budget.handle_pool, budget.describe())
    return budget


class HandlePool:
    """Open file handles, per connection and server-wide (each holds a descriptor)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.in_use = 0

    def acquire(self) -> bool:
        if self.in_use >= self.total:
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        self.in_use = max(0, self.in_use - 1)


class SessionHandles:
    """One connection's share of the pool (all its SFTP channels together), and its
    SFTP channels: asyncssh serves one request at a time per channel, so capping
    the channels caps the requests in flight (and the reply buffers) per connection."""

    def __init__(self, pool: HandlePool, limit: int) -> None:
        self._pool = pool
        self.limit = limit
        self.open = 0
        self.channels = 0

    def open_channel(self) -> bool:
        if self.channels >= MAX_SFTP_CHANNELS:
            return False
        self.channels += 1
        return True

    def close_channel(self) -> None:
        self.channels = max(0, self.channels - 1)

    def acquire(self) -> str | None:
        """None when a handle may be opened, else why not (for the client)."""
        if self.open >= self.limit:
            return f"too many open files in this session (limit {self.limit})"
        if not self._pool.acquire():
            return "server busy: too many open files, try again later"
        self.open += 1
        return None

    def release(self) -> None:
        if self.open > 0:
            self.open -= 1
            self._pool.release()


class ConnectionGate(Generic[T]):
    """Unauthenticated connections, per address and in total.

    Runs on the event loop only. A connection is admitted when it arrives and
    leaves the gate when it authenticates or goes away. Beyond the per-address
    cap a new connection is refused before key exchange (the socket is all it
    costs, and only briefly). When the total is full, the newcomer is admitted
    and the oldest waiting connection of the address holding the most is evicted
    instead: idle connections from a few addresses cannot keep an organisation
    out until their login grace expires.
    """

    def __init__(self, total: int, per_address: int) -> None:
        self._total_cap = total
        self._per_address_cap = per_address
        self._by_address: dict[str, dict[T, None]] = {}  # insertion order: oldest first
        self.waiting = 0
        self.refused = 0
        self.evicted = 0

    def admit(self, address: str, conn: T) -> tuple[str | None, T | None]:
        """(None, evicted or None) when admitted, else (why refused, None)."""
        held = self._by_address.get(address, {})
        if self._per_address_cap > 0 and len(held) >= self._per_address_cap:
            self.refused += 1
            return "too many unauthenticated connections from this address", None
        evict = None
        if self._total_cap > 0 and self.waiting >= self._total_cap:
            heaviest = max(self._by_address.values(), key=len)
            evict = next(iter(heaviest))
            self._remove(heaviest, evict)
            self.evicted += 1
        self._by_address.setdefault(address, {})[conn] = None
        self.waiting += 1
        return None, evict

    def leave(self, address: str, conn: T) -> None:
        held = self._by_address.get(address)
        if held is not None and conn in held:
            self._remove(held, conn)

    def _remove(self, held: dict[T, None], conn: T) -> None:
        del held[conn]
        self.waiting -= 1
        if not held:
            for address, other in list(self._by_address.items()):
                if other is held:
                    del self._by_address[address]


def inbox_usage(folder: Path) -> int:
    """Bytes in regular files directly in ``folder`` (0 when it does not exist)."""
    total = 0
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # taken by the daemon while listing
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
    except FileNotFoundError:
        return 0
    return total


class UploadQuota:
    """Bytes waiting (not yet processed) in each organisation's inbox.

    The inbox is listed when an upload opens and whenever a write would go over;
    in between, growth is counted as it is written. Files the daemon has taken
    since the last listing are noticed at the next one, so the tally can only be
    too high for a moment, never too low.
    """

    def __init__(self, limit: int, inbox_dir: Path) -> None:
        self.limit = limit
        self._inbox_dir = inbox_dir
        self._used: dict[str, int] = {}

    def refresh(self, org: str) -> int:
        used = inbox_usage(self._inbox_dir / org)
        self._used[org] = used
        return used

    def grow(self, org: str, nbytes: int) -> bool:
        """Count ``nbytes`` more for ``org``; False (nothing counted) when over quota."""
        if self.limit <= 0 or nbytes <= 0:
            return True
        used = self._used.get(org)
        if used is None or used + nbytes > self.limit:
            used = self.refresh(org)
        if used + nbytes > self.limit:
            return False
        self._used[org] = used + nbytes
        return True
