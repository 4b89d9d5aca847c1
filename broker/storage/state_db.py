"""The state database with every table: what the daemon, the CLI and the tests open.

The table modules register on ``broker.storage.db.metadata`` (and the audit trail's on
``audit_metadata``); importing them here (and not from
``broker.storage.db``, which they import) keeps the imports one-way.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from broker.storage import audit, pushes, response_store, store
from broker.storage.db import audit_metadata, metadata, open_engine

TABLE_MODULES = (audit, pushes, response_store, store)  # each defines tables on metadata


def make_engine(path: Path) -> Engine:
    """Open (creating if needed) the state database at ``path`` with every table."""
    engine = open_engine(path)
    metadata.create_all(engine)
    audit_metadata.create_all(engine)
    if path.exists():
        path.chmod(0o600)
    return engine
