"""Audit rows may carry the key their writer gave the event, unique: a group commit whose
outcome a dropped connection hid is looked up by its keys before it is tried again, so
it is recorded once, never twice and never not at all. Old rows have none (NULL).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("audit_log", sa.Column("event_key", sa.String(32), nullable=True))
    op.create_index("ux_audit_event_key", "audit_log", ["event_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_audit_event_key", table_name="audit_log")
    # A plain ALTER on SQLite too (3.35 and later): a batch rebuild would drop the table
    # audit_refs refers to, which its foreign key refuses once a release is recorded.
    op.execute("ALTER TABLE audit_log DROP COLUMN event_key")
