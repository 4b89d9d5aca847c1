"""The tamper-evident audit log: every login, transfer, rename, delete and ban.

Rows are hash-chained: each row stores the hash of the row before it and a
SHA-256 over its own canonical fields (including its id and that previous hash).
Changing, inserting or deleting a row in the middle breaks the chain, and
``verify`` names the first row ids where it breaks. Cutting rows off the end is
not detectable from the table alone; an operator who needs that can export the
latest ``row_hash`` elsewhere (it commits to the whole history before it).

The chain is kept linear across threads by a lock and across processes by a
UNIQUE constraint on ``prev_hash``: a second writer racing for the same
predecessor fails the insert and retries on the new head.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    Integer,
    String,
    Table,
    Text,
    insert,
    select,
)
from sqlalchemy.exc import IntegrityError, OperationalError

from broker.db import metadata

GENESIS = "0" * 64

audit_table = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("at", String(40), nullable=False, index=True),
    Column("action", String(40), nullable=False),
    Column("org", String(100), nullable=True, index=True),
    Column("address", String(100), nullable=True),
    Column("path", Text, nullable=True),
    Column("size", Integer, nullable=True),
    Column("sha256", String(64), nullable=True),
    Column("detail", Text, nullable=True),
    Column("prev_hash", String(64), nullable=False, unique=True),
    Column("row_hash", String(64), nullable=False),
)


@dataclass(frozen=True)
class AuditEvent:
    """Something that happened, as an edge adapter reports it (no time, no id)."""

    action: str
    org: str | None
    address: str | None = None
    path: str | None = None
    size: int | None = None
    sha256: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class AuditRecord:
    """One stored row of the audit log."""

    id: int
    at: datetime
    action: str
    org: str | None
    address: str | None
    path: str | None
    size: int | None
    sha256: str | None
    detail: str | None
    prev_hash: str
    row_hash: str


def _timestamp(now: datetime) -> str:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("audit time must be timezone-aware")
    return now.astimezone(UTC).isoformat(timespec="microseconds")


def row_hash(
    row_id: int,
    at: str,
    event: AuditEvent,
    prev_hash: str,
) -> str:
    """SHA-256 over the canonical JSON of every stored field except the hash itself."""
    canonical = json.dumps(
        [
            row_id,
            at,
            event.action,
            event.org,
            event.address,
            event.path,
            event.size,
            event.sha256,
            event.detail,
            prev_hash,
        ],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _event_of(row: Any) -> AuditEvent:
    return AuditEvent(
        action=row.action,
        org=row.org,
        address=row.address,
        path=row.path,
        size=row.size,
        sha256=row.sha256,
        detail=row.detail,
    )


def _record_of(row: Any) -> AuditRecord:
    return AuditRecord(
        id=row.id,
        at=datetime.fromisoformat(row.at),
        action=row.action,
        org=row.org,
        address=row.address,
        path=row.path,
        size=row.size,
        sha256=row.sha256,
        detail=row.detail,
        prev_hash=row.prev_hash,
        row_hash=row.row_hash,
    )


class AuditLog:
    """Append-only, hash-chained audit records in the broker's database."""

    _RETRIES = 20

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        audit_table.create(engine, checkfirst=True)

    def record(self, event: AuditEvent, now: datetime) -> int:
        """Append ``event`` at time ``now``; returns the new row id. Thread-safe."""
        at = _timestamp(now)
        with self._lock:
            for _ in range(self._RETRIES):
                try:
                    with self._engine.begin() as conn:
                        head = conn.execute(
                            select(audit_table.c.id, audit_table.c.row_hash)
                            .order_by(audit_table.c.id.desc())
                            .limit(1)
                        ).first()
                        row_id = head.id + 1 if head else 1
                        prev = head.row_hash if head else GENESIS
                        conn.execute(
                            insert(audit_table).values(
                                id=row_id,
                                at=at,
                                action=event.action,
                                org=event.org,
                                address=event.address,
                                path=event.path,
                                size=event.size,
                                sha256=event.sha256,
                                detail=event.detail,
                                prev_hash=prev,
                                row_hash=row_hash(row_id, at, event, prev),
                            )
                        )
                    return row_id
                except IntegrityError:
                    # Another process appended to the same head first; chain onto it.
                    continue
                except OperationalError as exc:
                    # SQLite refuses the second of two racing writers outright.
                    if "locked" not in str(exc):
                        raise
                    time.sleep(0.01)
        raise RuntimeError("audit log: could not append after repeated write conflicts")

    def verify(self) -> list[str]:
        """Check the whole chain; returns [] when intact, else one line per problem."""
        problems: list[str] = []
        expected_prev = GENESIS
        expected_id = 1
        with self._engine.connect() as conn:
            rows = conn.execute(select(audit_table).order_by(audit_table.c.id))
            for row in rows:
                if row.id != expected_id:
                    problems.append(
                        f"row {row.id}: expected row id {expected_id} (rows missing or renumbered)"
                    )
                if row.prev_hash != expected_prev:
                    problems.append(
                        f"row {row.id}: prev_hash does not match the hash of the row before it "
                        "(a row was inserted, deleted or changed)"
                    )
                actual = row_hash(row.id, row.at, _event_of(row), row.prev_hash)
                if actual != row.row_hash:
                    problems.append(f"row {row.id}: content does not match its row_hash (changed)")
                expected_prev = row.row_hash
                expected_id = row.id + 1
        return problems

    def query(
        self,
        *,
        org: str | None = None,
        since: datetime | None = None,
        limit: int | None = None,
    ) -> list[AuditRecord]:
        """Matching records, oldest first; with ``limit``, the most recent ``limit`` of them."""
        stmt = select(audit_table)
        if org is not None:
            stmt = stmt.where(audit_table.c.org == org)
        if since is not None:
            stmt = stmt.where(audit_table.c.at >= _timestamp(since))
        stmt = stmt.order_by(audit_table.c.id.desc())
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._engine.connect() as conn:
            rows: Sequence[Any] = conn.execute(stmt).all()
        return [_record_of(r) for r in reversed(rows)]
