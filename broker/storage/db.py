"""The engine (SQLite embedded, or PostgreSQL by URL) and the two MetaData objects the
table modules register on: ``metadata`` (the state of the flow) and ``audit_metadata``
(the audit trail). Both live in one database, so one backup holds all.

``open_engine`` only opens; ``broker.storage.state_db.make_engine`` (which imports every
table module, so nothing here has to) opens and brings the schema to the code's revision.

Writers, on each engine:
- SQLite (WAL): write transactions take the one write lock when they begin (``BEGIN
  IMMEDIATE``, through :func:`writer`). A deferred transaction that reads first and
  writes later fails at once with "database is locked" when another writer committed in
  between, which is how two release passes could race. Readers never block.
- PostgreSQL (READ COMMITTED): writers run side by side. What must not interleave says
  so itself: claims lock their rows (``FOR UPDATE SKIP LOCKED``), counters are rows
  updated in place, and the few read-decide-write steps that span many rows (the audit
  chain's head, a response's decisions) take a named transaction lock
  (:func:`serialize`), which SQLite's write lock already is.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from sqlalchemy import (
    BigInteger,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    any_,
    bindparam,
    create_engine,
    event,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import ColumnElement

from broker.config.types import sqlite_path, sqlite_url
from broker.storage.db_errors import is_busy

# Two schemas in one database (one backup holds both): the state of the flow, and
# the audit trail, which only ever grows and is verified on its own.
metadata = MetaData()
audit_metadata = MetaData()

# A size in bytes: files reach gigabytes (max_file_mb = 4096), past a 32-bit integer on
# PostgreSQL. SQLite's INTEGER is 64-bit already, so its schema stays as it was.
ByteSize = BigInteger().with_variant(Integer(), "sqlite")

_BEGIN_OPTION = "sqlite_begin"
T = TypeVar("T")
S = TypeVar("S")

# Values in one IN list: well under SQLite's cap on bound parameters.
IN_CHUNK = 500


def in_chunks(values: Sequence[T]) -> Iterator[Sequence[T]]:
    """``values`` in slices of at most :data:`IN_CHUNK`: one IN list each."""
    for n in range(0, len(values), IN_CHUNK):
        yield values[n:n + IN_CHUNK]


def one_of(column: ColumnElement[Any], name: str, dialect: str) -> ColumnElement[bool]:
    """``column`` is one of the list bound as ``name``: one array parameter on PostgreSQL
    (``= ANY(...)``), an expanding IN list elsewhere. Lists of hundreds of ids each
    rendered as their own bind cost more than the query on PostgreSQL."""
    if dialect == "postgresql":
        # An array of unbounded text for strings: a cast to varchar(n)[] would cut a
        # longer value to n characters and compare the cut one.
        element = Text() if isinstance(column.type, String) else column.type
        return column == any_(bindparam(name, type_=postgresql.ARRAY(element)))
    return column.in_(bindparam(name, expanding=True))


class PerDialect(Generic[S]):
    """A statement built once per dialect by ``build(dialect name)`` (for :func:`one_of`),
    then reused: the hot statements of ingest and release."""

    def __init__(self, build: Callable[[str], S]) -> None:
        self._build = build
        self._made: dict[str, S] = {}

    def __call__(self, bind: Engine | Connection) -> S:
        name = bind.dialect.name
        stmt = self._made.get(name)
        if stmt is None:
            stmt = self._made[name] = self._build(name)
        return stmt


def is_sqlite(bind: Engine | Connection) -> bool:
    return bind.dialect.name == "sqlite"


def writer(engine: Engine) -> Engine:
    """The same engine (same pool) for write transactions: on SQLite they take the
    write lock at BEGIN; on PostgreSQL they are plain READ COMMITTED transactions."""
    if engine.dialect.name == "sqlite":
        return engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
    return engine


def serialize(conn: Connection, name: str) -> None:
    """Hold the named lock until this transaction ends: two transactions that read,
    decide and write the same ``name`` run one after the other. On SQLite a writer
    already holds the database's one write lock; on PostgreSQL it is a transaction-level
    advisory lock."""
    if conn.dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


def _upsertable(conn: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT with the connection's dialect's ON CONFLICT clauses."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def insert_ignoring(conn: Connection, table: Table) -> Insert:
    """``INSERT ... ON CONFLICT DO NOTHING`` in the connection's dialect."""
    return _upsertable(conn, table).on_conflict_do_nothing()


def upsert_adding(conn: Connection, table: Table, keys: list[str], add: dict[str, int],
                  assign: dict[str, Any]) -> Insert:
    """``INSERT ... ON CONFLICT (keys) DO UPDATE``: an existing row gets ``add`` added to
    its columns and ``assign`` set; one statement, so two writers count twice."""
    changes: dict[str, Any] = {name: table.c[name] + n for name, n in add.items()}
    return _upsertable(conn, table).on_conflict_do_update(index_elements=keys,
                                                          set_={**changes, **assign})


def _use_wal(cur: Any, give_up_after: float = 10.0) -> None:
    """Put the database in WAL mode (it stays so). Two connections switching a new file
    at the same moment (the daemon and a command starting together) make SQLite refuse
    one at once, busy handler or not: that one looks again, and finds it done."""
    deadline = time.monotonic() + give_up_after
    while cur.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        try:
            cur.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


# libpq's defaults wait on the operating system: a server behind a dead route takes about
# two minutes to refuse a connection, and a connection cut without a word (a failover, a
# firewall's timeout) is noticed after two hours. A daemon must know within a minute.
SERVER_TIMEOUTS: dict[str, int] = {"connect_timeout": 10, "keepalives": 1,
                                   "keepalives_idle": 30, "keepalives_interval": 10,
                                   "keepalives_count": 3}


def server_timeouts(url: str) -> dict[str, int]:
    """The timeouts a server connection gets, unless the URL sets its own."""
    given = make_url(url).query
    return {k: v for k, v in SERVER_TIMEOUTS.items() if k not in given}


def open_engine(url: str | Path) -> Engine:
    """Open the database at ``url`` (a Path is a SQLite file, made if missing)."""
    if isinstance(url, Path):
        url = sqlite_url(url)
    path = sqlite_path(url)
    if path is None:
        # pool_pre_ping: a daemon outlives server restarts; a dropped connection in the
        # pool is replaced instead of failing the next pass.
        return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10,
                             hide_parameters=True, connect_args=server_timeouts(url))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # hide_parameters: an error's text never carries the statement's values (payloads
    # with identity codes) into a log line or a traceback.
    engine = create_engine(url, hide_parameters=True)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        # pysqlite's own implicit BEGIN is off: the "begin" hook below says which kind.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=10000")
        _use_wal(cur)
        cur.execute("PRAGMA synchronous=FULL")  # a committed row survives power loss
        cur.execute("PRAGMA foreign_keys=ON")
        # 64 MiB of page cache (default 2 MiB): a release after a big batch updates rows
        # all over the assignments table and its indexes.
        cur.execute("PRAGMA cache_size=-65536")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        mode = conn.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine
