"""Taking in one batch whole: every problem is reported together, nothing is kept."""

from __future__ import annotations

import csv
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import storage_support
from daemon_support import make_home

from broker.config.settings import load_config
from broker.intake.ingest import ingest_batch
from broker.intake.synthetic import write_batch
from broker.storage.state_db import make_engine
from broker.storage.store import Store

pytestmark = pytest.mark.both_engines  # conftest.py: SQLite and PostgreSQL

REPO = Path(__file__).resolve().parents[1]
with (REPO / "broker" / "data" / "municipalities.csv").open(encoding="utf-8") as _f:
    MUNICIPALITIES = sorted(row["code"] for row in csv.DictReader(_f))
DAY = date(2026, 11, 20)
NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)


def test_conflicts_found_before_a_schema_error_are_reported_with_it(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    config = load_config(home)
    store = Store(make_engine(config.storage_url))
    first = tmp_path / "first.xml"
    write_batch(first, count=600, municipalities=MUNICIPALITIES, decision_date=DAY,
                batch_id="FIRST", seed=1)
    assert ingest_batch(first, config=config, store=store, now=NOW).status == "accepted"
    # The same ids again: the first with other content, the last with a schema error.
    text = first.read_text(encoding="utf-8").replace('batchId="FIRST"', 'batchId="AGAIN"')
    i = text.index("<FamilyName>") + len("<FamilyName>")
    text = text[:i] + "Changed" + text[i:]
    j = text.rindex("<DecisionDate>") + len("<DecisionDate>")
    again = tmp_path / "again.xml"
    again.write_text(text[:j] + "2026-13-45" + text[j + 10:], encoding="utf-8")
    out = ingest_batch(again, config=config, store=store, now=NOW)
    assert out.status == "rejected"
    messages = [p.message for p in out.problems]
    assert any("received before with different content" in m for m in messages), messages
    assert any("DecisionDate" in m for m in messages), messages


def test_two_takers_of_one_file_at_once_accept_it_once(tmp_path: Path) -> None:
    """The daemon and an operator's `ingest` on the same batch at the same moment, each
    with its own engine: one accepts it, the other reports a duplicate, nothing fails."""
    config = load_config(make_home(tmp_path / "home"))
    batch = tmp_path / "twice.xml"
    write_batch(batch, count=3000, municipalities=MUNICIPALITIES[:50], decision_date=DAY,
                batch_id="TWICE", seed=2)
    verdicts = storage_support.side_by_side(
        config.storage_url,
        lambda store: ingest_batch(batch, config=config, store=store, now=NOW).status, 2)
    assert sorted(verdicts) == ["accepted", "duplicate"]
