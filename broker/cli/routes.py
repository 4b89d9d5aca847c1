"""``kela-broker routes explain MUNICIPALITY TYPE --on DATE``: which route, and why."""

from __future__ import annotations

from datetime import UTC, date, datetime

import click
from rich.table import Table

from broker.cli.common import console, fail, home_of
from broker.config.routing import explain
from broker.domain.model import ALL_TYPES
from broker.storage.store import today_in


@click.group("routes")
def routes_group() -> None:
    """Routing of (type, municipality, date) to organisations."""


def _day(_ctx: click.Context, _param: click.Parameter, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date such as 2024-12-31") from None


@routes_group.command("explain")
@click.argument("municipality")
@click.argument("type_", metavar="TYPE", type=click.Choice(ALL_TYPES, case_sensitive=False))
@click.option("--on", "on", metavar="YYYY-MM-DD", callback=_day,
              help="The item's date: a notification's DecisionDate, a list's periodEnd "
                   "(default: today in the broker's time zone).")
@click.pass_context
def routes_explain(ctx: click.Context, municipality: str, type_: str, on: date | None) -> None:
    """Where TYPE for MUNICIPALITY goes on a date, and why
    (e.g. `routes explain 837 IMMIGRANT --on 2024-12-31`)."""
    cfg = home_of(ctx).config
    day = on or today_in(cfg.timezone, datetime.now(UTC))
    type_ = type_.upper()
    ex = explain(cfg, type_, municipality.zfill(3), day)
    for reason in ex.reasons:
        click.echo(f"  - {reason}")
    if ex.organisation is None:
        fail(f"{type_} for {municipality} on {day}: no single receiving organisation")
        return
    o = ex.organisation
    table = Table(show_header=False)
    table.add_row("organisation", f"{o.id} ({o.name})")
    table.add_row("on", day.isoformat())
    table.add_row("format", o.format)
    table.add_row("delivery", f"SFTP /from-kela/ ({cfg.outbox / o.id})" if o.push is None
                  else f"pushed to {o.push.user}@{o.push.host}:{o.push.remote_dir}")
    table.add_row("release", str(cfg.timing[type_]))
    console().print(table)
