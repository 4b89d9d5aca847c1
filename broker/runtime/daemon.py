"""The daemon: the composition root that wires the core to its adapters.

Reads top to bottom: ``start`` (config, store, SFTP, watcher, scheduler),
``loop`` (take one path or wake-up, handle it in the single worker thread),
``shutdown``. All ingest and release writes happen on that one worker thread, so they
never race; pushes run in their own small pool (broker.runtime.push_runner) because a remote
server may hang; the event loop only moves bytes (SFTP) and waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger

from adapters.metrics_http import MetricsServer
from adapters.sftp_limits import raise_nofile_limit
from adapters.sftp_push import SftpPusher
from adapters.sftp_server import SftpOptions, SftpService
from adapters.watcher import FolderWatcher
from broker import logs
from broker.config.settings import Config, load_config
from broker.delivery.handover import hand_over, removed_with_items
from broker.delivery.release import Releaser
from broker.errors import ConfigError, ConfigErrors
from broker.responses.process import finish_pending
from broker.runtime.cut_uploads import answer_cut, answer_cuts_left, incomplete_dir
from broker.runtime.idle import Activity, stop_when_idle, waiting_files
from broker.runtime.inputs import Inputs
from broker.runtime.metrics import Metrics
from broker.runtime.push_runner import PushRunner
from broker.runtime.retention import purge_everything
from broker.runtime.run_file import hold_home_lock, remove_run_file, write_run_file
from broker.storage import pushes
from broker.storage.audit import HEAD_FILE, AuditEvent
from broker.storage.audit_writer import start_trail
from broker.storage.db_errors import describe
from broker.storage.files import file_digest, is_hidden_or_partial, private_dir
from broker.storage.incomplete import (
    upload_incomplete,
)
from broker.storage.state_db import make_engine
from broker.storage.state_guard import check_state_store
from broker.storage.store import Store

log = logs.get("broker.runtime.daemon")
T = TypeVar("T")
WAKE = Path("\0wake")  # queue sentinels: run a release pass ...
PURGE = Path("\0purge")  # ... or drop copies past their retention period
RESTART_REPORTED = timedelta(minutes=10)  # /healthz names a restarted thread this long


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Overrides:
    sftp: tuple[str, int] | None = None
    metrics: tuple[str, int] | None = None
    initialise: bool = False  # make a new state database even in a used home
    until_idle: bool = False  # stop once there is nothing to do (broker.runtime.idle)


class Daemon:
    def __init__(self, home: Path, overrides: Overrides | None = None) -> None:
        self.home = home
        self.overrides = overrides or Overrides()
        self.config: Config = load_config(home)
        self.metrics = Metrics()
        self._queue: asyncio.Queue[Path] = asyncio.Queue()
        self._queued: set[Path] = set()
        self._timers: dict[Path, float] = {}  # path -> when a later() call is due
        self._stopping = asyncio.Event()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="broker-worker")
        self._config_mtime = self.config.path.stat().st_mtime_ns
        self._restarts: dict[str, datetime] = {}
        self._db_problem: str | None = None
        self._handling = 0  # items on the worker thread now
        self.ready = asyncio.Event()

    # -- start -----------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        self.loop = asyncio.get_running_loop()
        # A read lease (fsutil.open_for_writing) that a writer breaks sends SIGIO, whose
        # default action ends the process.
        with contextlib.suppress(ValueError):  # not the main thread (tests)
            signal.signal(signal.SIGIO, signal.SIG_IGN)
        for d in (cfg.var, cfg.inbox / "kela", cfg.outbox / "kela", cfg.var / "archive",
                  cfg.var / "quarantine"):
            private_dir(d)
        check_state_store(cfg, initialise=self.overrides.initialise)
        self.store = Store(make_engine(cfg.storage_url))
        self._check_removed(cfg)
        self.audit = start_trail(self.store.engine, cfg.var, utcnow())
        self.releaser = Releaser(cfg, self.store)
        self.inputs = Inputs(cfg, self.store, self.metrics, later=self.later,
                             release=self.release_pass, incomplete=self._upload_incomplete)
        self.pushes = PushRunner(self.store, self.metrics, SftpPusher, self._pushed)
        moved = await self._in_worker(hand_over, cfg, self.store)
        recovered = await self._in_worker(self.releaser.recover)
        answered = await self._in_worker(finish_pending, cfg, self.store)
        answered += await self._in_worker(answer_cuts_left, cfg, self.store)
        if recovered or answered or moved:
            log.warning("finished work left by a crash or a config change",
                        deliveries=recovered, acknowledgements=answered, handed_over=moved)

        raise_nofile_limit()  # the SFTP caps are checked against it when the server starts
        self.sftp = SftpService(self._sftp_options(cfg), on_event=self._audit_event,
                                on_upload_closed=lambda org, path: self.enqueue(path),
                                on_upload_cut=self._upload_cut)
        sftp_port = await self.sftp.start()
        log.info("sftp listening", host=self._sftp_addr()[0], port=sftp_port,
                 host_key=self.sftp.host_key_fingerprint)

        mhost, mport = self.overrides.metrics or (cfg.metrics_host, cfg.metrics_port)
        self.metrics_server = MetricsServer(self.metrics, mhost, mport, self.problems)
        self.metrics_server.start()
        log.info("metrics listening", host=mhost, port=self.metrics_server.port)

        self.watcher = FolderWatcher(self._inboxes(cfg), self.enqueue, cfg.rescan_seconds)
        self.watcher.start()
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        # The scheduler only wakes work up; what is due is always read from the store.
        every = max(cfg.rescan_seconds, 0.5)
        self.scheduler.add_job(self._check_config, "interval", seconds=every,
                               id="config-watch")
        self.scheduler.add_job(self._supervise, "interval", seconds=every, id="supervise")
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
        self.watcher.rescan()
        self.enqueue(WAKE)
        self.ready.set()
        self._write_run_file(sftp_port)  # last: tools and tests take it as "ready"

    # -- loop --------------------------------------------------------------------
    async def run(self) -> None:
        # The home's lock before the first write to its state, held until the process
        # exits (broker.runtime.run_file).
        hold_home_lock(self.config.var, "start")
        await self.start()
        if self.overrides.until_idle:
            self._idle_watch = asyncio.ensure_future(
                stop_when_idle(self._activity, utcnow, self.stop))
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
        cfg = self.config
        if path == WAKE:
            self.release_pass()
        elif path == PURGE:
            gone = purge_everything(cfg, utcnow(), incomplete_dir(cfg), self.sftp.is_writing)
            if gone:
                log.info("retention: removed files past their retention period", count=gone)
        elif is_hidden_or_partial(path.name):
            return  # SPEC 1: not complete until renamed (an SFTP close reports these too)
        elif path.parent == cfg.inbox / "kela":
            self.inputs.batch(path)
        elif path.parent.parent == cfg.inbox and path.parent.name in cfg.by_id:
            self.inputs.upload(path, cfg.by_id[path.parent.name])

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
        for f in result.failures:
            self.metrics.delivery_failures.labels(organisation=f.organisation).inc()
            log.warning("delivery could not be written; it stays pending and is retried",
                        organisation=f.organisation, delivery=f.delivery_id, error=f.error)
        failing = {row.organisation for row in self.store.failing_deliveries()}
        failing |= self.pushes.failing()
        for org in self.config.by_id:
            self.metrics.org_failing.labels(organisation=org).set(int(org in failing))
        totals: dict[str, int] = {}
        for _org, _type, state, n in self.store.counts():
            totals[state] = totals.get(state, 0) + n
        for state, n in totals.items():
            self.metrics.items.labels(state=state).set(n)
        self.pushes.kick(self.config, now)
        self.metrics.last_pass.set(now.timestamp())
        wake = min((t for t in (self.store.next_release(), self.store.next_retry())
                    if t is not None), default=None)
        self.loop.call_soon_threadsafe(self._schedule_wake, wake)

    # -- health ------------------------------------------------------------------
    def problems(self) -> list[str]:
        """Why the broker is not healthy; [] when it is (served on /healthz)."""
        if not self.ready.is_set():
            return ["starting"]
        if self._stopping.is_set():
            return ["stopping"]
        found = []
        if self._db_problem:
            found.append(self._db_problem)  # "the state database cannot be ..."
        else:
            try:
                for row in self.store.failing_deliveries():
                    found.append(f"deliveries to {row.organisation} failing ({row.attempts} "
                                 f"attempt(s), next at {row.next_attempt_at:%H:%M:%S}Z): "
                                 f"{row.last_error}")
            except Exception as exc:  # before the next probe notices
                found.append(describe(exc))
        found += self.pushes.problems()
        now = utcnow()
        found += [f"{name} thread died and was restarted at {at:%H:%M:%S}Z"
                  for name, at in sorted(self._restarts.items()) if now - at < RESTART_REPORTED]
        for path, why in sorted(self.inputs.stuck.items()):
            if path.exists():
                found.append(f"{path.name} failed and could not be set aside: {why}")
        if self.watcher.last_rescan_error:
            found.append(f"inbox rescan: {self.watcher.last_rescan_error}")
        self.metrics.healthy.set(0 if found else 1)
        return found

    def _supervise(self) -> None:
        """Restart dead watcher threads; probe the database (health, not a crash)."""
        for name in self.watcher.supervise():
            self._restarts[name] = utcnow()
            self.metrics.thread_restarts.labels(thread=name).inc()
            log.error("background thread died and was restarted", thread=name)
        self._db_problem = self.store.probe()

    # -- shutdown ----------------------------------------------------------------
    def stop(self) -> None:
        log.info("stopping")
        self._stopping.set()

    async def shutdown(self) -> None:
        self.watcher.stop()
        self.scheduler.shutdown(wait=False)
        await self.sftp.stop()
        self.metrics_server.stop()
        self.pushes.stop()
        self._worker.shutdown(wait=True)  # let an ingest in progress finish its transaction
        self.audit.stop()  # after everything that submits: commits what is queued
        remove_run_file(self.config.var)
        log.info("stopped")

    # -- helpers -------------------------------------------------------------------
    def enqueue(self, path: Path) -> None:
        """Thread-safe: watcher threads and SFTP callbacks call this."""
        def put() -> None:
            if path not in self._queued:
                self._queued.add(path)
                self._queue.put_nowait(path)
        self.loop.call_soon_threadsafe(put)

    def later(self, path: Path, seconds: float) -> None:
        """Thread-safe: look at ``path`` again in ``seconds`` (one timer per path)."""
        def arm() -> None:
            due = self.loop.time() + seconds
            if self._timers.get(path, float("inf")) <= due:
                return  # an earlier call is already armed
            self._timers[path] = due

            def fire() -> None:
                if self._timers.get(path) == due:
                    del self._timers[path]
                    self.enqueue(path)
            self.loop.call_at(due, fire)
        self.loop.call_soon_threadsafe(arm)

    async def _in_worker(self, fn: Any, *args: Any) -> Any:
        self._handling += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)
        finally:
            self._handling -= 1

    def _activity(self) -> Activity:
        return Activity(queued=self._queue.qsize(), armed=len(self._timers),
                        handling=self._handling, pushing=self.pushes.busy(),
                        waiting_files=waiting_files(self._inboxes(self.config)),
                        next_due=self.store.next_release())

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

    def _check_removed(self, cfg: Config) -> None:
        """Refuse a config that drops an organisation still holding items (see handover)."""
        problems = removed_with_items(cfg, self.store.undelivered_by_org())
        if problems:
            raise ConfigErrors(problems)

    def request_reload(self) -> None:
        try:
            new = load_config(self.home)
            self._check_removed(new)
        except ConfigError as exc:
            log.error("configuration reload failed; keeping the running configuration",
                      problems=str(exc))
            return
        self.config = new
        self.releaser = Releaser(new, self.store)
        self.inputs.config = new
        self.pushes.forget(new)
        self.sftp.update_organisations(frozenset(new.by_id))
        for folder in self._inboxes(new):
            self.watcher.watch(folder)
        self._worker.submit(hand_over, new, self.store)
        log.info("configuration reloaded", organisations=len(new.organisations))
        self.enqueue(WAKE)

    @staticmethod
    def _inboxes(cfg: Config) -> list[Path]:
        return [cfg.inbox / "kela", *(cfg.inbox / o.id for o in cfg.organisations)]

    def _audit_event(self, event: AuditEvent) -> Future[int]:
        """The SFTP server's events: onto the trail by the writer thread (group commit);
        the server awaits the future before it answers a transfer, so kill -9 never
        loses a disclosure the client has seen succeed."""
        self.metrics.observe_sftp(event)
        return self.audit.submit(event, utcnow())

    def _upload_incomplete(self, org: str, path: Path) -> bool:
        """Still being written, or cut off by a disconnect (a durable marker says so):
        never processed as if whole. Its close, or a rescan after it, brings it back."""
        sftp = getattr(self, "sftp", None)
        return (upload_incomplete(incomplete_dir(self.config), org, path)
                or (sftp is not None and sftp.is_writing(path)))

    def _upload_cut(self, org: str, path: Path, size: int) -> None:
        """On the loop: an upload lost its connection before it was closed (cut_uploads)."""
        if is_hidden_or_partial(path.name) or org not in self.config.by_id:
            return  # a temporary name is never processed; the final rename will be
        self._worker.submit(answer_cut, self.config, self.store, org, path, size)

    def _pushed(self, org: str, rel: str, size: int, remote: str) -> None:
        """A push job's thread: one file is on the organisation's server."""
        sha, _ = file_digest(self.config.outbox / org / rel)
        pushes.record(self.store.engine, org, rel, size, remote, utcnow(), sha256=sha,
                      anchor=self.config.var / HEAD_FILE)

    def _sftp_addr(self) -> tuple[str, int]:
        return self.overrides.sftp or (self.config.sftp.host, self.config.sftp.port)

    def _sftp_options(self, cfg: Config) -> SftpOptions:
        host, port = self._sftp_addr()
        return SftpOptions.from_config(cfg, host, port, incomplete_dir(cfg))

    def _write_run_file(self, sftp_port: int) -> None:
        write_run_file(self.config.var, sftp_port=sftp_port,
                       metrics_port=self.metrics_server.port,
                       host_key=self.sftp.host_key_fingerprint)
