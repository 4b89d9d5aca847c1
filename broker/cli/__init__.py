"""The ``kela-broker`` command line. Each command group lives in its own module."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click


@dataclass(frozen=True)
class CliState:
    home: Path


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
    ctx.obj = CliState(home=home.resolve())


def _register() -> None:
    # Each module defines its commands standalone; wiring happens only here.
    from broker.cli import audit, flow, notifications, ops, validate

    for module in (ops, flow, validate, audit, notifications):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
