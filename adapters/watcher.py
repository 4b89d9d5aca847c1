"""Folder watcher: turns file events into paths to process, without ever losing one.

watchdog delivers events fast; a periodic rescan of the same folders catches
whatever an event queue overflow, a restart or a network mount swallowed. The
consumer dedups (by sha256 in the store), so seeing a file twice is harmless.
"""

from __future__ import annotations

import logging
import stat
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

try:  # Linux: watchdog's inotify backend
    from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper

    # watchdog holds every IN_MOVED_FROM for 0.5 s to pair it with its IN_MOVED_TO, and
    # in practice that delays the rename a writer uses to publish a file (SPEC 1) by
    # half a second. The kernel queues both halves of a same-folder rename together,
    # so a short pairing window loses nothing; a rename it does not pair still arrives
    # as a move event, and the periodic rescan is there in any case.
    InotifyMoveEventGrouper.delay = 0.02
except ImportError:  # pragma: no cover - other platforms use other backends
    pass

from broker.storage.files import is_hidden_or_partial

log = logging.getLogger(__name__)


def complete_files(folder: Path) -> list[Path]:
    """Files in ``folder`` that writers have finished (SPEC 1 naming), oldest first."""
    try:
        names = [p for p in folder.iterdir() if not is_hidden_or_partial(p.name)]
    except FileNotFoundError:
        return []
    found: list[tuple[int, str, Path]] = []
    for p in names:
        try:  # one stat per file; a file taken away meanwhile (the daemon does) is skipped
            st = p.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):  # not a folder, not a symlink
            found.append((st.st_mtime_ns, p.name, p))
    return [p for _, _, p in sorted(found)]


class _Handler(FileSystemEventHandler):
    def __init__(self, notify: Callable[[Path], None]) -> None:
        self.notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type not in ("created", "moved", "closed"):
            return
        raw = getattr(event, "dest_path", "") or event.src_path
        path = Path(raw if isinstance(raw, str) else raw.decode())
        if not is_hidden_or_partial(path.name):
            self.notify(path)


class FolderWatcher:
    """Calls ``notify(path)`` for each complete file appearing in the folders.

    ``notify`` runs on watchdog's or the rescan thread: it must only enqueue.
    """

    def __init__(self, folders: Iterable[Path], notify: Callable[[Path], None],
                 rescan_seconds: float = 2.0) -> None:
        self.folders = list(folders)
        self.notify = notify
        self.rescan_seconds = rescan_seconds
        self._stop = threading.Event()
        self._observer = self._new_observer()
        self._rescanner = self._new_rescanner()
        self.last_rescan_error: str | None = None

    def _new_observer(self) -> BaseObserver:
        observer: BaseObserver = Observer()
        handler = _Handler(self.notify)
        for folder in self.folders:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            observer.schedule(handler, str(folder), recursive=False)
        return observer

    def _new_rescanner(self) -> threading.Thread:
        return threading.Thread(target=self._rescan_loop, name="inbox-rescan", daemon=True)

    def start(self) -> None:
        self._observer.start()
        self._rescanner.start()

    def watch(self, folder: Path) -> None:
        """Add a folder while running (a new organisation after a config reload)."""
        if folder in self.folders:
            return
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.folders.append(folder)
        self._observer.schedule(_Handler(self.notify), str(folder), recursive=False)

    def rescan(self) -> None:
        """Notify every complete file; a folder that cannot be read is skipped, not fatal."""
        errors = []
        for folder in list(self.folders):
            try:
                for path in complete_files(folder):
                    self.notify(path)
            except OSError as exc:  # EMFILE, a folder replaced by a file, EIO ...
                errors.append(f"{folder.name}: {exc.strerror or exc}")
        self.last_rescan_error = "; ".join(errors) or None

    def _rescan_loop(self) -> None:
        # Nothing may end this loop but stop(): a batch dropped while the process is out
        # of descriptors must still be found once it has them again.
        while not self._stop.wait(self.rescan_seconds):
            try:
                self.rescan()
            except Exception as exc:
                self.last_rescan_error = f"{type(exc).__name__}: {exc}"
                log.exception("inbox rescan failed; trying again in %ss", self.rescan_seconds)

    def supervise(self) -> list[str]:
        """Restart a watcher thread that died; returns which were restarted (for health)."""
        restarted: list[str] = []
        if self._stop.is_set():
            return restarted
        if not self._rescanner.is_alive():
            self._rescanner = self._new_rescanner()
            self._rescanner.start()
            restarted.append("inbox-rescan")
        if not self._observer.is_alive():
            try:
                self._observer = self._new_observer()
                self._observer.start()
            except OSError as exc:  # e.g. inotify limits: the rescan still finds files
                log.error("file watcher could not be restarted: %s", exc)
            restarted.append("file-watcher")
        return restarted

    def stop(self) -> None:
        self._stop.set()
        self._observer.stop()
        self._observer.join(timeout=5)
        self._rescanner.join(timeout=5)
