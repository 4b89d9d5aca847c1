"""Taking one input file, on the daemon's worker thread: a batch from Kela or an upload.

Every input ends in exactly one verdict, whatever happens:

1. it must have settled (broker.domain.settle) and not be open for writing; a file that is
   still changing is looked at again later, never taken in part;
2. the handling is counted in the store *before* it starts (``input_attempts``), so a
   file that raises, or kills the process, ``max_attempts`` times is set aside in
   ``var/quarantine/`` with a report naming the last error (an upload also gets a
   REJECTED acknowledgement) instead of being retried in a loop;
3. otherwise the ordinary verdict: accepted (archived) or rejected (quarantined with a
   report; an upload gets its acknowledgement).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from broker import logs
from broker.config.settings import Config, Organisation
from broker.domain.settle import Observation, SettleGate
from broker.errors import BrokerError, InputChanged
from broker.intake.ingest import ingest_batch, report_text
from broker.responses.process import mark_settled, process_upload, reject_unprocessed, settle_upload
from broker.responses.texts import Finding
from broker.runtime.metrics import Metrics
from broker.storage.files import (
    atomic_write,
    file_digest,
    held,
    move_taken,
    open_for_writing,
    private_dir,
    stored_name,
)
from broker.storage.store import Store

log = logs.get("broker.runtime.inputs")


def utcnow() -> datetime:
    return datetime.now(UTC)


def observe(path: Path) -> Observation | None:
    """The file's identity now, or None when it is gone or not a regular file."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return Observation(st.st_size, st.st_mtime_ns, st.st_ino)


def attempt_key(source: str, name: str, obs: Observation) -> str:
    # A rewritten file (another size, mtime or inode) is another input with fresh attempts.
    return f"{source}/{name}/{obs.size}/{obs.mtime_ns}/{obs.ino}"


def describe(exc: BaseException) -> str:
    """An error as the report and the log show it: its kind, and its message when ours."""
    if isinstance(exc, BrokerError):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return type(exc).__name__  # foreign exception text may quote the input's content


STUCK_RETRY_SECONDS = 3600.0


@dataclass
class Inputs:
    """See the module doc. ``later(path, seconds)`` asks to be called again for ``path``;
    ``release()`` runs a release pass; ``incomplete(org, path)`` says an upload is not
    complete (a marker the SFTP server keeps while a client writes it)."""

    config: Config
    store: Store
    metrics: Metrics
    later: Callable[[Path, float], None]
    release: Callable[[], None]
    incomplete: Callable[[str, Path], bool] = lambda org, path: False
    gate: SettleGate = field(init=False)
    # Inputs that failed and could not even be set aside (quarantine unwritable): they
    # stay in place, are tried again only after STUCK_RETRY_SECONDS, and health says so.
    stuck: dict[Path, str] = field(default_factory=dict)
    _not_before: dict[Path, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.gate = SettleGate(self.config.settle_seconds)

    # -- batches from Kela ---------------------------------------------------------
    def batch(self, path: Path) -> None:
        obs = self._ready(path, settle=True)
        if obs is None:
            return
        now = utcnow()
        self._attempt("kela", path, obs, now,
                      run=lambda: self._take_batch(path, obs, now),
                      poison=lambda error, n: self._poison_batch(path, now, error, n))

    def _take_batch(self, path: Path, obs: Observation, now: datetime) -> None:
        with held(path) as same:
            if same is None:
                return  # gone before it was taken (a producer withdrew it): nothing to do
            self._take_held_batch(path, obs, now, same)

    def _take_held_batch(self, path: Path, obs: Observation, now: datetime,
                         same: Callable[[], bool]) -> None:
        outcome = ingest_batch(path, config=self.config, store=self.store, now=now,
                               unchanged=lambda: observe(path) == obs)
        self.metrics.files.labels(source="kela", status=outcome.status).inc()
        if outcome.status == "rejected":
            self._quarantine(path, "kela", now, report_text(outcome), same=same)
            # Codes and lines only: messages may quote the batch's values (names, phones);
            # the whole findings are in the private quarantine report.
            first = outcome.problems[0] if outcome.problems else None
            log.warning("batch rejected", file=outcome.file, problems=len(outcome.problems),
                        first_code=first.code if first else None,
                        first_line=first.line if first else None)
            return
        self._archive(path, "kela", now, report_text(outcome) if outcome.warnings else None,
                      same=same)
        if outcome.warnings:  # e.g. a merged municipality's code routed to its successor
            log.warning("batch accepted with warnings", file=outcome.file,
                        warnings=len(outcome.warnings),
                        first_code=outcome.warnings[0].code, first_line=outcome.warnings[0].line)
        log.info("batch accepted", file=outcome.file, status=outcome.status, new=outcome.new,
                 unchanged=outcome.unchanged)
        if outcome.new:
            self.release()

    def _poison_batch(self, path: Path, now: datetime, error: str, attempts: int) -> None:
        sha, size = file_digest(path)
        stored = self.store.accepted_file("kela", sha) is not None
        verdict = ("it had been accepted and its items are stored; only taking it out of the "
                   "inbox failed" if stored else "nothing from it was accepted")
        report = (f"File: {path.name}\nSHA-256: {sha}\nSize: {size} bytes\n"
                  f"Set aside after {attempts} failed attempt(s) to handle it; {verdict}.\n"
                  f"Last error: {error}\n")
        self._quarantine(path, "kela", now, report)

    # -- uploads from organisations -----------------------------------------------
    def upload(self, path: Path, org: Organisation) -> None:
        # An SFTP upload is complete when its client closed it: no settle time, but never
        # while a client still writes it or after it was cut off.
        if self.incomplete(org.id, path):
            return
        obs = self._ready(path, settle=False)
        if obs is None:
            return
        now = utcnow()
        self._attempt(org.id, path, obs, now,
                      run=lambda: self._take_upload(path, org, now, obs),
                      poison=lambda error, n: self._poison_upload(path, org, now, error, n))

    def _take_upload(self, path: Path, org: Organisation, now: datetime,
                     obs: Observation) -> None:
        with held(path) as same:
            if same is None:
                return  # gone before it was taken: nothing to answer
            out = process_upload(path, org, config=self.config, store=self.store, now=now)
            settle_upload(path, out, config=self.config, store=self.store, now=now, same=same)
        self.metrics.files.labels(source="organisation", status=out.status).inc()
        log.info("response processed", organisation=org.id, file=path.name, status=out.status,
                 problems=len(out.problems))
        if out.needs_release:
            self.release()

    def _poison_upload(self, path: Path, org: Organisation, now: datetime, error: str,
                       attempts: int) -> None:
        out = reject_unprocessed(path, org, Finding("INVALID_VALUE", None, "internal",
                                                    {"attempts": attempts}),
                                 config=self.config, store=self.store, now=now)
        verdict = ("its verdict, given before, stands: " + out.status.upper() if out.replayed
                   else "nothing from it was accepted")
        report = (f"File: {out.file}\nOrganisation: {org.id}\nSHA-256: {out.sha256}\n"
                  f"Size: {out.size} bytes\nSet aside after {attempts} failed attempt(s) to "
                  f"handle it; {verdict}.\nLast error: {error}\n"
                  f"Acknowledgement: {out.ack_path}\n")
        self._quarantine(path, org.id, now, report)
        if out.row_id is not None:
            mark_settled(self.store, out.row_id, now)

    # -- the common path ---------------------------------------------------------------
    def _ready(self, path: Path, *, settle: bool) -> Observation | None:
        """The file's observation when it may be taken now; None (and maybe a later call)
        when it is gone, still changing, open for writing, or waiting after a failure."""
        obs = observe(path)
        if obs is None:
            self.gate.forget(path)
            return None
        wait = self._not_before.get(path, 0.0) - time.monotonic()
        if settle and wait <= 0:
            wait = self.gate.wait_time(path, obs, monotonic=time.monotonic())
        if wait <= 0 and open_for_writing(path):
            wait = max(self.config.settle_seconds, 0.2)
        if wait > 0:
            self.later(path, wait)
            return None
        return obs

    def _attempt(self, source: str, path: Path, obs: Observation, now: datetime, *,
                 run: Callable[[], None], poison: Callable[[str, int], None]) -> None:
        key = attempt_key(source, path.name, obs)
        n = self.store.begin_attempt(key, source, path.name, now)
        limit = self.config.max_attempts
        try:
            if n > limit:  # the earlier attempts ended the process: set it aside now
                error = self.store.last_error(key) or "the process ended while handling it"
                self._set_aside(source, path, key, error, n - 1, poison)
                return
            run()
        except InputChanged:
            self.store.finish_attempt(key)  # not a failure: it is still being written
            self.later(path, max(self.config.settle_seconds, 0.2))
            return
        except Exception as exc:
            error = describe(exc)
            log.error("handling failed", file=path.name, attempt=n, of=limit, error=error,
                      exc_info=exc)
            self.store.attempt_failed(key, error)
            if n >= limit:
                self._set_aside(source, path, key, error, n, poison)
            else:
                delay = 2.0 * 2 ** (n - 1)
                self._not_before[path] = time.monotonic() + delay
                self.later(path, delay)
            return
        self.store.finish_attempt(key)
        self.gate.forget(path)
        self._not_before.pop(path, None)
        self.stuck.pop(path, None)

    def _set_aside(self, source: str, path: Path, key: str, error: str, attempts: int,
                   poison: Callable[[str, int], None]) -> None:
        try:
            poison(error, attempts)
        except Exception:  # even the answer failed: at least move the file out of the way
            log.exception("answering a set-aside file failed; moving it to quarantine",
                          file=path.name)
            try:
                if path.exists():
                    self._quarantine(path, source, utcnow(),
                                     f"File: {path.name}\nLast error: {error}\n")
            except Exception as exc:  # not even that (quarantine unwritable): park it
                self.stuck[path] = f"{error}; quarantine failed too: {describe(exc)}"
                self._not_before[path] = time.monotonic() + STUCK_RETRY_SECONDS
                self.later(path, STUCK_RETRY_SECONDS)
                self.store.finish_attempt(key)
                self.metrics.poison.labels(
                    source="kela" if source == "kela" else "organisation").inc()
                log.error("input could not be set aside; left in place, tried again later",
                          file=path.name, retry_seconds=STUCK_RETRY_SECONDS)
                return
        self.stuck.pop(path, None)
        self.metrics.poison.labels(source="kela" if source == "kela" else "organisation").inc()
        self.store.finish_attempt(key)
        self._not_before.pop(path, None)
        log.error("input set aside in quarantine", file=path.name, attempts=attempts,
                  error=error)

    def _archive(self, path: Path, source: str, now: datetime,
                 report: str | None = None,
                 same: Callable[[], bool] | None = None) -> None:
        dest = private_dir(self.config.var / "archive" / source / now.strftime("%Y-%m-%d"))
        target = dest / stored_name(now, path.name)
        if report is not None:  # before the move: a crash never leaves it without one
            atomic_write(dest / f"{target.name}.report.txt", report.encode())
        if move_taken(path, target, same):
            target.chmod(0o600)  # it arrived with the writer's mode
        else:
            log.warning("input replaced under the same name while it was handled; the new "
                        "one is handled on its own", file=path.name)

    def _quarantine(self, path: Path, source: str, now: datetime, report: str,
                    same: Callable[[], bool] | None = None) -> None:
        folder = self.config.var / "quarantine"
        dest = private_dir(folder if source == "kela" else folder / source)
        name = stored_name(now, path.name)
        atomic_write(dest / f"{name}.report.txt", report.encode())
        if move_taken(path, dest / name, same):
            (dest / name).chmod(0o600)
        else:
            log.warning("input replaced under the same name while it was handled; the new "
                        "one is handled on its own", file=path.name)
