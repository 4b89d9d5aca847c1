from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from broker.retention import purge


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
