"""Calls out of the SFTP server, each failure logged (masked) and contained.

``Hooks.emit`` and ``Hooks.record`` hand audit events to the daemon's
``on_event``, which may return nothing, a ``concurrent.futures.Future`` (an audit
writer thread committing in groups) or an awaitable. ``record`` waits for it, so
the reply to a CLOSE, RENAME or REMOVE goes out only once the act is on record;
``emit`` (logins, logouts, bans) does not wait. ``upload_closed`` and
``upload_cut`` report uploads to the daemon.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import threading
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import asyncssh

from adapters.sftp_base import INTERNAL_ERROR
from broker.domain.pic import mask_text
from broker.storage.audit import AuditEvent

log = logging.getLogger(__name__)


class Hooks:
    def __init__(
        self,
        on_event: Callable[[AuditEvent], object],
        on_upload_closed: Callable[[str, Path], None] | None,
        on_upload_cut: Callable[[str, Path, int], None] | None,
    ) -> None:
        self._on_event = on_event
        self._on_upload_closed = on_upload_closed
        self._on_upload_cut = on_upload_cut

    def emit(self, event: AuditEvent) -> None:
        """Hand an event on without waiting for it to be on record."""
        try:
            result = self._on_event(event)
        except Exception:
            Hooks._audit_failed(event)
            return
        if isinstance(result, concurrent.futures.Future | asyncio.Future):
            result.add_done_callback(lambda f: self._check_done(event, f))
        elif inspect.isawaitable(result):
            asyncio.ensure_future(result).add_done_callback(lambda f: self._check_done(event, f))

    @staticmethod
    def _check_done(event: AuditEvent, done: concurrent.futures.Future[object]
                    | asyncio.Future[object]) -> None:
        exc = None if done.cancelled() else done.exception()
        if exc is not None:
            log.error("sftp: recording audit event %s failed: %s", event.action,
                      mask_text(repr(exc)))

    async def record(self, event: AuditEvent) -> None:
        """Record an event and wait until it is on record: ``on_event`` may return a
        concurrent.futures.Future (an audit writer thread) or an awaitable. The reply
        to the client's request waits for this, so an act the client was told about
        is on record even after kill -9."""
        try:
            result = self._on_event(event)
            if isinstance(result, concurrent.futures.Future):
                await asyncio.wrap_future(result)
            elif inspect.isawaitable(result):
                await result
        except Exception:
            Hooks._audit_failed(event)
            raise asyncssh.SFTPFailure(INTERNAL_ERROR) from None

    @staticmethod
    def _audit_failed(event: AuditEvent) -> None:
        log.error("sftp: recording audit event %s failed\n%s", event.action,
                  mask_text(traceback.format_exc()))

    def upload_closed(self, org: str, path: Path) -> None:
        if self._on_upload_closed is None:
            return
        try:
            self._on_upload_closed(org, path)
        except Exception:
            log.error("sftp: on_upload_closed failed for %s\n%s", path,
                      mask_text(traceback.format_exc()))

    def upload_cut(self, org: str, path: Path, size: int) -> None:
        log.warning("sftp: upload %s of %s cut off after %d bytes; not processed", path.name,
                    org, size)
        if self._on_upload_cut is None:
            return
        try:
            self._on_upload_cut(org, path, size)
        except Exception:
            log.error("sftp: on_upload_cut failed for %s\n%s", path,
                      mask_text(traceback.format_exc()))


class WritingSet:
    """Local paths with an open write handle; read from other threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: Counter[Path] = Counter()

    def add(self, path: Path) -> None:
        with self._lock:
            self._open[path] += 1

    def remove(self, path: Path) -> None:
        with self._lock:
            self._open[path] -= 1
            if self._open[path] <= 0:
                del self._open[path]

    def __contains__(self, path: Path) -> bool:
        with self._lock:
            return path in self._open
