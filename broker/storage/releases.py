"""The release pass's statements (``broker.delivery.release`` decides and writes files).

Every function runs inside the caller's transaction. Safe under concurrency on both
engines: a claim locks the rows it takes (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; on
SQLite the writer holds the database's write lock) and says how many it got, so a pass
that lost a race rolls back whole; a stagger plan is its row first (``ON CONFLICT DO
NOTHING``), so two passes cannot form it twice; delivery numbers come from the
``deliveries`` counter.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Select
from sqlalchemy.sql.dml import Update
from sqlalchemy.sql.elements import ColumnElement

from broker.domain.schedule import Candidate, HeldItem, PlannedRelease
from broker.storage import counters
from broker.storage.bulk import Many
from broker.storage.db import PerDialect, in_chunks, insert_ignoring, one_of, serialize
from broker.storage.tables import assignments, deliveries, items, stagger_plans

a, d, i, p = assignments, deliveries, items, stagger_plans

# When a held assignment is due: its stagger portion's time, else its normal time (the
# SQL of domain.schedule.effective_release; every query of due-ness uses this one).
due_at = func.coalesce(a.c.planned_at, a.c.release_at)


@dataclass(frozen=True)
class HeldView:
    """What a release pass decides on, read once: the held assignments due by ``now``,
    and among them the candidates of first deliveries per (organisation, type)."""

    items: list[HeldItem]
    firsts: dict[tuple[str, str], list[Candidate]]


def _held_query(until: datetime, only_org: str | None = None) -> Select[Any]:
    """Held assignments whose time may have come by ``until`` (the bound only spares
    reading the items held for weeks; the domain applies the rule): a HeldItem's columns,
    then the item's decision date and where a transfer moved it from."""
    q = (select(a.c.id, a.c.organisation, a.c.type, i.c.kind, a.c.release_at, a.c.planned_at,
                a.c.portion, i.c.seq, i.c.decision_date, a.c.transferred_from)
         .select_from(a.join(i, i.c.seq == a.c.item_seq))
         .where(a.c.state == "held", due_at <= until))
    return q if only_org is None else q.where(a.c.organisation == only_org)


def held_items(c: Connection, until: datetime, only_org: str | None = None) -> list[HeldItem]:
    """The held assignments due by ``until`` (see :func:`_held_query`), as plain values
    for ``domain.schedule.due_groups`` to decide on."""
    # One fetch: after a big batch these are 100,000 rows.
    return [HeldItem(*r[:8]) for r in c.execute(_held_query(until, only_org)).all()]


def held_for_pass(c: Connection, now: datetime) -> HeldView:
    """The held assignments whose time has come by ``now``, and per (organisation, type)
    never delivered nor planned its notifications due under normal timing (a stagger
    plan may then hold them back). Takes the ``plans`` lock: plans are formed, and moved
    early, one at a time."""
    serialize(c, "plans")
    rows = c.execute(_held_query(now)).all()  # one fetch: after a big batch, 100,000 rows
    # After the rows (two statements, two snapshots on PostgreSQL): a first delivery
    # committed in between is seen here, and its type is not planned as a first.
    started = {(r.organisation, r.type) for r in c.execute(
        select(d.c.organisation, d.c.type).distinct()
        .union(select(p.c.organisation, p.c.type)))}
    held: list[HeldItem] = []
    firsts: dict[tuple[str, str], list[Candidate]] = defaultdict(list)
    for aid, org, type_, kind, release_at, planned_at, portion, seq, day, moved in rows:
        held.append(HeldItem(aid, org, type_, kind, release_at, planned_at, portion, seq))
        if (planned_at is None and moved is None and kind == "notification"
                and (org, type_) not in started):
            firsts[(org, type_)].append(Candidate(str(aid), day, seq))
    return HeldView(held, dict(sorted(firsts.items())))  # plans formed in a fixed order


def _held(dialect: str) -> ColumnElement[bool]:
    """``state = 'held'`` for a statement that picks its rows by id. On SQLite through
    coalesce(): a bare state = ? lures its planner onto the state index and a scan of
    every held row for each statement (after a big batch, 100,000 rows each time)."""
    if dialect == "sqlite":
        return func.coalesce(a.c.state, "") == "held"
    return a.c.state == "held"


# Only rows still held and unplanned: a pass that claimed some of them meanwhile (claims do
# not take the plans lock) makes the count fall short, and the plan is not formed.
_PLAN = PerDialect(lambda dialect: update(a).where(
    one_of(a.c.id, "ids", dialect), _held(dialect), a.c.planned_at.is_(None))
    .values(planned_at=bindparam("at"), portion=bindparam("portion")))


class _PlanRace(Exception):
    """Some of a plan's rows were no longer held and unplanned when it was saved."""


def save_plan(c: Connection, org: str, type_: str, plan: Sequence[PlannedRelease],
              now: datetime) -> bool:
    """Record a stagger plan and hold its notifications to it; False (nothing changed)
    when another pass formed this plan first, or claimed some of its rows meanwhile."""
    portions: dict[tuple[int, datetime], list[int]] = defaultdict(list)
    for x in plan:
        portions[(x.portion, x.release_at)].append(int(x.id))
    try:
        with c.begin_nested():
            formed = c.execute(insert_ignoring(c, p).values(
                organisation=org, type=type_, formed_at=now, total=len(plan),
                portions=max(x.portion for x in plan) + 1)).rowcount
            if not formed:
                return False
            held = sum(c.execute(_PLAN(c), {"ids": list(chunk), "at": at, "portion": portion})
                       .rowcount for (portion, at), ids in portions.items()
                       for chunk in in_chunks(ids))  # a few hundred rows per statement
            if held != len(plan):
                raise _PlanRace(f"{org} {type_}")  # undone, plan row and all
    except _PlanRace:
        return False
    return True


def blocked_organisations(c: Connection) -> set[str]:
    """Organisations with a delivery that could not be written: they get no new one."""
    return set(c.execute(select(d.c.organisation).distinct()
                         .where(d.c.state == "pending", d.c.attempts > 0)).scalars())


def next_delivery_number(c: Connection) -> int:
    return counters.take(c, counters.DELIVERIES)


_NEW_DELIVERY = insert(d)


def new_delivery(c: Connection, *, delivery_id: str, organisation: str, type_: str, kind: str,
                 file_name: str, now: datetime, count: int, portion: int | None,
                 seq: int) -> None:
    c.execute(_NEW_DELIVERY, {
        "id": delivery_id, "organisation": organisation, "type": type_, "kind": kind,
        "file_name": file_name, "created_at": now, "count": count, "portion": portion,
        "state": "pending", "seq": seq})


_DUE = due_at <= bindparam("now")


def _claiming(dialect: str) -> Update:
    which: ColumnElement[bool]
    if dialect == "sqlite":
        # The writer holds SQLite's one write lock: nothing to skip (_held: on the
        # primary key, 16 ms a claim after a big batch otherwise).
        which = one_of(a.c.id, "ids", dialect) & _held(dialect) & _DUE
    else:
        # Rows another transaction has locked are skipped, not waited for: the count
        # then falls short, this group is undone, and the others go on.
        which = a.c.id.in_(select(a.c.id).where(one_of(a.c.id, "ids", dialect),
                                                a.c.state == "held", _DUE)
                           .with_for_update(skip_locked=True).scalar_subquery())
    return update(a).where(which).values(state="releasing", delivery_id=bindparam("did"))


# Built once per dialect: a release after a big batch claims hundreds of groups.
_CLAIM = PerDialect(_claiming)


def claim(c: Connection, delivery_id: str, assignment_ids: Sequence[int],
          now: datetime) -> int:
    """Claim the held ``assignment_ids`` for a pending delivery; returns how many were
    still held, due by ``now`` (a plan formed meanwhile may have moved them) and free
    (fewer: another pass took, locked or re-planned some, and the caller undoes this)."""
    return sum(c.execute(_CLAIM(c), {"ids": list(ids), "now": now, "did": delivery_id})
               .rowcount for ids in in_chunks(assignment_ids))


def payloads(c: Connection, assignment_ids: Sequence[int]) -> list[str]:
    """The items' payloads of ``assignment_ids``, oldest first."""
    rows: list[tuple[int, str]] = []
    for ids in in_chunks(assignment_ids):
        rows.extend((r.seq, r.payload) for r in c.execute(
            select(i.c.seq, i.c.payload).select_from(i.join(a, a.c.item_seq == i.c.seq))
            .where(a.c.id.in_(ids))))
    return [payload for _, payload in sorted(rows)]


# Built once: the release pass runs these for every delivery it writes.
_DELIVERY = select(d).where(d.c.id == bindparam("did"))
_DELIVERY_PAYLOADS = (select(i.c.payload).select_from(i.join(a, a.c.item_seq == i.c.seq))
                      .where(a.c.delivery_id == bindparam("did")).order_by(i.c.seq))


def delivery(c: Connection, delivery_id: str) -> Row[Any]:
    return c.execute(_DELIVERY, {"did": delivery_id}).one()


def delivery_payloads(c: Connection, delivery_id: str) -> list[str]:
    """The payloads in one delivery, oldest first."""
    return list(c.execute(_DELIVERY_PAYLOADS, {"did": delivery_id}).scalars().all())


def pending_deliveries(c: Connection, now: datetime | None) -> list[str]:
    """Pending deliveries in number order; with ``now``, only those due a (re)try."""
    q = select(d.c.id).where(d.c.state == "pending").order_by(d.c.seq)
    if now is not None:
        q = q.where(or_(d.c.next_attempt_at.is_(None), d.c.next_attempt_at <= now))
    return list(c.execute(q).scalars())


def organisation_of(c: Connection, delivery_id: str) -> str | None:
    return c.execute(select(d.c.organisation).where(d.c.id == delivery_id)).scalar()


@dataclass(frozen=True)
class WrittenDelivery:
    delivery_id: str
    sha256: str
    size: int
    zip_name: str | None
    created: datetime
    count: int  # notifications in it (1 for a list)


def still_pending(c: Connection, delivery_ids: Sequence[str]) -> set[str]:
    """Which of ``delivery_ids`` are pending, their rows locked until commit (PostgreSQL;
    on SQLite the writer holds the write lock)."""
    found: set[str] = set()
    for ids in in_chunks(delivery_ids):
        found.update(c.execute(select(d.c.id).where(d.c.id.in_(ids), d.c.state == "pending")
                               .with_for_update()).scalars())
    return found


def mark_written(c: Connection, done: Sequence[WrittenDelivery]) -> None:
    """Commit 3: the deliveries are on disk, their assignments released."""
    Many(c, update(d).where(d.c.id == bindparam("did"))
         .values(state=bindparam("state"), sha256=bindparam("sha"), size=bindparam("n"),
                 zip_name=bindparam("zip"), next_attempt_at=bindparam("retry")),
         ("did", "state", "sha", "n", "zip", "retry"), repeating=("state",)).run(
        (w.delivery_id, "written", w.sha256, w.size, w.zip_name, None) for w in done)
    Many(c, update(a).where(a.c.delivery_id == bindparam("did"))
         .values(state=bindparam("state"), released_at=bindparam("at")),
         ("did", "state", "at"), repeating=("state", "at")).run(
        (w.delivery_id, "released", w.created) for w in done)


def mark_failed(c: Connection, delivery_id: str, error: str, now: datetime,
                delay_for: Callable[[int], timedelta]) -> int:
    """One more failed attempt, tried again ``delay_for(attempts)`` after ``now``;
    returns the attempt count."""
    tries = int(c.execute(update(d).where(d.c.id == delivery_id)
                          .values(attempts=d.c.attempts + 1, last_error=error[:2000])
                          .returning(d.c.attempts)).scalar_one())
    c.execute(update(d).where(d.c.id == delivery_id)
              .values(next_attempt_at=now + delay_for(tries)))
    return tries


def release_early(c: Connection, org: str, type_: str | None, *, everything: bool,
                  now: datetime) -> int:
    """An operator's early release: the held items of ``org`` (of ``type_``) become due
    just before ``now``; all of them, or only the earliest held slot of each type (the
    next staggered portion). Returns how many. Takes the ``plans`` lock, so a plan being
    formed is seen whole, not as every row due at once."""
    serialize(c, "plans")
    where = [a.c.state == "held", a.c.organisation == org]
    if type_:
        where.append(a.c.type == type_)
    if not everything:
        rows = c.execute(select(a.c.id, a.c.type, due_at.label("due")).where(*where)).all()
        first = {t: min(r.due for r in rows if r.type == t) for t in {r.type for r in rows}}
        chosen = [r.id for r in rows if r.due == first[r.type]]
        moved = 0
        for ids in in_chunks(chosen):
            moved += c.execute(update(a).where(*where, a.c.id.in_(ids))
                               .values(planned_at=now - timedelta(microseconds=1))).rowcount
        return moved
    return int(c.execute(update(a).where(*where)
                         .values(planned_at=now - timedelta(microseconds=1))).rowcount)


# -- an organisation removed from the configuration (broker.delivery.handover) ---------

def pending_of(c: Connection, org: str) -> list[tuple[str, str]]:
    """(id, file name) of ``org``'s deliveries not yet written."""
    return [(r.id, r.file_name) for r in c.execute(
        select(d.c.id, d.c.file_name).where(d.c.organisation == org, d.c.state == "pending"))]


def undo_delivery(c: Connection, delivery_id: str, *, to: str) -> int:
    """A pending delivery is undone: its items are held again, for organisation ``to``."""
    n = c.execute(update(a).where(a.c.delivery_id == delivery_id).values(
        state="held", delivery_id=None, organisation=to)).rowcount
    c.execute(delete(d).where(d.c.id == delivery_id))
    return int(n)


def move_held(c: Connection, org: str, *, to: str) -> int:
    """Every item held for ``org`` is held for ``to`` instead (keeping its release time)."""
    return int(c.execute(update(a).where(a.c.organisation == org, a.c.state == "held")
                         .values(organisation=to)).rowcount)
