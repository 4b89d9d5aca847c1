"""The SQLite engine and the two MetaData objects the table modules register on:
``metadata`` (the state of the flow) and ``audit_metadata`` (the audit trail).

``open_engine`` only opens; ``broker.storage.state_db.make_engine`` (which imports every table
module, so nothing here has to) opens and creates the tables.

SQLite in WAL mode: readers (``status``, ``audit show``) never block the daemon,
and a crash leaves the last committed transaction intact.

Write transactions take the write lock when they begin (``BEGIN IMMEDIATE``, through
:func:`writer`): a deferred transaction that reads first and writes later fails at
once with "database is locked" when another writer committed in between (WAL does
not wait for a snapshot that is out of date), which is how two release passes
could race. Read-only work uses the engine itself (deferred, never blocks a writer).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, MetaData, create_engine, event
from sqlalchemy.exc import OperationalError

T = TypeVar("T")

# Two schemas in one database file (one backup holds both): the state of the flow, and
# the audit trail, which only ever grows and is verified on its own.
metadata = MetaData()
audit_metadata = MetaData()

_BEGIN_OPTION = "sqlite_begin"


def writer(engine: Engine) -> Engine:
    """The same engine (same pool) whose transactions begin by taking the write lock."""
    return engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})


def while_locked(work: Callable[[], T], *, give_up_after: float = 600.0) -> T:
    """Run ``work`` (one write transaction), again while the database is locked: an
    ingest holds the write lock for as long as it stores a big batch, which can be longer
    than SQLite's busy timeout. Other errors, and a lock held past ``give_up_after``
    seconds, are raised."""
    delay, deadline = 0.05, time.monotonic() + give_up_after
    while True:
        try:
            return work()
        except OperationalError as exc:  # each try itself waits the busy timeout
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def open_engine(path: Path) -> Engine:
    """Open (creating the file if needed) the SQLite database at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    engine = create_engine(f"sqlite:///{path}", future=True)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        # pysqlite's own implicit BEGIN is off: the "begin" hook below says which kind.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")  # a committed row survives power loss
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        mode = conn.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine
