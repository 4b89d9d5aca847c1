"""The store's driver-level SQL writes times exactly as SQLAlchemy does: SQLite compares
them as text, so two spellings of one instant would make a due row look not due."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from broker.storage.state_db import make_engine
from broker.storage.store import input_files, stored_time


@pytest.mark.parametrize("when", [
    datetime(2026, 11, 24, 4, 0, tzinfo=UTC),  # whole seconds: the case that differed
    datetime(2026, 11, 24, 6, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2))),
    datetime(2027, 3, 28, 3, 30, tzinfo=timezone(timedelta(hours=3))),
])
def test_stored_time_is_sqlalchemys_own_text(tmp_path: Path, when: datetime) -> None:
    engine = make_engine(tmp_path / "state.db")
    with engine.begin() as c:
        c.execute(insert(input_files).values(
            source="kela", kind="batch", name="x", sha256="0" * 64, size=1, status="accepted",
            received_at=when, items=0))
        text = c.exec_driver_sql("SELECT received_at FROM input_files").scalar()
        assert text == stored_time(when)
        # And a driver-level bound instant compares equal to it in SQL.
        assert c.exec_driver_sql("SELECT count(*) FROM input_files WHERE received_at <= ?",
                                 (stored_time(when),)).scalar() == 1
        assert c.execute(select(input_files.c.received_at)).scalar() == when.astimezone(UTC)


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError):
        stored_time(datetime(2026, 11, 24, 4, 0))


@pytest.mark.parametrize(("table", "column"), [
    ("assignments", "state"), ("deliveries", "state"), ("input_files", "status"),
    ("response_files", "status"), ("response_files", "state")])
def test_the_database_refuses_a_state_no_query_looks_for(
        tmp_path: Path, table: str, column: str) -> None:
    """Every state column carries a CHECK constraint: a typo in a raw statement fails."""
    import sqlite3

    make_engine(tmp_path / "state.db").dispose()
    with sqlite3.connect(tmp_path / "state.db") as c:
        ddl = c.execute("select sql from sqlite_master where name = ?", (table,)).fetchone()[0]
    assert f"CHECK ({column} IN (" in ddl, ddl


def test_an_unknown_state_cannot_be_written(tmp_path: Path) -> None:
    import sqlite3

    make_engine(tmp_path / "state.db").dispose()
    with sqlite3.connect(tmp_path / "state.db") as c, \
            pytest.raises(sqlite3.IntegrityError, match="CHECK constraint"):
        c.execute("insert into input_files (source, kind, name, sha256, size, status,"
                  " received_at, items) values ('kela', 'batch', 'x.xml', 'ab', 1, 'acepted',"
                  " '2026-01-01 00:00:00', 0)")
