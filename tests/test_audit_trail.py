"""The audit trail in state.db: releases recorded in their own commit, the anchored head,
the writer thread's group commit, the move of an old audit.db, and ``audit person``."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import tempfile
import threading
from datetime import timedelta
from pathlib import Path

import pytest
import storage_support
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from response_support import T0, T1, Env, make_env, response, transfer
from sqlalchemy import Engine, func, select, text
from structlog.testing import capture_logs

from broker.cli import CliState
from broker.cli.audit import audit_group
from broker.storage.audit import (
    HEAD_FILE,
    AuditEvent,
    AuditLog,
    AuditRef,
    anchor_head,
    audit_key,
    audit_refs,
    audit_table,
    person_digest,
    verify,
)
from broker.storage.audit_anchor import Anchor, read_anchor, write_anchor
from broker.storage.audit_legacy import migrate_legacy
from broker.storage.audit_writer import AuditWriter
from broker.storage.state_db import make_engine
from broker.storage.store import deliveries

pytestmark = pytest.mark.both_engines  # conftest.py: SQLite and PostgreSQL

N3, N4 = "N-2026-000000003", "N-2026-000000004"
PIC4 = "060885V907H"  # N4's person (synthetic, from the contract's example batch)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return make_env(tmp_path)


def anchor_of(env: Env) -> Path:
    return env.config.var / HEAD_FILE


def rows(engine: Engine, action: str | None = None) -> list:
    q = select(audit_table).order_by(audit_table.c.id)
    if action:
        q = q.where(audit_table.c.action == action)
    with engine.connect() as c:
        return list(c.execute(q))


def file_of(env: Env, nid: str, org: str) -> str:
    from broker.storage.tables import assignments, items

    a, i = assignments, items
    with env.store.engine.connect() as c:
        return str(c.execute(
            select(deliveries.c.file_name)
            .select_from(deliveries.join(a, a.c.delivery_id == deliveries.c.id)
                         .join(i, i.c.seq == a.c.item_seq))
            .where(i.c.id == nid, deliveries.c.organisation == org)).scalar_one())


# -- releases --------------------------------------------------------------------------

def test_each_delivery_file_has_a_true_release_row(env: Env) -> None:
    with env.store.engine.connect() as c:
        written = list(c.execute(select(deliveries)))
    released = {r.path: r for r in rows(env.store.engine, "release")}
    assert set(released) == {d.file_name for d in written} and len(written) == 4
    key = audit_key(env.config.var)
    for d in written:
        row = released[d.file_name]
        data = (env.config.outbox / d.organisation / d.file_name).read_bytes()
        assert row.org == d.organisation
        assert (row.sha256, row.size) == (hashlib.sha256(data).hexdigest(), len(data))
        assert json.loads(row.detail)["count"] == d.count
    with env.store.engine.connect() as c:
        refs = c.execute(select(audit_refs.c.item, audit_refs.c.person)).all()
    assert (N4, person_digest(key, PIC4)) in refs and len(refs) == 4
    assert verify(env.store.engine, anchor_of(env)) == []
    assert read_anchor(anchor_of(env)) == Anchor(*_head(env.store.engine))


def _head(engine: Engine) -> tuple[int, str]:
    last = rows(engine)[-1]
    return last.id, last.row_hash


@pytest.mark.sqlite_only
def test_a_release_whose_audit_row_fails_is_not_released(tmp_path: Path) -> None:
    """The act and its record are one transaction: a failed audit insert rolls back
    the delivery's confirmation too; the next pass writes both."""
    env = make_env(tmp_path)  # four deliveries already out
    env.process("pirha", "1.xml", response(transfer(N4, "853")))
    before = len(rows(env.store.engine))
    with env.store.engine.begin() as c:
        c.exec_driver_sql("CREATE TRIGGER no_audit BEFORE INSERT ON audit_log"
                          " BEGIN SELECT RAISE(ABORT, 'disk says no'); END")
    with pytest.raises(Exception, match="disk says no"):
        env.release(T1)
    with env.store.engine.connect() as c:
        pending = c.execute(select(deliveries.c.id, deliveries.c.state).where(
            deliveries.c.organisation == "varha")).one()
    assert pending.state == "pending" and len(rows(env.store.engine)) == before
    with env.store.engine.begin() as c:
        c.exec_driver_sql("DROP TRIGGER no_audit")
    assert env.release(T1 + timedelta(minutes=1)) == [pending.id]  # the same, finished
    with env.store.engine.connect() as c:
        assert c.execute(select(deliveries.c.state).where(
            deliveries.c.organisation == "varha")).scalar() == "written"
    assert [r.org for r in rows(env.store.engine, "release")][-1] == "varha"
    assert verify(env.store.engine, anchor_of(env)) == []


# -- tamper detection ------------------------------------------------------------------

@pytest.fixture
def trail(env: Env) -> AuditLog:
    log = AuditLog(env.store.engine, anchor_of(env))
    for i in range(6):
        log.record(AuditEvent("download", "pirha", "10.0.0.1", f"/from-kela/f{i}.xml", i,
                              "ab" * 32), T1 + timedelta(seconds=i))
    assert log.verify() == []
    return log


@pytest.mark.parametrize("sql", [
    "UPDATE audit_log SET size = 99 WHERE id = 6",
    "UPDATE audit_log SET detail = 'x' WHERE id = 2",  # a release row's count
    "UPDATE audit_refs SET person = 'ff' WHERE id = 1",  # whose data it carried
    "UPDATE audit_refs SET item = 'N-2026-000000009' WHERE id = 2",
    "DELETE FROM audit_refs WHERE id = 3",
    "DELETE FROM audit_log WHERE id = 7",  # one in the middle
])
@pytest.mark.sqlite_only
def test_tampering_is_detected(trail: AuditLog, env: Env, sql: str) -> None:
    with env.store.engine.begin() as c:
        c.exec_driver_sql("PRAGMA foreign_keys=OFF")
        c.exec_driver_sql(sql)
    assert trail.verify()


@pytest.mark.sqlite_only
def test_an_inserted_row_is_detected(trail: AuditLog, env: Env) -> None:
    """A forged row slipped in after row 8, itself correctly chained to row 8."""
    from broker.storage.audit import row_hash

    with env.store.engine.begin() as c:
        c.exec_driver_sql("PRAGMA foreign_keys=OFF")
        c.exec_driver_sql("UPDATE audit_log SET id = -id - 1 WHERE id > 8")
        c.exec_driver_sql("UPDATE audit_log SET id = -id WHERE id < 0")
        prev = c.exec_driver_sql("SELECT row_hash FROM audit_log WHERE id = 8").scalar_one()
        forged = AuditEvent("download", "varha", path="/from-kela/x.xml")
        at = "2026-11-23T11:00:00.000000+00:00"
        forged_hash = row_hash(9, at, forged, prev)
        c.execute(audit_table.insert().values(
            id=9, at=at, action=forged.action, org=forged.org, path=forged.path,
            prev_hash="f" * 64, row_hash=forged_hash))
        # The next row is rewired onto the forged one, as the UNIQUE prev_hash demands.
        c.exec_driver_sql("UPDATE audit_log SET prev_hash = ? WHERE id = 10", (forged_hash,))
        c.exec_driver_sql("UPDATE audit_log SET prev_hash = ? WHERE id = 9", (prev,))
    problems = trail.verify()
    assert problems and all("row 9:" not in p for p in problems)  # the forged row fits...
    assert any(p.startswith("row 10:") for p in problems)  # ...but what follows does not


def test_rows_cut_off_the_end_are_detected_by_the_anchor(trail: AuditLog, env: Env) -> None:
    last = rows(env.store.engine)[-1].id
    with env.store.engine.begin() as c:
        c.execute(audit_table.delete().where(audit_table.c.id >= last - 1))
    problems = trail.verify()
    assert any("cut off the end" in p for p in problems), problems
    # Without the anchor the shortened chain itself is consistent: the anchor is what
    # catches it (and a removed anchor is itself reported).
    assert verify(env.store.engine, None) == []
    anchor_of(env).unlink()
    assert any("anchored head is missing" in p for p in trail.verify())


def test_a_rewritten_tail_is_detected(trail: AuditLog, env: Env) -> None:
    last = rows(env.store.engine)[-1]
    with env.store.engine.begin() as c:
        c.execute(audit_table.delete().where(audit_table.c.id == last.id))
    # Re-append a different last row: the chain is consistent, the anchor is not.
    AuditLog(env.store.engine).record(AuditEvent("login", "pirha"), T1)
    assert any("not the row anchored" in p for p in trail.verify())


def test_a_lagging_anchor_is_no_false_alarm(trail: AuditLog, env: Env) -> None:
    """A crash between a commit and the anchor write leaves the anchor one commit old."""
    unanchored = AuditLog(env.store.engine)  # commits without anchoring, as such a crash
    unanchored.record(AuditEvent("login", "varha"), T1)
    unanchored.record(AuditEvent("logout", "varha"), T1)
    lagging = read_anchor(anchor_of(env))
    assert lagging is not None and lagging.id < rows(env.store.engine)[-1].id
    assert trail.verify() == []
    # The anchor never moves backwards, whoever writes last.
    newest = anchor_head(env.store.engine, anchor_of(env))
    write_anchor(anchor_of(env), Anchor(1, "0" * 64))
    assert read_anchor(anchor_of(env)) == newest


@pytest.mark.parametrize("writer", ["release", "record", "writer"])
def test_a_crash_after_the_first_commit_of_a_new_trail_is_no_false_alarm(
        tmp_path: Path, writer: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed between the very first audit commit and its anchor: the genesis was
    anchored before that commit, so the anchor lags; it is never missing."""
    from broker.delivery.release import Releaser

    env = make_env(tmp_path, release=False)  # the trail still empty
    # Every writer's anchoring after its commit is what such a crash never reaches.
    monkeypatch.setattr("broker.storage.audit.anchor_head", lambda *a: None)
    monkeypatch.setattr("broker.storage.audit_writer.write_anchor",
                        lambda *a: None)  # the AuditWriter's own anchoring
    if writer == "release":
        monkeypatch.setattr(Releaser, "_anchor", lambda self: None)
        assert Releaser(env.config, env.store).run(T0).deliveries
    elif writer == "record":
        AuditLog(env.store.engine, anchor_of(env)).record(AuditEvent("login", "varha"), T1)
    else:
        w = AuditWriter(env.store.engine, anchor_of(env))
        w.start()
        try:
            w.submit(AuditEvent("login", "varha"), T1).result(timeout=30)
        finally:
            w.stop()
    assert rows(env.store.engine)
    assert read_anchor(anchor_of(env)) == Anchor(0, "0" * 64)
    assert verify(env.store.engine, anchor_of(env)) == []
    # A genesis anchor proves only the start: another hash there is still caught.
    anchor_of(env).write_text(json.dumps({"id": 0, "hash": "1" * 64}))
    assert any("not the row anchored" in p for p in verify(env.store.engine, anchor_of(env)))


def test_a_genesis_anchor_that_cannot_be_written_does_not_stop_the_first_commit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk under var/ at the first audited commit: the commit goes on (logged),
    as any anchoring failure does."""
    from broker.delivery.release import Releaser
    from broker.storage import audit

    env = make_env(tmp_path, release=False)  # the trail still empty
    cfg, store = env.config, env.store

    def full_disk(path: Path, anchor: Anchor) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(audit, "write_anchor", full_disk)
    with capture_logs() as logged:
        result = Releaser(cfg, store).run(T0)
    assert result.deliveries and not result.failures
    assert len(rows(store.engine, "release")) == len(result.deliveries)
    assert any("anchoring the empty trail failed" in e["event"] for e in logged)


def test_audit_verify_command_exits_1_when_rows_are_cut_off(trail: AuditLog, env: Env) -> None:
    ok = CliRunner().invoke(audit_group, ["verify"], obj=CliState(env.home))
    assert ok.exit_code == 0 and "intact" in ok.output
    with env.store.engine.begin() as c:
        c.execute(audit_table.delete().where(audit_table.c.id == rows(env.store.engine)[-1].id))
    bad = CliRunner().invoke(audit_group, ["verify"], obj=CliState(env.home))
    assert bad.exit_code == 1
    assert "cut off the end" in bad.output and "NOT intact" in bad.output


# -- the writer thread -----------------------------------------------------------------

@pytest.mark.sqlite_only
def test_writer_group_commits_concurrent_events_into_one_chain(env: Env) -> None:
    engine = env.store.engine
    start = len(rows(engine))
    w = AuditWriter(engine, anchor_of(env))
    w.start()
    try:
        # Another process holds the write lock: everything submitted meanwhile waits and
        # must go in together once it is free.
        blocker = sqlite3.connect(env.config.database, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        futures: list = []
        lock = threading.Lock()

        def burst(n: int) -> None:
            for i in range(50):
                f = w.submit(AuditEvent("download", f"org{n}", path=f"/from-kela/{i}"))
                with lock:
                    futures.append(f)

        threads = [threading.Thread(target=burst, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        # Meanwhile an operator's command appends one row its own way.
        side = threading.Thread(target=AuditLog(make_engine(env.config.storage_url)).record,
                                args=(AuditEvent("release-due", None), T1))
        side.start()
        for t in threads:
            t.join()
        assert not any(f.done() for f in futures)  # none acknowledged before its commit
        blocker.execute("ROLLBACK")
        blocker.close()
        ids = [f.result(timeout=30) for f in futures]
        side.join()
    finally:
        w.stop()
    assert len(set(ids)) == 400
    assert w.commits <= 3  # grouped: not one commit per event
    assert len(rows(engine)) == start + 401
    assert verify(engine, anchor_of(env)) == []
    anchored = read_anchor(anchor_of(env))
    assert anchored is not None and anchored.id >= max(ids)


def test_writer_stop_drains_and_refuses_later_events(env: Env) -> None:
    w = AuditWriter(env.store.engine, anchor_of(env))
    w.start()
    futures = [w.submit(AuditEvent("upload", "pirha", size=i)) for i in range(200)]
    w.stop()
    assert all(f.done() and f.exception() is None for f in futures)
    with pytest.raises(RuntimeError):
        w.submit(AuditEvent("upload", "pirha"))
    assert verify(env.store.engine, anchor_of(env)) == []


@pytest.mark.sqlite_only
def test_the_writer_waits_out_a_long_write_lock_instead_of_losing_rows(env: Env) -> None:
    """An ingest holds the write lock for as long as it stores a big batch, longer than
    SQLite's busy timeout: the rows wait, they are not lost."""
    from sqlalchemy import event

    @event.listens_for(env.store.engine, "connect")
    def _short(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        dbapi_conn.execute("PRAGMA busy_timeout=100")  # the timeout passes quickly here

    env.store.engine.dispose()
    w = AuditWriter(env.store.engine, anchor_of(env))
    w.start()
    holder = sqlite3.connect(env.config.database, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        waiting = w.submit(AuditEvent("download", "pirha", size=7))
        threading.Event().wait(1.0)  # ten busy timeouts
        assert not waiting.done()
        holder.execute("COMMIT")
        assert waiting.result(timeout=10) > 0
    finally:
        holder.close()
        w.stop()
    assert verify(env.store.engine, anchor_of(env)) == []


@pytest.mark.sqlite_only
def test_a_failed_group_commit_fails_its_waiters_and_the_writer_goes_on(env: Env) -> None:
    """The SFTP reply that awaits the row learns it is not on record (and says so)."""
    w = AuditWriter(env.store.engine, anchor_of(env))
    w.start()
    try:
        with env.store.engine.begin() as c:
            c.exec_driver_sql("CREATE TRIGGER no_audit BEFORE INSERT ON audit_log"
                              " BEGIN SELECT RAISE(ABORT, 'disk says no'); END")
        failed = w.submit(AuditEvent("download", "pirha"))
        with pytest.raises(Exception, match="disk says no"):
            failed.result(timeout=10)
        with env.store.engine.begin() as c:
            c.exec_driver_sql("DROP TRIGGER no_audit")
        assert w.submit(AuditEvent("download", "pirha")).result(timeout=10) == 5
    finally:
        w.stop()
    assert verify(env.store.engine, anchor_of(env)) == []


# -- the old separate audit.db -----------------------------------------------------------

def _legacy(var: Path, n: int = 5) -> Path:
    path = var / "audit.db"
    old = AuditLog(make_engine(path))
    for i in range(n):
        old.record(AuditEvent("login", "pirha", f"10.0.0.{i}"), T0 + timedelta(seconds=i))
    old.engine.dispose()
    return path


def test_legacy_audit_db_moves_in_verbatim_once(tmp_path: Path) -> None:
    var = tmp_path / "var"
    legacy = _legacy(var)
    old_hashes = [r.row_hash for r in rows(make_engine(legacy))]
    engine = make_engine(tmp_path / "state.db")
    assert migrate_legacy(engine, legacy, var / HEAD_FILE, T1) == 5
    assert not legacy.exists() and (var / "audit.db.migrated").exists()
    moved = rows(engine)
    assert [r.row_hash for r in moved[:5]] == old_hashes  # the old history stays provable
    assert moved[5].action == "audit-migrated" and moved[5].sha256 == old_hashes[-1]
    assert verify(engine, var / HEAD_FILE) == []
    assert migrate_legacy(engine, legacy, var / HEAD_FILE, T1) == 0


def test_a_crash_before_the_rename_does_not_copy_twice(tmp_path: Path) -> None:
    var = tmp_path / "var"
    legacy = _legacy(var)
    kept = tmp_path / "copy.db"
    shutil.copy(legacy, kept)
    engine = make_engine(tmp_path / "state.db")
    migrate_legacy(engine, legacy, var / HEAD_FILE, T1)
    shutil.copy(kept, legacy)  # as if the rename never happened
    assert migrate_legacy(engine, legacy, var / HEAD_FILE, T1) == 0
    assert len(rows(engine)) == 6 and not legacy.exists()
    # The first file set aside is kept; the second gets a name of its own.
    assert (var / "audit.db.migrated").exists() and (var / "audit.db.migrated.1").exists()


def test_legacy_rows_after_new_ones_and_a_broken_legacy_chain(tmp_path: Path) -> None:
    var = tmp_path / "var"
    legacy = _legacy(var)
    old = make_engine(legacy)
    with old.begin() as c:
        c.execute(text("UPDATE audit_log SET address = 'forged' WHERE id = 2"))
    old.dispose()
    engine = make_engine(tmp_path / "state.db")
    AuditLog(engine, var / HEAD_FILE).record(AuditEvent("login", "varha"), T1)
    assert migrate_legacy(engine, legacy, var / HEAD_FILE, T1) == 5
    moved = rows(engine)
    assert len(moved) == 7 and [r.address for r in moved[1:6]][1] == "forged"
    assert json.loads(moved[-1].detail)["problems"]  # the break is on record
    assert verify(engine, var / HEAD_FILE) == []


# -- audit person ----------------------------------------------------------------------

def test_audit_person_shows_every_disclosure_masked(env: Env) -> None:
    pirha_file = file_of(env, N4, "pirha")
    w = AuditWriter(env.store.engine, anchor_of(env))
    w.start()
    w.submit(AuditEvent("download", "pirha", "10.0.0.7", f"/from-kela/{pirha_file}", 10,
                        "cd" * 32), T0 + timedelta(minutes=5))
    # Another person's file, fetched by the same organisation: not theirs.
    w.submit(AuditEvent("download", "pirha", "10.0.0.7",
                        f"/from-kela/{file_of(env, N3, 'pirha')}", 11, "ef" * 32))
    w.stop()
    assert env.process("pirha", "1.xml", response(transfer(N4, "853"))).status == "accepted"
    env.release(T1)
    varha_file = file_of(env, N4, "varha")

    out = CliRunner().invoke(audit_group, ["person", PIC4, "--json"], obj=CliState(env.home))
    assert out.exit_code == 0, out.output
    assert PIC4 not in out.output and "060885V****" in out.output
    found = [(d["action"], d["org"], d["path"]) for d in json.loads(out.output)["disclosures"]]
    assert found == [
        ("release", "pirha", pirha_file),
        ("download", "pirha", f"/from-kela/{pirha_file}"),
        ("transfer", "varha", None),
        ("release", "varha", varha_file),
    ]
    table = CliRunner().invoke(audit_group, ["person", PIC4.lower()], obj=CliState(env.home))
    assert table.exit_code == 0 and PIC4 not in table.output and varha_file in table.output
    bad = CliRunner().invoke(audit_group, ["person", "060885V907X"], obj=CliState(env.home))
    assert bad.exit_code == 2 and "060885V907X" not in bad.output
    # The trail itself never holds the code.
    with env.store.engine.connect() as c:
        dumped = str(c.execute(select(audit_table)).all()) + str(
            c.execute(select(audit_refs)).all())
    assert PIC4 not in dumped and "060885" not in dumped


def test_audit_show_filters_by_action(env: Env) -> None:
    out = CliRunner().invoke(audit_group, ["show", "--action", "release", "--json"],
                             obj=CliState(env.home))
    assert out.exit_code == 0, out.output
    shown = json.loads(out.output)
    assert len(shown) == 4 and {r["action"] for r in shown} == {"release"}
    assert sorted(i for r in shown for i in r["items"]) == [
        f"N-2026-00000000{n}" for n in range(1, 5)]  # the notification ids on record
    with env.store.engine.connect() as c:
        assert c.execute(select(func.count()).select_from(deliveries)).scalar() == 4


# -- operator commands -----------------------------------------------------------------

@pytest.mark.sqlite_only
def test_early_release_and_its_audit_row_are_one_transaction(tmp_path: Path) -> None:
    from response_support import EXAMPLES, REPO

    from broker.cli import main
    from broker.config.settings import load_config
    from broker.intake.ingest import ingest_batch
    from broker.storage.store import Store, assignments

    home = tmp_path / "home"
    shutil.copytree(REPO / "config", home / "config")
    config = load_config(storage_support.apply(home))
    store = Store(make_engine(config.storage_url))
    assert ingest_batch(EXAMPLES / "decision-batch.xml", config=config, store=store,
                        now=T0).status == "accepted"
    args = ["--home", str(home), "release", "--org", "pirha", "--all", "--reason",
            "county asked"]
    with store.engine.begin() as c:
        c.exec_driver_sql("CREATE TRIGGER no_audit BEFORE INSERT ON audit_log"
                          " BEGIN SELECT RAISE(ABORT, 'disk says no'); END")
    failed = CliRunner().invoke(main, args)
    assert failed.exit_code != 0
    with store.engine.connect() as c:  # the act rolled back with its record
        assert c.execute(select(func.count()).where(
            assignments.c.organisation == "pirha",
            assignments.c.planned_at.is_not(None))).scalar() == 0
    with store.engine.begin() as c:
        c.exec_driver_sql("DROP TRIGGER no_audit")
    ok = CliRunner().invoke(main, args)
    assert ok.exit_code == 0, ok.output
    trail = rows(store.engine)
    assert trail[0].action == "release-early" and "county asked" in trail[0].detail
    assert [(r.action, r.org) for r in trail[1:]] == [("release", "pirha")] * 2
    assert verify(store.engine, config.var / HEAD_FILE) == []
    with store.engine.connect() as c:  # the other organisations' items were not touched
        assert c.execute(select(func.count()).where(
            assignments.c.organisation != "pirha", assignments.c.state == "held")).scalar() == 2


# -- properties over what comes from outside ---------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_events = st.lists(st.builds(
    AuditEvent, action=st.sampled_from(["download", "upload", "login", "push"]),
    org=st.none() | _text, address=st.none() | _text, path=st.none() | _text,
    size=st.none() | st.integers(0, 2**40), sha256=st.none() | st.text("0123456789abcdef",
                                                                        min_size=64,
                                                                        max_size=64),
    detail=st.none() | _text), min_size=1, max_size=8)


@settings(max_examples=40, deadline=None)
@given(events=_events, data=st.data())
def test_any_single_change_to_any_row_is_detected(events: list[AuditEvent],
                                                  data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(Path(tmp) / "state.db")
        log = AuditLog(engine, Path(tmp) / HEAD_FILE)
        for i, e in enumerate(events):
            log.record(e, T0 + timedelta(seconds=i))
        assert log.verify() == []
        victim = data.draw(st.integers(1, len(events)))
        column = data.draw(st.sampled_from(["at", "action", "org", "address", "path",
                                            "size", "sha256", "detail"]))
        with engine.connect() as c:
            old = c.execute(select(audit_table.c[column]).where(
                audit_table.c.id == victim)).scalar()
        new = data.draw((st.integers(0, 2**40) if column == "size" else _text).filter(
            lambda v: v != old))
        with engine.begin() as c:
            c.execute(audit_table.update().where(audit_table.c.id == victim)
                      .values({column: new}))
        assert log.verify()
        engine.dispose()


def test_rows_without_references_hash_as_the_old_audit_db_did() -> None:
    """The old separate log's formula, written out: migrated rows keep their hashes."""
    from broker.storage.audit import row_hash

    e = AuditEvent("download", "pirha", "10.0.0.1", "/from-kela/ä.xml", 5, "ab" * 32, "x")
    at = "2026-11-23T10:00:00.000000+00:00"
    old = hashlib.sha256(json.dumps(
        [3, at, e.action, e.org, e.address, e.path, e.size, e.sha256, e.detail, "1" * 64],
        ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()
    assert row_hash(3, at, e, "1" * 64) == old
    # A reference changes the hash: whose data it carried is part of what is chained.
    with_ref = AuditEvent(**{**e.__dict__, "refs": (AuditRef("N-1", "ff"),)})
    assert row_hash(3, at, with_ref, "1" * 64) != old


def test_start_trail_moves_the_old_log_in_and_runs(tmp_path: Path) -> None:
    from broker.storage.audit_writer import start_trail

    var = tmp_path / "var"
    _legacy(var, 3)
    engine = make_engine(tmp_path / "state.db")
    trail = start_trail(engine, var, T1)
    try:
        assert trail.submit(AuditEvent("login", "pirha")).result(timeout=10) == 5
    finally:
        trail.stop()
    assert verify(engine, var / HEAD_FILE) == []
