"""Day-to-day commands: ingest, status, demo, schedule and releases."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from broker.cli.common import console, fail, home_of, parse_now
from broker.config.settings import Config
from broker.delivery.release import Releaser
from broker.domain.model import ALL_TYPES, ListType, NotificationType
from broker.intake.ingest import ingest_batch
from broker.responses.process import unreceipted
from broker.storage import audit
from broker.storage.audit import AuditEvent, anchor_head
from broker.storage.db import writer

# A --now this little ahead of the clock is the operator's typing, not an early release.
FUTURE_TOLERANCE = timedelta(minutes=1)


@click.command()
@click.argument("files", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def ingest(ctx: click.Context, files: tuple[Path, ...]) -> None:
    """Take in decision batches once (no daemon needed) and release what is due."""
    home = home_of(ctx)
    cfg, store = home.config, home.store
    rejected = 0
    for path in files:
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[n]}"
                      " items"), TimeElapsedColumn(), console=console(), transient=True) as bar:
            task = bar.add_task(path.name, total=None, n=0)
            outcome = ingest_batch(path, config=cfg, store=store,
                                   now=datetime.now(UTC),
                                   on_progress=lambda n, t=task: bar.update(t, n=n))  # type: ignore[misc]
        if outcome.status == "rejected":
            rejected += 1
            for p in outcome.problems:
                click.echo(str(p), err=True)
            click.echo(f"{path}: REJECTED ({len(outcome.problems)} problem(s)); nothing stored")
        else:
            click.echo(f"{path}: {outcome.status.upper()}: {outcome.new} new, "
                       f"{outcome.unchanged} already known")
            for p in outcome.warnings:  # e.g. a merged municipality's code after the merger
                click.echo(f"warning: {p}", err=True)
    result = Releaser(cfg, store).run(datetime.now(UTC))
    if result.deliveries:
        click.echo(f"released {len(result.deliveries)} delivery file(s)")
    ctx.exit(1 if rejected else 0)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Counts by state and organisation, and when held notifications are due."""
    home = home_of(ctx)
    store, tz = home.store, ZoneInfo(home.config.timezone)
    counts = store.counts()
    held = store.held_summary()
    files = store.file_counts()
    waiting = unreceipted(store, datetime.now(UTC))
    if as_json:
        click.echo(json.dumps({
            "unreceipted": [{"organisation": u.organisation, "count": u.count,
                             "oldest_released_at": u.oldest_released_at.isoformat(),
                             "oldest_age_hours": round(u.oldest_age.total_seconds() / 3600, 1)}
                            for u in waiting],
            "files": files,
            "assignments": [{"organisation": o, "type": t, "state": s, "count": n}
                            for o, t, s, n in counts],
            "held": [{**h, "release_at": h["release_at"].isoformat()}  # type: ignore[attr-defined]
                     for h in held],
        }, indent=2))
        return
    per: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for o, t, s, n in counts:
        per[(o, t)][s] = n
    next_due: dict[tuple[str, str], datetime] = {}
    for h in held:
        key = (str(h["organisation"]), str(h["type"]))
        when = h["release_at"]
        assert isinstance(when, datetime)
        next_due[key] = min(next_due.get(key, when), when)
    table = Table(title=f"Files: {files.get('accepted', 0)} accepted, "
                        f"{files.get('rejected', 0)} rejected")
    for col in ("organisation", "type", "held", "released", "handled", "transferred",
                "next release (Helsinki)"):
        table.add_column(col, justify="right" if col in ("held", "released", "handled",
                                                         "transferred") else "left")
    for (o, t), states in sorted(per.items()):
        nd = next_due.get((o, t))
        table.add_row(o, t, str(states.get("held", 0)),
                      str(states.get("released", 0)), str(states.get("handled", 0)),
                      str(states.get("transferred", 0)),
                      nd.astimezone(tz).strftime("%Y-%m-%d %H:%M") if nd else "")
    console().print(table)
    if waiting:
        t2 = Table(title="Delivered, not yet receipted")
        for col in ("organisation", "notifications", "oldest delivered (Helsinki)", "age"):
            t2.add_column(col)
        for u in waiting:
            days, rest = divmod(int(u.oldest_age.total_seconds()), 86400)
            t2.add_row(u.organisation, str(u.count),
                       u.oldest_released_at.astimezone(tz).strftime("%Y-%m-%d %H:%M"),
                       f"{days} d {rest // 3600} h")
        console().print(t2)


@click.command()
@click.option("--count", default=20, show_default=True, help="Notifications to generate.")
@click.option("--lists", default=1, show_default=True, help="Person lists to add.")
@click.option("--org", help="Only what routes to this organisation today (for onboarding).")
@click.pass_context
def demo(ctx: click.Context, count: int, lists: int, org: str | None) -> None:
    """Write a synthetic batch (synthetic identity codes only) into inbox/kela/."""
    from broker.intake.synthetic import write_batch

    cfg = home_of(ctx).config
    now = datetime.now(UTC)
    today = now.astimezone(ZoneInfo(cfg.timezone)).date()
    pairs = None
    if org is not None:
        pairs = _routed_to(cfg, org, today)
        if not pairs:
            fail(f"nothing routes to {org!r} on {today}: check its routes "
                 f"(kela-broker routes explain MUNICIPALITY TYPE)")
    stamp = now.strftime("%Y%m%dT%H%M%S%f")
    inbox = cfg.inbox / "kela"
    inbox.mkdir(parents=True, exist_ok=True, mode=0o700)
    final = inbox / f"demo-{stamp}.xml"
    tmp = inbox / f".demo-{stamp}.xml.part"  # SPEC 1: invisible until complete
    write_batch(tmp, count=count, municipalities=sorted(cfg.register.codes),
                types=[t.value for t in NotificationType], decision_date=today,
                batch_id=f"DEMO-{stamp}", seed=int(now.timestamp()), lists=lists,
                attachment_bytes=2048, start_id=int(now.timestamp() * 1000) % 10**12,
                pairs=pairs)
    tmp.rename(final)
    click.echo(f"wrote {final} ({count} notifications, {lists} lists)")


def _routed_to(cfg: Config, org: str, on: date) -> list[tuple[str, str]]:
    """Every (type, municipality) that routes to ``org`` on ``on``."""
    from broker.config.routing import decide
    from broker.errors import RoutingError

    if org not in cfg.by_id:
        fail(f"unknown organisation {org!r}")
    found = []
    types = [t.value for t in NotificationType] + [t.value for t in ListType]
    for type_ in types:
        for code in sorted(cfg.register.codes):
            try:
                if decide(cfg, type_, code, on).organisation.id == org:
                    found.append((type_, code))
            except RoutingError:
                continue
    return found


@click.command()
@click.option("--org", help="Only this organisation.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def schedule(ctx: click.Context, org: str | None, as_json: bool) -> None:
    """What is held, per organisation and type, and when each portion is released."""
    home = home_of(ctx)
    tz = ZoneInfo(home.config.timezone)
    rows = home.store.held_summary(org)
    if as_json:
        click.echo(json.dumps([{**r, "release_at": r["release_at"].isoformat()}  # type: ignore[attr-defined]
                               for r in rows], indent=2))
        return
    table = Table(title="Held notifications and lists")
    for col in ("organisation", "type", "portion", "count", "release (Helsinki)"):
        table.add_column(col)
    for r in rows:
        when = r["release_at"]
        assert isinstance(when, datetime)
        table.add_row(str(r["organisation"]), str(r["type"]),
                      "" if r["portion"] is None else str(r["portion"]), str(r["count"]),
                      when.astimezone(tz).strftime("%Y-%m-%d %H:%M %a"))
    console().print(table)


@click.command("release-due")
@click.option("--now", "now_text", metavar="ISO-8601",
              help="Run the pass as if it were this moment (operators, tests).")
@click.option("--force", is_flag=True,
              help="Allow a --now later than the real time (that releases items early).")
@click.option("--reason", help="Why, for the audit trail (required with --force).")
@click.pass_context
def release_due(ctx: click.Context, now_text: str | None, force: bool,
                reason: str | None) -> None:
    """Run one release pass: everything due at --now (default: now) is written."""
    home = home_of(ctx)
    now = parse_now(now_text)
    real = datetime.now(UTC)
    early = now > real + FUTURE_TOLERANCE
    if early and not force:
        fail(f"--now {now.isoformat()} is later than the real time: that would release "
             "held items early. Use `release --org ... --reason ...` for an early release, "
             "or add --force --reason TEXT", 2)
    if force and not (reason or "").strip():
        fail("--force needs --reason TEXT (it is recorded in the audit trail)", 2)
    trail = home.audit  # an old audit.db moves into state.db before anything is added
    note = (f"release-due --now {now.isoformat()} forced ahead of the real time; "
            f"reason: {reason}") if early else None
    result = Releaser(home.config, home.store).run(now, note=note)
    for org, type_, total in result.plans:
        click.echo(f"stagger planned: {org} {type_}: {total} notifications")
    for f in result.failures:
        click.echo(f"not written (retried later): {f.delivery_id}: {f.error}", err=True)
    detail = (f"pass as of {now.isoformat()}: {len(result.deliveries)} file(s), "
              f"{result.notifications} notification(s), {result.lists} list(s)")
    if early:
        detail += f"; forced ahead of the real time; reason: {reason}"
    trail.record(AuditEvent(action="release-due", org=None, detail=detail), real)
    click.echo(f"released {len(result.deliveries)} file(s): {result.notifications} "
               f"notifications, {result.lists} lists")


@click.command()
@click.option("--org", required=True, help="Organisation id.")
@click.option("--type", "type_", type=click.Choice(ALL_TYPES), help="Only this type.")
@click.option("--all", "everything", is_flag=True,
              help="Release everything held (default: only the next portion of each type).")
@click.option("--reason", required=True, help="Why, for the audit trail.")
@click.pass_context
def release(ctx: click.Context, org: str, type_: str | None, everything: bool,
            reason: str) -> None:
    """Release held notifications early, recorded in the audit trail with the reason."""
    from broker.storage.releases import release_early

    home = home_of(ctx)
    if org not in home.config.by_id:
        fail(f"unknown organisation {org!r}", 2)
    home.audit  # noqa: B018 -- an old audit.db moves into state.db before anything is added
    now = datetime.now(UTC)
    # The operator's act and its audit row are one transaction (the audit chain's head
    # is read under its lock, so it is the head at commit).
    with writer(home.store.engine).begin() as c:
        moved = release_early(c, org, type_, everything=everything, now=now)
        audit.append(c, [AuditEvent(action="release-early", org=org, detail=(
            f"{moved} held {type_ or 'notifications'}{' (all)' if everything else ''}; "
            f"reason: {reason}"))], now, home.config.var / audit.HEAD_FILE)
    anchor_head(home.store.engine, home.config.var / audit.HEAD_FILE)
    result = Releaser(home.config, home.store).run(now, only_org=org)
    click.echo(f"released early: {moved} held item(s) in {len(result.deliveries)} file(s) "
               f"for {org}")


