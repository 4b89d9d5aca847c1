"""AuditWriter: the daemon's audit events leave the event loop, in group commits.

Downloads, uploads, logins and pushes arrive from many sessions at once. One thread
takes every event queued so far, appends them all in ONE write transaction (one
fsync), anchors the new head, and only then resolves each event's Future. The SFTP
reply awaits that Future (``await asyncio.wrap_future(writer.submit(event))``), so a
client never sees a success whose audit row a kill -9 could still lose, and the event
loop never waits on SQLite.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from broker import logs
from broker.errors import StoreError
from broker.storage.audit import (
    HEAD_FILE,
    LEGACY_FILE,
    AuditEvent,
    append_at,
    audit_table,
    head,
    timestamp,
)
from broker.storage.audit_anchor import Anchor, write_anchor
from broker.storage.audit_legacy import migrate_legacy
from broker.storage.db import in_chunks, serialize, writer
from broker.storage.db_errors import DbFailure, kind_of

log = logs.get("broker.storage.audit")

_Job = tuple[AuditEvent, str, "Future[int]", str]  # event, its time, its waiter, its key


# How long a stopping writer still waits for a locked database before it gives up.
STOP_WAIT_SECONDS = 60.0


class AuditWriter:
    """A writer thread: ``submit(event)`` -> Future of the committed row id."""

    MAX_GROUP = 1000  # bounds one transaction's size under a flood of events

    def __init__(self, engine: Engine, anchor_path: Path | None) -> None:
        self._engine = writer(engine)
        self._anchor = anchor_path
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = False
        self._give_up_at = float("inf")
        self.commits = 0  # group commits made (the bench and tests read it)

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._stopping, self._give_up_at = False, float("inf")
            self._thread = threading.Thread(target=self._run, name="audit-writer",
                                            daemon=True)
            self._thread.start()

    def submit(self, event: AuditEvent, now: datetime | None = None) -> Future[int]:
        """Queue ``event`` (stamped ``now``, default the moment of the call)."""
        future: Future[int] = Future()
        at = timestamp(now or datetime.now(UTC))
        with self._lock:
            if self._thread is None or self._stopping or not self._thread.is_alive():
                raise RuntimeError("audit writer is not running")
            self._queue.put((event, at, future, uuid.uuid4().hex))
        return future

    def stop(self) -> None:
        """Commit everything submitted so far, then end the thread."""
        with self._lock:
            thread, self._stopping = self._thread, True
            # One deadline for everything still queued, not one per group.
            self._give_up_at = time.monotonic() + STOP_WAIT_SECONDS
            if thread is None:
                return
            self._queue.put(None)
        thread.join()
        with self._lock:
            self._thread = None

    def _run(self) -> None:
        done = False
        while not done:
            first = self._queue.get()
            if first is None:
                break
            group = [first]
            while len(group) < self.MAX_GROUP:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    done = True
                    break
                group.append(job)
            try:
                self._commit(group)
            except Exception as exc:  # never die with waiters left hanging
                for _, _, future, _ in group:
                    if not future.done():
                        future.set_exception(exc)
                with contextlib.suppress(Exception):  # not even if logging fails
                    log.error("audit: writer failed", exc_info=exc)

    def _commit(self, group: list[_Job]) -> None:
        pending = [j for j in group if j[2].set_running_or_notify_cancel()]
        if not pending:
            return
        delay, started, warn_at = 0.05, time.monotonic(), 10.0
        unsure = False  # a try whose commit may have happened (the connection dropped)
        while True:
            try:
                with self._engine.begin() as conn:
                    ids = None
                    if unsure:
                        # Under the audit lock (append_at takes it for every other try): a
                        # commit of ours still in flight is done before we look.
                        serialize(conn, "audit")
                        ids = _committed(conn, pending)
                    if ids is None:
                        ids = append_at(conn, [(e, at) for e, at, _, _ in pending],
                                        self._anchor, [key for *_, key in pending])
                    anchor = Anchor(*head(conn))
                break
            except DBAPIError as exc:
                # Busy, not broken: an ingest holds the write lock for as long as it
                # stores a big batch (seconds), or another process chained first. Away,
                # not broken: the server restarts or fails over, and a commit sent as the
                # connection dropped may or may not have happened (the keys tell). A
                # disclosure must never go unrecorded, so wait (the SFTP reply waits too).
                kind = kind_of(exc)
                if kind not in (DbFailure.BUSY, DbFailure.CONFLICT, DbFailure.UNAVAILABLE):
                    self._fail(pending, exc)
                    return
                unsure = unsure or kind is DbFailure.UNAVAILABLE
                waited = time.monotonic() - started  # each try waits the busy timeout too
                if self._stopping and time.monotonic() >= self._give_up_at:
                    self._fail(pending, exc)  # shutting down: do not hang on a lock forever
                    return
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                if waited >= warn_at:
                    warn_at += 30
                    log.warning("audit: the state database cannot take the events; still "
                                "waiting", why=kind.value, seconds=round(waited),
                                events=len(pending))
            except Exception as exc:
                self._fail(pending, exc)
                return
        self.commits += 1
        if self._anchor is not None:
            try:
                write_anchor(self._anchor, anchor)
            except OSError as exc:  # the rows are committed; the anchor lags until next
                log.error("audit: anchoring the head failed", exc_info=exc)
        for (_, _, future, _), row_id in zip(pending, ids, strict=True):
            future.set_result(row_id)

    @staticmethod
    def _fail(pending: list[_Job], exc: Exception) -> None:
        """Every waiter learns it (first: a failing log call must not hide it); the
        thread goes on."""
        for _, _, future, _ in pending:
            if not future.done():
                future.set_exception(exc)
        with contextlib.suppress(Exception):
            log.error("audit: group commit failed", events=len(pending), exc_info=exc)


def _committed(conn: Connection, pending: list[_Job]) -> list[int] | None:
    """The row ids of ``pending`` if an earlier try did commit them (its connection
    dropped before it could say); None if it did not. One transaction: all or none."""
    keys = [key for *_, key in pending]
    found: dict[str, int] = {}
    for chunk in in_chunks(keys):
        found.update((key, row_id) for key, row_id in conn.execute(
            select(audit_table.c.event_key, audit_table.c.id)
            .where(audit_table.c.event_key.in_(chunk))))
    if not found:
        return None
    if len(found) != len(keys):  # cannot be: one transaction commits all its rows or none
        raise StoreError(f"audit: {len(found)} of {len(keys)} events of one commit found")
    return [found[key] for key in keys]


def start_trail(engine: Engine, var: Path, now: datetime) -> AuditWriter:
    """At daemon start: move an old ``var/audit.db`` in, then a running writer anchored
    at ``var/audit.head``. Call before the first release pass (the recovery), so that
    the old rows keep their ids and hashes."""
    migrate_legacy(engine, var / LEGACY_FILE, var / HEAD_FILE, now)
    trail = AuditWriter(engine, var / HEAD_FILE)
    trail.start()
    return trail
