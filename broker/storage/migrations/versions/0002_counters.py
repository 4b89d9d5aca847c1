"""Numbers from the database: a ``counters`` row per sequence, seeded from the rows.

Item arrival order and delivery file numbers were ``max(seq) + 1`` under SQLite's write
lock; they now come from a counter row advanced in place (``broker.storage.counters``),
which is safe on PostgreSQL too. The counters start where the rows end, so no number is
handed out twice.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    counters = op.create_table(
        "counters",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    conn = op.get_bind()
    rows = []
    for name in ("items", "deliveries"):  # each counter is named after its table
        seq = sa.table(name, sa.column("seq")).c.seq
        last = conn.execute(sa.select(sa.func.coalesce(sa.func.max(seq), 0))).scalar()
        rows.append({"name": name, "value": int(last or 0)})
    op.bulk_insert(counters, rows)


def downgrade() -> None:
    op.drop_table("counters")
