"""Moving a home's state to another database: SQLite to PostgreSQL (the step to a server
that outlives one machine), or back.

Every table, the audit trail's too, is copied row for row, values and identifiers as
they are, from one snapshot of the source into a target that must have no tables yet.
The target's schema is made and the rows go in in one transaction, with the row counts
checked against the snapshot's before the commit: a copy that fails anywhere leaves the
target as empty as it was, and the source is only read. Identifiers the database
generates carry on after the highest one copied. Because the audit rows and their
hashes are the same, the home's audit anchor (``var/audit.head``) still holds and
``audit verify`` passes on the copy.

The copy is of one moment: nothing may write the source while it runs (the CLI refuses
while the home's daemon is running).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, Table, func, inspect, select
from sqlalchemy.engine import Connection

from broker.config.types import sqlite_path, sqlite_url
from broker.errors import StoreError
from broker.storage.bulk import Many
from broker.storage.db import audit_metadata, metadata, serialize, writer
from broker.storage.schema import HEAD, make_at_head, revision
from broker.storage.state_db import TABLE_MODULES

# Rows per round trip; blobs (attachments, up to megabytes each) go a few at a time.
BATCH = 2000
BLOB_BATCH = 20


class CopyRefused(StoreError):
    """The copy was not started: the source or the target is not fit for it."""


@dataclass(frozen=True)
class Copied:
    tables: dict[str, int]  # rows per table, in the order copied

    @property
    def rows(self) -> int:
        return sum(self.tables.values())


@dataclass(frozen=True)
class Target:
    url: str  # for the engine: the password as given
    shown: str  # for people: no password, no query (where ?password= may be)
    path: Path | None  # the SQLite file, absolute; None on a server


def target_of(given: str, cwd: Path) -> Target:
    """The target database of ``db copy`` from the command line's URL; CopyRefused (with a
    message that never repeats what was given: it may hold a password) if unusable. A
    relative SQLite path is the shell's (``cwd``), as for any command line argument."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    scheme = given.partition("://")[0]
    if scheme not in ("sqlite", "postgresql", "postgresql+psycopg"):
        raise CopyRefused("the target must be sqlite:///path/to/file.db or "
                          "postgresql://user@host/database (psycopg is the driver)")
    url = given.replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018 -- a port that is not a number fails here
    except (ArgumentError, ValueError):
        raise CopyRefused("the target is not a database URL (user@host:port/database)") from None
    if scheme != "sqlite":
        return Target(url, parsed.set(query={}).render_as_string(hide_password=True), None)
    path = sqlite_path(url)
    if path is None:
        raise CopyRefused("the target must be a SQLite file, not an in-memory database")
    path = Path(os.path.abspath(cwd / path))
    return Target(sqlite_url(path), sqlite_url(path), path)


def tables_in_order() -> list[Table]:
    """Every table of the state database, each after the tables it refers to."""
    assert TABLE_MODULES  # imported: every table is on the metadata
    return [*metadata.sorted_tables, *audit_metadata.sorted_tables]


def copy_database(source: Engine, target: Engine,
                  on_table: Callable[[str, int], None] | None = None) -> Copied:
    """Copy every row of ``source`` into the empty database ``target``; see the module doc.
    ``on_table(name, rows)`` is told as each table is done."""
    with source.connect() as src:
        if src.dialect.name == "postgresql":
            # One snapshot for every table's read (SQLite's read transaction is one too).
            src = src.execution_options(isolation_level="REPEATABLE READ",
                                        postgresql_readonly=True)
        with src.begin():
            found = revision(src)
            if found != HEAD:
                raise CopyRefused(
                    f"the source database is at schema revision {found or 'none'}, not this "
                    f"release's {HEAD}: run 'kela-broker db upgrade' on it first")
            with writer(target).begin() as dst:
                serialize(dst, "schema")  # a broker starting on the target waits for us
                have = inspect(dst).get_table_names()
                if have:
                    raise CopyRefused(
                        f"the target database already has tables ({', '.join(sorted(have)[:5])}"
                        f"{', ...' if len(have) > 5 else ''}); copy into a new, empty database")
                make_at_head(dst)
                copied: dict[str, int] = {}
                for table in tables_in_order():
                    copied[table.name] = _copy_table(src, dst, table)
                    if on_table is not None:
                        on_table(table.name, copied[table.name])
                _carry_on_identities(dst)
                _check_counts(src, dst, copied)
    return Copied(copied)


def _copy_table(src: Connection, dst: Connection, table: Table) -> int:
    names = [c.name for c in table.columns]
    rows = Many(dst, table, names)
    key = list(table.primary_key.columns)
    size = BLOB_BATCH if table.name == "blobs" else BATCH
    result = src.execute(select(*table.columns).order_by(*key)  # a row after those it names
                         .execution_options(yield_per=size))
    n = 0
    for part in result.partitions(size):
        n += rows.run(part)
    return n


def _carry_on_identities(dst: Connection) -> None:
    """On PostgreSQL, each generated identifier's sequence starts after the highest row
    copied (the rows came with their own); SQLite takes max(rowid) + 1 by itself."""
    if dst.dialect.name != "postgresql":
        return
    for table in tables_in_order():
        col = table.autoincrement_column
        if col is not None:
            after = func.coalesce(select(func.max(col)).scalar_subquery(), 0) + 1
            dst.execute(select(func.setval(func.pg_get_serial_sequence(table.name, col.name),
                                           after, False)))


def _check_counts(src: Connection, dst: Connection, copied: dict[str, int]) -> None:
    for table in tables_in_order():
        count = select(func.count()).select_from(table)
        there, here = src.execute(count).scalar_one(), dst.execute(count).scalar_one()
        if not there == here == copied[table.name]:
            raise StoreError(f"copy of {table.name}: {there} rows in the source, {here} in "
                             f"the target, {copied[table.name]} copied; nothing was kept")
