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
