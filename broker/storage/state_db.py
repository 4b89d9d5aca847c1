"""The state database with every table: what the daemon, the CLI and the tests open.

The table modules register on ``broker.storage.db.metadata`` (and the audit trail's on
``audit_metadata``); importing them here (and not from ``broker.storage.db``, which they
import) keeps the imports one-way. Opening brings the schema to the code's revision
(``broker.storage.schema``).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from broker.config.types import sqlite_path
from broker.storage import audit, counters, pushes, response_store, store
from broker.storage.db import open_engine
from broker.storage.schema import ensure_schema

TABLE_MODULES = (audit, counters, pushes, response_store, store)  # each defines tables


def make_engine(url: str | Path) -> Engine:
    """Open the state database at ``url`` (a Path: a SQLite file) with every table, at
    the schema revision of this code."""
    engine = open_engine(url)
    ensure_schema(engine)
    path = url if isinstance(url, Path) else sqlite_path(url)
    if path is not None and path.exists():
        path.chmod(0o600)
    return engine
