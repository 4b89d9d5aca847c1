"""Numbers the database hands out: item arrival order, delivery file numbers.

A counter is one row, advanced in place (``UPDATE ... RETURNING``) inside the caller's
transaction: on PostgreSQL the row stays locked until that transaction ends, so two
passes never draw the same number, and a rolled-back transaction gives its numbers back
(delivery file numbers have no gaps). On SQLite the writer already holds the database's
write lock. Never ``max(seq) + 1``: that reads a snapshot another writer may be past.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, String, Table, bindparam, func, select, update
from sqlalchemy.engine import Connection

from broker.storage.db import insert_ignoring, metadata
from broker.storage.tables import deliveries, items

counters = Table(
    "counters", metadata,
    Column("name", String(32), primary_key=True),
    Column("value", BigInteger, nullable=False),  # the last number handed out
)

ITEMS = "items"  # items.seq: arrival order, for "oldest first"
DELIVERIES = "deliveries"  # deliveries.seq: the number in every delivery file's name

# The column each counter numbers (its table's name is the counter's).
_NUMBERED = {ITEMS: items.c.seq, DELIVERIES: deliveries.c.seq}


# Built once: a release pass draws a number for every delivery it writes.
_ADVANCE = (update(counters).where(counters.c.name == bindparam("cname"))
            .values(value=counters.c.value + bindparam("n", type_=BigInteger))
            .returning(counters.c.value))
_TOP = {name: select(func.max(column)) for name, column in _NUMBERED.items()}


def take(conn: Connection, name: str, n: int = 1) -> int:
    """Reserve ``n`` consecutive numbers of counter ``name``; returns the first."""
    if n < 1:
        raise ValueError("take at least one number")
    params = {"cname": name, "n": n}
    last = conn.execute(_ADVANCE, params).scalar()
    if last is None:  # first use in this database
        conn.execute(insert_ignoring(conn, counters).values(name=name, value=0))
        last = conn.execute(_ADVANCE, params).scalar_one()
    first = int(last) - n + 1
    # The counter row is locked now. A release before counters (still running beside an
    # upgraded database, numbering by max + 1) may have gone past it: never hand out a
    # number the table holds (one look at the end of a unique index).
    top = int(conn.execute(_TOP[name]).scalar() or 0)
    if top >= first:
        first = top + 1
        conn.execute(update(counters).where(counters.c.name == name)
                     .values(value=first + n - 1))
    return first

