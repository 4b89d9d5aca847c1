"""Sizes in bytes are 64-bit: a 2-4 GiB batch (max_file_mb = 4096) fits on PostgreSQL.

SQLite's INTEGER is 64-bit already, so only PostgreSQL columns change (no SQLite table
is rebuilt).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

COLUMNS = [("input_files", "size"), ("deliveries", "size"), ("blobs", "size"),
           ("audit_log", "size"), ("pushes", "size"), ("response_files", "size")]


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in COLUMNS:
        op.alter_column(table, column, type_=sa.BigInteger(), existing_type=sa.Integer())


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in COLUMNS:
        op.alter_column(table, column, type_=sa.Integer(), existing_type=sa.BigInteger())
