"""The release pass's one read (broker.storage.releases.held_for_pass) against its rule:
every held assignment due by now, and as first-delivery candidates only the notifications
of an (organisation, type) never delivered nor planned, due under normal timing, and not
moved there by a transfer."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from daemon_support import make_home
from sqlalchemy import insert
from sqlalchemy.engine import Connection

from broker.config.settings import load_config
from broker.storage import releases
from broker.storage.state_db import make_engine
from broker.storage.store import Store
from broker.storage.tables import assignments, deliveries, input_files, items, stagger_plans

pytestmark = pytest.mark.both_engines  # conftest.py: SQLite and PostgreSQL

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
DAY = date(2026, 11, 20)

# (name, organisation, type, kind, release_at, planned_at, transferred) per assignment.
ROWS = [
    ("first", "tampere", "IMMIGRANT", "notification", NOW - timedelta(hours=1), None, False),
    ("first-too", "tampere", "IMMIGRANT", "notification", NOW, None, False),
    ("not-yet", "tampere", "IMMIGRANT", "notification", NOW + timedelta(seconds=1), None,
     False),
    ("planned-due", "tampere", "SOCIAL_WORK_NEED", "notification", NOW - timedelta(days=1),
     NOW - timedelta(minutes=5), False),
    ("planned-later", "tampere", "SOCIAL_WORK_NEED", "notification",
     NOW - timedelta(days=1), NOW + timedelta(days=7), False),
    ("transferred", "helsinki", "IMMIGRANT", "notification", NOW - timedelta(hours=1), None,
     True),
    ("delivered-before", "vantaa", "IMMIGRANT", "notification", NOW - timedelta(hours=1),
     None, False),
    ("plan-exists", "espoo", "IMMIGRANT", "notification", NOW - timedelta(hours=1), None,
     False),
    ("a-list", "tampere", "LABOUR_MARKET_SUBSIDY_300_DAYS", "list", NOW - timedelta(hours=1),
     None, False),
]


def _batch_of(c: Connection, kinds: list[tuple[str, str]]) -> None:
    """An accepted file holding items 1, 2, ... of these (kind, type), in that order."""
    file_id = c.execute(insert(input_files).values(
        source="kela", kind="batch", name="b.xml", sha256="0" * 64, size=1,
        status="accepted", received_at=NOW, items=len(kinds))).inserted_primary_key[0]
    for seq, (kind, type_) in enumerate(kinds, 1):
        c.execute(insert(items).values(
            seq=seq, id=f"N-2026-{seq:09d}", kind=kind, type=type_, municipality="837",
            decision_date=DAY if kind == "notification" else None, urgent=False,
            content_hash=str(seq) * 4, payload="{}", input_file_id=file_id,
            received_at=NOW))


def test_one_read_gives_the_due_rows_and_the_first_delivery_candidates(
        tmp_path: Path) -> None:
    store = Store(make_engine(load_config(make_home(tmp_path / "home")).storage_url))
    ids: dict[str, int] = {}
    with store.writer.begin() as c:
        _batch_of(c, [(row[3], row[2]) for row in ROWS])
        c.execute(insert(deliveries).values(
            id="D-vantaa-old", organisation="vantaa", type="IMMIGRANT", kind="notification",
            file_name="D-vantaa-old.xml", created_at=NOW - timedelta(days=30), count=1,
            state="written", seq=1))
        c.execute(insert(stagger_plans).values(
            organisation="espoo", type="IMMIGRANT", formed_at=NOW - timedelta(days=3),
            total=500, portions=2))
        origin = None
        for seq, (name, org, type_, _, release_at, planned_at, moved) in enumerate(ROWS, 1):
            if moved:  # a transfer: the first assignment handed over, a second one held
                origin = c.execute(insert(assignments).values(
                    item_seq=seq, organisation="tampere", type=type_, release_at=release_at,
                    state="transferred", created_at=NOW)).inserted_primary_key[0]
            ids[name] = c.execute(insert(assignments).values(
                item_seq=seq, organisation=org, type=type_, release_at=release_at,
                planned_at=planned_at, state="held", created_at=NOW,
                transferred_from=origin if moved else None)).inserted_primary_key[0]
        view = releases.held_for_pass(c, NOW)

    due = {"first", "first-too", "planned-due", "transferred", "delivered-before",
           "plan-exists", "a-list"}
    assert {h.id for h in view.items} == {ids[n] for n in due}
    assert all(h.seq for h in view.items)
    # Only never-delivered, never-planned types, normal timing, not transferred here.
    assert {k: sorted(x.id for x in v) for k, v in view.firsts.items()} == {
        ("tampere", "IMMIGRANT"): sorted([str(ids["first"]), str(ids["first-too"])])}
    assert [x.decision_date for x in view.firsts[("tampere", "IMMIGRANT")]] == [DAY, DAY]


def test_the_rows_after_forming_plans_are_what_the_database_holds(tmp_path: Path) -> None:
    """form_plans applies the plans it saved to the rows it read: what is due comes out
    the same as from reading them again, so it is decided on what the database holds."""
    from broker.delivery.release import Releaser, ReleaseResult
    from broker.intake.ingest import ingest_batch
    from broker.intake.synthetic import write_batch

    cfg = load_config(make_home(tmp_path / "home"))
    store = Store(make_engine(cfg.storage_url))
    batch = tmp_path / "b.xml"
    write_batch(batch, count=2000, municipalities=["837", "091"],
                types=["IMMIGRANT", "SOCIAL_WORK_NEED"], decision_date=DAY,
                batch_id="VIEW-1", seed=5, lists=2)
    assert ingest_batch(batch, config=cfg, store=store, now=NOW).status == "accepted"
    result = ReleaseResult()
    releaser = Releaser(cfg, store)
    held = releaser.form_plans(NOW, result)
    assert result.plans  # some first deliveries were over the threshold
    assert any(h.planned_at is not None for h in held)
    # Later portions are in the rows read (due under normal timing) but not due now.
    groups = releaser.due_groups(NOW, held=held)
    assert groups == releaser.due_groups(NOW)  # decided on a fresh read
    assert sum(len(g.assignment_ids) for g in groups) < len(held)
    for org in ("tampere", "helsinki"):
        assert releaser.due_groups(NOW, held=held, only_org=org) == \
            releaser.due_groups(NOW, only_org=org)


def test_a_plan_whose_rows_were_claimed_meanwhile_is_not_formed(tmp_path: Path) -> None:
    """A claim does not take the plans lock: one that took some of a plan's rows between
    the read and the save leaves the plan unformed (no row, nothing moved), not a plan
    over a type that has had its first delivery."""
    from sqlalchemy import func, select, update

    from broker.domain.schedule import PlannedRelease

    store = Store(make_engine(load_config(make_home(tmp_path / "home")).storage_url))
    with store.writer.begin() as c:
        _batch_of(c, [("notification", "IMMIGRANT")] * 3)
        aids = []
        for seq in (1, 2, 3):
            aids.append(c.execute(insert(assignments).values(
                item_seq=seq, organisation="tampere", type="IMMIGRANT", release_at=NOW,
                state="held", created_at=NOW)).inserted_primary_key[0])
        c.execute(update(assignments).where(assignments.c.id == aids[2])
                  .values(state="releasing"))  # another pass's claim
    plan = [PlannedRelease(str(aid), i, NOW + timedelta(days=7 * i))
            for i, aid in enumerate(aids)]
    with store.writer.begin() as c:
        assert releases.save_plan(c, "tampere", "IMMIGRANT", plan, NOW) is False
    with store.engine.connect() as c:
        assert c.execute(select(func.count()).select_from(stagger_plans)).scalar() == 0
        assert c.execute(select(func.count()).select_from(assignments)
                         .where(assignments.c.planned_at.is_not(None))).scalar() == 0
    # With every row still held, the same plan is formed.
    with store.writer.begin() as c:
        c.execute(update(assignments).where(assignments.c.id == aids[2]).values(state="held"))
        assert releases.save_plan(c, "tampere", "IMMIGRANT", plan, NOW) is True


@pytest.mark.sqlite_only
@pytest.mark.parametrize("which", ["plan", "claim"])
def test_sqlite_finds_the_rows_of_a_plan_or_claim_by_their_ids(
        tmp_path: Path, which: str) -> None:
    """With hundreds of ids and no statistics, a bare ``state = ?`` makes SQLite's planner
    walk the state index over every held row, for every statement of a big release."""
    from sqlalchemy import event

    store = Store(make_engine(load_config(make_home(tmp_path / "home")).storage_url))
    seen: list[tuple[str, object]] = []

    def keep(conn: object, cursor: object, statement: str, parameters: object,
             context: object, executemany: bool) -> None:
        if statement.startswith("UPDATE assignments"):
            seen.append((statement, parameters))

    event.listen(store.engine, "before_cursor_execute", keep)
    ids = list(range(1, 301))
    with store.writer.begin() as c:
        if which == "plan":
            c.execute(releases._PLAN(c), {"ids": ids, "at": NOW, "portion": 1})
        else:
            releases.claim(c, "D-x", ids, NOW)
    (statement, parameters), = seen
    with store.engine.connect() as c:
        plan = c.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
    assert any("PRIMARY KEY" in str(step) for step in plan), plan
    assert not any("ix_assign_due" in str(step) for step in plan), plan
