"""Two release passes at once (daemon + operator): no notification is claimed twice."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
import storage_support
from sqlalchemy import func, select, update

from broker.config.settings import Config, load_config
from broker.delivery.release import Releaser, ReleaseResult, _Group
from broker.domain.schedule import HeldItem
from broker.intake.ingest import ingest_batch
from broker.storage.files import atomic_writer, temp_path
from broker.storage.state_db import make_engine
from broker.storage.store import Store, assignments, deliveries

pytestmark = pytest.mark.both_engines  # conftest.py: SQLite and PostgreSQL

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "contracts" / "examples"
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


class RacedReleaser(Releaser):
    """Between reading what is due and claiming it, another pass claims one row."""

    raced = False

    def due_groups(self, now: datetime, *, only_org: str | None = None,
                   held: list[HeldItem] | None = None) -> list[_Group]:
        groups = super().due_groups(now, only_org=only_org, held=held)
        if not self.raced:
            self.raced = True
            stolen = groups[0].assignment_ids[0]
            with self.store.engine.begin() as c:
                c.execute(update(assignments).where(assignments.c.id == stolen)
                          .values(state="released"))
        return groups


def home_with_example(tmp_path: Path) -> tuple[Config, Store]:
    """A home at ``tmp_path`` holding the contract's decision batch, nothing released."""
    shutil.copytree(REPO / "config", tmp_path / "config", ignore=shutil.ignore_patterns("keys"))
    cfg = load_config(storage_support.apply(tmp_path))
    store = Store(make_engine(cfg.storage_url))
    assert ingest_batch(EXAMPLES / "decision-batch.xml", config=cfg, store=store,
                        now=NOW).status == "accepted"
    return cfg, store


def test_a_claim_that_lost_a_race_rolls_back_and_is_retried(tmp_path: Path) -> None:
    cfg, store = home_with_example(tmp_path)
    result = RacedReleaser(cfg, store).run(NOW)
    with store.engine.connect() as c:
        states = dict(c.execute(select(assignments.c.state, func.count())
                                .group_by(assignments.c.state)).all())
        files = c.execute(select(func.count()).select_from(deliveries)).scalar()
    # The stolen row stays with the other pass; the other three go out exactly once.
    assert states == {"released": 4}
    assert result.notifications == 3 and files == len(result.deliveries) == 3


def test_recovery_clears_a_temp_file_a_crash_left_beside_its_finished_file(
    tmp_path: Path,
) -> None:
    """kill -9 between linking a delivery file to its name and removing the temp name."""
    cfg, store = home_with_example(tmp_path)
    releaser = Releaser(cfg, store)
    claimed, _ = releaser._claim(releaser.due_groups(NOW), NOW)  # pending, as a crash leaves them
    for delivery_id in claimed:  # the files are written, the delivery not yet confirmed
        releaser._write_files(delivery_id)
    written = [p for p in (tmp_path / "outbox").rglob("*") if p.is_file()]
    assert written
    for path in written:
        temp_path(path).write_bytes(path.read_bytes())
    assert releaser.recover() == len(claimed)
    assert not list((tmp_path / "outbox").rglob(".*.part"))
    assert sorted(p for p in (tmp_path / "outbox").rglob("*") if p.is_file()) == sorted(written)
    with store.engine.connect() as c:
        assert set(c.execute(select(deliveries.c.state)).scalars()) == {"written"}


def test_a_file_a_crash_left_in_place_has_its_folder_synced_before_it_counts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash after a file got its name but before its folder was synced: recovery keeps
    the file and syncs the folder before commit 3 says it is written."""
    import broker.delivery.release as release_module

    cfg, store = home_with_example(tmp_path)
    releaser = Releaser(cfg, store)
    claimed, _ = releaser._claim(releaser.due_groups(NOW), NOW)
    for delivery_id in claimed:
        releaser._write_files(delivery_id)
    synced: list[Path] = []
    monkeypatch.setattr(release_module, "fsync_dir", synced.append)
    assert releaser.recover() == len(claimed)
    folders = {p.parent for p in (tmp_path / "outbox").rglob("*") if p.is_file()}
    assert folders and folders <= set(synced)


def test_a_delivery_another_pass_is_writing_is_left_to_it(tmp_path: Path) -> None:
    """The operator's release-due recovers pending deliveries while the daemon may be
    writing them: it must neither mix bytes into them nor confirm them itself."""
    cfg, store = home_with_example(tmp_path)
    releaser = Releaser(cfg, store)
    claimed, _ = releaser._claim(releaser.due_groups(NOW), NOW)  # pending, as a crash leaves them
    with store.engine.connect() as c:
        busy_id, org, name = c.execute(select(
            deliveries.c.id, deliveries.c.organisation, deliveries.c.file_name)
            .where(deliveries.c.id == claimed[0])).one()
    busy = cfg.outbox / org / name
    busy.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(busy, exclusive=True) as other_pass:  # the daemon, mid-write
        other_pass.write(b"<?xml")
        result = ReleaseResult()
        assert releaser.recover(result) == len(claimed)
        assert busy_id not in result.deliveries
        assert sorted(result.deliveries) == sorted(claimed[1:])
    with store.engine.connect() as c:
        pending = c.execute(select(deliveries.c.id).where(deliveries.c.state == "pending"))
        assert pending.scalars().all() == [busy_id]


@pytest.mark.sqlite_only
def test_cli_says_clearly_when_the_daemon_holds_the_database(tmp_path: Path) -> None:
    import sqlite3
    import subprocess
    import sys

    shutil.copytree(REPO / "config", tmp_path / "config", ignore=shutil.ignore_patterns("keys"))
    cfg = load_config(tmp_path)
    make_engine(cfg.storage_url).dispose()
    holder = sqlite3.connect(cfg.database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # as the daemon does during a long ingest
    try:
        r = subprocess.run([str(Path(sys.executable).parent / "kela-broker"), "--home",
                            str(tmp_path), "ingest", str(EXAMPLES / "decision-batch.xml")],
                           capture_output=True, text=True,
                           timeout=60)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert r.returncode == 1
    assert "the state database is busy" in r.stderr and "Traceback" not in r.stderr
    with sqlite3.connect(cfg.database) as c:  # and the file left no trace
        assert c.execute("select count(*) from items").fetchone() == (0,)


def test_passes_side_by_side_release_every_notification_exactly_once(tmp_path: Path) -> None:
    """Four release passes at once, each with its own engine (on PostgreSQL they really
    run side by side: claims skip locked rows, numbers come from the counter row): every
    notification lands in exactly one file, file numbers are unique, the trail holds."""
    from datetime import date

    from daemon_support import delivered_ids

    from broker.errors import StoreError
    from broker.intake.synthetic import write_batch
    from broker.storage.audit import HEAD_FILE, verify

    cfg, store = home_with_example(tmp_path)
    batch = tmp_path / "many.xml"
    write_batch(batch, count=600, municipalities=sorted(cfg.register.codes)[:60],
                types=["IMMIGRANT", "SOCIAL_WORK_NEED"], decision_date=date(2026, 11, 20),
                batch_id="SIDE-BY-SIDE", seed=5, start_id=500_000)
    assert ingest_batch(batch, config=cfg, store=store, now=NOW).status == "accepted"

    def release_until_done(own: Store) -> None:
        for _ in range(20):
            try:
                Releaser(cfg, own).run(NOW)
            except StoreError:
                continue  # lost a race: decide again
            with own.engine.connect() as c:
                if not c.execute(select(func.count()).select_from(assignments)
                                 .where(assignments.c.state != "released")).scalar():
                    return

    storage_support.side_by_side(cfg.storage_url, release_until_done, 4)
    ids = [i for folder in (tmp_path / "outbox").iterdir() if folder.is_dir()
           for i in delivered_ids(folder)]
    assert len(ids) == len(set(ids)) == 604  # the example's four and the 600
    with store.engine.connect() as c:
        seqs = c.execute(select(deliveries.c.seq)).scalars().all()
        assert len(seqs) == len(set(seqs))
        assert not c.execute(select(func.count()).select_from(assignments)
                             .where(assignments.c.state != "released")).scalar()
    assert verify(store.engine, cfg.var / HEAD_FILE) == []


def test_a_row_locked_elsewhere_holds_up_only_its_own_delivery(
        tmp_path: Path, storage: str) -> None:
    """On PostgreSQL a claim skips rows another transaction holds (an operator's command,
    a handover): that one delivery waits for the next pass, every other goes out now."""
    if storage == "sqlite":
        pytest.skip("SQLite has no row locks: one writer at a time holds the whole file")
    cfg, store = home_with_example(tmp_path)
    with store.engine.connect() as c:
        locked = c.execute(select(assignments.c.id, assignments.c.organisation)
                           .where(assignments.c.organisation == "helsinki")).first()
    assert locked is not None
    holder = store.engine.connect()
    tx = holder.begin()
    try:
        holder.execute(select(assignments.c.id).where(assignments.c.id == locked.id)
                       .with_for_update())
        result = Releaser(cfg, store).run(NOW)
        assert result.notifications == 3  # the example's other three
        with store.engine.connect() as c:
            assert c.execute(select(assignments.c.state)
                             .where(assignments.c.id == locked.id)).scalar() == "held"
    finally:
        tx.rollback()
        holder.close()
    assert Releaser(cfg, store).run(NOW).notifications == 1  # next pass: it goes too
