"""One text form for every time on SQLite: ``YYYY-MM-DD HH:MM:SS.ffffff``.

SQLite keeps times as text and compares them as text. The bulk path of earlier releases
(broker.storage.bulk) let the driver's default adapter write whole-second times without
their fraction (``04:00:00``, where SQLAlchemy writes ``04:00:00.000000``): the same
instant in two spellings, which sort and group apart. Those rows get the fraction.
PostgreSQL keeps ``timestamptz`` and has nothing to change.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Every UTCDateTime column (broker.storage.tables.UTCDateTime); a test holds the list
# equal to the tables'.
COLUMNS = [
    ("assignments", "created_at"), ("assignments", "planned_at"),
    ("assignments", "release_at"), ("assignments", "released_at"),
    ("deliveries", "created_at"), ("deliveries", "next_attempt_at"),
    ("input_attempts", "first_at"), ("input_attempts", "last_at"),
    ("input_files", "received_at"), ("items", "received_at"),
    ("payment_demands", "received_at"), ("pushes", "pushed_at"),
    ("response_events", "at"), ("response_files", "received_at"),
    ("response_files", "settled_at"), ("stagger_plans", "formed_at"),
]


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "sqlite":
        return
    present = set(sa.inspect(conn).get_table_names())
    for table, column in COLUMNS:
        if table in present:
            t = sa.table(table, sa.column(column, sa.Text))
            col = t.c[column]
            conn.execute(sa.update(t).where(sa.func.length(col) == 19)
                         .values({column: col.concat(".000000")}))


def downgrade() -> None:
    pass  # both spellings read back as the same time
