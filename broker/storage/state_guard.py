"""The state store is never silently recreated.

Opening SQLite creates a missing file (and a PostgreSQL database restored empty, or
the wrong database named in ``[storage] url``, looks the same), so a lost state store
would come back empty: every notification forgotten, every id free for reuse, the next
release numbering files from 1 again. Before the database is opened, this checks
whether the home has been used (archived inputs, deliveries in the outboxes, an
audit trail) and refuses an absent or empty database in a used home, unless the
operator says ``--initialise``. A file that is not a readable database is refused
at start; while running, the daemon's health check reports it instead.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy.pool import NullPool

from broker.config.settings import Config
from broker.config.types import sqlite_file_uri
from broker.errors import StoreError, StoreUnavailable
from broker.storage.db_errors import DbFailure, kind_of, store_error


class StateMissing(StoreError):
    """The state database is absent or empty in a home that has been used."""


def evidence(config: Config) -> list[str]:
    """What in the home shows it has been used, one phrase per kind (empty if nothing)."""
    found: list[str] = []

    def count(paths: list[Path], what: str) -> None:
        n = sum(1 for p in paths if p.is_file())
        if n:
            found.append(f"{n} {what}")

    var = config.var
    count(list((var / "archive").rglob("*")), "archived input file(s)")
    count(list((var / "quarantine").rglob("*")), "quarantined file(s)")
    outboxes = [p for p in config.outbox.glob("*/*") if p.name[:2] in ("D-", "L-")]
    count(outboxes, "delivery file(s) in the outboxes")
    count([var / "audit.head", var / "audit.db", var / "audit.db.migrated"],
          "audit trail file(s)")
    return found


def database_state(config: Config) -> str:
    """"missing", "empty" (no tables of ours), "unreadable: <why>", "unreachable: <why>"
    (a server that does not answer) or "ok"."""
    path = config.database
    if path is None:
        return _server_state(config.storage_url)
    if not path.exists():
        return "missing"
    if path.stat().st_size == 0:
        return "empty"
    try:
        with sqlite3.connect(sqlite_file_uri(path, "ro"), uri=True) as c:
            n = c.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'"
                          " AND name = 'input_files'").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        return f"unreadable: {exc}"
    return "ok" if n else "empty"


def _server_state(url: str) -> str:
    """The same question of a database server (the server itself must be there)."""
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.exc import DBAPIError

    from broker.storage.db import server_timeouts

    engine = create_engine(url, poolclass=NullPool, connect_args=server_timeouts(url))
    try:
        with engine.connect() as c:
            return "ok" if inspect(c).has_table("input_files") else "empty"
    except DBAPIError as exc:
        if kind_of(exc) is DbFailure.UNAVAILABLE:
            return f"unreachable: {store_error(exc)}"
        return f"unreadable: {store_error(exc)}"
    finally:
        engine.dispose()


def store_name(config: Config) -> str:
    """The state database as an operator knows it: its file, or its URL without secrets."""
    from sqlalchemy.engine import make_url

    if config.database is not None:
        return str(config.database)
    url = make_url(config.storage_url)
    return url.set(query={}).render_as_string(hide_password=True)  # ?password= too


def check_state_store(config: Config, *, initialise: bool = False) -> None:
    """Raise StateMissing (or StoreError for an unreadable file) before opening the store."""
    state = database_state(config)
    where = store_name(config)
    if state.startswith("unreachable"):  # the server, not the data: never "restore"
        raise StoreUnavailable(f"{state[13:]}; nothing was changed. Check that the server "
                               "runs and [storage] url (host, port, database, user)",
                               file=where)
    if state.startswith("unreadable"):
        raise StoreError(f"the state database is not readable ({state[12:]}); restore it "
                         "from the backup, nothing was changed", file=where)
    if state == "ok" or initialise:
        return
    used = evidence(config)
    if used:
        raise StateMissing(
            f"the state database is {state}, but this home has been used "
            f"({', '.join(used)}); refusing to start with a new, empty one. Restore "
            f"{where} from the backup, or start with --initialise to make a "
            "new one (every earlier notification is then forgotten)",
            file=where)
