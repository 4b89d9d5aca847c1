"""One statement, many rows, fast, on either engine: the hot paths of a big batch.

SQLAlchemy's ``execute(stmt, rows)`` builds and type-processes every parameter of every
row in Python; for 100,000 notifications that cost more than the database work itself.
Here the statement is compiled once, by SQLAlchemy, for the connection's dialect (its
paramstyle, its casts), and handed to the driver's ``executemany``; each parameter's
own bind processor (the one SQLAlchemy would run: UTC times, dates, booleans, checked
states) runs on every value, or once per distinct value for the ``repeating`` ones (a
batch repeats a few release times, dates and states over and over).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.dml import Insert, UpdateBase

_Processor = Callable[[Any], Any]


class Many:
    """``stmt`` for many rows given as tuples in ``names`` order. An INSERT (or a Table,
    meaning a plain INSERT into it) takes ``names`` as its columns; any other statement
    names its ``bindparam``s."""

    def __init__(self, conn: Connection, stmt: Table | UpdateBase, names: Sequence[str],
                 repeating: Iterable[str] = ()) -> None:
        dialect = conn.dialect
        # A plain INSERT into a table on PostgreSQL goes in by COPY, its bulk path
        # (an order of magnitude past executemany).
        self._copy: str | None = None
        if isinstance(stmt, Table) and dialect.name == "postgresql":
            quote = dialect.identifier_preparer.quote
            self._copy = (f"COPY {quote(stmt.name)} ({', '.join(quote(n) for n in names)})"
                          " FROM STDIN")
        if isinstance(stmt, Table):
            stmt = insert(stmt)
        if isinstance(stmt, Insert):  # no RETURNING: executemany returns nothing
            compiled = stmt.inline().compile(dialect=dialect, column_keys=list(names))
        else:
            compiled = stmt.compile(dialect=dialect)
        self.conn = conn
        self.sql = str(compiled)
        self.names = tuple(names)
        if set(compiled.binds) != set(self.names):
            raise ValueError(f"parameters {sorted(compiled.binds)} are not {sorted(names)}")
        # Positional drivers (SQLite's qmark) take the values in the compiled order (None:
        # the same as ``names``); named ones (psycopg) a dict.
        self._positional = bool(compiled.positional)
        order = [self.names.index(n) for n in compiled.positiontup or ()]
        self._order = None if order == list(range(len(self.names))) else order
        repeat = set(repeating)
        # (position, processor) of the values that have one; the others pass as they are.
        self._steps: list[tuple[int, _Processor]] = []
        for at, name in enumerate(self.names):
            # The dialect's own type, as SQLAlchemy's execute uses: a TypeDecorator's
            # bind_processor alone skips its impl's (SQLite's DATETIME text form), and the
            # driver's default adapter would then write another text form of the same time.
            kind = compiled.binds[name].type.dialect_impl(dialect)
            proc: _Processor | None = kind.bind_processor(dialect)
            if proc is not None:
                self._steps.append((at, _memoised(proc) if name in repeat else proc))

    def run(self, rows: Iterable[Sequence[Any]]) -> int:
        """Execute for every row; returns how many rows there were."""
        if self._copy is not None:
            return self._copy_rows(rows)
        names, order = self.names, self._order
        prepared: list[Any] = []
        for row in rows:
            values = self._processed(row)
            if not self._positional:
                prepared.append(dict(zip(names, values, strict=True)))
            elif order is None:
                prepared.append(tuple(values))
            else:
                prepared.append(tuple(values[i] for i in order))
        if prepared:
            self.conn.exec_driver_sql(self.sql, prepared)
        return len(prepared)

    def _processed(self, row: Sequence[Any]) -> list[Any]:
        """The row's values through their bind processors, in ``names`` order."""
        if len(row) != len(self.names):
            raise ValueError(f"{len(row)} values for {len(self.names)} parameters")
        values = list(row)
        for at, proc in self._steps:
            values[at] = proc(values[at])
        return values

    def _copy_rows(self, rows: Iterable[Sequence[Any]]) -> int:
        """COPY, with each value through its column's bind processor as for any other
        statement (aware UTC times, checked states); a driver error comes out as
        SQLAlchemy's, like every other statement's, for one error mapping."""
        n = 0
        driver = self.conn.connection.driver_connection
        dbapi = self.conn.dialect.dbapi
        assert driver is not None and dbapi is not None and self._copy is not None
        try:
            with driver.cursor().copy(self._copy) as copy:
                for row in rows:
                    copy.write_row(self._processed(row))
                    n += 1
        except dbapi.Error as exc:
            raise DBAPIError.instance(self._copy, None, exc, dbapi.Error) from exc
        return n


def _memoised(proc: _Processor) -> _Processor:
    cache: dict[Any, Any] = {}

    def process(value: Any) -> Any:
        try:
            return cache[value]
        except KeyError:
            out = cache[value] = proc(value)
            return out
        except TypeError:  # unhashable: not one of the repeating values
            return proc(value)

    return process
