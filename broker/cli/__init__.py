"""The ``kela-broker`` command line. Each command group lives in its own module.

Commands load lazily (click's documented LazyGroup pattern): ``kela-broker
validate`` does not pay for importing the database layer, the SFTP server or
the daemon, which keeps one-shot validation close to xmllint's start-up time.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

import click

# command name -> "module:attribute"
COMMANDS: dict[str, str] = {
    "run": "broker.cli.ops:run",
    "init": "broker.cli.ops:init",
    "config": "broker.cli.ops:config_group",
    "routes": "broker.cli.routes:routes_group",
    "validate": "broker.cli.validate:validate",
    "ingest": "broker.cli.flow:ingest",
    "status": "broker.cli.flow:status",
    "demo": "broker.cli.flow:demo",
    "schedule": "broker.cli.flow:schedule",
    "release-due": "broker.cli.flow:release_due",
    "release": "broker.cli.flow:release",
    "audit": "broker.cli.audit:audit_group",
    "notification": "broker.cli.notifications:notification_group",
    "keys": "broker.cli.keys:keys_group",
    "hostkey": "broker.cli.keys:hostkey",
    "bans": "broker.cli.bans:bans_group",
    "db": "broker.cli.db:db_group",
}


@dataclass(frozen=True)
class CliState:
    home: Path


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command)
        return command

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise  # click's own control flow (ctx.exit, usage errors)
        except Exception as exc:
            from sqlalchemy.exc import DBAPIError  # only now: keeps start-up light

            from broker.errors import BrokerError
            from broker.storage.db_errors import DbFailure, kind_of

            if isinstance(exc, BrokerError):  # the broker's own: its message says it all
                click.echo(f"kela-broker: {exc}", err=True)
                ctx.exit(1)
            if not isinstance(exc, DBAPIError):
                raise
            kind = kind_of(exc)
            first = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
            if kind is DbFailure.BUSY:
                # The daemon holds the write lock while it takes in a large file.
                click.echo("kela-broker: the state database is busy (the daemon is taking in "
                           "a large file); nothing was changed, try again shortly", err=True)
            elif kind is DbFailure.CONFLICT:
                click.echo("kela-broker: another process changed the same records at the same "
                           f"moment ({first}); this command's change was not made, run it "
                           "again", err=True)
            elif kind is DbFailure.UNAVAILABLE:
                click.echo(f"kela-broker: the state database cannot be reached ({first}); "
                           "nothing was changed", err=True)
            else:  # a damaged file: say so, never a traceback
                click.echo(f"kela-broker: the state database cannot be read ({first}); "
                           "nothing was changed. Restore it from the backup.", err=True)
            ctx.exit(1)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    envvar="KELA_BROKER_HOME",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Broker home: config/, inbox/, outbox/, var/ (env KELA_BROKER_HOME).",
)
@click.version_option(package_name="kela-file-broker")
@click.pass_context
def main(ctx: click.Context, home: Path) -> None:
    """kela-file-broker: validate, route, schedule and serve Kela's files."""
    # Everything the broker writes holds personal data: the database and its WAL,
    # logs, deliveries. A private umask covers even files that libraries create.
    os.umask(0o077)
    ctx.obj = CliState(home=home.resolve())
