"""The hash-chained audit log: records, queries, and tamper detection."""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from daemon_support import make_home
from sqlalchemy import Engine, text

from broker.config.settings import load_config
from broker.storage.audit import GENESIS, AuditEvent, AuditLog
from broker.storage.state_db import make_engine

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


pytestmark = pytest.mark.both_engines  # conftest.py: SQLite and PostgreSQL


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    """The state database of a new home, on this run's engine."""
    return make_engine(load_config(make_home(tmp_path / "home")).storage_url)


@pytest.fixture
def audit(engine: Engine) -> AuditLog:
    log = AuditLog(engine)
    events = [
        AuditEvent("login", "alpha", "10.0.0.1"),
        AuditEvent("download", "alpha", "10.0.0.1", "/from-kela/d1.xml", 120, "ab" * 32),
        AuditEvent("upload", "beta", "10.0.0.2", "/to-kela/r.xml", 55, "cd" * 32),
        AuditEvent("rename", "beta", "10.0.0.2", "/to-kela/r.xml", 55, None, "to /to-kela/s.xml"),
        AuditEvent("ban", None, "10.9.9.9", detail="5 failed logins"),
        AuditEvent("delete", "alpha", "10.0.0.1", "/from-kela/d1.xml", 120, "ab" * 32, "ääkköset"),
    ]
    for i, event in enumerate(events):
        log.record(event, T0 + timedelta(minutes=i))
    return log


def test_records_and_queries(audit: AuditLog) -> None:
    everything = audit.query()
    assert [r.id for r in everything] == [1, 2, 3, 4, 5, 6]
    assert everything[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.row_hash for a, b in itertools.pairwise(everything))
    alpha = audit.query(org="alpha")
    assert [r.action for r in alpha] == ["login", "download", "delete"]
    assert alpha[1].path == "/from-kela/d1.xml" and alpha[1].size == 120
    assert alpha[2].detail == "ääkköset"
    assert alpha[0].at == T0
    assert [r.id for r in audit.query(since=T0 + timedelta(minutes=4))] == [5, 6]
    # limit keeps the most recent rows, still oldest first.
    assert [r.id for r in audit.query(limit=2)] == [5, 6]
    assert audit.verify() == []


def test_time_in_other_zone_is_stored_as_utc(audit: AuditLog) -> None:
    helsinki = timezone_plus(3)
    row_id = audit.record(
        AuditEvent("login", "alpha"), datetime(2025, 3, 1, 12, 0, tzinfo=helsinki)
    )
    (rec,) = [r for r in audit.query() if r.id == row_id]
    assert rec.at == datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
    with pytest.raises(ValueError):
        audit.record(AuditEvent("login", "alpha"), datetime(2025, 3, 1, 12, 0))


def timezone_plus(hours: int) -> object:
    from datetime import timezone

    return timezone(timedelta(hours=hours))


@pytest.mark.parametrize(
    ("sql", "row"),
    [
        ("UPDATE audit_log SET size = 121 WHERE id = 2", 2),
        ("UPDATE audit_log SET org = 'beta' WHERE id = 1", 1),
        ("UPDATE audit_log SET detail = NULL WHERE id = 4", 4),
        ("UPDATE audit_log SET at = '2025-03-01T09:00:00.000000+00:00' WHERE id = 6", 6),
    ],
)
def test_changed_row_is_detected(audit: AuditLog, engine: Engine, sql: str, row: int) -> None:
    with engine.begin() as conn:
        conn.execute(text(sql))
    problems = audit.verify()
    assert problems and all(p.startswith(f"row {row}:") for p in problems)
    assert "changed" in problems[0]


def test_deleted_row_is_detected(audit: AuditLog, engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_log WHERE id = 3"))
    problems = audit.verify()
    assert any(p.startswith("row 4:") for p in problems)


def test_rehashed_row_still_breaks_the_chain(audit: AuditLog, engine: Engine) -> None:
    # A forger who also recomputes the changed row's hash breaks the next row's link.
    from broker.storage.audit import row_hash

    (rec,) = [r for r in audit.query() if r.id == 2]
    forged = AuditEvent(rec.action, rec.org, rec.address, rec.path, 1, rec.sha256, rec.detail)
    at = rec.at.isoformat(timespec="microseconds")
    new_hash = row_hash(2, at, forged, rec.prev_hash)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE audit_log SET size = 1, row_hash = :h WHERE id = 2"), {"h": new_hash}
        )
    problems = audit.verify()
    assert problems == [
        "row 3: prev_hash does not match the hash of the row before it "
        "(a row was inserted, deleted or changed)"
    ]


def test_concurrent_records_form_one_chain(engine: Engine) -> None:
    log = AuditLog(engine)
    second = AuditLog(engine)  # another writer on the same database

    def write(target: AuditLog, org: str) -> None:
        for i in range(25):
            target.record(AuditEvent("login", org, detail=str(i)), T0)

    threads = [
        threading.Thread(target=write, args=(log, "alpha")),
        threading.Thread(target=write, args=(log, "beta")),
        threading.Thread(target=write, args=(second, "gamma")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(log.query()) == 75
    assert log.verify() == []


def test_empty_log_verifies(engine: Engine) -> None:
    assert AuditLog(engine).verify() == []
    assert AuditLog(engine).query() == []
