"""One-time move of the old separate audit database (``var/audit.db``) into state.db.

Crash-safe and idempotent: the copy and a closing ``audit-migrated`` row (naming the
old file's head hash) commit in one transaction; only then is the old file renamed to
``audit.db.migrated``. A crash before the rename leaves a file whose head hash is
already recorded, and the next start just renames it.

An intact old chain into an empty trail is copied verbatim (same ids, same hashes:
its history stays provable). Otherwise (the trail already has rows, or the old chain
is broken) the old rows are chained on as new rows and the migration row records the
problems found: the evidence is kept, and the new chain stays verifiable.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from sqlalchemy import Engine, insert, select

from broker.config.types import sqlite_file_uri
from broker.storage.audit import (
    GENESIS,
    AuditEvent,
    anchor_genesis,
    anchor_head,
    append_at,
    audit_table,
    chain_problems,
    event_of,
    head,
    timestamp,
)
from broker.storage.db import serialize, writer
from broker.storage.files import fsync_dir

_SELECT = ("SELECT id, at, action, org, address, path, size, sha256, detail, prev_hash,"
           " row_hash FROM audit_log ORDER BY id")


class _Row(NamedTuple):
    """One row of the old table, with the attribute names chain_problems reads."""

    id: int
    at: str
    action: str
    org: str | None
    address: str | None
    path: str | None
    size: int | None
    sha256: str | None
    detail: str | None
    prev_hash: str
    row_hash: str


def _legacy_rows(path: Path) -> list[_Row] | None:
    """The old rows; None when the file is gone (another process moved it just now)."""
    try:  # mode=rw: never create an empty file where the old one was
        conn = sqlite3.connect(sqlite_file_uri(path, "rw"), uri=True)
    except sqlite3.OperationalError:
        if path.exists():
            raise
        return None
    try:
        have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "audit_log" not in have:
            return []
        return [_Row(*r) for r in conn.execute(_SELECT)]
    finally:
        conn.close()  # the last connection checkpoints and removes the -wal file


def migrate_legacy(engine: Engine, legacy_path: Path, anchor: Path | None,
                   now: datetime) -> int:
    """Copy ``legacy_path`` into the trail once, then rename it aside; returns the number
    of rows copied (0 when there is nothing to do or it was done before a crash).

    Nothing is logged here (a command's --json output must stay clean): the migration
    and any break found in the old chain are on the trail itself, in its
    ``audit-migrated`` row; the daemon logs the count."""
    if not legacy_path.exists():
        return 0
    rows = _legacy_rows(legacy_path)
    if rows is None:
        return 0
    problems = chain_problems(rows, {})
    legacy_head = rows[-1].row_hash if rows else GENESIS
    copied = 0
    with writer(engine).begin() as conn:
        serialize(conn, "audit")  # two processes starting at once copy it once
        done = conn.execute(select(audit_table.c.id).where(
            audit_table.c.action == "audit-migrated",
            audit_table.c.sha256 == legacy_head)).first()
        if done is None:
            verbatim = head(conn)[0] == 0 and not problems
            if verbatim:
                if anchor is not None:  # as append_at does for the first rows of a trail
                    anchor_genesis(anchor)
                if rows:
                    conn.execute(insert(audit_table), [r._asdict()
                                                       for r in rows])
            else:
                append_at(conn, [(event_of(r), r.at) for r in rows], anchor)
            copied = len(rows)
            detail = {"rows": len(rows), "verbatim": verbatim, "problems": problems[:20]}
            append_at(conn, [(AuditEvent("audit-migrated", None, path=legacy_path.name,
                                         size=len(rows), sha256=legacy_head,
                                         detail=json.dumps(detail)), timestamp(now))],
                      anchor)
    if anchor is not None:
        anchor_head(engine, anchor)
    _set_aside(legacy_path)
    return copied


def _set_aside(path: Path) -> None:
    """Rename the old file (and any sidecars) to a name no earlier migration used."""
    target = path.with_name(path.name + ".migrated")
    n = 0
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.migrated.{n}")
    for suffix in ("", "-wal", "-shm"):
        # Another process moving the same file at the same moment is fine: it is aside.
        with contextlib.suppress(FileNotFoundError):
            os.replace(path.with_name(path.name + suffix),
                       target.with_name(target.name + suffix))
    fsync_dir(path.parent)
