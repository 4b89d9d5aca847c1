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
    """The audit trail: releases, downloads, uploads, pushes, logins, operator actions."""


@audit_group.command("show")
@click.option("--org", help="Only this organisation.")
@click.option("--action", help="Only this action (release, download, push, login, ...).")
@click.option("--since", metavar="ISO-8601", help="Only records at or after this time.")
@click.option("--limit", type=int, default=None, help="At most this many (newest).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def audit_show(ctx: click.Context, org: str | None, action: str | None, since: str | None,
               limit: int | None, as_json: bool) -> None:
    """List audit records, oldest first."""
    home = home_of(ctx)
    since_at: datetime | None = parse_now(since) if since else None
    records = home.audit.query(org=org, since=since_at, limit=limit, action=action)
    if as_json:
        carried = home.audit.items([r.id for r in records])
        click.echo(json.dumps([{
            "id": r.id, "at": r.at.isoformat(), "action": r.action, "org": r.org,
            "address": r.address, "path": r.path, "size": r.size, "sha256": r.sha256,
            "detail": r.detail, **({"items": carried[r.id]} if r.id in carried else {})}
            for r in records], indent=2))
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


@audit_group.command("person")
@click.argument("code")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def audit_person(ctx: click.Context, code: str, as_json: bool) -> None:
    """Every delivery, download, push and transfer that carried this person's data.

    CODE is the identity code in full; it is shown masked.
    """
    from broker.domain.pic import mask, problem
    from broker.storage.audit import audit_key
    from broker.storage.audit_person import person_trail

    code = code.strip().upper()
    if (why := problem(code)) is not None:
        fail(why, 2)
    home = home_of(ctx)
    trail = home.audit
    found = person_trail(trail.engine, audit_key(home.config.var), code)
    shown = mask(code)
    if as_json:
        click.echo(json.dumps({"person": shown, "disclosures": [d.as_dict() for d in found]},
                              indent=2))
        return
    tz = ZoneInfo(home.config.timezone)
    table = Table(title=f"Disclosures of {shown} ({len(found)})")
    for col in ("time (Helsinki)", "action", "organisation", "file", "address", "size",
                "detail"):
        table.add_column(col)
    for d in found:
        table.add_row(d.at.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S"), d.action,
                      d.org or "", d.path or "", d.address or "",
                      "" if d.size is None else str(d.size), d.detail or "")
    console().print(table)
