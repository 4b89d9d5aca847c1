"""The SQLite engine and the one MetaData every table module registers on.

SQLite in WAL mode: readers (``status``, ``audit show``) never block the daemon,
and a crash leaves the last committed transaction intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, create_engine, event

metadata = MetaData()


def make_engine(path: Path) -> Engine:
    """Open (creating if needed) the state database at ``path`` with every table."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    engine = create_engine(f"sqlite:///{path}", future=True)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")  # a committed row survives power loss
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.close()

    # Import the table modules so that every table is on ``metadata``.
    import broker.audit
    import broker.pushes
    import broker.response_store
    import broker.store  # noqa: F401

    metadata.create_all(engine)
    if path.exists():
        path.chmod(0o600)
    return engine
