"""One client connection of the SFTP server: the gate before login, authentication,
bans, the session limit and the idle timer (asyncssh's ``SSHServer`` callbacks)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import asyncssh

from adapters.asyncssh_tuning import drop_ignore_packets
from adapters.sftp_limits import SessionHandles
from broker.storage.audit import AuditEvent
from broker.storage.bans import Ban

if TYPE_CHECKING:
    from adapters.sftp_server import SftpService

log = logging.getLogger("adapters.sftp_server")

# Seconds a banned address may take to reach its first auth request (where it is told).
BANNED_GRACE = 10.0
# Failed key offers tolerated per connection before it is dropped (OpenSSH: 6).
MAX_AUTH_TRIES = 6
# Connection errors before login that count towards a ban of the address: protocol
# violations, not a client that merely could not agree on algorithms or hung up.
_GARBAGE = (asyncssh.ProtocolError, asyncssh.ProtocolNotSupported, asyncssh.MACError,
            asyncssh.IllegalUserName)



class Connection(asyncssh.SSHServer):
    """One client connection: authentication, session limit, idle timer."""

    def __init__(self, service: SftpService) -> None:
        self._service = service
        self._conn: asyncssh.SSHServerConnection | None = None
        self.address = "?"
        self.username: str | None = None
        self.org: str | None = None  # set once authenticated and admitted
        self._failed_tries = 0
        self._last_activity = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._close_reason: str | None = None
        self._banned_at_connect: asyncio.TimerHandle | None = None
        self._gated = False  # counted by the service's ConnectionGate until authenticated
        self._login_error = False  # the server, not the client, failed the login
        self._blameless = False  # the server ended it: not a failed login of the client
        self.handles: SessionHandles | None = None

    # -- lifecycle -------------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        drop_ignore_packets(conn)  # see asyncssh_tuning: measured cost, no benefit here
        peer = conn.get_extra_info("peername")
        self.address = str(peer[0]) if peer else "?"
        refused, evicted = self._service.gate.admit(self.address, self)
        if refused is not None:
            # Before key exchange: the socket is all it costs, and only briefly.
            self._service.refused(self.address, refused)
            self._close_reason = refused
            conn.abort()
            return
        self._gated = True
        self._service.connections.add(self)
        if evicted is not None:
            self._service.refused(evicted.address, "too many unauthenticated connections")
            evicted.evict()
        ban = self._service.bans.banned(self.address, None, time.time())
        if ban is not None:
            # Told at its first auth request (begin_auth), after the key exchange, when
            # the client is waiting to read: a disconnect right after our version line
            # races the client's own KEXINIT, and it reports a broken pipe instead of
            # the reason. One that never gets that far is closed after a short grace.
            self._banned_at_connect = asyncio.get_running_loop().call_later(
                BANNED_GRACE, self._refuse_banned, ban)

    def _refuse_banned(self, ban: Ban) -> None:
        if self._close_reason == "banned":
            return
        log.warning("sftp: refused %s: banned until %s", self.address, ban.until_text())
        self._close_reason = "banned"
        conn = self._conn
        assert conn is not None
        asyncio.get_running_loop().call_soon(
            conn.disconnect, asyncssh.DISC_HOST_NOT_ALLOWED_TO_CONNECT, ban.message())

    def evict(self) -> None:
        self._gated = False  # the gate let go of it already
        self._blameless = True
        self._close_reason = "too many unauthenticated connections"
        if self._conn is not None:
            self._conn.abort()

    def _leave_gate(self) -> None:
        if self._gated:
            self._gated = False
            self._service.gate.leave(self.address, self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._leave_gate()
        self._service.connections.discard(self)
        if self._banned_at_connect is not None:
            self._banned_at_connect.cancel()
            self._close_reason = self._close_reason or "banned"  # not a new failure
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self.org is not None:
            self._service.session_ended(self.org)
            detail = self._close_reason or (str(exc) if exc else None)
            self._service.emit(AuditEvent("logout", self.org, self.address, detail=detail))
        elif (self._close_reason in ("too many sessions", "banned") or self._login_error
              or self._blameless):
            pass  # the server ended it: not a failed login of the client
        elif self.username is not None:
            self._service.login_failed(self.username, self.address)
        elif isinstance(exc, _GARBAGE):
            self._service.preauth_garbage(self.address, exc)

    def close(self, reason: str) -> None:
        self._close_reason = reason
        if self._conn is not None:
            self._conn.close()

    def disconnect(self, reason: str) -> None:
        self._close_reason = reason
        if self._conn is not None:
            self._conn.disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS, reason)

    # -- authentication --------------------------------------------------

    def begin_auth(self, username: str) -> bool:
        self.username = username
        org = username if username in self._service.organisations else None
        ban = self._service.bans.banned(self.address, org, time.time())
        if ban is not None:
            self._refuse_banned(ban)
        return True  # authentication is always required

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        if self._close_reason == "banned":
            return False  # the disconnect is on its way; even the right key gets nothing
        ok = False
        if username in self._service.organisations:
            lookup = self._service.keys.lookup(username)
            if lookup.error is not None:
                # The operator's fault (or EMFILE): no failure counted, no ban.
                if not self._login_error:
                    self._login_error = True
                    log.error("sftp: login of %s refused: %s", username, lookup.error)
                    self._service.emit(
                        AuditEvent("login_error", username, self.address, detail=lookup.error)
                    )
                return False
            keys = lookup.keys
            if keys is not None and self._conn is not None:
                peer = self._conn.get_extra_info("peername")
                # from="..." options in authorized_keys are honoured; others ignored.
                ok = keys.validate(key, self.address, str(peer[0]) if peer else "") is not None
        if not ok:
            self._failed_tries += 1
            if self._failed_tries > MAX_AUTH_TRIES and self._conn is not None:
                self._conn.disconnect(
                    asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, "too many authentication failures"
                )
        return ok

    def auth_completed(self) -> None:
        assert self.username is not None and self._conn is not None
        self._leave_gate()
        org = self.username
        refused = self._service.session_started(org)
        if refused is not None:
            self._close_reason = "too many sessions"
            self._service.emit(AuditEvent("session_refused", org, self.address, detail=refused))
            self._conn.disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS, refused)
            return
        self.org = org
        self._service.bans.record_success(self.address, org)
        self.handles = SessionHandles(
            self._service.handle_pool, self._service.options.max_handles_per_session
        )
        self._service.emit(AuditEvent("login", org, self.address))
        self.touch()
        self._arm_idle_timer(self._service.options.idle_timeout)

    # -- idle timeout ----------------------------------------------------

    def touch(self) -> None:
        self._last_activity = asyncio.get_running_loop().time()

    def _arm_idle_timer(self, delay: float) -> None:
        if delay > 0:
            self._idle_timer = asyncio.get_running_loop().call_later(delay, self._check_idle)

    def _check_idle(self) -> None:
        # One timer per connection, re-armed lazily: no timer churn per request.
        timeout = self._service.options.idle_timeout
        idle = asyncio.get_running_loop().time() - self._last_activity
        if idle >= timeout:
            log.info("sftp: closing idle session of %s from %s", self.org, self.address)
            self.close("idle timeout")
        else:
            self._arm_idle_timer(timeout - idle)
