"""The inbox watcher never stops finding files: errors are survived, dead threads restarted."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from adapters.watcher import FolderWatcher


def test_a_failing_consumer_does_not_end_the_rescan(tmp_path: Path) -> None:
    inbox = tmp_path / "kela"
    inbox.mkdir()
    seen: list[Path] = []
    calls = threading.Event()

    def notify(path: Path) -> None:
        if not seen:
            seen.append(path)
            raise OSError(24, "Too many open files")  # the first call fails
        seen.append(path)
        calls.set()

    w = FolderWatcher([inbox], notify, rescan_seconds=0.05)
    (inbox / "b.xml").write_text("x")
    w.start()
    try:
        assert calls.wait(5), "the rescan stopped after the first error"
        assert w.supervise() == []  # nothing died
    finally:
        w.stop()


def test_an_unreadable_folder_is_reported_and_the_others_still_scanned(tmp_path: Path) -> None:
    good, bad = tmp_path / "kela", tmp_path / "pirha"
    good.mkdir()
    bad.mkdir()
    (good / "b.xml").write_text("x")
    found: list[Path] = []
    w = FolderWatcher([bad, good], found.append, rescan_seconds=60)
    bad.rmdir()
    bad.write_text("an operator replaced the folder by a file")
    w.rescan()
    assert found == [good / "b.xml"]
    assert w.last_rescan_error is not None and "pirha" in w.last_rescan_error
    bad.unlink()
    bad.mkdir()
    w.rescan()
    assert w.last_rescan_error is None


def test_dead_threads_are_restarted_and_named(tmp_path: Path) -> None:
    inbox = tmp_path / "kela"
    inbox.mkdir()
    found: list[Path] = []
    w = FolderWatcher([inbox], found.append, rescan_seconds=0.05)
    w.start()
    try:
        # Both threads end as they would on a fatal error inside them.
        w._observer.stop()
        w._observer.join(5)
        w._stop.set()
        w._rescanner.join(5)
        w._stop.clear()
        assert sorted(w.supervise()) == ["file-watcher", "inbox-rescan"]
        (inbox / "later.xml").write_text("x")
        deadline = time.monotonic() + 5
        while inbox / "later.xml" not in found and time.monotonic() < deadline:
            time.sleep(0.02)
        assert inbox / "later.xml" in found
        assert w.supervise() == []
    finally:
        w.stop()
