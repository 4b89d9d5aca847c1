"""The daemon: the composition root that wires the core to its adapters.

Reads top to bottom: ``start`` (config, store, SFTP, watcher, scheduler),
``loop`` (take one path or wake-up, handle it in the single worker thread),
``shutdown``. All store writes happen on that one worker thread, so ingest and
release never race; the event loop only moves bytes (SFTP) and waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger

from adapters.metrics_http import MetricsServer
from adapters.sftp_push import SftpPusher
from adapters.sftp_server import SftpOptions, SftpService
from adapters.watcher import FolderWatcher
from broker import logs, pushes
from broker.audit import AuditEvent, AuditLog
from broker.config import Config, load_config
from broker.db import make_engine
from broker.errors import BrokerError, ConfigError
from broker.fsutil import atomic_write, is_hidden_or_partial, private_dir
from broker.ingest import Outcome, ingest_batch, report_text
from broker.metrics import Metrics
from broker.release import Releaser
from broker.responses import finish_pending, process_upload, settle_upload
from broker.retention import purge
from broker.store import Store

log = logs.get("broker.daemon")
T = TypeVar("T")
WAKE = Path("\0wake")  # queue sentinels: run a release pass ...
PURGE = Path("\0purge")  # ... or drop retained copies past their retention period


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Overrides:
    sftp: tuple[str, int] | None = None
    metrics: tuple[str, int] | None = None


class Daemon:
    def __init__(self, home: Path, overrides: Overrides | None = None) -> None:
        self.home = home
        self.overrides = overrides or Overrides()
        self.config: Config = load_config(home)
        self.metrics = Metrics()
        self._queue: asyncio.Queue[Path] = asyncio.Queue()
        self._queued: set[Path] = set()
        self._stopping = asyncio.Event()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="broker-worker")
        self._config_mtime = self.config.path.stat().st_mtime_ns
        self.ready = asyncio.Event()

    # -- start -----------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        self.loop = asyncio.get_running_loop()
        for d in (cfg.var, cfg.inbox / "kela", cfg.outbox / "kela", cfg.var / "archive",
                  cfg.var / "quarantine"):
            private_dir(d)
        self.store = Store(make_engine(cfg.database))
        self.audit = AuditLog(make_engine(cfg.var / "audit.db"))
        self.releaser = Releaser(cfg, self.store)
        recovered = await self._in_worker(self.releaser.recover)
        answered = await self._in_worker(finish_pending, cfg, self.store)
        if recovered or answered:
            log.warning("finished work interrupted by a crash", deliveries=recovered,
                        acknowledgements=answered)

        self.sftp = SftpService(self._sftp_options(cfg), on_event=self._audit_event,
                                on_upload_closed=lambda org, path: self.enqueue(path))
        sftp_port = await self.sftp.start()
        log.info("sftp listening", host=self._sftp_addr()[0], port=sftp_port,
                 host_key=self.sftp.host_key_fingerprint)

        mhost, mport = self.overrides.metrics or (cfg.metrics_host, cfg.metrics_port)
        self.metrics_server = MetricsServer(self.metrics, mhost, mport, self._healthy)
        self.metrics_server.start()
        log.info("metrics listening", host=mhost, port=self.metrics_server.port)

        self.watcher = FolderWatcher(self._inboxes(cfg), self.enqueue, cfg.rescan_seconds)
        self.watcher.start()
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        # The scheduler only wakes work up; what is due is always read from the store.
        self.scheduler.add_job(self._check_config, "interval",
                               seconds=max(cfg.rescan_seconds, 0.5), id="config-watch")
        self.scheduler.add_job(lambda: self.enqueue(WAKE), "interval", seconds=60,
                               id="safety-wake")  # a pass (and push retry) even if no wake came
        self.scheduler.add_job(lambda: self.enqueue(PURGE), "interval", hours=1,
                               next_run_time=utcnow(), id="purge")
        self.scheduler.start()

        for sig, handler in ((signal.SIGTERM, self.stop), (signal.SIGINT, self.stop),
                             (signal.SIGHUP, self.request_reload)):
            # Not possible off the main thread (tests run the daemon in a thread).
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self.loop.add_signal_handler(sig, handler)
        self._write_run_file(sftp_port)
        self.watcher.rescan()
        self.enqueue(WAKE)
        self.ready.set()

    # -- loop --------------------------------------------------------------------
    async def run(self) -> None:
        await self.start()
        try:
            await self.loop_forever()
        finally:
            await self.shutdown()

    async def loop_forever(self) -> None:
        while not self._stopping.is_set():
            getter = asyncio.ensure_future(self._queue.get())
            stopper = asyncio.ensure_future(self._stopping.wait())
            done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                break
            stopper.cancel()
            path = getter.result()
            self._queued.discard(path)
            try:
                await self._in_worker(self.handle, path)
            except Exception:  # one bad item must never stop the daemon
                log.exception("handling failed; will retry on the next rescan", path=str(path))

    def handle(self, path: Path) -> None:
        """Handle one queued item on the worker thread."""
        if path == WAKE:
            self.release_pass()
        elif path == PURGE:
            gone = purge(self.config.var / "retained",
                         timedelta(days=self.config.retention_days), utcnow())
            if gone:
                log.info("retention: removed deleted files' copies", count=len(gone))
        elif is_hidden_or_partial(path.name):
            return  # SPEC 1: not complete until renamed (an SFTP close reports these too)
        elif path.parent == self.config.inbox / "kela":
            self.handle_batch(path)
        elif path.parent.parent == self.config.inbox and path.parent.name in self.config.by_id:
            self.handle_upload(path, path.parent.name)

    def handle_batch(self, path: Path) -> None:
        if not path.is_file():
            return  # already handled (watch event and rescan both saw it)
        now = utcnow()
        outcome = ingest_batch(path, config=self.config, store=self.store, now=now)
        self.metrics.files.labels(source="kela", status=outcome.status).inc()
        if outcome.status == "rejected":
            self._quarantine(path, outcome, now)
            log.warning("batch rejected", file=outcome.file, problems=len(outcome.problems),
                        first=str(outcome.problems[0]) if outcome.problems else None)
            return
        self._archive(path, "kela", now)
        log.info("batch accepted", file=outcome.file, status=outcome.status, new=outcome.new,
                 unchanged=outcome.unchanged)
        if outcome.new:
            self.release_pass()

    def handle_upload(self, path: Path, org_id: str) -> None:
        """A response an organisation uploaded to /to-kela/ (SPEC 6), once complete."""
        if not path.is_file() or self.sftp.is_writing(path):
            return  # still being written: its close (or the next rescan) brings it back
        now = utcnow()
        out = process_upload(path, self.config.by_id[org_id], config=self.config,
                             store=self.store, now=now)
        settle_upload(path, out, config=self.config, store=self.store, now=now)
        self.metrics.files.labels(source="organisation", status=out.status).inc()
        log.info("response processed", organisation=org_id, file=path.name, status=out.status,
                 problems=len(out.problems))
        if out.needs_release:
            self.release_pass()

    def release_pass(self) -> None:
        now = utcnow()
        earliest = self.store.next_release()
        result = self.releaser.run(now)
        if earliest is not None and earliest <= now:
            self.metrics.release_lag.observe((now - earliest).total_seconds())
        for org, type_, total in result.plans:
            log.info("staggered first delivery planned", organisation=org, type=type_,
                     total=total, portion=self.config.stagger.portion)
        if result.deliveries:
            self.metrics.deliveries.labels(kind="notification").inc(
                len(result.deliveries) - result.lists)
            self.metrics.deliveries.labels(kind="list").inc(result.lists)
            log.info("released", deliveries=len(result.deliveries),
                     notifications=result.notifications, lists=result.lists)
        totals: dict[str, int] = {}
        for _org, _type, state, n in self.store.counts():
            totals[state] = totals.get(state, 0) + n
        for state, n in totals.items():
            self.metrics.items.labels(state=state).set(n)
        self.push_pass()
        self.metrics.last_pass.set(now.timestamp())  # after the push: "this pass is done"
        self.loop.call_soon_threadsafe(self._schedule_wake, self.store.next_release())

    def push_pass(self) -> None:
        """Copy released files to the organisations that want them pushed."""
        for org in self.config.organisations:
            if org.push is None:
                continue
            folder = self.config.outbox / org.id
            todo = pushes.pending(self.store.engine, org.id, folder)
            if not todo:
                continue
            def done(rel: str, size: int, remote: str, org_id: str = org.id) -> None:
                pushes.record(self.store.engine, org_id, rel, size, remote, utcnow())
                self._audit_event(AuditEvent(action="push", org=org_id, path=rel, size=size,
                                             detail=remote))
            try:
                n = SftpPusher(org.push).push(folder, todo, done)
                log.info("pushed", organisation=org.id, files=n)
            except BrokerError as exc:  # the next pass retries what is missing
                log.warning("push failed", organisation=org.id, error=str(exc))

    # -- shutdown ----------------------------------------------------------------
    def stop(self) -> None:
        log.info("stopping")
        self._stopping.set()

    async def shutdown(self) -> None:
        self.watcher.stop()
        self.scheduler.shutdown(wait=False)
        await self.sftp.stop()
        self.metrics_server.stop()
        self._worker.shutdown(wait=True)  # let an ingest in progress finish its transaction
        (self.config.var / "run.json").unlink(missing_ok=True)
        log.info("stopped")

    # -- helpers -------------------------------------------------------------------
    def enqueue(self, path: Path) -> None:
        """Thread-safe: watcher threads and SFTP callbacks call this."""
        def put() -> None:
            if path not in self._queued:
                self._queued.add(path)
                self._queue.put_nowait(path)
        self.loop.call_soon_threadsafe(put)

    async def _in_worker(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    def _schedule_wake(self, when: datetime | None) -> None:
        if when is None or self._stopping.is_set():
            return
        when = max(when, utcnow() + timedelta(milliseconds=10))
        self.scheduler.add_job(lambda: self.enqueue(WAKE), DateTrigger(run_date=when),
                               id="release", replace_existing=True)

    def _check_config(self) -> None:
        """Reload when broker.toml changed on disk (SIGHUP does the same at once)."""
        try:
            mtime = self.config.path.stat().st_mtime_ns
        except OSError:
            mtime = self._config_mtime
        if mtime != self._config_mtime:
            self._config_mtime = mtime
            self.request_reload()

    def request_reload(self) -> None:
        try:
            new = load_config(self.home)
        except ConfigError as exc:
            log.error("configuration reload failed; keeping the running configuration",
                      problems=str(exc))
            return
        self.config = new
        self.releaser = Releaser(new, self.store)
        self.sftp.update_organisations(frozenset(new.by_id))
        for folder in self._inboxes(new):
            self.watcher.watch(folder)
        log.info("configuration reloaded", organisations=len(new.organisations))
        self.enqueue(WAKE)

    @staticmethod
    def _inboxes(cfg: Config) -> list[Path]:
        return [cfg.inbox / "kela", *(cfg.inbox / o.id for o in cfg.organisations)]

    def _healthy(self) -> bool:
        return self.ready.is_set() and not self._stopping.is_set()

    def _audit_event(self, event: AuditEvent) -> None:
        self.audit.record(event, utcnow())

    def _sftp_addr(self) -> tuple[str, int]:
        return self.overrides.sftp or (self.config.sftp.host, self.config.sftp.port)

    def _sftp_options(self, cfg: Config) -> SftpOptions:
        host, port = self._sftp_addr()
        s = cfg.sftp
        return SftpOptions(
            host=host, port=port, host_key_path=cfg.var / "ssh_host_ed25519_key",
            keys_dir=cfg.keys_dir, outbox_dir=cfg.outbox, inbox_dir=cfg.inbox,
            retain_dir=cfg.var / "retained", organisations=frozenset(cfg.by_id),
            idle_timeout=s.idle_timeout, login_grace=s.login_grace,
            max_sessions_per_org=s.max_sessions_per_org, max_upload_bytes=s.max_upload_bytes,
            ban_after_failures=s.ban_after_failures, ban_window=s.ban_window,
            ban_seconds=s.ban_seconds)

    def _write_run_file(self, sftp_port: int) -> None:
        """Where the running daemon listens, for operators' tools and tests."""
        atomic_write(self.config.var / "run.json", json.dumps({
            "pid": os.getpid(), "sftp_port": sftp_port,
            "metrics_port": self.metrics_server.port,
            "host_key": self.sftp.host_key_fingerprint}).encode())

    def _archive(self, path: Path, source: str, now: datetime) -> None:
        dest = private_dir(self.config.var / "archive" / source / now.strftime("%Y-%m-%d"))
        target = dest / f"{now.strftime('%H%M%S%f')}-{path.name}"
        shutil.move(str(path), target)
        target.chmod(0o600)  # it arrived with the writer's mode

    def _quarantine(self, path: Path, outcome: Outcome, now: datetime) -> None:
        dest = private_dir(self.config.var / "quarantine")
        name = f"{now.strftime('%Y%m%dT%H%M%S%f')}-{path.name}"
        atomic_write(dest / f"{name}.report.txt", report_text(outcome).encode())
        shutil.move(str(path), dest / name)
        (dest / name).chmod(0o600)
