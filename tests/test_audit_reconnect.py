"""The audit writer across a lost connection: a disclosure is recorded once, never twice
and never not at all, when the database server restarts or fails over under it."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import storage_support
from daemon_support import make_home
from pg_cluster import find_pg_bin, start_cluster
from response_support import Env, make_env
from sqlalchemy import Engine, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError

from broker.config.settings import load_config
from broker.storage.audit import HEAD_FILE, AuditEvent, audit_table, verify
from broker.storage.audit_writer import AuditWriter
from broker.storage.db import writer
from broker.storage.state_db import make_engine

pytestmark = pytest.mark.both_engines


class _ConnectionLost(Exception):
    sqlstate = "08006"  # connection_failure: what psycopg says when the server went away


class _Flaky:
    """The writer's engine, with ``lost`` tries failing as the server going away would:
    before the work (nothing committed) or after the commit (done, but not said)."""

    def __init__(self, engine: Engine, lost: int, after_commit: bool) -> None:
        self.engine, self.lost, self.after_commit = writer(engine), lost, after_commit
        self.tries = 0

    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        self.tries += 1
        with self.engine.begin() as c:
            if self.lost and not self.after_commit:
                self.lost -= 1
                raise OperationalError("BEGIN", {}, _ConnectionLost())
            yield c
        if self.lost and self.after_commit:
            self.lost -= 1
            raise OperationalError("COMMIT", {}, _ConnectionLost())


def _rows(engine: Engine) -> list[tuple[int, str, str | None]]:
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(select(
            audit_table.c.id, audit_table.c.action, audit_table.c.event_key)
            .order_by(audit_table.c.id))]  # type: ignore[misc]


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return make_env(tmp_path)


@pytest.mark.parametrize("after_commit", [True, False], ids=["commit-unsaid", "not-sent"])
def test_a_group_commit_survives_a_lost_connection_exactly_once(env: Env,
                                                                after_commit: bool) -> None:
    engine = env.store.engine
    before = _rows(engine)
    w = AuditWriter(engine, env.config.var / HEAD_FILE)
    flaky = _Flaky(engine, lost=2 if not after_commit else 1, after_commit=after_commit)
    w._engine = flaky  # type: ignore[assignment]
    w.start()
    try:
        events = [AuditEvent("download", "pirha", address="192.0.2.7:50000", path=f"/f{i}")
                  for i in range(3)]
        futures = [w.submit(e) for e in events]
        ids = [f.result(timeout=30) for f in futures]
    finally:
        w.stop()
    after = _rows(engine)
    new = after[len(before):]
    assert [r[0] for r in new] == ids  # each waiter has its own row, and no other row
    assert len({r[2] for r in new}) == 3 and None not in {r[2] for r in new}
    assert flaky.tries >= 2
    assert verify(engine, env.config.var / HEAD_FILE) == []


@pytest.mark.sqlite_only
def test_every_event_of_a_group_is_found_or_none_is(env: Env) -> None:
    """The look-up after a lost commit: a group is one transaction, so finding only some
    of its keys means the trail was changed by hand, and is refused, not guessed at."""
    from broker.storage.audit_writer import _committed

    w = AuditWriter(env.store.engine, env.config.var / HEAD_FILE)
    w.start()
    try:
        w.submit(AuditEvent("download", "pirha")).result(timeout=10)
    finally:
        w.stop()
    with env.store.engine.connect() as c:
        key = c.execute(select(audit_table.c.event_key).where(
            audit_table.c.event_key.is_not(None))).scalar_one()
        from concurrent.futures import Future
        ev = AuditEvent("download", "pirha")
        job = (ev, "at", Future(), key)
        other = (ev, "at", Future(), "0" * 32)
        assert _committed(c, [job]) is not None
        assert _committed(c, [other]) is None
        with pytest.raises(Exception, match="1 of 2 events"):
            _committed(c, [job, other])


@pytest.mark.sqlite_only  # its own PostgreSQL server, stopped and started by the test
@pytest.mark.skipif(find_pg_bin() is None, reason="PostgreSQL's programs are not installed")
def test_events_wait_out_a_server_restart_and_are_recorded_once(tmp_path: Path) -> None:
    with start_cluster() as pg:
        storage_support.current = pg.create_database("audit_restart")
        try:
            home = make_home(tmp_path / "home")
        finally:
            storage_support.current = None
        cfg = load_config(home)
        engine = make_engine(cfg.storage_url)
        w = AuditWriter(engine, cfg.var / HEAD_FILE)
        w.start()
        try:
            assert w.submit(AuditEvent("login", "pirha")).result(timeout=10) == 1
            pg.pause()
            waiting = w.submit(AuditEvent("download", "pirha", path="/from-kela/D-1.xml"))
            threading.Event().wait(1.5)
            assert not waiting.done()  # not failed: waiting for the server
            pg.resume()
            assert waiting.result(timeout=60) == 2
        finally:
            w.stop()
        assert [r[1] for r in _rows(engine)] == ["login", "download"]
        assert verify(engine, cfg.var / HEAD_FILE) == []
        engine.dispose()


def test_a_bad_event_fails_at_once_and_the_events_after_it_go_on(env: Env) -> None:
    """Waiting is for a server that went away, not for a statement the driver refuses
    (psycopg's own errors carry no SQLSTATE): one bad value must not hold up the trail."""
    w = AuditWriter(env.store.engine, env.config.var / HEAD_FILE)
    w.start()
    try:
        bad = w.submit(AuditEvent("download", "pirha", detail={"not": "text"}))  # type: ignore[arg-type]
        with pytest.raises(Exception):  # noqa: B017 -- the driver's own words differ by engine
            bad.result(timeout=15)
        assert w.submit(AuditEvent("download", "pirha")).result(timeout=15) > 0
    finally:
        w.stop()
    assert verify(env.store.engine, env.config.var / HEAD_FILE) == []


@pytest.mark.sqlite_only  # the mapping alone: no database
def test_a_driver_error_without_sqlstate_is_unavailable_only_for_a_connection() -> None:
    from sqlalchemy.exc import DataError, InterfaceError, ProgrammingError

    from broker.storage.db_errors import DbFailure, kind_of

    class NoState(Exception):
        sqlstate = None

    assert kind_of(OperationalError("x", {}, NoState())) is DbFailure.UNAVAILABLE
    assert kind_of(InterfaceError("x", {}, NoState())) is DbFailure.UNAVAILABLE
    assert kind_of(DataError("x", {}, NoState())) is DbFailure.BROKEN
    assert kind_of(ProgrammingError("x", {}, NoState())) is DbFailure.BROKEN
