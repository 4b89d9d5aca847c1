"""The tamper-evident audit trail: every disclosure and operator action, in state.db.

The trail lives in the state database (``audit_log`` and ``audit_refs``), so an act and
its record commit in ONE transaction: :func:`append` takes the caller's connection.
A release that rolls back leaves no row; a row never names a release that did not
happen.

Rows are hash-chained: each row stores the hash of the row before it and a SHA-256
over its own canonical fields (its id, that previous hash and its person references).
Changing, inserting or deleting a row breaks the chain, and :func:`verify` names the
first rows where it breaks. Rows cut off the END are caught by the anchor
(``var/audit.head``, broker/audit_anchor.py): the head is written there after every
commit, and the table must still hold that row with that hash.

The chain stays linear across threads and processes because the head is read inside
a write transaction that already holds SQLite's write lock (``writer(engine)`` begins
IMMEDIATE); the UNIQUE ``prev_hash`` is the backstop if a caller forgets.

Identity codes are never stored here: a reference holds the notification or list id
and an HMAC-SHA256 of the code under a per-home key (``var/audit.key``). A plain hash
would not do: a Finnish identity code has well under 10^9 possible values, so an
unkeyed digest is reversed by trying them all. The key stays outside state.db, so a
copy of the database (a backup, a support bundle) does not name anyone once retention
has removed the notifications themselves.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    insert,
    select,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from broker import logs
from broker.storage.audit_anchor import Anchor, read_anchor, write_anchor
from broker.storage.bulk import Many
from broker.storage.db import ByteSize, audit_metadata, in_chunks, serialize, writer
from broker.storage.db_errors import is_busy, is_conflict
from broker.storage.files import atomic_write, private_dir

GENESIS = "0" * 64
log = logs.get("broker.storage.audit")
KEY_FILE = "audit.key"
HEAD_FILE = "audit.head"
LEGACY_FILE = "audit.db"

audit_table = Table(
    "audit_log",
    audit_metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("at", String(40), nullable=False, index=True),
    Column("action", String(40), nullable=False, index=True),
    Column("org", String(100), nullable=True, index=True),
    Column("address", String(100), nullable=True),
    Column("path", Text, nullable=True),
    Column("size", ByteSize, nullable=True),
    Column("sha256", String(64), nullable=True),
    Column("detail", Text, nullable=True),
    Column("prev_hash", String(64), nullable=False, unique=True),
    Column("row_hash", String(64), nullable=False),
    # The daemon's writer's key for the event (not part of the hash): a commit whose
    # outcome a dropped connection hid is found by it, not written twice (AuditWriter).
    Column("event_key", String(32), nullable=True),
)
Index("ux_audit_event_key", audit_table.c.event_key, unique=True)

# Whose data an event carried: one row per notification/list (and person) in it, so
# ``audit person`` is an index lookup, not a scan of every event.
audit_refs = Table(
    "audit_refs",
    audit_metadata,
    Column("id", Integer, primary_key=True),
    Column("event_id", Integer, ForeignKey("audit_log.id"), nullable=False, index=True),
    Column("item", String(64), nullable=True, index=True),
    Column("person", String(64), nullable=True, index=True),
)


@dataclass(frozen=True)
class AuditRef:
    """One notification or list an event carried, and the keyed digest of its person."""

    item: str | None
    person: str | None = None


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
    refs: tuple[AuditRef, ...] = ()


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


def timestamp(now: datetime) -> str:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("audit time must be timezone-aware")
    return now.astimezone(UTC).isoformat(timespec="microseconds")


def row_hash(row_id: int, at: str, event: AuditEvent, prev_hash: str) -> str:
    """SHA-256 over the canonical JSON of every stored field except the hash itself.

    A row without references hashes exactly as the rows of the old separate audit.db
    did, so migrated rows keep their hashes and the chain runs on unbroken.
    """
    fields: list[Any] = [row_id, at, event.action, event.org, event.address, event.path,
                         event.size, event.sha256, event.detail, prev_hash]
    if event.refs:
        fields.append([[r.item, r.person] for r in event.refs])
    canonical = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# -- person digests -------------------------------------------------------------

_keys: dict[Path, bytes] = {}
_keys_lock = threading.Lock()


def audit_key(var: Path) -> bytes:
    """The home's secret for person digests (``var/audit.key``), made on first use."""
    path = private_dir(var) / KEY_FILE  # var/ holds no state.db on a PostgreSQL home
    with _keys_lock:
        if path in _keys:
            return _keys[path]
        for _ in range(50):
            with contextlib.suppress(FileNotFoundError):
                key = bytes.fromhex(path.read_text().strip())
                break
            try:
                atomic_write(path, os.urandom(32).hex().encode() + b"\n", exclusive=True)
            except (FileExistsError, BlockingIOError):
                time.sleep(0.01)  # another process made (or is making) it: read theirs
        else:
            raise RuntimeError(f"{path}: could not read or create the audit key")
        _keys[path] = key
        return key


def person_digest(key: bytes, code: str) -> str:
    """HMAC-SHA256 of an identity code: the code's only form in the audit trail."""
    # hmac.digest: the one-shot form (OpenSSL's), the same bytes as hmac.new(...).digest()
    # at a fraction of the cost; a release computes one per notification.
    return hmac.digest(key, code.strip().upper().encode("ascii", "replace"), "sha256").hex()


# -- appending ------------------------------------------------------------------

def head(conn: Connection) -> tuple[int, str]:
    """The last row's id and hash; (0, GENESIS) for an empty trail."""
    row = conn.execute(select(audit_table.c.id, audit_table.c.row_hash)
                       .order_by(audit_table.c.id.desc()).limit(1)).first()
    return (row.id, row.row_hash) if row else (0, GENESIS)


def anchor_head(engine: Engine, path: Path) -> Anchor | None:
    """Anchor the committed head of the trail in ``engine``; None when it is empty."""
    with engine.connect() as conn:
        row_id, digest = head(conn)
    if not row_id:
        return None
    anchor = Anchor(row_id, digest)
    write_anchor(path, anchor)
    return anchor


def anchor_genesis(path: Path) -> None:
    """Anchor the empty trail (row 0), unless a head is anchored already. A failure is
    logged, never raised: anchoring must not stop the commit it precedes (the anchor after
    it is tried as always)."""
    try:
        write_anchor(path, Anchor(0, GENESIS))
    except OSError as exc:
        log.error("audit: anchoring the empty trail failed", exc_info=exc)


def append_at(conn: Connection, stamped: Iterable[tuple[AuditEvent, str]],
              anchor: Path | None = None, keys: Sequence[str] | None = None) -> list[int]:
    """Chain ``(event, at)`` pairs onto the trail inside the caller's transaction.

    The transaction must be a writer's (``writer(engine).begin()``): on SQLite it holds
    the write lock; on PostgreSQL the ``audit`` lock is taken here. Either way the head
    read here is still the head at commit.

    ``anchor``: the home's anchor file, which the caller writes after the commit. The
    first rows of an empty trail anchor its genesis before they are committed, so a crash
    between that first commit and its anchor leaves an anchor that lags (as after any
    later commit), never none at all, which ``verify`` must report as rows cut off.

    ``keys``: one per event, stored beside it (the column ``event_key``)."""
    stamped = list(stamped)
    if keys is not None and len(keys) != len(stamped):
        raise ValueError(f"{len(keys)} keys for {len(stamped)} events")
    serialize(conn, "audit")
    row_id, prev = head(conn)
    if anchor is not None and row_id == 0:
        anchor_genesis(anchor)
    ids: list[int] = []
    refs: list[tuple[int, str | None, str | None]] = []
    for n, (event, at) in enumerate(stamped):
        row_id += 1
        digest = row_hash(row_id, at, event, prev)
        conn.execute(insert(audit_table).values(
            id=row_id, at=at, action=event.action, org=event.org, address=event.address,
            path=event.path, size=event.size, sha256=event.sha256, detail=event.detail,
            prev_hash=prev, row_hash=digest, event_key=keys[n] if keys else None))
        refs.extend((row_id, r.item, r.person) for r in event.refs)
        prev = digest
        ids.append(row_id)
    if refs:  # a release of a big batch: one executemany
        Many(conn, audit_refs, ("event_id", "item", "person")).run(refs)
    return ids


def append(conn: Connection, events: Sequence[AuditEvent], now: datetime,
           anchor: Path | None = None) -> list[int]:
    """Append ``events`` at ``now`` in the caller's (write-locked) transaction; ``anchor``
    as for :func:`append_at`."""
    at = timestamp(now)
    return append_at(conn, [(e, at) for e in events], anchor)


# -- verifying --------------------------------------------------------------------

def event_of(row: Any, refs: Sequence[AuditRef] = ()) -> AuditEvent:
    return AuditEvent(action=row.action, org=row.org, address=row.address, path=row.path,
                      size=row.size, sha256=row.sha256, detail=row.detail, refs=tuple(refs))


def chain_problems(rows: Iterable[Any], refs: dict[int, list[AuditRef]]) -> list[str]:
    """Every break in a sequence of rows (oldest first) that should form one chain."""
    problems: list[str] = []
    expected_prev, expected_id = GENESIS, 1
    for row in rows:
        if row.id != expected_id:
            problems.append(
                f"row {row.id}: expected row id {expected_id} (rows missing or renumbered)")
        if row.prev_hash != expected_prev:
            problems.append(f"row {row.id}: prev_hash does not match the hash of the row "
                            "before it (a row was inserted, deleted or changed)")
        if row_hash(row.id, row.at, event_of(row, refs.get(row.id, ())),
                    row.prev_hash) != row.row_hash:
            problems.append(f"row {row.id}: content does not match its row_hash (changed)")
        expected_prev, expected_id = row.row_hash, row.id + 1
    return problems


def verify(engine: Engine, anchor: Path | None) -> list[str]:
    """Check the whole chain, and that it still reaches the anchored head; [] if intact."""
    with engine.connect() as conn:
        refs: dict[int, list[AuditRef]] = defaultdict(list)
        for r in conn.execute(select(audit_refs).order_by(audit_refs.c.id)):
            refs[r.event_id].append(AuditRef(r.item, r.person))
        rows = conn.execute(select(audit_table).order_by(audit_table.c.id))
        problems = chain_problems(rows, refs)
        last_id, _ = head(conn)
        known = set(conn.execute(select(audit_table.c.id)).scalars())
        if set(refs) - known:
            problems.append(f"references to missing rows {sorted(set(refs) - known)[:5]}")
        if anchor is None:
            return problems
        try:
            anchored = read_anchor(anchor)
        except (ValueError, KeyError):
            return [*problems, f"{anchor}: the anchored head is unreadable"]
        if anchored is None:
            if last_id:
                problems.append(f"{anchor}: the anchored head is missing, so rows cut off "
                                "the end cannot be ruled out")
            return problems
        # The anchor is written after each commit, so it may lag the table (a crash
        # between the two) but never lead it: a shorter table lost rows at its end. The
        # genesis (row 0) is anchored before the first commit, and every chain has it.
        at_anchor = GENESIS if anchored.id == 0 else conn.execute(
            select(audit_table.c.row_hash).where(audit_table.c.id == anchored.id)).scalar()
    if last_id < anchored.id:
        problems.append(f"rows cut off the end: the trail ends at row {last_id} but row "
                        f"{anchored.id} was anchored in {anchor}")
    elif at_anchor != anchored.hash:
        problems.append(f"row {anchored.id} is not the row anchored in {anchor} "
                        "(the trail was rewritten from there)")
    return problems


# -- the per-event writer for operator commands and tests -------------------------

def _record_of(row: Any) -> AuditRecord:
    return AuditRecord(id=row.id, at=datetime.fromisoformat(row.at), action=row.action,
                       org=row.org, address=row.address, path=row.path, size=row.size,
                       sha256=row.sha256, detail=row.detail, prev_hash=row.prev_hash,
                       row_hash=row.row_hash)


class AuditLog:
    """The trail in one database: one event per transaction (operator commands), reads,
    verification. The daemon's many small events go through AuditWriter instead."""

    _RETRIES = 20

    def __init__(self, engine: Engine, anchor: Path | None = None) -> None:
        self._engine = engine
        self._anchor = anchor
        self._lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def anchor(self) -> Path | None:
        return self._anchor

    def record(self, event: AuditEvent, now: datetime) -> int:
        """Append ``event`` at time ``now`` in its own transaction; returns the row id."""
        with self._lock:
            for _ in range(self._RETRIES):
                try:
                    with writer(self._engine).begin() as conn:
                        (row_id,) = append(conn, [event], now, self._anchor)
                    break
                except DBAPIError as exc:
                    # Busy (an ingest holds SQLite's write lock), or a writer that skipped
                    # the lock chained first (the UNIQUE prev_hash caught it): again.
                    if not (is_busy(exc) or is_conflict(exc)):
                        raise
                    time.sleep(0.01)
            else:
                raise RuntimeError("audit log: could not append after repeated conflicts")
        if self._anchor is not None:
            anchor_head(self._engine, self._anchor)
        return row_id

    def verify(self) -> list[str]:
        return verify(self._engine, self._anchor)

    def items(self, ids: Sequence[int]) -> dict[int, list[str]]:
        """The notification/list ids each of the rows ``ids`` carried (releases)."""
        out: dict[int, list[str]] = defaultdict(list)
        wanted = [int(i) for i in ids]
        with self._engine.connect() as conn:
            for chunk in in_chunks(wanted):
                for event_id, item in conn.execute(
                        select(audit_refs.c.event_id, audit_refs.c.item)
                        .where(audit_refs.c.event_id.in_(chunk)).order_by(audit_refs.c.id)):
                    out[event_id].append(item)
        return out

    def query(self, *, org: str | None = None, since: datetime | None = None,
              limit: int | None = None, action: str | None = None) -> list[AuditRecord]:
        """Matching records, oldest first; with ``limit``, the most recent ``limit``."""
        stmt = select(audit_table)
        if org is not None:
            stmt = stmt.where(audit_table.c.org == org)
        if action is not None:
            stmt = stmt.where(audit_table.c.action == action)
        if since is not None:
            stmt = stmt.where(audit_table.c.at >= timestamp(since))
        stmt = stmt.order_by(audit_table.c.id.desc())
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._engine.connect() as conn:
            rows: Sequence[Any] = conn.execute(stmt).all()
        return [_record_of(r) for r in reversed(rows)]
