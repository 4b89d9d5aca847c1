"""``kela-broker notification show ID``: the whole story of one notification.

Received (file, time), routed, released (delivery and file), downloaded (from the
audit log, when the organisation fetched that delivery file), receipted and every
transfer hop. The identity code is shown masked (SPEC 8).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import PurePosixPath
from zoneinfo import ZoneInfo

import click

from broker.cli.common import console, fail, home_of
from broker.domain.model import Notification
from broker.domain.pic import mask, mask_text
from broker.storage.response_store import StoryEvent, story


@click.group("notification")
def notification_group() -> None:
    """Look up single notifications."""


@notification_group.command("show")
@click.argument("notification_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def show(ctx: click.Context, notification_id: str, as_json: bool) -> None:
    """The whole story of NOTIFICATION_ID: received, routed, released, downloaded,
    receipted, transferred."""
    home = home_of(ctx)
    tz = ZoneInfo(home.config.timezone)
    found = story(home.store.engine, notification_id, home.config.timezone)
    if found is None:
        fail(f"no notification or list with id {notification_id!r}")
        return
    events = [*found.events, *_downloads(home, found.events)]
    events.sort(key=lambda e: (e.at is None, e.at.timestamp() if e.at else 0.0))
    person = "-"
    if found.kind == "notification":
        person = mask(Notification.from_json(found.payload).person.pic)

    def when(at: datetime | None) -> str:
        return at.astimezone(tz).isoformat(timespec="seconds") if at else "-"

    if as_json:
        click.echo(json.dumps({
            "id": found.id, "kind": found.kind, "type": found.type,
            "municipality": found.municipality, "urgent": found.urgent,
            "decision_date": found.decision_date.isoformat() if found.decision_date else None,
            "person": person,
            "events": [{"at": when(e.at), "event": e.kind, "organisation": e.organisation,
                        "text": mask_text(e.text)} for e in events]}, ensure_ascii=False, indent=2))
        return
    out = console()
    out.print(f"[bold]{found.id}[/bold]  {found.type}  municipality {found.municipality}"
              f"  decision {found.decision_date or '-'}"
              f"{'  urgent' if found.urgent else ''}  person {person}")
    for e in events:
        # Free text (a transfer's reason) may hold an identity code: masked too.
        out.print(f"  {when(e.at):25}  {e.kind:11}  {mask_text(e.text)}", markup=False)


def _downloads(home: object, events: list[StoryEvent]) -> list[StoryEvent]:
    """Downloads of the delivery files from the audit log, if this build has one."""
    try:
        from broker.storage.audit import AuditLog
    except ImportError:  # the audit log is optional for this view
        return []
    audit = getattr(home, "audit", None)
    if not isinstance(audit, AuditLog):
        return []
    out: list[StoryEvent] = []
    for e in events:
        if e.kind != "released" or not e.delivery_file or not e.organisation:
            continue
        for rec in audit.query(org=e.organisation):
            if rec.action == "download" and rec.path \
                    and PurePosixPath(rec.path).name == e.delivery_file:
                out.append(StoryEvent(rec.at, "downloaded", rec.org,
                                      f"downloaded by {rec.org} from {rec.address or '?'} "
                                      f"({rec.path})"))
    return out


