"""Audit events per second: AuditWriter's group commit against one commit per event.

Both append the same download events to a fresh state database (WAL, synchronous=FULL,
the anchor written after every commit). The baseline is what the daemon did before:
``AuditLog.record`` per event, one transaction and fsync each, from the same number of
concurrent sessions. Ours: the same sessions each wait for their event's Future, as the
SFTP reply does. Time per event is compared (lower is better); target: at most half the
baseline's with 16 sessions.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench import Row
from broker.storage.audit import AuditEvent, AuditLog
from broker.storage.audit_writer import AuditWriter
from broker.storage.state_db import make_engine

SESSIONS = int(os.environ.get("BENCH_AUDIT_SESSIONS", "16"))
EVENTS = int(os.environ.get("BENCH_AUDIT_EVENTS", "100"))  # per session
MAX_RATIO = 0.5


def _event(n: int, i: int) -> AuditEvent:
    return AuditEvent("download", f"org{n}", "10.0.0.1", f"/from-kela/D-{i}.xml", 4096,
                      "ab" * 32)


def _sessions(each: Callable[[int, int], None]) -> float:
    """Wall time for SESSIONS threads each doing ``each(session, i)`` EVENTS times."""
    def session(n: int) -> None:
        for i in range(EVENTS):
            each(n, i)

    threads = [threading.Thread(target=session, args=(n,)) for n in range(SESSIONS)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def _home(workdir: Path, name: str) -> Path:
    var = workdir / "audit-bench" / name
    shutil.rmtree(var, ignore_errors=True)
    var.mkdir(parents=True)
    return var


def run(workdir: Path) -> list[Row]:
    total = SESSIONS * EVENTS
    var = _home(workdir, "baseline")
    log = AuditLog(make_engine(var / "state.db"), var / "audit.head")
    base = _sessions(lambda n, i: log.record(_event(n, i), datetime.now(UTC)))
    assert log.verify() == []

    var = _home(workdir, "writer")
    engine = make_engine(var / "state.db")
    writer = AuditWriter(engine, var / "audit.head")
    writer.start()
    try:
        ours = _sessions(lambda n, i: writer.submit(_event(n, i)).result())
    finally:
        writer.stop()
    assert AuditLog(engine, var / "audit.head").verify() == []
    ratio = ours / base
    return [Row(
        f"audit events, {SESSIONS} sessions x {EVENTS}",
        f"{total / ours:,.0f} events/s ({total} in {writer.commits} commits)",
        f"{total / base:,.0f} events/s (one commit each)",
        ratio, f"<= {MAX_RATIO}x the time per event", ratio <= MAX_RATIO)]
