"""The storage layer on both engines: times, states, counters, errors, concurrency."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import storage_support
from daemon_support import make_home
from sqlalchemy import Engine, insert, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from broker.config.settings import load_config
from broker.errors import StoreBusy, StoreConflict
from broker.storage import counters
from broker.storage.db import writer
from broker.storage.db_errors import DbFailure, kind_of, retrying, store_error
from broker.storage.state_db import make_engine
from broker.storage.store import Store, input_files

pytestmark = pytest.mark.both_engines  # conftest.py: SQLite and PostgreSQL


def _store(tmp_path: Path) -> Store:
    return Store(make_engine(load_config(make_home(tmp_path / "home")).storage_url))


def test_each_run_uses_its_engine(tmp_path: Path, storage: str) -> None:
    """The harness really points the home at PostgreSQL in a [postgresql] run."""
    engine = _store(tmp_path).engine
    assert engine.dialect.name == ("postgresql" if storage_support.is_postgresql()
                                   else "sqlite")


def test_a_test_that_does_not_name_the_engine_runs_on_it_too(
        request: pytest.FixtureRequest) -> None:
    """Parametrising by engine is not enough for pytest to set the engine up: a
    [postgresql] run of a test that never names ``storage`` must still be on PostgreSQL."""
    assert storage_support.is_postgresql() == ("postgresql" in request.node.callspec.id)


@pytest.mark.parametrize("when", [
    datetime(2026, 11, 24, 4, 0, tzinfo=UTC),  # whole seconds
    datetime(2026, 11, 24, 6, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2))),
    datetime(2027, 3, 28, 3, 30, tzinfo=timezone(timedelta(hours=3))),
])
def test_times_come_back_as_the_same_instant_and_compare_in_sql(
        tmp_path: Path, when: datetime) -> None:
    store = _store(tmp_path)
    with store.writer.begin() as c:
        c.execute(insert(input_files).values(
            source="kela", kind="batch", name="x", sha256="0" * 64, size=1, status="accepted",
            received_at=when, items=0))
        # Bound through the column type, another spelling of the instant compares equal.
        other = when.astimezone(timezone(timedelta(hours=-5)))
        assert c.execute(select(input_files.c.id)
                         .where(input_files.c.received_at <= other)).scalar() == 1
        assert c.execute(select(input_files.c.id).where(
            input_files.c.received_at < other - timedelta(microseconds=1))).scalar() is None
        back = c.execute(select(input_files.c.received_at)).scalar()
    assert back == when and back.tzinfo is not None and back.utcoffset() == timedelta(0)


def test_naive_times_are_refused(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(Exception, match="naive datetime"), store.writer.begin() as c:
        c.execute(insert(input_files).values(
            source="kela", kind="batch", name="x", sha256="0" * 64, size=1, status="accepted",
            received_at=datetime(2026, 11, 24, 4, 0), items=0))


@pytest.mark.parametrize(("table", "column"), [
    ("assignments", "state"), ("deliveries", "state"), ("input_files", "status"),
    ("response_files", "status"), ("response_files", "state")])
def test_the_database_refuses_a_state_no_query_looks_for(
        tmp_path: Path, table: str, column: str) -> None:
    """Every state column carries a CHECK constraint: a typo in a raw statement fails."""
    store = _store(tmp_path)
    with store.engine.connect() as c:
        from sqlalchemy import inspect

        checks = inspect(c).get_check_constraints(table)
    # SQLite keeps the CHECK as written (state IN (...)); PostgreSQL as = ANY (ARRAY[...]).
    assert any(column in (ck.get("sqltext") or "")
               and ("IN" in (ck.get("sqltext") or "") or "ANY" in (ck.get("sqltext") or ""))
               for ck in checks), checks


def test_an_unknown_state_cannot_be_written(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(IntegrityError), store.writer.begin() as c:
        c.execute(text("insert into input_files (source, kind, name, sha256, size, status,"
                       " received_at, items) values ('kela', 'batch', 'x.xml', 'ab', 1,"
                       " 'acepted', :at, 0)"), {"at": datetime(2026, 1, 1, tzinfo=UTC)})


def test_counters_hand_out_each_number_once_across_threads(tmp_path: Path) -> None:
    """Writers in parallel (threads, each its own connection and transaction) never draw
    the same number, and the numbers have no gaps."""
    store = _store(tmp_path)
    got: list[int] = []
    lock = threading.Lock()

    def draw() -> None:
        for _ in range(25):
            def one() -> int:
                with writer(store.engine).begin() as c:
                    return counters.take(c, counters.DELIVERIES, 2)
            first = retrying(one)
            with lock:
                got.extend([first, first + 1])

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 201))


def test_a_rolled_back_draw_gives_its_numbers_back(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(RuntimeError), store.writer.begin() as c:
        assert counters.take(c, counters.DELIVERIES) == 1
        raise RuntimeError("the claim lost a race")
    with store.writer.begin() as c:
        assert counters.take(c, counters.DELIVERIES) == 1


def test_a_unique_violation_is_a_conflict_in_the_error_tree(tmp_path: Path) -> None:
    store = _store(tmp_path)
    row = dict(source="kela", kind="batch", name="x", sha256="0" * 64, size=1,
               status="accepted", received_at=datetime(2026, 1, 1, tzinfo=UTC), items=0)
    with store.writer.begin() as c:
        c.execute(insert(input_files).values(**row))
    with pytest.raises(DBAPIError) as caught, store.writer.begin() as c:
        c.execute(insert(input_files).values(**row))
    assert kind_of(caught.value) is DbFailure.CONFLICT
    assert isinstance(store_error(caught.value), StoreConflict)


def test_attempts_count_every_handling(tmp_path: Path) -> None:
    store = _store(tmp_path)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert [store.begin_attempt("k", "kela", "x.xml", now) for _ in range(3)] == [1, 2, 3]
    store.finish_attempt("k")
    assert store.begin_attempt("k", "kela", "x.xml", now) == 1


@pytest.mark.sqlite_only
def test_a_held_write_lock_is_busy_in_the_error_tree(tmp_path: Path) -> None:
    import sqlite3

    cfg = load_config(make_home(tmp_path / "home"))
    Store(make_engine(cfg.storage_url))
    assert cfg.database is not None
    holder = sqlite3.connect(cfg.database, isolation_level=None, timeout=0.1)
    blocked = sqlite3.connect(cfg.database, isolation_level=None, timeout=0.1)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(sqlite3.OperationalError) as caught:
            blocked.execute("BEGIN IMMEDIATE")
    finally:
        holder.execute("ROLLBACK")
    assert kind_of(caught.value) is DbFailure.BUSY
    assert isinstance(store_error(DBAPIError("BEGIN", None, caught.value)), StoreBusy)


def test_sizes_of_gigabytes_fit(tmp_path: Path) -> None:
    """max_file_mb allows 4 GiB: a size past 32 bits is stored on both engines."""
    store = _store(tmp_path)
    size = 3 * 1024**3
    with store.writer.begin() as c:
        c.execute(insert(input_files).values(
            source="kela", kind="batch", name="big.xml", sha256="1" * 64, size=size,
            status="rejected", received_at=datetime(2026, 1, 1, tzinfo=UTC), items=0))
        assert c.execute(select(input_files.c.size)).scalar() == size


def test_a_counter_behind_its_table_never_hands_out_a_taken_number(tmp_path: Path) -> None:
    """An older release still running beside an upgraded database numbers by max + 1
    and leaves the counter behind: the next number is still past every row."""
    from broker.storage.store import deliveries

    store = _store(tmp_path)
    with store.writer.begin() as c:
        assert counters.take(c, counters.DELIVERIES) == 1
        for seq in (1, 2, 3):  # what the old code wrote meanwhile
            c.execute(insert(deliveries).values(
                id=f"D-{seq}", organisation="x", type="IMMIGRANT", kind="notification",
                file_name=f"D-{seq}.xml", created_at=datetime(2026, 1, 1, tzinfo=UTC),
                count=1, state="written", seq=seq))
    with store.writer.begin() as c:
        assert counters.take(c, counters.DELIVERIES, 2) == 4
        assert counters.take(c, counters.DELIVERIES) == 6


def test_the_bulk_path_checks_values_and_maps_errors_like_any_statement(
        tmp_path: Path) -> None:
    """Many rows at once (executemany on SQLite, COPY on PostgreSQL): a naive time is
    refused, and a duplicate key is a DBAPIError the error tree knows."""
    from broker.storage.bulk import Many

    store = _store(tmp_path)
    cols = ("source", "kind", "name", "sha256", "size", "status", "received_at", "items")
    row = ("kela", "batch", "x", "0" * 64, 1, "accepted", datetime(2026, 1, 1, tzinfo=UTC), 0)
    with pytest.raises(ValueError, match="naive"), store.writer.begin() as c:
        Many(c, input_files, cols).run([(*row[:6], datetime(2026, 1, 1), 0)])
    with pytest.raises(DBAPIError) as caught, store.writer.begin() as c:
        Many(c, input_files, cols).run([row, row])
    assert kind_of(caught.value) is DbFailure.CONFLICT


@pytest.mark.parametrize("when", [datetime(2026, 11, 24, 4, 0, tzinfo=UTC),
                                  datetime(2026, 11, 24, 4, 0, 0, 5, tzinfo=UTC)])
def test_the_bulk_path_stores_what_a_plain_statement_stores(
        tmp_path: Path, when: datetime) -> None:
    """Every value goes through its dialect's own processing on both paths: the same
    stored form (on SQLite, the text a time compares as), whatever the column order."""
    from broker.storage.bulk import Many

    store = _store(tmp_path)
    values = {"source": "kela", "kind": "batch", "name": "x", "sha256": "0" * 64, "size": 1,
              "status": "accepted", "received_at": when, "items": 0}
    cols = ("received_at", "items", "status", "size", "sha256", "name", "kind", "source")
    with store.writer.begin() as c:
        c.execute(insert(input_files).values(**values))
        Many(c, input_files, cols).run([tuple({**values, "name": "y", "sha256": "1" * 64}[k]
                                             for k in cols)])
        raw = c.execute(select(text("name"), text("CAST(received_at AS TEXT)"))
                        .select_from(input_files).order_by(text("name"))).all()
        plain, bulk = (r[1] for r in raw)
        assert bulk == plain
        assert c.execute(select(input_files.c.name)
                         .where(input_files.c.received_at == when)
                         .order_by(input_files.c.name)).scalars().all() == ["x", "y"]


@pytest.mark.sqlite_only
def test_many_first_opens_of_a_new_database_at_once_all_succeed(tmp_path: Path) -> None:
    """The daemon and commands starting together on a new home: SQLite refuses all but
    one switch to WAL at once, busy handler or not; every opener still gets the store."""
    from broker.storage.db import open_engine

    errors: list[BaseException] = []

    def first_connect(engine: Engine, start: threading.Barrier) -> None:
        start.wait()
        try:
            with engine.connect() as c:
                assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        except BaseException as exc:
            errors.append(exc)

    for n in range(30):  # the race is lost often, not always: many new files
        url = f"sqlite:///{tmp_path / f'new-{n}.db'}"
        engines = [open_engine(url) for _ in range(8)]
        start = threading.Barrier(len(engines))
        threads = [threading.Thread(target=first_connect, args=(e, start)) for e in engines]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for e in engines:
            e.dispose()
        assert errors == []
