"""Baseline: the schema of every release before migrations existed.

Homes made by those releases have no ``alembic_version`` table; ``broker.storage.schema``
stamps them with this revision and upgrades from here. A new database is made at the
head directly (``create_all``), so this step never has to build the old schema.

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # the baseline is what those releases' create_all made


def downgrade() -> None:
    raise NotImplementedError("there is nothing before the baseline")
