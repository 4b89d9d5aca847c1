"""The state store: the one truth about files, notifications, lists and deliveries.

``Store`` is thin typed access to the tables of ``broker.storage.tables``: every method
is one transaction, in SQLAlchemy Core, the same on SQLite and PostgreSQL. The release
pass's statements are in ``broker.storage.releases``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, Row, bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from broker.domain.model import StoredItem
from broker.domain.schedule import HeldItem
from broker.errors import AlreadyAccepted, StoreError
from broker.storage import counters, releases
from broker.storage.bulk import Many
from broker.storage.db import (
    PerDialect,
    in_chunks,
    insert_ignoring,
    is_sqlite,
    one_of,
    serialize,
    upsert_adding,
    writer,
)
from broker.storage.db_errors import store_error
from broker.storage.tables import (
    assignments,
    blobs,
    deliveries,
    input_attempts,
    input_files,
    items,
    stagger_plans,
)

_ANALYZE_AFTER = 2_000  # items in one file (statistics are cheap next to it)
# Built once: a release after a big batch reads thousands of blobs.
_BLOB = select(blobs.c.data).where(blobs.c.sha256 == bindparam("sha"))
# Built once: an ingest asks for every 500 items.
_HASHES = PerDialect(lambda dialect: select(items.c.id, items.c.content_hash)
                     .where(one_of(items.c.id, "ids", dialect)))


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
        with self.writer.begin() as c:  # one upsert: two processes count two handlings
            stmt = upsert_adding(c, input_attempts, ["key"], {"attempts": 1}, {"last_at": now})
            return int(c.execute(stmt.values(
                key=key, source=source, name=name, attempts=1, first_at=now, last_at=now)
                .returning(input_attempts.c.attempts)).scalar_one())

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
            return _input_file(c, source, sha256, "accepted")

    def record_rejected(self, *, source: str, kind: str, name: str, sha256: str, size: int,
                        now: datetime, report: str) -> int:
        with self.writer.begin() as c:  # the same bytes rejected before: that row
            c.execute(insert_ignoring(c, input_files).values(
                source=source, kind=kind, name=name, sha256=sha256, size=size,
                status="rejected", received_at=now, report=report, items=0))
            found = _input_file(c, source, sha256, "rejected")
            if found is None:  # inserted, or there already: never
                raise StoreError(f"the rejection of {name} was not recorded", file=name)
            return found

    def existing_hashes(self, ids: Sequence[str]) -> dict[str, str]:
        """content_hash of the ids already known, for conflict and resend checks."""
        out: dict[str, str] = {}
        with self.engine.connect() as c:
            for chunk in in_chunks(ids):
                out.update((r[0], r[1]) for r in c.execute(_HASHES(c), {"ids": list(chunk)}))
        return out

    @contextmanager
    def ingesting(self, *, source: str, kind: str, name: str, sha256: str, size: int,
                  now: datetime) -> Iterator[IngestTx]:
        """One transaction for a whole accepted file; an exception rolls it all back.

        Files are taken in one at a time (SQLite: the write lock; PostgreSQL: the
        ``ingest`` lock), so what one finds already known is what the other committed;
        the same bytes accepted meanwhile raise AlreadyAccepted (a duplicate)."""
        with self.writer.begin() as c:
            serialize(c, "ingest")
            if _input_file(c, source, sha256, "accepted") is not None:
                raise AlreadyAccepted(f"{name} was accepted meanwhile", file=name)
            file_id = int(c.execute(insert(input_files).values(
                source=source, kind=kind, name=name, sha256=sha256, size=size,
                status="accepted", received_at=now, items=0,
            )).inserted_primary_key[0])  # type: ignore[index]
            tx = IngestTx(c, file_id, now)
            yield tx
            tx.flush_blobs()
            c.execute(update(input_files).where(input_files.c.id == file_id)
                      .values(items=tx.count, batch_id=tx.batch_id))
        if tx.count >= _ANALYZE_AFTER and not is_sqlite(self.engine):
            # PostgreSQL plans by its statistics, which autovacuum updates only later:
            # straight after a big batch it would think the tables still small and scan
            # them for every claim of the release that follows.
            with contextlib.suppress(DBAPIError), self.engine.begin() as c:
                # The file is stored whatever happens here; autovacuum catches up.
                c.exec_driver_sql("ANALYZE items, assignments")

    @contextmanager
    def blobs(self) -> Iterator[Callable[[str], io.BytesIO]]:
        """``open_blob(sha256)`` on one connection, for the many attachments of a delivery."""
        with self.engine.connect() as c:
            def open_blob(sha256: str) -> io.BytesIO:
                data = c.execute(_BLOB, {"sha": sha256}).scalar()
                if data is None:
                    raise StoreError(f"attachment {sha256} is not in the store")
                return io.BytesIO(data)

            yield open_blob

    def probe(self) -> str | None:
        """None when the database answers a read, else why not (for /healthz)."""
        try:
            with self.engine.connect() as c:
                c.execute(select(func.count()).select_from(deliveries)).scalar()
        except DBAPIError as exc:  # "cannot be reached (...)" or "cannot be used (...)"
            return str(store_error(exc))
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
        return self._min_time(select(func.min(releases.due_at))
                              .where(assignments.c.state == "held"))

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
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def held_items(self, until: datetime, only_org: str | None = None) -> list[HeldItem]:
        """Held assignments whose time may have come by ``until`` (releases.held_items)."""
        with self.engine.connect() as c:
            return releases.held_items(c, until, only_org)

    def held_summary(self, org: str | None = None) -> list[dict[str, object]]:
        """Held assignments per (organisation, type, portion, due time), for ``schedule``."""
        due = releases.due_at
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
                d = d.replace(tzinfo=UTC) if d.tzinfo is None else d.astimezone(UTC)
                out.append({"organisation": r.organisation, "type": r.type,
                            "portion": r.portion, "release_at": d,
                            "count": int(r.n)})
            return out


_ITEM_COLUMNS = ("seq", "id", "kind", "type", "municipality", "decision_date", "urgent",
                 "content_hash", "payload", "input_file_id", "received_at")
_ASSIGNMENT_COLUMNS = ("item_seq", "organisation", "type", "release_at", "state", "created_at")


def _input_file(c: Connection, source: str, sha256: str, status: str) -> int | None:
    """The id of ``source``'s input with these bytes and this verdict, if any."""
    found = c.execute(select(input_files.c.id).where(
        input_files.c.source == source, input_files.c.sha256 == sha256,
        input_files.c.status == status)).scalar()
    return None if found is None else int(found)


class IngestTx:
    """The open transaction of one input file: blobs and items go in together."""

    _BLOB_FLUSH_BYTES = 32 * 1024**2  # attachments wait for their items' insert, up to this

    def __init__(self, c: Connection, file_id: int, now: datetime) -> None:
        self.c = c
        self.file_id = file_id
        self.now = now
        self.count = 0
        self.batch_id: str | None = None
        self._blobs: list[tuple[str, int, bytes]] = []
        self._blob_bytes = 0
        # Compiled once per file for this engine (broker.storage.bulk).
        self._items = Many(c, items, _ITEM_COLUMNS, repeating=("decision_date",
                                                                   "received_at"))
        self._assignments = Many(c, assignments, _ASSIGNMENT_COLUMNS,
                                       repeating=("release_at", "state", "created_at"))
        self._blob_rows = Many(c, insert_ignoring(c, blobs), ("sha256", "size", "data"))
        self._days: dict[str, date] = {}

    def _day(self, iso: str | None) -> date | None:
        """A decision date as the Date column takes it (a batch repeats a few)."""
        if iso is None:
            return None
        day = self._days.get(iso)
        if day is None:
            day = self._days[iso] = date.fromisoformat(iso)
        return day

    def put_blob(self, sha256: str, data: bytes) -> None:
        self._blobs.append((sha256, len(data), data))
        self._blob_bytes += len(data)
        if self._blob_bytes >= self._BLOB_FLUSH_BYTES:
            self.flush_blobs()

    def flush_blobs(self) -> None:
        if self._blobs:
            self._blob_rows.run(self._blobs)
            self._blobs, self._blob_bytes = [], 0

    def add(self, chunk: Sequence[tuple[StoredItem, NewAssignment]]) -> None:
        self.flush_blobs()
        if not chunk:
            return
        c, now, file_id, day = self.c, self.now, self.file_id, self._day
        first = counters.take(c, counters.ITEMS, len(chunk))
        self._items.run([
            (first + i, it.id, it.kind, it.type, it.municipality, day(it.decision_date),
             it.urgent, it.content_hash, it.payload, file_id, now)
            for i, (it, _) in enumerate(chunk)])
        self._assignments.run([
            (first + i, a.organisation, it.type, a.release_at, "held", now)
            for i, (it, a) in enumerate(chunk)])
        self.count += len(chunk)


def today_in(tz: str, now: datetime) -> date:
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
]
