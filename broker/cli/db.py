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

    Stop the daemon first (the copy refuses while it runs, and holds it off meanwhile).
    Nothing is changed in the source; a copy that fails leaves the target empty. A
    relative SQLite path is the current folder's. Then point [storage] url at the target.
    """
    import os
    import time
    from pathlib import Path

    from sqlalchemy.exc import DBAPIError

    from broker.errors import HomeBusy, StoreError
    from broker.runtime.run_file import home_lock
    from broker.storage.db import open_engine
    from broker.storage.db_copy import copy_database, target_of
    from broker.storage.db_errors import store_error
    from broker.storage.state_guard import database_state, store_name

    cfg = home_of(ctx).config
    try:
        target = target_of(target_url, Path.cwd())
    except StoreError as exc:
        fail(str(exc))
        return
    own = cfg.database
    if target.url == cfg.storage_url or (
            target.path is not None and own is not None and target.path.exists()
            and own.exists() and os.path.samefile(target.path, own)):
        fail("the target is the home's own database")
        return
    state = database_state(cfg)
    if state != "ok":
        fail(f"the home's database ({store_name(cfg)}) is not there to copy: {state}")
        return
    started = time.monotonic()
    try:
        # Held for the whole copy: no daemon starts on the home meanwhile (run_file).
        with home_lock(cfg.var, "copy the state database"):
            if target.path is not None:  # the state is personal data: 0600 before any byte
                target.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                os.close(os.open(target.path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW,
                                 0o600))
                target.path.chmod(0o600)  # one that was there keeps its mode otherwise
            source = open_engine(cfg.storage_url)
            try:
                dest = open_engine(target.url)
                try:
                    done = copy_database(source, dest, on_table=lambda name, n: click.echo(
                        f"  {name}: {n} rows"))
                finally:
                    dest.dispose()
            finally:
                source.dispose()
    except HomeBusy as exc:
        fail(str(exc))
        return
    except StoreError as exc:
        fail(f"{exc}; the target was left as it was")
        return
    except DBAPIError as exc:  # through the one mapping: no traceback, no values
        fail(f"copying to {target.shown}: {store_error(exc)}; the target was left as it was")
        return
    except OSError as exc:
        fail(f"the target {target.shown}: {exc.strerror or exc}; nothing was copied")
        return
    click.echo(f"copied {done.rows} rows of {len(done.tables)} tables from "
               f"{store_name(cfg)} to {target.shown} in {time.monotonic() - started:.1f} s")
    click.echo("to use the copy, set in config/broker.toml (with the password, if any):\n"
               f'[storage]\nurl = "{target.shown}"')

