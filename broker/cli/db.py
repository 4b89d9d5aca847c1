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
