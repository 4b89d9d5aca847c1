"""``kela-broker db``: the state database's schema revision, and upgrading it.

The daemon upgrades at start too; this is for doing it on purpose (after taking a
backup, before starting a new release) and for seeing where a database stands.
"""

from __future__ import annotations

import click

from broker.cli.common import fail, home_of


@click.group("db")
def db_group() -> None:
    """The state database: schema revision and upgrades (SQLite or PostgreSQL)."""


@db_group.command("upgrade")
@click.pass_context
def upgrade(ctx: click.Context) -> None:
    """Bring the state database to this release's schema (a no-op when it is there)."""
    from broker.errors import StoreError
    from broker.storage.db import open_engine
    from broker.storage.schema import ensure_schema
    from broker.storage.state_db import TABLE_MODULES
    from broker.storage.state_guard import check_state_store, store_name

    assert TABLE_MODULES  # every table is on the metadata before a new database is made
    cfg = home_of(ctx).config
    try:
        check_state_store(cfg)  # never make an empty database in a used home
        engine = open_engine(cfg.storage_url)
        try:
            done = ensure_schema(engine)
        finally:
            engine.dispose()
    except StoreError as exc:
        fail(str(exc))
        return
    where = store_name(cfg)
    if not done.changed:
        click.echo(f"{where}: already at schema revision {done.after}")
    elif done.before is None:
        click.echo(f"{where}: made new at schema revision {done.after}")
    else:
        click.echo(f"{where}: upgraded from schema revision {done.before} to {done.after}")


@db_group.command("status")
@click.pass_context
def status(ctx: click.Context) -> None:
    """Which database, its engine and schema revision, and this release's."""
    from broker.storage.db import open_engine
    from broker.storage.schema import HEAD, revision
    from broker.storage.state_guard import database_state, store_name

    cfg = home_of(ctx).config
    state = database_state(cfg)
    click.echo(f"database: {store_name(cfg)}")
    if state != "ok":
        click.echo(f"state: {state}")
        click.echo(f"this release's schema revision: {HEAD}")
        return
    engine = open_engine(cfg.storage_url)
    try:
        with engine.connect() as c:
            current = revision(c) or "none (made before migrations; `db upgrade` stamps it)"
            version = ".".join(map(str, c.dialect.server_version_info or ()))
            click.echo(f"engine: {c.dialect.name} {version}")
    finally:
        engine.dispose()
    click.echo(f"schema revision: {current}")
    click.echo(f"this release's schema revision: {HEAD}")


@db_group.command("copy")
@click.argument("target_url", metavar="TARGET_URL")
@click.pass_context
def copy(ctx: click.Context, target_url: str) -> None:
    """Copy the whole state database to TARGET_URL, a new, empty database: moving a home
    from SQLite to PostgreSQL (postgresql://user@host/db), or back (sqlite:///path/x.db).

    Stop the daemon first. Nothing is changed in the source; a copy that fails leaves
    the target empty. Then point [storage] url at the target.
    """
    import os
    import time
    from pathlib import Path

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, DBAPIError

    from broker.config.types import sqlite_path, sqlite_url
    from broker.errors import StoreError
    from broker.runtime.run_file import running_pid
    from broker.storage.db import open_engine
    from broker.storage.db_copy import copy_database
    from broker.storage.db_errors import store_error
    from broker.storage.state_guard import database_state, store_name

    cfg = home_of(ctx).config
    url = target_url
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        fail(f"{target_url!r} is not a database URL (sqlite:///path or "
             "postgresql://user@host/database)")
        return
    path = sqlite_path(url)
    if path is not None:  # a path on the command line is the shell's, not the home's
        path = path if path.is_absolute() else Path.cwd() / path
        url = shown = sqlite_url(path)
    elif make_url(url).get_backend_name() != "postgresql":
        fail(f"the target must be a SQLite file or a PostgreSQL database, not {shown}")
        return
    if url == cfg.storage_url or (path is not None and path == cfg.database):
        fail("the target is the home's own database")
        return
    state = database_state(cfg)
    if state != "ok":
        fail(f"the home's database ({store_name(cfg)}) is not there to copy: {state}")
        return
    pid = running_pid(cfg.var)
    if pid is not None:
        fail(f"the daemon is running on this home (pid {pid}): stop it first, so that "
             "nothing is written while the copy reads")
        return
    if path is not None and not path.exists():  # the state is personal data: 0600 at once
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    source, target = open_engine(cfg.storage_url), open_engine(url)
    started = time.monotonic()
    try:
        done = copy_database(source, target, on_table=lambda name, n: click.echo(
            f"  {name}: {n} rows"))
    except StoreError as exc:
        fail(f"{exc}; the target was left as it was")
        return
    except DBAPIError as exc:  # through the one mapping: no traceback, no values
        fail(f"{store_error(exc)}; the target was left as it was")
        return
    finally:
        source.dispose()
        target.dispose()
    click.echo(f"copied {done.rows} rows of {len(done.tables)} tables from "
               f"{store_name(cfg)} to {shown} in {time.monotonic() - started:.1f} s")
    click.echo("to use the copy, set in config/broker.toml (with the password, if any):\n"
               f'[storage]\nurl = "{shown}"')
