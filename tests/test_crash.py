"""kill -9 at any moment loses nothing and duplicates nothing (issue 4)."""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from datetime import date
from pathlib import Path

import pytest
from daemon_support import DaemonProcess, make_home, wait_for
from lxml import etree
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from broker.config.settings import load_config
from broker.domain.model import NotificationType
from broker.intake.synthetic import write_batch

IMMEDIATE = [NotificationType.IMMIGRANT.value, NotificationType.SOCIAL_WORK_NEED.value,
             NotificationType.UNEMPLOYED_UNDER_25.value]
BATCHES, PER_BATCH = 4, 2500


def ids_in_outbox(home: Path) -> Counter[str]:
    seen: Counter[str] = Counter()
    for path in (home / "outbox").rglob("D-*.xml"):
        for _, el in etree.iterparse(str(path), tag="{*}Notification"):
            seen[el.get("id")] += 1
            el.clear()
    return seen


@pytest.mark.both_engines  # conftest.py: SQLite and PostgreSQL
def test_kill_minus_nine_during_ingest_and_release(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    # Each kill during a file's handling counts as a failed attempt (a file that kills the
    # process is set aside after max_attempts): here the kills are the test's, not the
    # files' doing, and one batch may be hit many times.
    toml = home / "config" / "broker.toml"
    toml.write_text(re.sub(r"(?m)^max_attempts = \d+", "max_attempts = 100", toml.read_text()))
    cfg = load_config(home)
    inbox = home / "inbox" / "kela"
    for b in range(BATCHES):
        # Many municipalities and types: hundreds of delivery files per release.
        src = tmp_path / f"big-{b}.xml"
        write_batch(src, count=PER_BATCH, municipalities=sorted(cfg.register.codes),
                    types=IMMEDIATE, decision_date=date(2026, 11, 2), batch_id=f"CRASH-{b}",
                    seed=b, attachment_bytes=512, start_id=1 + b * PER_BATCH)
        src.rename(inbox / f".big-{b}.xml.part")
    total = BATCHES * PER_BATCH
    db = cfg.database  # None on PostgreSQL
    # NullPool: the test holds no connection between looks (a kill -9 of the daemon must
    # not find one of ours in its way).
    engine = create_engine(cfg.storage_url, poolclass=NullPool)

    def state() -> tuple[int, int]:
        """(released notifications, pending deliveries) as committed."""
        if db is not None and not db.exists():
            return 0, 0
        try:
            with engine.connect() as c:
                n = c.execute(text(
                    "select count(*) from assignments where state='released'")).scalar_one()
                p = c.execute(text(
                    "select count(*) from deliveries where state='pending'")).scalar_one()
        except DBAPIError:  # tables not created yet
            return 0, 0
        return n, p

    rng = random.Random(42)
    d = DaemonProcess(home).start()
    for b in range(BATCHES):
        (inbox / f".big-{b}.xml.part").rename(inbox / f"big-{b}.xml")
    kills = mid_release = 0
    def mid_release_soon() -> None:
        """Wait until a delivery is claimed but not yet confirmed (the release is fast:
        a kill at a random moment alone would rarely land in it)."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and state()[1] == 0 and state()[0] < total:
            time.sleep(0.005)

    try:
        for k in range(20):
            if kills >= 10 or (kills >= 5 and mid_release >= 2):
                break
            if k % 2:
                mid_release_soon()
            else:
                time.sleep(rng.uniform(0.3, 1.2))  # anywhere: start-up, ingest, release, recovery
            if state()[0] == total:
                break
            d.kill9()
            kills += 1
            if state()[1] > 0:  # a delivery was claimed but its files not all confirmed
                mid_release += 1
            d = DaemonProcess(home).start(wait=False)
        wait_for(lambda: state() == (total, 0), timeout=240, what="all notifications released")
    finally:
        d.stop()
    assert kills >= 5 and mid_release >= 2, (kills, mid_release)
    seen = ids_in_outbox(home)
    assert len(seen) == total, f"lost {total - len(seen)} notifications"
    dupes = [i for i, n in seen.items() if n > 1]
    assert not dupes, f"{len(dupes)} notifications in more than one file, e.g. {dupes[:3]}"
    assert not list((home / "outbox").rglob(".*.part")), "a partial file was left visible"
    assert not list(inbox.glob("*.xml")), "input not archived"
    archived = list((home / "var" / "archive").rglob("*.xml"))
    assert len(archived) == BATCHES


def test_kill_minus_nine_during_response_processing(tmp_path: Path) -> None:
    """Organisations' responses (transfers and receipts) taken while the daemon is killed:
    every upload gets exactly one verdict, one acknowledgement and, accepted, one forward;
    every transferred notification reaches its new organisation in exactly one file."""
    from response_support import receipt, response, transfer

    home = make_home(tmp_path / "home")
    toml = home / "config" / "broker.toml"
    toml.write_text(re.sub(r"(?m)^max_attempts = \d+", "max_attempts = 100", toml.read_text()))
    src = tmp_path / "county.xml"
    count = 360  # under the stagger threshold: released at once
    write_batch(src, count=count, municipalities=["837"], types=["UNEMPLOYED_UNDER_25"],
                decision_date=date(2026, 11, 2), batch_id="RESP", seed=9)
    cli_ingest(home, src)
    released = ids_in_outbox(home)
    assert len(released) == count
    ids = sorted(released)
    uploads = home / "inbox" / "pirha"
    uploads.mkdir(parents=True, exist_ok=True)
    responses = 60
    transferred: set[str] = set()
    for k in range(responses):
        chunk = ids[k * 6:(k + 1) * 6]
        body = [transfer(i, "853") for i in chunk[:4]] + [receipt(i) for i in chunk[4:]]
        transferred |= set(chunk[:4])
        tmp = uploads / f".r{k:03d}.xml.part"
        tmp.write_bytes(response(*body, rid=f"R-{k}"))
        tmp.rename(uploads / f"r{k:03d}.xml")
    rng = random.Random(7)
    kills = 0
    d = DaemonProcess(home).start()
    try:
        while any(uploads.glob("r*.xml")) and kills < 8:
            time.sleep(rng.uniform(0.05, 0.6))
            d.kill9()
            kills += 1
            d = DaemonProcess(home).start()
        wait_for(lambda: not any(uploads.glob("r*.xml")), timeout=120, what="all taken")
        varha = home / "outbox" / "varha"
        wait_for(lambda: len(ids_in_outbox_of(varha)) == len(transferred), timeout=120,
                 what="every transfer delivered")
    finally:
        d.stop()
    assert kills >= 2
    in_varha = ids_in_outbox_of(varha)
    assert set(in_varha) == transferred and all(n == 1 for n in in_varha.values())
    acks = home / "outbox" / "pirha" / "acks"
    names = sorted(p.name for p in acks.glob("*.ack.xml"))
    assert names == [f"r{k:03d}.xml.ack.xml" for k in range(responses)]
    assert all(b'status="ACCEPTED"' in (acks / n).read_bytes() for n in names)
    assert not (acks / "history").exists() or not any((acks / "history").iterdir())
    assert len(list((home / "outbox" / "kela").glob("response-pirha-*.xml"))) == responses
    assert not list((home / "outbox").rglob(".*.part")), "a partial file was left visible"


def cli_ingest(home: Path, src: Path) -> None:
    from daemon_support import cli

    cli(home, "ingest", str(src))


def ids_in_outbox_of(folder: Path) -> Counter[str]:
    seen: Counter[str] = Counter()
    for path in folder.glob("D-*.xml"):
        for _, el in etree.iterparse(str(path), tag="{*}Notification"):
            seen[el.get("id")] += 1
            el.clear()
    return seen
