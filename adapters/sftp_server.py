"""The SFTP server built into the broker (asyncssh).

An organisation logs in with its id as user name and one of the keys in
``<keys_dir>/<org>/authorized_keys``; it sees ``/from-kela/`` (its outbox) and
``/to-kela/`` (its inbox), nothing else (see ``sftp_fs`` and ``sftp_paths``).
Only SFTP and SCP (legacy ``scp -O``, served by the same jailed server object, so the
same paths, limits and audit apply): no shell, other exec, port/agent/X11 forwarding,
no passwords.

An upload is complete when its client closes it (``on_upload_closed``); one cut
off by a lost connection is reported by ``on_upload_cut`` and stays marked
incomplete on disk until uploaded again (``sftp_finish``, ``broker.storage.incomplete``).
Resource caps (unauthenticated connections, sessions, handles, upload quota)
keep any client from exhausting the daemon's descriptors (``sftp_limits``).

Threading: everything runs on the event loop that called ``start``; the
callbacks ``on_event``, ``on_upload_closed`` and ``on_upload_cut`` are called on
that loop and must not block for long (``on_event`` may return a Future that the
reply waits for, see ``sftp_hooks``). ``is_writing`` and ``upload_incomplete``
may be called from any thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from adapters.asyncssh_tuning import quiet_debug_logging, withdraw_hardlink
from adapters.sftp_connection import Connection
from adapters.sftp_fs import JailedSftp
from adapters.sftp_hooks import Hooks, WritingSet
from adapters.sftp_keys import KeyFiles
from adapters.sftp_limits import (
    LISTEN_BACKLOG,
    MAX_SFTP_CHANNELS,
    ConnectionGate,
    HandlePool,
    SessionHandles,
    UploadQuota,
    check_descriptor_budget,
)
from adapters.sftp_meta import SessionContext
from adapters.sftp_paths import Jail
from adapters.sftp_recent import RecentUploads
from adapters.ssh_policy import (
    SIGNATURE_ALGS,
    algorithm_profile,
    fingerprint,
    load_or_create_host_key,
)
from broker.config.settings import Config
from broker.storage.audit import AuditEvent
from broker.storage.bans import BANS_FILE, BanList
from broker.storage.incomplete import upload_incomplete

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class SftpOptions:
    host: str
    port: int
    host_key_path: Path
    keys_dir: Path
    outbox_dir: Path
    inbox_dir: Path
    retain_dir: Path
    organisations: frozenset[str]
    idle_timeout: float = 1800
    login_grace: float = 120
    max_sessions_per_org: int = 10
    max_upload_bytes: int = 512 * 1024**2
    ban_after_failures: int = 5
    ban_window: float = 600
    ban_seconds: float = 900
    algorithms: str = "modern"  # [sftp] algorithms: "modern" | "compatible"
    bans_path: Path | None = None  # var/bans.json, shared with `kela-broker bans`
    # Resource limits (see sftp_limits): defaults as in broker.config.settings.SftpSettings.
    max_unauthenticated: int = 100
    max_unauthenticated_per_address: int = 30
    max_sessions_total: int = 1000
    max_handles_per_session: int = 64
    upload_quota_bytes: int = 2048 * 1024**2  # waiting in one organisation's /to-kela/
    # Markers of incomplete uploads (broker.storage.incomplete); None: <retain_dir>/../incomplete.
    incomplete_dir: Path | None = None

    @property
    def incomplete_root(self) -> Path:
        return self.incomplete_dir or self.retain_dir.parent / "incomplete"

    @classmethod
    def from_config(cls, cfg: Config, host: str, port: int,
                    incomplete_dir: Path) -> SftpOptions:
        """The server's options from the home's config ([sftp] and its folders)."""
        s = cfg.sftp
        return cls(
            host=host, port=port, host_key_path=cfg.var / "ssh_host_ed25519_key",
            keys_dir=cfg.keys_dir, outbox_dir=cfg.outbox, inbox_dir=cfg.inbox,
            retain_dir=cfg.var / "retained", organisations=frozenset(cfg.by_id),
            idle_timeout=s.idle_timeout, login_grace=s.login_grace,
            max_sessions_per_org=s.max_sessions_per_org, max_upload_bytes=s.max_upload_bytes,
            ban_after_failures=s.ban_after_failures, ban_window=s.ban_window,
            ban_seconds=s.ban_seconds, algorithms=s.algorithms,
            bans_path=cfg.var / BANS_FILE, max_unauthenticated=s.max_unauthenticated,
            max_unauthenticated_per_address=s.max_unauthenticated_per_address,
            max_sessions_total=s.max_sessions_total,
            max_handles_per_session=s.max_handles_per_session,
            upload_quota_bytes=s.upload_quota_bytes, incomplete_dir=incomplete_dir)


class SftpService:
    """The embedded SFTP server; start it on an event loop, stop it on the same."""

    def __init__(
        self,
        options: SftpOptions,
        on_event: Callable[[AuditEvent], object],
        on_upload_closed: Callable[[str, Path], None] | None = None,
        on_upload_cut: Callable[[str, Path, int], None] | None = None,
    ) -> None:
        self.options = options
        self.hooks = Hooks(on_event, on_upload_closed, on_upload_cut)
        self.organisations = options.organisations
        self.keys = KeyFiles(options.keys_dir)
        self.bans = BanList(options.ban_after_failures, options.ban_window, options.ban_seconds,
                            options.bans_path)
        self.algorithms = algorithm_profile(options.algorithms)
        self.gate: ConnectionGate[Connection] = ConnectionGate(
            options.max_unauthenticated, options.max_unauthenticated_per_address
        )
        self.quota = UploadQuota(options.upload_quota_bytes, options.inbox_dir)
        self.handle_pool = HandlePool(0)  # sized by start() from the descriptor limit
        self._last_refusal_log = float("-inf")
        self.connections: set[Connection] = set()
        self._sessions: Counter[str] = Counter()
        self._writing = WritingSet()
        self._recent = RecentUploads()
        self._host_key = load_or_create_host_key(options.host_key_path)
        self.host_key_fingerprint: str = fingerprint(self._host_key)
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        log.info("sftp: host key %s", self.host_key_fingerprint)

    # -- public interface ------------------------------------------------

    async def start(self) -> int:
        """Listen; returns the bound port (``options.port`` may be 0)."""
        self._loop = asyncio.get_running_loop()
        quiet_debug_logging()
        withdraw_hardlink()
        budget = check_descriptor_budget(self.options)  # DescriptorBudgetError if no fit
        self.handle_pool.total = budget.handle_pool
        self._make_dirs(self.organisations)
        self._acceptor = await asyncssh.listen(
            self.options.host,
            self.options.port,
            server_factory=lambda: Connection(self),
            server_host_keys=[self._host_key],
            server_version="KelaBroker",
            kex_algs=list(self.algorithms.kex),
            encryption_algs=list(self.algorithms.encryption),
            mac_algs=list(self.algorithms.mac),
            compression_algs=["none"],
            signature_algs=list(SIGNATURE_ALGS),
            sftp_factory=self._make_sftp,
            allow_scp=True,  # legacy `scp -O`: served by the same jailed server object
            allow_pty=False,
            agent_forwarding=False,
            x11_forwarding=False,
            password_auth=False,
            kbdint_auth=False,
            host_based_auth=False,
            gss_host=None,
            login_timeout=self.options.login_grace,
            backlog=LISTEN_BACKLOG,  # an accept burst must fit the descriptor reserve
        )
        port: int = self._acceptor.get_port()
        log.info("sftp: listening on %s:%d", self.options.host, port)
        return port

    async def stop(self) -> None:
        """Stop listening and close every session."""
        if self._acceptor is not None:
            self._acceptor.close()
            for conn in list(self.connections):
                conn.close("server stopping")
            await self._acceptor.wait_closed()
            self._acceptor = None

    def update_organisations(self, organisations: frozenset[str]) -> None:
        """Config reload: new organisations can log in, removed ones are disconnected."""
        self.organisations = organisations
        self._make_dirs(organisations)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._drop_removed)

    def is_writing(self, path: Path) -> bool:
        """True while an SFTP client holds ``path`` (in an inbox) open for writing."""
        return self._key(path) in self._writing

    def upload_incomplete(self, org: str, path: Path) -> bool:
        """True while ``path`` in ``org``'s inbox is open for writing or is a fragment
        left by a lost connection (see broker.storage.incomplete; safe from any thread)."""
        return self.is_writing(path) or upload_incomplete(self.options.incomplete_root, org, path)

    # -- used by connections and sessions --------------------------------

    def emit(self, event: AuditEvent) -> None:
        """Record an event without waiting (logins, logouts, bans)."""
        self.hooks.emit(event)

    def refused(self, address: str, reason: str) -> None:
        """A connection refused at the gate; logged at most once a minute (a flood
        must not flood the log too)."""
        now = asyncio.get_running_loop().time()
        if now - self._last_refusal_log >= 60:
            self._last_refusal_log = now
            log.warning("sftp: refusing connections: %s (latest from %s; %d refused so far)",
                        reason, address, self.gate.refused)

    def login_failed(self, username: str, address: str) -> None:
        # Per (address, organisation): one organisation's wrong key at an IT provider
        # serving several does not lock out the others. Unknown users: per address.
        org = username if username in self.organisations else None
        self.emit(AuditEvent("login_failed", org, address, detail=f"user {username[:100]!r}"))
        self._count_failure(address, org)

    def preauth_garbage(self, address: str, exc: Exception) -> None:
        """A client broke the protocol before logging in (scanners, fuzzers)."""
        self.emit(AuditEvent("preauth_error", None, address, detail=type(exc).__name__))
        self._count_failure(address, None, garbage=True)

    def _count_failure(self, address: str, org: str | None, garbage: bool = False) -> None:
        ban = self.bans.record_failure(address, org, time.time(), garbage=garbage)
        if ban is not None:
            log.warning("sftp: banning %s%s until %s", address, f" as {org}" if org else "",
                        ban.until_text())
            self.emit(AuditEvent("ban", org, address,
                                 detail=f"{ban.reason}; banned until {ban.until_text()}"))

    def session_started(self, org: str) -> str | None:
        """None when ``org`` may have one more session, else why not (for the client)."""
        if self._sessions[org] >= self.options.max_sessions_per_org:
            return (f"too many concurrent sessions for {org} "
                    f"(limit {self.options.max_sessions_per_org})")
        if sum(self._sessions.values()) >= self.options.max_sessions_total:
            return "too many concurrent sessions on this server, try again later"
        self._sessions[org] += 1
        return None

    def session_ended(self, org: str) -> None:
        self._sessions[org] -= 1
        if self._sessions[org] <= 0:
            del self._sessions[org]

    # -- internals -------------------------------------------------------

    def _key(self, path: Path) -> Path:
        path = Path(path)
        return path.parent.resolve() / path.name

    def _make_dirs(self, organisations: frozenset[str]) -> None:
        for org in organisations:
            for d in (
                self.options.outbox_dir / org,
                self.options.outbox_dir / org / "acks",
                self.options.inbox_dir / org,
            ):
                try:
                    d.mkdir(parents=True, exist_ok=True, mode=0o700)
                except OSError as exc:
                    # One organisation's broken folder (immutable, replaced by a file) must
                    # not keep the server, or anyone else's session, from starting: that
                    # organisation sees the error in its session, health names it.
                    log.error("sftp: cannot create %s: %s", d, exc.strerror)

    def _drop_removed(self) -> None:
        for conn in list(self.connections):
            if conn.org is not None and conn.org not in self.organisations:
                conn.close("organisation removed from configuration")

    def _make_sftp(self, chan: asyncssh.SSHServerChannel) -> JailedSftp:
        owner = chan.get_connection().get_owner()
        assert isinstance(owner, Connection) and owner.org is not None
        assert owner.handles is not None
        org = owner.org
        handles = owner.handles
        if not handles.open_channel():
            # asyncssh cannot refuse one channel here without ending the connection
            # anyway, so end it with a reason; no client needs this many at once.
            log.warning("sftp: %s from %s opened too many SFTP channels at once", org,
                        owner.address)
            owner.disconnect(f"too many SFTP channels at once (limit {MAX_SFTP_CHANNELS})")
            handles = SessionHandles(HandlePool(0), 0)  # refuses everything meanwhile
            handles.open_channel()
        ctx = SessionContext(
            org=org,
            address=owner.address,
            jail=Jail(
                org,
                self.options.outbox_dir.resolve() / org,
                self.options.inbox_dir.resolve() / org,
            ),
            retain_dir=self.options.retain_dir / org,
            max_upload_bytes=self.options.max_upload_bytes,
            emit=self.emit,
            touch=owner.touch,
            writing_add=lambda p: self._writing.add(self._key(p)),
            writing_remove=lambda p: self._writing.remove(self._key(p)),
            is_writing=self.is_writing,
            upload_closed=self.hooks.upload_closed,
            handles=handles,
            quota=self.quota,
            incomplete_dir=self.options.incomplete_root,
            record=self.hooks.record,
            upload_cut=self.hooks.upload_cut,
            recent=self._recent,
        )
        return JailedSftp(chan, ctx)
