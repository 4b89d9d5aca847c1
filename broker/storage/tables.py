"""The state tables (SQLAlchemy Core, one definition for SQLite and PostgreSQL):

- ``input_files``: every file taken in (batch or response), by sha256, with its verdict.
- ``items``: every notification and list, by its id, with its content and hash.
- ``assignments``: an item given to an organisation, with its release time and
  state. A transfer adds a second assignment; the first keeps its history.
- ``deliveries``: every file written to an outbox; ``pending`` until its file is
  on disk, so a crash between the two is finished at the next start.
- ``stagger_plans``: the staggered first deliveries formed (SPEC 4).
- ``blobs``: attachment bytes by sha256, written in the same transaction as the
  notifications that refer to them (one fsync at commit instead of one per file).
- ``input_attempts``: handlings of an input, so a poison file is quarantined.

Changing a table means a migration (``broker/storage/migrations``) in the same change.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

from broker.storage.db import ByteSize, metadata
from broker.storage.states import AssignmentState, DeliveryState, Verdict, state_column_type


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on both engines: PostgreSQL keeps a
    ``timestamptz``; SQLite keeps no offsets, so it stores the UTC wall time (one text
    form, so times compare as text)."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        return dialect.type_descriptor(DateTime(timezone=dialect.name == "postgresql"))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        utc = value.astimezone(UTC)
        return utc if dialect.name == "postgresql" else utc.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None,
                             dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


input_files = Table(
    "input_files", metadata,
    Column("id", Integer, primary_key=True),
    Column("source", String(64), nullable=False),  # "kela" or an organisation id
    Column("kind", String(16), nullable=False),  # "batch" | "response"
    Column("name", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", ByteSize, nullable=False),
    Column("status", state_column_type(Verdict, "input_verdict"), nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("batch_id", String(64)),
    Column("items", Integer, nullable=False, default=0),
    Column("report", Text),
    UniqueConstraint("source", "sha256", "status", name="uq_input_sha"),
)

items = Table(
    "items", metadata,
    # Arrival order, for "oldest first": drawn from the items counter (broker.storage.counters)
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("id", String(64), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),  # notification | list
    Column("type", String(48), nullable=False),
    Column("municipality", String(3), nullable=False),
    Column("decision_date", Date),
    Column("urgent", Boolean, nullable=False, default=False),
    Column("content_hash", String(64), nullable=False),
    Column("payload", Text, nullable=False),
    Column("input_file_id", Integer, ForeignKey("input_files.id"), nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
)

assignments = Table(
    "assignments", metadata,
    Column("id", Integer, primary_key=True),
    Column("item_seq", Integer, ForeignKey("items.seq"), nullable=False),
    Column("organisation", String(64), nullable=False),
    Column("type", String(48), nullable=False),
    Column("release_at", UTCDateTime, nullable=False),  # normal timing
    Column("planned_at", UTCDateTime),  # set when a stagger plan holds it
    Column("portion", Integer),
    # held -> releasing -> released -> handled | transferred
    Column("state", state_column_type(AssignmentState, "assignment_state"), nullable=False),
    Column("delivery_id", String(96), ForeignKey("deliveries.id")),
    Column("released_at", UTCDateTime),
    Column("handled_on", Date),
    Column("transferred_from", Integer, ForeignKey("assignments.id")),
    Column("created_at", UTCDateTime, nullable=False),
)
Index("ix_assign_due", assignments.c.state, assignments.c.organisation, assignments.c.type)
Index("ix_assign_item", assignments.c.item_seq)
Index("ix_assign_delivery", assignments.c.delivery_id)

deliveries = Table(
    "deliveries", metadata,
    Column("id", String(96), primary_key=True),
    Column("organisation", String(64), nullable=False),
    Column("type", String(48), nullable=False),
    Column("kind", String(16), nullable=False),  # notification | list
    Column("file_name", Text, nullable=False),
    Column("zip_name", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("count", Integer, nullable=False),
    Column("portion", Integer),
    Column("state", state_column_type(DeliveryState, "delivery_state"), nullable=False),
    Column("sha256", String(64)),
    Column("size", ByteSize),
    # Allocated inside the claiming write transaction; unique, so two passes can never
    # name two files alike (names are never reused, SPEC 5).
    Column("seq", Integer, nullable=False, unique=True),
    # A pending delivery whose files could not be written (an outbox folder that is not
    # writable, a full disk): retried from next_attempt_at on, with backoff.
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime),
    Column("last_error", Text),
    UniqueConstraint("file_name", name="uq_delivery_file"),
)
Index("ix_deliveries_org_type", deliveries.c.organisation, deliveries.c.type)
Index("ix_deliveries_state", deliveries.c.state)

# Every input file handling that started: a file whose handling fails (or kills the
# process) ``max_attempts`` times is quarantined instead of retried in a loop.
input_attempts = Table(
    "input_attempts", metadata,
    Column("key", String(400), primary_key=True),  # source, name, size, mtime, inode
    Column("source", String(64), nullable=False),
    Column("name", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text),
    Column("first_at", UTCDateTime, nullable=False),
    Column("last_at", UTCDateTime, nullable=False),
)

stagger_plans = Table(
    "stagger_plans", metadata,
    Column("organisation", String(64), primary_key=True),
    Column("type", String(48), primary_key=True),
    Column("formed_at", UTCDateTime, nullable=False),
    Column("total", Integer, nullable=False),
    Column("portions", Integer, nullable=False),
)


blobs = Table(
    "blobs", metadata,
    Column("sha256", String(64), primary_key=True),
    Column("size", ByteSize, nullable=False),
    Column("data", LargeBinary, nullable=False),
)
