"""The database's schema revision, brought to the code's before anything else runs.

Alembic keeps the revisions (``broker/storage/migrations/versions``). Opening the store
(the daemon at start, every command) checks the revision with one query; only when it
is behind does Alembic load and upgrade, in one transaction that also holds the
``schema`` lock, so two processes starting together upgrade once. ``kela-broker db
upgrade`` does the same on demand and says what it did.

- A new, empty database is made at the head (``create_all``) and stamped.
- A home made before migrations existed (tables, no ``alembic_version``) is stamped
  with the baseline, ``0001``, and upgraded from there.
- A database at a revision this code does not know (made by a newer release) is
  refused: running old code on it could undo what the newer code relies on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, inspect, text
from sqlalchemy.engine import Connection

from broker.errors import StoreError
from broker.storage.db import audit_metadata, metadata, serialize, writer

HEAD = "0005"  # the newest revision in migrations/versions (a test holds them equal)
BASELINE = "0001"  # what homes made before migrations existed are
MIGRATIONS = Path(__file__).with_name("migrations")


class SchemaTooNew(StoreError):
    """The database was upgraded by a newer release than this one."""


@dataclass(frozen=True)
class Upgrade:
    before: str | None  # None: a new database
    after: str

    @property
    def changed(self) -> bool:
        return self.before != self.after


class SchemaUnknown(StoreError):
    """The database records no revision, yet has a version table: its schema is a guess."""


def revision(conn: Connection) -> str | None:
    """The stamped revision; None when unstamped (new, or made before migrations).

    A version table with no row in it is neither: this code never leaves one (the stamp
    is in the transaction that makes the tables), so someone or something emptied it. Its
    tables may be at any revision, and replaying migrations over them on a guess could
    half-apply: refused, with what to do."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    found = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    if found is None:
        raise SchemaUnknown(
            "the state database has a schema version table with no revision in it, so "
            "which schema its tables have is unknown; nothing was changed. Restore the "
            "backup taken before it was emptied")
    return str(found)


def _has_tables(conn: Connection) -> bool:
    return inspect(conn).has_table("input_files")


def ensure_schema(engine: Engine) -> Upgrade:
    """Bring the database to :data:`HEAD` (see the module doc); returns what was done."""
    with engine.connect() as c:  # the common case: one read, no lock, no Alembic
        if revision(c) == HEAD:
            return Upgrade(HEAD, HEAD)
    with writer(engine).begin() as c:
        serialize(c, "schema")
        before = revision(c)
        if before == HEAD:
            return Upgrade(HEAD, HEAD)
        if before is None and not _has_tables(c):
            make_at_head(c)
            return Upgrade(None, HEAD)
        if before is None:
            _alembic(c, "stamp", BASELINE)
            before = BASELINE
        _alembic(c, "upgrade", HEAD)
        return Upgrade(before, HEAD)


def make_at_head(conn: Connection) -> None:
    """Make every table of a new database, stamped :data:`HEAD`, in ``conn``'s transaction."""
    metadata.create_all(conn)
    audit_metadata.create_all(conn)
    _alembic(conn, "stamp", HEAD)


def _alembic(conn: Connection, command: str, target: str) -> None:
    """Run an Alembic command on ``conn`` inside its open transaction (Alembic is loaded
    only here: most starts find the schema current and never need it)."""
    from alembic import command as commands
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError

    cfg = AlembicConfig()
    # Alembic's options go through ConfigParser's interpolation: a "%" in the install
    # path (a venv under such a folder) is written doubled to be read back as itself.
    cfg.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    cfg.attributes["connection"] = conn
    current = revision(conn)
    if current is not None:
        try:
            ScriptDirectory.from_config(cfg).get_revision(current)
        except CommandError:
            raise SchemaTooNew(
                f"the state database is at schema revision {current}, which this release "
                f"does not know (its newest is {HEAD}): it was upgraded by a newer release. "
                "Run that release, or restore the backup taken before the upgrade") from None
    getattr(commands, command)(cfg, target)
