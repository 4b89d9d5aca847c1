from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from broker.runtime.retention import purge


def test_purge_removes_only_files_retained_longer_than_the_period(tmp_path: Path) -> None:
    root = tmp_path / "retained"
    (root / "pirha").mkdir(parents=True)
    (root / "varha").mkdir(parents=True)
    old = root / "pirha" / "D-old.xml"
    old.write_text("old")
    time.sleep(0.05)
    between = datetime.fromtimestamp(os.lstat(old).st_ctime + 0.025, UTC)
    time.sleep(0.05)
    new = root / "varha" / "D-new.xml"
    new.write_text("new")
    keep = timedelta(days=90)
    assert purge(root, keep, between) == []  # nothing is 90 days old yet
    gone = purge(root, keep, between + keep)
    assert gone == [old]
    assert new.exists() and not (root / "pirha").exists()  # emptied folders go too
    assert purge(root, keep, datetime.fromtimestamp(os.lstat(new).st_ctime, UTC) + keep
                 + timedelta(seconds=1)) == [new]
    assert root.exists()


def test_purge_of_a_missing_folder_is_a_no_op(tmp_path: Path) -> None:
    assert purge(tmp_path / "nothing", timedelta(days=1), datetime.now(UTC)) == []


def test_every_retention_rule_of_a_home(tmp_path: Path) -> None:
    """Archive, quarantine and retained copies by their own periods; stale temporary uploads
    by stale_upload_hours, complete uploads waiting in /to-kela/ never."""
    import shutil

    from broker.config.settings import load_config
    from broker.runtime.retention import purge_all

    home = tmp_path / "home"
    shutil.copytree(Path(__file__).resolve().parents[1] / "config", home / "config",
                    ignore=shutil.ignore_patterns("keys"))
    cfg = load_config(home)
    files = {
        "archive": home / "var" / "archive" / "kela" / "2026-01-01" / "a.xml",
        "quarantine": home / "var" / "quarantine" / "q.xml",
        "retained": home / "var" / "retained" / "pirha" / "D-x.xml",
        "part": home / "inbox" / "pirha" / "upload.xml.part",
        "partial": home / "inbox" / "pirha" / "upload.xml.partial",
        "complete": home / "inbox" / "pirha" / "waiting.xml",
    }
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    made = max(os.lstat(p).st_ctime for p in files.values())
    # One hour past stale_upload_hours: only the temporary uploads go.
    at = datetime.fromtimestamp(made, UTC) + timedelta(hours=cfg.stale_upload_hours + 1)
    for path in (files["part"], files["partial"], files["complete"]):
        os.utime(path, (made - 3600, made - 3600))
    assert purge_all(cfg, at) == 2
    assert not files["part"].exists() and not files["partial"].exists()
    assert all(files[k].exists() for k in ("archive", "quarantine", "retained", "complete"))
    # Past every period: the broker's own copies go, the waiting upload stays.
    later = datetime.fromtimestamp(made, UTC) + timedelta(
        days=max(cfg.archive_days, cfg.quarantine_days, cfg.retention_days) + 1)
    assert purge_all(cfg, later) == 3
    assert files["complete"].exists() and (home / "var" / "archive").is_dir()


def test_the_hourly_purge_takes_retention_and_unresumed_fragments_together(
        tmp_path: Path) -> None:
    """The daemon's one purge (retention.purge_everything): the retention rules, and the
    fragment of a cut upload nobody resumed, but never one a client is still writing."""
    import shutil

    from broker.config.settings import load_config
    from broker.runtime.retention import purge_everything
    from broker.storage.incomplete import CUT, mark_incomplete, marker_path

    home = tmp_path / "home"
    shutil.copytree(Path(__file__).resolve().parents[1] / "config", home / "config",
                    ignore=shutil.ignore_patterns("keys"))
    cfg = load_config(home)
    incomplete = home / "var" / "incomplete"
    archived = home / "var" / "archive" / "kela" / "a.xml"
    archived.parent.mkdir(parents=True)
    archived.write_text("x")
    for name in ("cut.xml", "writing.xml"):
        (home / "inbox" / "pirha").mkdir(parents=True, exist_ok=True)
        (home / "inbox" / "pirha" / name).write_bytes(b"<half")
        mark_incomplete(incomplete, "pirha", name, CUT, 5)
        marker = marker_path(incomplete, "pirha", name)
        os.utime(marker, (marker.stat().st_mtime - 7200,) * 2)
    later = datetime.now(UTC) + timedelta(days=cfg.archive_days + 1, hours=cfg.stale_upload_hours)
    gone = purge_everything(cfg, later, incomplete, lambda p: p.name == "writing.xml")
    assert gone == 2
    assert not archived.exists() and not (home / "inbox" / "pirha" / "cut.xml").exists()
    assert (home / "inbox" / "pirha" / "writing.xml").exists()
