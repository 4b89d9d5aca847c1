"""Nothing incomplete is taken, nothing poisons the daemon, the state store is never silently
recreated, and operator commands are safe on a live home (issue 11)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from daemon_support import (
    EXAMPLES,
    DaemonProcess,
    cli,
    delivered_ids,
    drop,
    health,
    make_home,
    metric,
    set_keys,
    wait_for,
)

from broker.config.settings import load_config
from broker.errors import InputChanged
from broker.intake.ingest import ingest_batch
from broker.intake.synthetic import write_batch
from broker.storage.state_db import make_engine
from broker.storage.store import Store, input_files, items


def status(home: Path) -> dict[str, int]:
    import json

    data = json.loads(cli(home, "status", "--json").stdout)
    out: dict[str, int] = {}
    for a in data["assignments"]:
        out[a["state"]] = out.get(a["state"], 0) + a["count"]
    return out


@pytest.fixture
def daemon(tmp_path: Path):  # type: ignore[no-untyped-def]
    d = DaemonProcess(make_home(tmp_path / "home")).start()
    try:
        yield d
    finally:
        d.stop()


def test_a_file_written_in_place_is_taken_only_when_complete(
        daemon: DaemonProcess, tmp_path: Path) -> None:
    """A producer that ignores the rename rule and pauses mid-file (longer than the settle
    time and the rescan interval) while holding the file open loses nothing."""
    home = daemon.home
    src = tmp_path / "whole.xml"
    write_batch(src, count=400, municipalities=["091"], types=["IMMIGRANT"],
                decision_date=datetime.now(UTC).date(), batch_id="GROW", seed=7)
    data = src.read_bytes()
    half = data.index(b"<Notification", len(data) // 2)  # 200 whole notifications first
    target = home / "inbox" / "kela" / "growing.xml"
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        data = open({str(src)!r}, "rb").read()
        with open({str(target)!r}, "wb") as f:
            f.write(data[:{half}]); f.flush()
            time.sleep(3.0)
            f.write(data[{half}:]); f.flush()
    """)])
    try:
        assert writer.wait(30) == 0
    finally:
        writer.kill()
    wait_for(lambda: not target.exists(), what="the file taken")
    wait_for(lambda: len(delivered_ids(home / "outbox" / "helsinki")) == 400,
             what="all 400 released")
    assert not list((home / "var" / "quarantine").glob("*.report.txt"))
    assert len(list((home / "var" / "archive").rglob("*growing.xml"))) == 1


def test_a_change_during_reading_stores_nothing_and_rejects_nothing(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    cfg = load_config(home)
    store = Store(make_engine(cfg.storage_url))
    for valid in (True, False):
        src = tmp_path / f"b-{valid}.xml"
        shutil.copyfile(EXAMPLES / "decision-batch.xml", src)
        if not valid:  # a truncated file seen mid-write would otherwise be rejected
            src.write_bytes(src.read_bytes()[:1500])
        with pytest.raises(InputChanged):
            ingest_batch(src, config=cfg, store=store, now=datetime.now(UTC),
                         unchanged=lambda: False)
    with store.engine.connect() as c:
        assert c.execute(input_files.select()).all() == []
        assert c.execute(items.select()).all() == []


def test_a_file_that_keeps_failing_is_set_aside_once(tmp_path: Path) -> None:
    """An unlucky operator replaced the archive folder by a file: taking the batch out of the
    inbox fails every time. After max_attempts it is quarantined with a report naming the
    error, counted, and never retried in a loop; its notifications go out once."""
    home = make_home(tmp_path / "home")
    d = DaemonProcess(home).start()
    try:
        (home / "var" / "archive" / "kela").write_text("an operator's note")
        drop(home, EXAMPLES / "decision-batch.xml", "poison.xml")
        quarantine = home / "var" / "quarantine"
        report = wait_for(lambda: list(quarantine.glob("*poison.xml.report.txt")), timeout=60,
                          what="set aside")[0]  # type: ignore[index]
        text = report.read_text()
        assert "Set aside after 3 failed attempt(s)" in text
        assert "Not a directory" in text and "its items are stored" in text
        assert metric(d.metrics_port, "kela_broker_poison_files_total", source="kela") == 1
        assert not (home / "inbox" / "kela" / "poison.xml").exists()
        time.sleep(3)  # no further attempt: the attempts row is gone, nothing re-queued
        with sqlite3.connect(home / "var" / "state.db") as c:
            assert c.execute("select count(*) from input_attempts").fetchone()[0] == 0
        assert len(delivered_ids(home / "outbox" / "helsinki")) == len(
            set(delivered_ids(home / "outbox" / "helsinki")))
    finally:
        d.stop()


def test_an_input_name_too_long_for_the_quarantine_is_still_answered_once(
        daemon: DaemonProcess, tmp_path: Path) -> None:
    home = daemon.home
    bad = tmp_path / "bad.xml"
    bad.write_text((EXAMPLES / "decision-batch.xml").read_text()
                   .replace("021054X912P", "021054X912A"))  # a wrong check character
    long_bad = "b" * 247 + ".xml"  # 251 bytes: with a time stamp it would not fit
    long_good = "g" * 247 + ".xml"
    for src, name in ((bad, long_bad), (EXAMPLES / "decision-batch.xml", long_good)):
        tmp = home / "inbox" / "kela" / ".long.part"  # ".<name>.part" would not fit either
        shutil.copyfile(src, tmp)
        tmp.rename(home / "inbox" / "kela" / name)
    quarantine = home / "var" / "quarantine"
    reports = wait_for(lambda: list(quarantine.glob("*.report.txt")), what="rejected")
    assert len(reports) == 1  # type: ignore[arg-type]
    assert "INVALID_VALUE" in reports[0].read_text()  # type: ignore[index]
    wait_for(lambda: list((home / "var" / "archive").rglob("*ggg*.xml")), what="archived")
    assert not any((home / "inbox" / "kela").iterdir())
    time.sleep(2.5)  # a rescan later: still one verdict each
    assert len(list(quarantine.glob("*.report.txt"))) == 1
    assert metric(daemon.metrics_port, "kela_broker_input_files_total", source="kela",
                  status="rejected") == 1


def used_home(tmp_path: Path) -> Path:
    home = make_home(tmp_path / "home")
    cli(home, "ingest", str(EXAMPLES / "decision-batch.xml"))
    assert delivered_ids(home / "outbox" / "helsinki")
    return home


@pytest.mark.parametrize("damage", ["missing", "empty"])
def test_a_lost_state_database_is_refused_not_recreated(tmp_path: Path, damage: str) -> None:
    home = used_home(tmp_path)
    db = home / "var" / "state.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    if damage == "empty":
        db.write_bytes(b"")
    d = DaemonProcess(home).start(wait=False)
    assert d.proc is not None and d.proc.wait(30) == 1
    assert f"the state database is {damage}" in d.log() and "--initialise" in d.log()
    assert "delivery file(s) in the outboxes" in d.log()
    refused = cli(home, "status", check=False)
    assert refused.returncode == 1 and "refusing to start" in refused.stderr
    assert not db.exists() or db.stat().st_size == 0, "a new database was made anyway"

    started = DaemonProcess(home)
    started.proc = subprocess.Popen(
        [*started_cmd(home), "--initialise"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (home / "var" / "run.json").exists(), what="started with --initialise")
        assert cli(home, "status").returncode == 0
    finally:
        started.stop()


def started_cmd(home: Path) -> list[str]:
    from daemon_support import KELA_BROKER

    return [KELA_BROKER, "--home", str(home), "run", "--sftp-listen", "127.0.0.1:0",
            "--metrics-listen", "127.0.0.1:0"]


def test_a_corrupt_database_fails_health_not_status(tmp_path: Path) -> None:
    home = used_home(tmp_path)
    d = DaemonProcess(home).start()
    try:
        assert health(d.metrics_port) == (200, "ok\n")
        db = home / "var" / "state.db"
        with db.open("r+b") as f:  # the same file, its pages overwritten
            f.write(b"this is no longer a database" * 2000)
        _, body = wait_for(lambda: (h := health(d.metrics_port))[0] == 503 and h,
                              timeout=60, what="unhealthy")  # type: ignore[misc]
        assert "the state database cannot be used" in body
        out = cli(home, "status", check=False)
        assert out.returncode == 1 and "Traceback" not in out.stderr
        assert "state database" in out.stderr and "backup" in out.stderr
    finally:
        d.stop()


def test_release_due_in_the_future_needs_force_and_is_audited(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    src = tmp_path / "nextday.xml"
    write_batch(src, count=4, municipalities=["837"], types=["REDUCED_BASIC_AMOUNT"],
                decision_date=datetime.now(UTC).date(), batch_id="ND", seed=2)
    src.write_text(src.read_text().replace(' urgent="true"', ""))
    cli(home, "ingest", str(src))
    tomorrow = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    refused = cli(home, "release-due", "--now", tomorrow, check=False)
    assert refused.returncode == 2 and "release held items early" in refused.stderr
    assert status(home).get("held") == 4
    no_reason = cli(home, "release-due", "--now", tomorrow, "--force", check=False)
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr
    cli(home, "release-due", "--now", tomorrow, "--force", "--reason", "county go-live test")
    assert status(home).get("released") == 4
    trail = cli(home, "audit", "show", "--json").stdout
    assert "forced ahead of the real time; reason: county go-live test" in trail
    # Each release row itself says so: written in the transaction of that release.
    rows = json.loads(cli(home, "audit", "show", "--json", "--action", "release").stdout)
    assert rows and all("county go-live test" in r["detail"] for r in rows)
    cli(home, "release-due")  # the real time: allowed, and on the record too
    passes = json.loads(cli(home, "audit", "show", "--json", "--action", "release-due").stdout)
    assert len(passes) == 2


def test_a_batch_replaced_under_its_name_while_handled_is_not_archived_unread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The producer publishes the next batch under the same name right after the first
    was stored: the first is done, the second stays in the inbox for its own turn (it is
    never moved to the archive unread)."""
    import broker.runtime.inputs as inputs_module
    from broker.runtime.inputs import Inputs
    from broker.runtime.metrics import Metrics

    home = make_home(tmp_path / "home")
    set_keys(home, "broker", settle_seconds=0)
    cfg = load_config(home)
    store = Store(make_engine(cfg.storage_url))
    inbox = home / "inbox" / "kela"
    first, second = tmp_path / "first.xml", tmp_path / "second.xml"
    write_batch(first, count=2, municipalities=["091"], types=["IMMIGRANT"],
                decision_date=datetime.now(UTC).date(), batch_id="A", seed=1)
    write_batch(second, count=2, municipalities=["091"], types=["IMMIGRANT"],
                decision_date=datetime.now(UTC).date(), batch_id="B", seed=2, start_id=50)
    real = inputs_module.ingest_batch

    def ingest_then_replace(path: Path, **kw):  # type: ignore[no-untyped-def]
        out = real(path, **kw)
        shutil.copyfile(second, inbox / ".next.part")
        (inbox / ".next.part").rename(path)  # the producer's temp-name-and-rename
        return out

    monkeypatch.setattr(inputs_module, "ingest_batch", ingest_then_replace)
    shutil.copyfile(first, inbox / "batch.xml")
    handler = Inputs(cfg, store, Metrics(), later=lambda p, s: None, release=lambda: None)
    handler.batch(inbox / "batch.xml")
    assert (inbox / "batch.xml").read_bytes() == second.read_bytes()  # left for its turn
    archived = list((home / "var" / "archive").rglob("batch.xml*"))
    assert all(p.read_bytes() != second.read_bytes() for p in archived)
    monkeypatch.setattr(inputs_module, "ingest_batch", real)
    handler.batch(inbox / "batch.xml")  # its own turn: taken and archived
    assert not (inbox / "batch.xml").exists()
    with store.engine.connect() as c:
        assert len(c.execute(input_files.select()).all()) == 2


def test_a_growing_file_waits_for_the_settle_time_where_leases_cannot_tell(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a lease (another user's file, a network mount) only the settle time
    protects a producer that writes in place: one that never pauses longer than it is
    taken whole, however often the daemon looks."""
    import threading

    import broker.runtime.inputs as inputs_module
    from broker.runtime.inputs import Inputs
    from broker.runtime.metrics import Metrics

    monkeypatch.setattr(inputs_module, "open_for_writing", lambda path: None)
    home = make_home(tmp_path / "home")
    set_keys(home, "broker", settle_seconds=2.0)  # a wide margin over the pauses
    cfg = load_config(home)
    store = Store(make_engine(cfg.storage_url))
    src = tmp_path / "whole.xml"
    write_batch(src, count=200, municipalities=["091"], types=["IMMIGRANT"],
                decision_date=datetime.now(UTC).date(), batch_id="SLOW", seed=9)
    data = src.read_bytes()
    target = home / "inbox" / "kela" / "slow.xml"

    def produce() -> None:
        with target.open("wb") as f:
            for i in range(0, len(data), len(data) // 12 + 1):
                f.write(data[i:i + len(data) // 12 + 1])
                f.flush()
                lagging = time.time() - 3600  # a mount whose clock is an hour behind
                os.utime(target, (lagging, lagging))
                time.sleep(0.2)  # pauses much shorter than the settle time

    writer = threading.Thread(target=produce)
    writer.start()
    wait_for(target.exists, what="the producer's file")
    handler = Inputs(cfg, store, Metrics(), later=lambda p, s: None, release=lambda: None)
    while target.exists():
        handler.batch(target)  # the watcher and the rescan look again and again
        time.sleep(0.05)
    writer.join()
    assert not list((home / "var" / "quarantine").glob("*.report.txt"))
    with store.engine.connect() as c:
        assert len(c.execute(items.select()).all()) == 200


def test_a_failing_input_that_cannot_even_be_set_aside_does_not_loop(
        tmp_path: Path) -> None:
    """Archive and quarantine both unusable: the batch is tried max_attempts times, then
    left in place (counted, reported by health through ``stuck``) and not tried again
    for an hour, however often the rescan looks."""
    from broker.runtime.inputs import Inputs
    from broker.runtime.metrics import Metrics

    home = make_home(tmp_path / "home")
    set_keys(home, "broker", settle_seconds=0)
    cfg = load_config(home)
    store = Store(make_engine(cfg.storage_url))
    (home / "var" / "archive").mkdir(parents=True, exist_ok=True)
    (home / "var" / "archive" / "kela").write_text("an operator's note")
    shutil.rmtree(home / "var" / "quarantine", ignore_errors=True)
    (home / "var" / "quarantine").write_text("another note")
    target = home / "inbox" / "kela" / "stuck.xml"
    shutil.copyfile(EXAMPLES / "decision-batch.xml", target)
    metrics = Metrics()
    handler = Inputs(cfg, store, metrics, later=lambda p, s: None, release=lambda: None)
    for _ in range(10):  # the rescan keeps looking
        if target not in handler.stuck:
            handler._not_before.pop(target, None)  # the retry backoff has passed
        handler.batch(target)
    assert target in handler.stuck and "quarantine failed too" in handler.stuck[target]
    assert target.exists()
    assert metrics.poison.labels(source="kela")._value.get() == 1
    with store.engine.connect() as c:
        attempts = c.exec_driver_sql("select count(*) from input_attempts").scalar()
    assert attempts == 0  # not counting up on every look


def test_a_cut_upload_left_without_an_ack_by_a_crash_is_answered_at_start(
        tmp_path: Path) -> None:
    from broker.storage.incomplete import CUT, mark_incomplete

    home = make_home(tmp_path / "home")
    fragment = home / "inbox" / "pirha" / "vastaus.xml"
    fragment.parent.mkdir(parents=True, exist_ok=True)
    fragment.write_bytes(b"<MunicipalityResponse")  # the part that arrived
    mark_incomplete(home / "var" / "incomplete", "pirha", fragment, CUT, 21)
    d = DaemonProcess(home).start()
    try:
        ack = home / "outbox" / "pirha" / "acks" / "vastaus.xml.ack.xml"
        wait_for(ack.exists, what="the cut upload's ack")
        assert "REJECTED" in ack.read_text() and fragment.exists()  # kept for a resume
    finally:
        d.stop()


def test_an_upload_whose_times_a_client_sets_while_it_is_handled_is_taken_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """WinSCP sets the times right after CLOSE, often while the broker handles the file:
    that is the same file, so it is archived as handled, not left for a second turn
    (which would answer it DUPLICATE over its ACCEPTED ack)."""
    import broker.runtime.inputs as inputs_module
    from broker.runtime.inputs import Inputs
    from broker.runtime.metrics import Metrics

    home = make_home(tmp_path / "home")
    cfg = load_config(home)
    store = Store(make_engine(cfg.storage_url))
    upload = home / "inbox" / "pirha" / "vastaus.xml"
    upload.parent.mkdir(parents=True, exist_ok=True)
    text = (EXAMPLES / "municipality-response.xml").read_text()
    start, end = text.index("  <Receipt"), text.index("  <PaymentDemand")
    upload.write_text(text[:start] + text[end:])
    real = inputs_module.process_upload

    def process_then_setstat(path: Path, *a, **kw):  # type: ignore[no-untyped-def]
        out = real(path, *a, **kw)
        os.utime(path, (1_700_000_000, 1_700_000_000))  # the client's SETSTAT
        return out

    monkeypatch.setattr(inputs_module, "process_upload", process_then_setstat)
    handler = Inputs(cfg, store, Metrics(), later=lambda p, s: None, release=lambda: None)
    handler.upload(upload, cfg.by_id["pirha"])
    assert not upload.exists()  # archived: handled once
    ack = home / "outbox" / "pirha" / "acks" / "vastaus.xml.ack.xml"
    assert 'status="ACCEPTED"' in ack.read_text()
