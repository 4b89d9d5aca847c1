"""The state store: the one truth about files, notifications, lists and deliveries.

Tables (SQLite, WAL, through SQLAlchemy Core):
- ``input_files``: every file taken in (batch or response), by sha256, with its verdict.
- ``items``: every notification and list, by its id, with its content and hash.
- ``assignments``: an item given to an organisation, with its release time and
  state. A transfer adds a second assignment; the first keeps its history.
- ``deliveries``: every file written to an outbox; ``pending`` until its file is
  on disk, so a crash between the two is finished at the next start.
- ``stagger_plans``: the staggered first deliveries formed (SPEC 4).
- ``blobs``: attachment bytes by sha256, written in the same transaction as the
  notifications that refer to them (one fsync at commit instead of one per file).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Row,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.types import TypeDecorator

from broker.domain.model import StoredItem
from broker.domain.schedule import HeldItem
from broker.errors import StoreError
from broker.storage.db import metadata, writer
from broker.storage.states import AssignmentState, DeliveryState, Verdict, state_column_type

# SQLAlchemy's text form of a DATETIME in SQLite. Driver-level SQL binds times as this
# same text: the columns are compared as text, so one form only (a test holds them equal).
_SQLITE_DATETIME = "%Y-%m-%d %H:%M:%S.%f"


def stored_time(value: datetime) -> str:
    """An aware datetime as a UTCDateTime column holds it, for driver-level SQL."""
    if value.tzinfo is None:
        raise ValueError("naive datetime given to the store")
    return value.astimezone(UTC).strftime(_SQLITE_DATETIME)


class UTCDateTime(TypeDecorator[datetime]):
    """SQLite keeps no offsets: store UTC, give back aware UTC datetimes."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


input_files = Table(
    "input_files", metadata,
    Column("id", Integer, primary_key=True),
    Column("source", String(64), nullable=False),  # "kela" or an organisation id
    Column("kind", String(16), nullable=False),  # "batch" | "response"
    Column("name", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", Integer, nullable=False),
    Column("status", state_column_type(Verdict, "input_verdict"), nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("batch_id", String(64)),
    Column("items", Integer, nullable=False, default=0),
    Column("report", Text),
    UniqueConstraint("source", "sha256", "status", name="uq_input_sha"),
)

items = Table(
    "items", metadata,
    Column("seq", Integer, primary_key=True),  # arrival order, for "oldest first"
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
    Column("size", Integer),
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
    Column("size", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
)


@dataclass(frozen=True)
class NewAssignment:
    organisation: str
    release_at: datetime


class Store:
    """Thin typed access to the tables; every method is one transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine  # reads: never wait for a writer (WAL)
        self.writer = writer(engine)  # writes: take the write lock at BEGIN

    # -- attempts ----------------------------------------------------------
    def begin_attempt(self, key: str, source: str, name: str, now: datetime) -> int:
        """Count one more handling of an input, committed before the handling starts (so a
        file that kills the process is counted too); returns the count including this one."""
        with self.writer.begin() as c:
            n = c.execute(select(input_attempts.c.attempts)
                          .where(input_attempts.c.key == key)).scalar()
            if n is None:
                c.execute(insert(input_attempts).values(
                    key=key, source=source, name=name, attempts=1, first_at=now, last_at=now))
                return 1
            c.execute(update(input_attempts).where(input_attempts.c.key == key)
                      .values(attempts=n + 1, last_at=now))
            return int(n) + 1

    def attempt_failed(self, key: str, error: str) -> None:
        with self.writer.begin() as c:
            c.execute(update(input_attempts).where(input_attempts.c.key == key)
                      .values(last_error=error[:2000]))

    def last_error(self, key: str) -> str | None:
        with self.engine.connect() as c:
            value = c.execute(select(input_attempts.c.last_error)
                              .where(input_attempts.c.key == key)).scalar()
        return None if value is None else str(value)

    def finish_attempt(self, key: str) -> None:
        with self.writer.begin() as c:
            c.execute(delete(input_attempts).where(input_attempts.c.key == key))

    # -- organisations that cannot take their deliveries -----------------------
    def failing_deliveries(self) -> list[Row[Any]]:
        """Pending deliveries that failed at least once: (organisation, id, attempts,
        next_attempt_at, last_error), oldest first."""
        d = deliveries
        with self.engine.connect() as c:
            return list(c.execute(
                select(d.c.organisation, d.c.id, d.c.attempts, d.c.next_attempt_at,
                       d.c.last_error)
                .where(d.c.state == "pending", d.c.attempts > 0).order_by(d.c.seq)))

    def undelivered_by_org(self) -> dict[str, int]:
        """Held or claimed (not yet written) items per organisation."""
        a = assignments
        with self.engine.connect() as c:
            rows = c.execute(select(a.c.organisation, func.count())
                             .where(a.c.state.in_(("held", "releasing")))
                             .group_by(a.c.organisation))
            return {r[0]: int(r[1]) for r in rows}

    # -- input files -------------------------------------------------------
    def accepted_file(self, source: str, sha256: str) -> int | None:
        with self.engine.connect() as c:
            return c.execute(select(input_files.c.id).where(
                input_files.c.source == source, input_files.c.sha256 == sha256,
                input_files.c.status == "accepted")).scalar()

    def record_rejected(self, *, source: str, kind: str, name: str, sha256: str, size: int,
                        now: datetime, report: str) -> int:
        with self.writer.begin() as c:
            found = c.execute(select(input_files.c.id).where(
                input_files.c.source == source, input_files.c.sha256 == sha256,
                input_files.c.status == "rejected")).scalar()
            if found is not None:
                return int(found)
            return int(c.execute(insert(input_files).values(
                source=source, kind=kind, name=name, sha256=sha256, size=size,
                status="rejected", received_at=now, report=report, items=0,
            )).inserted_primary_key[0])  # type: ignore[index]

    def existing_hashes(self, ids: Sequence[str]) -> dict[str, str]:
        """content_hash of the ids already known, for conflict and resend checks."""
        if not ids:
            return {}
        with self.engine.connect() as c:  # driver SQL: asked once per 500 items of a batch
            rows = c.exec_driver_sql(
                "SELECT id, content_hash FROM items WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(list(ids)),))
            return {item_id: content_hash for item_id, content_hash in rows}

    @contextmanager
    def ingesting(self, *, source: str, kind: str, name: str, sha256: str, size: int,
                  now: datetime) -> Iterator[IngestTx]:
        """One transaction for a whole accepted file; an exception rolls it all back."""
        with self.writer.begin() as c:
            file_id = int(c.execute(insert(input_files).values(
                source=source, kind=kind, name=name, sha256=sha256, size=size,
                status="accepted", received_at=now, items=0,
            )).inserted_primary_key[0])  # type: ignore[index]
            tx = IngestTx(c, file_id, now)
            yield tx
            tx.flush_blobs()
            c.execute(update(input_files).where(input_files.c.id == file_id)
                      .values(items=tx.count, batch_id=tx.batch_id))

    @contextmanager
    def blobs(self) -> Iterator[Callable[[str], io.BytesIO]]:
        """``open_blob(sha256)`` on one connection, for the many attachments of a delivery."""
        with self.engine.connect() as c:
            def open_blob(sha256: str) -> io.BytesIO:
                data = c.exec_driver_sql("SELECT data FROM blobs WHERE sha256 = ?",
                                         (sha256,)).scalar()
                if data is None:
                    raise StoreError(f"attachment {sha256} is not in the store")
                return io.BytesIO(data)

            yield open_blob

    def probe(self) -> str | None:
        """None when the database answers a read, else why not (for /healthz)."""
        try:
            with self.engine.connect() as c:
                c.execute(select(func.count()).select_from(deliveries)).scalar()
        except DBAPIError as exc:
            return str(exc.orig) if exc.orig is not None else type(exc).__name__
        return None

    # -- counts for status ----------------------------------------------------
    def counts(self) -> list[tuple[str, str, str, int]]:
        """(organisation, type, state, count) rows for ``kela-broker status``."""
        with self.engine.connect() as c:
            rows = c.execute(select(assignments.c.organisation, assignments.c.type,
                                    assignments.c.state, func.count())
                             .group_by(assignments.c.organisation, assignments.c.type,
                                       assignments.c.state)
                             .order_by(assignments.c.organisation, assignments.c.type))
            return [(r[0], r[1], r[2], int(r[3])) for r in rows]

    def file_counts(self) -> dict[str, int]:
        with self.engine.connect() as c:
            rows = c.execute(select(input_files.c.status, func.count())
                             .group_by(input_files.c.status))
            return {r[0]: int(r[1]) for r in rows}

    def next_release(self) -> datetime | None:
        """The earliest time a held assignment becomes due (the scheduler wakes then)."""
        due = func.coalesce(assignments.c.planned_at, assignments.c.release_at)
        return self._min_time(select(func.min(due)).where(assignments.c.state == "held"))

    def next_retry(self) -> datetime | None:
        """When the earliest pending delivery that could not be written is tried again."""
        return self._min_time(select(func.min(deliveries.c.next_attempt_at))
                              .where(deliveries.c.state == "pending"))

    def _min_time(self, query: Any) -> datetime | None:
        with self.engine.connect() as c:
            value = c.execute(query).scalar()
        if value is None:
            return None
        if isinstance(value, str):  # func.min loses the column type in SQLite
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value

    def held_items(self, until: datetime, only_org: str | None = None) -> list[HeldItem]:
        """Held assignments whose time may have come by ``until``, as plain values for
        ``domain.schedule.due_groups`` to decide on (the bound only spares reading the
        items held for weeks; the domain applies the rule)."""
        a, i = assignments, items
        effective = func.coalesce(a.c.planned_at, a.c.release_at)
        q = (select(a.c.id, a.c.organisation, a.c.type, i.c.kind, a.c.release_at,
                    a.c.planned_at, a.c.portion, i.c.seq)
             .select_from(a.join(i, i.c.seq == a.c.item_seq))
             .where(a.c.state == "held", effective <= until))
        if only_org is not None:
            q = q.where(a.c.organisation == only_org)
        with self.engine.connect() as c:
            return [HeldItem(r.id, r.organisation, r.type, r.kind, r.release_at, r.planned_at,
                             r.portion, r.seq) for r in c.execute(q)]

    def held_summary(self, org: str | None = None) -> list[dict[str, object]]:
        """Held assignments per (organisation, type, portion, due time), for ``schedule``."""
        due = func.coalesce(assignments.c.planned_at, assignments.c.release_at)
        q = (select(assignments.c.organisation, assignments.c.type, assignments.c.portion,
                    due.label("due"), func.count().label("n"))
             .where(assignments.c.state == "held")
             .group_by(assignments.c.organisation, assignments.c.type,
                       assignments.c.portion, due)
             .order_by(assignments.c.organisation, assignments.c.type, due))
        if org:
            q = q.where(assignments.c.organisation == org)
        with self.engine.connect() as c:
            out = []
            for r in c.execute(q):
                d = r.due if isinstance(r.due, datetime) else datetime.fromisoformat(str(r.due))
                out.append({"organisation": r.organisation, "type": r.type,
                            "portion": r.portion, "release_at": d.replace(tzinfo=UTC),
                            "count": int(r.n)})
            return out


class IngestTx:
    """The open transaction of one input file: blobs and items go in together."""

    # The hot path of a big batch: plain executemany with values bound exactly as the
    # column types bind them (SQLAlchemy's per-row parameter processing cost more than
    # the inserts themselves).
    _ITEMS_SQL = ("INSERT INTO items (seq, id, kind, type, municipality, decision_date, urgent,"
                  " content_hash, payload, input_file_id, received_at)"
                  " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
    _ASSIGN_SQL = ("INSERT INTO assignments (item_seq, organisation, type, release_at, state,"
                   " created_at) VALUES (?, ?, ?, ?, 'held', ?)")
    _BLOB_SQL = "INSERT OR IGNORE INTO blobs (sha256, size, data) VALUES (?, ?, ?)"
    _BLOB_FLUSH_BYTES = 32 * 1024**2  # attachments wait for their items' insert, up to this

    def __init__(self, c: Connection, file_id: int, now: datetime) -> None:
        self.c = c
        self.file_id = file_id
        self.now = now
        self.count = 0
        self.batch_id: str | None = None
        self._blobs: list[tuple[str, int, bytes]] = []
        self._blob_bytes = 0
        self._bound_values: dict[datetime, str] = {}

    def _bound(self, value: datetime) -> str:
        """stored_time, memoised: a batch repeats a few release times."""
        text = self._bound_values.get(value)
        if text is None:
            text = self._bound_values[value] = stored_time(value)
        return text

    def put_blob(self, sha256: str, data: bytes) -> None:
        self._blobs.append((sha256, len(data), data))
        self._blob_bytes += len(data)
        if self._blob_bytes >= self._BLOB_FLUSH_BYTES:
            self.flush_blobs()

    def flush_blobs(self) -> None:
        if self._blobs:
            self.c.exec_driver_sql(self._BLOB_SQL, self._blobs)
            self._blobs, self._blob_bytes = [], 0

    def add(self, chunk: Sequence[tuple[StoredItem, NewAssignment]]) -> None:
        self.flush_blobs()
        if not chunk:
            return
        c, bound = self.c, self._bound
        now = bound(self.now)
        first_seq = (c.execute(select(func.max(items.c.seq))).scalar() or 0) + 1
        c.exec_driver_sql(self._ITEMS_SQL, [(
            first_seq + i, it.id, it.kind, it.type, it.municipality, it.decision_date,
            int(it.urgent), it.content_hash, it.payload, self.file_id, now,
        ) for i, (it, _) in enumerate(chunk)])
        c.exec_driver_sql(self._ASSIGN_SQL, [
            (first_seq + i, a.organisation, it.type, bound(a.release_at), now)
            for i, (it, a) in enumerate(chunk)])
        self.count += len(chunk)


def today_in(tz: str, now: datetime) -> date:
    from zoneinfo import ZoneInfo

    return now.astimezone(ZoneInfo(tz)).date()


__all__ = [
    "IngestTx",
    "NewAssignment",
    "Store",
    "assignments",
    "blobs",
    "deliveries",
    "input_attempts",
    "input_files",
    "items",
    "stagger_plans",
    "stored_time",
]
