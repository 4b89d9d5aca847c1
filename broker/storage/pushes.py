"""Which outbox files still have to be pushed to organisations' own SFTP servers.

The outbox stays the source of truth: a push copies what a release wrote. Each
pushed file is recorded, so a restart pushes only what is missing; a file whose
push was cut short is pushed again under the same name (never a second copy).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import Column, Engine, String, Table, Text, select

from broker.storage.audit import AuditEvent, anchor_head, append
from broker.storage.db import ByteSize, insert_ignoring, metadata, writer
from broker.storage.db_errors import DbFailure, kind_of, retrying
from broker.storage.files import is_hidden_or_partial
from broker.storage.tables import UTCDateTime

pushes = Table(
    "pushes", metadata,
    Column("organisation", String(64), primary_key=True),
    Column("file", Text, primary_key=True),  # relative to outbox/<org>/, e.g. acks/x.ack.xml
    Column("size", ByteSize, nullable=False),
    Column("pushed_at", UTCDateTime, nullable=False),
    Column("remote", String(255), nullable=False),
)


def outbox_files(folder: Path) -> list[str]:
    """Complete files under ``folder`` (recursively), relative, oldest first."""
    found: list[tuple[int, str]] = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if any(is_hidden_or_partial(part) for part in rel.parts):
            continue
        if p.is_file() and not p.is_symlink():
            found.append((p.stat().st_mtime_ns, rel.as_posix()))
    return [name for _, name in sorted(found)]


def pending(engine: Engine, org: str, folder: Path) -> list[str]:
    with engine.connect() as c:
        done = {r.file for r in c.execute(select(pushes.c.file)
                                          .where(pushes.c.organisation == org))}
    return [f for f in outbox_files(folder) if f not in done]


def record(engine: Engine, org: str, file: str, size: int, remote: str, now: datetime,
           sha256: str | None = None, anchor: Path | None = None) -> None:
    """A file is on the organisation's server: recorded, and on the audit trail in the
    same transaction (a push is a disclosure), the trail's head anchored after."""
    def record_it() -> None:
        with writer(engine).begin() as c:
            done = c.execute(insert_ignoring(c, pushes).values(
                organisation=org, file=file, size=size, remote=remote, pushed_at=now)).rowcount
            if done:
                append(c, [AuditEvent("push", org, path=file, size=size, sha256=sha256,
                                      detail=remote)], now, anchor)

    # The file is on their server: the record must not be lost. Busy or a dropped
    # connection is tried again; the insert is idempotent (a commit that landed before
    # the connection dropped adds nothing, not even a second audit row).
    retrying(record_it, when=lambda e: kind_of(e) in (DbFailure.BUSY, DbFailure.UNAVAILABLE))
    if anchor is not None:
        anchor_head(engine, anchor)
