"""``kela-broker audit``: read and verify the hash-chained audit trail."""

from __future__ import annotations

import json
from datetime import datetime
from zoneinfo import ZoneInfo

import click
from rich.table import Table

from broker.cli.common import console, fail, home_of, parse_now


@click.group("audit")
def audit_group() -> None:
    """The audit trail: logins, downloads, uploads, deletes, early releases."""


@audit_group.command("show")
@click.option("--org", help="Only this organisation.")
@click.option("--since", metavar="ISO-8601", help="Only records at or after this time.")
@click.option("--limit", type=int, default=None, help="At most this many (newest).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def audit_show(ctx: click.Context, org: str | None, since: str | None, limit: int | None,
               as_json: bool) -> None:
    """List audit records, oldest first."""
    home = home_of(ctx)
    since_at: datetime | None = parse_now(since) if since else None
    records = home.audit.query(org=org, since=since_at, limit=limit)
    if as_json:
        click.echo(json.dumps([{
            "id": r.id, "at": r.at.isoformat(), "action": r.action, "org": r.org,
            "address": r.address, "path": r.path, "size": r.size, "sha256": r.sha256,
            "detail": r.detail} for r in records], indent=2))
        return
    tz = ZoneInfo(home.config.timezone)
    table = Table(title=f"Audit trail ({len(records)} records)")
    for col in ("id", "time (Helsinki)", "action", "organisation", "address", "file",
                "size", "detail"):
        table.add_column(col)
    for r in records:
        table.add_row(str(r.id), r.at.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S"), r.action,
                      r.org or "", r.address or "", r.path or "",
                      "" if r.size is None else str(r.size), r.detail or "")
    console().print(table)


@audit_group.command("verify")
@click.pass_context
def audit_verify(ctx: click.Context) -> None:
    """Check the hash chain: exit 1 and name the rows when anything was altered."""
    problems = home_of(ctx).audit.verify()
    if problems:
        for p in problems:
            click.echo(p, err=True)
        fail(f"audit trail is NOT intact: {len(problems)} problem(s)")
    click.echo("audit trail intact")


