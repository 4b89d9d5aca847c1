"""kill -9 during release passes: a delivery is confirmed exactly when its audit row is."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from daemon_support import make_home
from sqlalchemy import select

from broker.config.settings import load_config
from broker.intake.ingest import ingest_batch
from broker.intake.synthetic import write_batch
from broker.storage.audit import HEAD_FILE, audit_refs, audit_table, verify
from broker.storage.state_db import make_engine
from broker.storage.store import Store, deliveries

pytestmark = pytest.mark.both_engines  # conftest.py: SQLite and PostgreSQL

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)

# A release pass per day for four months: many small commits to be killed between.
CHILD = """
import sys
from datetime import datetime, timedelta
from pathlib import Path
from broker.config.settings import load_config
from broker.storage.state_db import make_engine
from broker.delivery.release import Releaser
from broker.storage.store import Store

cfg = load_config(Path(sys.argv[1]))
releaser = Releaser(cfg, Store(make_engine(cfg.storage_url)))
start = datetime.fromisoformat(sys.argv[2])
for day in range(0, 120):
    releaser.run(start + timedelta(days=day))
"""


def check_trail(cfg_var: Path, store: Store) -> tuple[int, int]:
    """Every written delivery has exactly one release row naming all its notifications;
    a pending one has none; the chain and its anchor hold. Returns (written, pending)."""
    with store.engine.connect() as c:
        ds = list(c.execute(select(deliveries)))
        released = [r for r in c.execute(select(audit_table)
                                         .where(audit_table.c.action == "release"))]
        refs: dict[int, int] = {}
        for r in c.execute(select(audit_refs.c.event_id)):
            refs[r.event_id] = refs.get(r.event_id, 0) + 1
    by_file: dict[str, list] = {}
    for r in released:
        by_file.setdefault(r.path, []).append(r)
    for d in ds:
        rows = by_file.get(d.file_name, [])
        if d.state == "written":
            assert len(rows) == 1, (d.file_name, len(rows))
            assert rows[0].sha256 == d.sha256 and json.loads(rows[0].detail)["count"] == d.count
            # One reference per notification; a list has one per person in it.
            assert refs[rows[0].id] == d.count if d.kind == "notification" else \
                refs[rows[0].id] >= 1
        else:
            assert rows == [], d.file_name
    assert len(released) == sum(d.state == "written" for d in ds)
    assert verify(store.engine, cfg_var / HEAD_FILE) == []
    return sum(d.state == "written" for d in ds), sum(d.state == "pending" for d in ds)


def test_kill_minus_nine_during_release_keeps_deliveries_and_audit_rows_together(
    tmp_path: Path,
) -> None:
    home = make_home(tmp_path / "home")
    cfg = load_config(home)
    store = Store(make_engine(cfg.storage_url))
    rng = random.Random(11)
    kills, k, took = 0, 0, 2.4
    # A new batch each round, so that every child has work when killed; the moment of
    # the kill follows how long an unkilled child took on this machine (load varies).
    while kills < 4 and k < 16:
        batch = tmp_path / f"b{k}.xml"
        write_batch(batch, count=3000, municipalities=["091", "837", "853", "092", "049"],
                    decision_date=date(2026, 11, 20), batch_id=f"CRASH-{k}", lists=1,
                    start_id=1 + 3000 * k, seed=k)
        assert ingest_batch(batch, config=cfg, store=store, now=NOW).status == "accepted"
        started = time.monotonic()
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(home), NOW.isoformat()])
        try:
            child.wait(rng.uniform(0.4, 0.95) * took)
            took = time.monotonic() - started  # it finished: kill earlier next time
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGKILL)
            child.wait()
            kills += 1
        check_trail(cfg.var, store)  # between any two kills, not only at the end
        k += 1
    # A last run to the end finishes whatever a kill left pending.
    subprocess.run([sys.executable, "-c", CHILD, str(home), NOW.isoformat()], check=True)
    written, pending = check_trail(cfg.var, store)
    assert kills and written and pending == 0
