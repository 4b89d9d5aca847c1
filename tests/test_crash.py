"""kill -9 at any moment loses nothing and duplicates nothing (issue 4)."""

from __future__ import annotations

import random
import sqlite3
import time
from collections import Counter
from datetime import date
from pathlib import Path

from daemon_support import DaemonProcess, make_home, wait_for
from lxml import etree

from broker.config import load_config
from broker.model import NotificationType
from broker.synthetic import write_batch

IMMEDIATE = [NotificationType.IMMIGRANT.value, NotificationType.SOCIAL_WORK_NEED.value,
             NotificationType.UNEMPLOYED_UNDER_25.value]


def ids_in_outbox(home: Path) -> Counter[str]:
    seen: Counter[str] = Counter()
    for path in (home / "outbox").rglob("D-*.xml"):
        for _, el in etree.iterparse(str(path), tag="{*}Notification"):
            seen[el.get("id")] += 1
            el.clear()
    return seen


def test_kill_minus_nine_during_a_large_release(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    cfg = load_config(home)
    batch = tmp_path / "big.xml"
    count = 4000
    # Many municipalities and types: hundreds of delivery files, so kills land mid-release.
    write_batch(batch, count=count, municipalities=sorted(cfg.register.codes), types=IMMEDIATE,
                decision_date=date(2026, 11, 2), batch_id="CRASH-1", seed=7,
                attachment_bytes=512)
    rng = random.Random(42)
    d = DaemonProcess(home).start()
    (home / "inbox" / "kela" / ".big.xml.part").write_bytes(batch.read_bytes())
    (home / "inbox" / "kela" / ".big.xml.part").rename(home / "inbox" / "kela" / "big.xml")
    db = home / "var" / "state.db"

    def released() -> tuple[int, int]:
        if not db.exists():
            return 0, 0
        with sqlite3.connect(db) as c:
            (n,) = c.execute("select count(*) from assignments where state='released'").fetchone()
            (p,) = c.execute("select count(*) from deliveries where state='pending'").fetchone()
        return n, p

    mid_release = 0
    for _ in range(8):
        # Kill once the release has started, at a random moment inside it.
        wait_for(lambda: released()[0] > 0 or released()[1] > 0, timeout=120,
                 what="release under way")
        time.sleep(rng.uniform(0.0, 0.3))
        d.kill9()
        n, _pending = released()
        if n == count:
            break
        mid_release += 1
        d = DaemonProcess(home).start()

    def done() -> bool:
        n, p = released()
        return n == count and p == 0
    try:
        wait_for(done, timeout=240, what="all notifications released")
    finally:
        d.stop()
    seen = ids_in_outbox(home)
    assert mid_release >= 3, "the kills did not land inside the release"
    assert len(seen) == count, f"lost {count - len(seen)} notifications"
    dupes = [i for i, n in seen.items() if n > 1]
    assert not dupes, f"{len(dupes)} notifications in more than one file, e.g. {dupes[:3]}"
    assert not list((home / "outbox").rglob(".*.part")), "a partial file was left visible"
    assert not list((home / "inbox" / "kela").glob("*.xml")), "input not archived"
