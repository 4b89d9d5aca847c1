"""`run --until-idle`: the rule for "nothing to do now" (the daemon end to end is in
test_daemon's cross-engine test, which runs until idle on each engine)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.runtime.idle import Activity, is_idle, waiting_files

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
QUIET = Activity(queued=0, armed=0, handling=0, pushing=False, waiting_files=0,
                 next_due=None)


def test_nothing_going_on_is_idle_and_a_later_release_does_not_keep_it_busy() -> None:
    assert is_idle(QUIET, NOW)
    assert is_idle(replace(QUIET, next_due=NOW + timedelta(days=6)), NOW)


@pytest.mark.parametrize("busy", [
    {"queued": 1}, {"armed": 1}, {"handling": 1}, {"pushing": True}, {"waiting_files": 2},
    {"next_due": NOW}, {"next_due": NOW - timedelta(minutes=1)}])
def test_any_work_now_is_not_idle(busy: dict[str, object]) -> None:
    assert not is_idle(replace(QUIET, **busy), NOW)  # type: ignore[arg-type]


def test_temporary_uploads_are_not_waiting_files(tmp_path: Path) -> None:
    (tmp_path / "kela").mkdir()
    (tmp_path / "kela" / ".batch.xml.part").write_text("x")
    (tmp_path / "kela" / "batch.xml.filepart").write_text("x")
    assert waiting_files([tmp_path / "kela", tmp_path / "missing"]) == 0
    (tmp_path / "kela" / "batch.xml").write_text("x")
    assert waiting_files([tmp_path / "kela"]) == 1
