"""Database errors, read once: what kind of failure a driver error is, on either engine.

SQLite says it with an extended result code (``sqlite_errorcode``), PostgreSQL with a
SQLSTATE; neither is read from message text. Callers ask :func:`kind_of` (or use
:func:`retrying`), and :func:`store_error` turns a driver error into the broker's
error tree, so the CLI and health checks speak of the store, not of a driver.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from enum import Enum
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from broker.errors import StoreBusy, StoreConflict, StoreError, StoreUnavailable

T = TypeVar("T")


class DbFailure(Enum):
    BUSY = "busy"  # another writer holds a lock: try again
    CONFLICT = "conflict"  # a unique key, or a serialisation failure: decide again
    UNAVAILABLE = "unavailable"  # no connection to the server
    BROKEN = "broken"  # not a database, corrupt, full disk, anything else


# SQLite primary result codes (the low byte of the extended code).
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
_SQLITE_UNIQUE = (1555, 2067)  # SQLITE_CONSTRAINT_PRIMARYKEY, SQLITE_CONSTRAINT_UNIQUE
# PostgreSQL SQLSTATEs: lock not available, statement timeout; serialization failure,
# deadlock, unique; wrong login, no such database, too many connections (and class 08,
# connection, and 57P0x, the server shutting down).
_PG_BUSY = {"55P03", "57014"}
_PG_CONFLICT = {"40001", "40P01", "23505"}
_PG_UNAVAILABLE = {"28000", "28P01", "3D000", "53300"}


def kind_of(exc: BaseException) -> DbFailure | None:
    """What ``exc`` says about the database; None when it is not a database error."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)
        if code is None:
            return DbFailure.BROKEN
        if code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return DbFailure.BUSY
        if code in _SQLITE_UNIQUE:
            return DbFailure.CONFLICT
        return DbFailure.BROKEN
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate is None and not isinstance(exc, DBAPIError):
        return None
    if sqlstate in _PG_BUSY:
        return DbFailure.BUSY
    if sqlstate in _PG_CONFLICT:
        return DbFailure.CONFLICT
    if sqlstate is None:
        # No SQLSTATE: the driver's own error. A connection refused, closed or dropped
        # is an OperationalError or InterfaceError; anything else (a value the driver
        # cannot send, a NUL in a text) is the statement's, and waiting will not mend it.
        if isinstance(exc, OperationalError | InterfaceError):
            return DbFailure.UNAVAILABLE
        return DbFailure.BROKEN
    if sqlstate in _PG_UNAVAILABLE or sqlstate.startswith(("08", "57P")):
        return DbFailure.UNAVAILABLE
    return DbFailure.BROKEN


def is_busy(exc: BaseException) -> bool:
    return kind_of(exc) is DbFailure.BUSY


def is_conflict(exc: BaseException) -> bool:
    return kind_of(exc) is DbFailure.CONFLICT


def store_error(exc: DBAPIError) -> StoreError:
    """The broker's error for a driver error (its message names no driver internals)."""
    kind = kind_of(exc)
    detail = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
    if kind is DbFailure.BUSY:
        return StoreBusy(f"the state database is busy ({detail})")
    if kind is DbFailure.CONFLICT:
        return StoreConflict(f"a concurrent change won ({detail})")
    if kind is DbFailure.UNAVAILABLE:
        return StoreUnavailable(f"the state database cannot be reached ({detail})")
    return StoreError(f"the state database cannot be used ({detail})")


def describe(exc: BaseException) -> str:
    """What an operator reads of any failure of a read (health, status)."""
    if isinstance(exc, DBAPIError):
        return str(store_error(exc))
    return f"the state database cannot be used ({type(exc).__name__})"


def retrying(work: Callable[[], T], *, when: Callable[[BaseException], bool] = is_busy,
             give_up_after: float = 600.0,
             waiting: Callable[[float], None] | None = None) -> T:
    """Run ``work`` (one whole transaction) again while it fails with an error ``when``
    accepts (by default: the database is busy, as while an ingest holds SQLite's write
    lock for a big batch, longer than its busy timeout). Other errors, and one still
    failing ``give_up_after`` seconds of real time later, are raised. ``waiting(seconds)``
    is told every 30 s of waiting, for a log line."""
    delay, started, tell_at = 0.05, time.monotonic(), 10.0
    while True:
        try:
            return work()
        except DBAPIError as exc:  # each try itself waits the busy timeout
            waited = time.monotonic() - started
            if not when(exc) or waited >= give_up_after:
                raise
            if waiting is not None and waited >= tell_at:
                tell_at += 30.0
                waiting(waited)
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
