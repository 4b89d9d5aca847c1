"""``kela-broker bans``: see and lift the SFTP server's login bans (var/bans.json).

Works against a running daemon: it re-reads the file at the next connection.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import click
from rich.table import Table

from broker.cli.common import Home, console, fail, home_of
from broker.storage.audit import AuditEvent
from broker.storage.bans import BANS_FILE, BanStore


def _store(home: Home) -> BanStore:
    return BanStore(home.config.var / BANS_FILE)


@click.group("bans")
def bans_group() -> None:
    """Addresses refused by the SFTP server after failed logins."""


@bans_group.command("list")
@click.pass_context
def bans_list(ctx: click.Context) -> None:
    """Bans in force: address, organisation (or every one), until when, why."""
    home = home_of(ctx)
    try:
        bans = [b for b in _store(home).read() if b.until > time.time()]
    except ValueError as exc:
        fail(str(exc))
        return
    if not bans:
        click.echo("no bans in force")
        return
    table = Table("address", "organisation", "until (UTC)", "reason")
    for b in sorted(bans, key=lambda b: (b.address, b.org or "")):
        table.add_row(b.address, b.org or "(all)", b.until_text(), b.reason)
    console().print(table)


@bans_group.command("lift")
@click.argument("address")
@click.option("--org", help="Lift only the ban for this organisation.")
@click.pass_context
def bans_lift(ctx: click.Context, address: str, org: str | None) -> None:
    """Let ADDRESS log in again (every ban of it, or only --org ORG's)."""
    home = home_of(ctx)
    try:
        lifted = _store(home).lift(address, org, time.time())
    except ValueError as exc:
        fail(str(exc))
        return
    if not lifted:
        fail(f"no ban in force for {address}" + (f" as {org}" if org else ""))
        return
    now = datetime.now(UTC)
    for b in lifted:
        home.audit.record(AuditEvent("ban_lifted", b.org, b.address,
                                     detail=f"by operator; was until {b.until_text()}"), now)
        click.echo(f"lifted: {b.address} {b.org or '(all)'} (was until {b.until_text()})")
