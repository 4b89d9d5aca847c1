"""Pushes to organisations' own SFTP servers, off the daemon's worker thread.

A push talks to a server the broker does not control: it can hang (a black-hole
address, a server that accepts and never speaks) or fail for hours. So each
organisation's push runs as its own job in a small thread pool, never two at once for
one organisation, with every network step bounded by the organisation's ``timeout``;
a failure backs that organisation off (30 s, 1 min, 2 min ... 30 min) and is reported
by ``problems()`` for /healthz, while releases and other organisations' pushes go on.
The transport itself is an adapter, given as ``make_pusher``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from broker import logs
from broker.config.settings import Config, PushTarget
from broker.errors import BrokerError
from broker.runtime.metrics import Metrics
from broker.storage import pushes
from broker.storage.store import Store

log = logs.get("broker.push")

BACKOFF_FIRST = timedelta(seconds=30)
BACKOFF_MAX = timedelta(minutes=30)


class Pusher(Protocol):
    def push(self, local_root: Path, files: list[str],
             on_pushed: Callable[[str, int, str], None]) -> int: ...


OnPushed = Callable[[str, str, int, str], None]  # org, file, size, remote


@dataclass
class _OrgState:
    running: bool = False
    failures: int = 0
    next_at: datetime | None = None
    last_error: str | None = None


class PushRunner:
    def __init__(self, store: Store, metrics: Metrics,
                 make_pusher: Callable[[PushTarget], Pusher], on_pushed: OnPushed,
                 workers: int = 4) -> None:
        self.store, self.metrics = store, metrics
        self.make_pusher, self.on_pushed = make_pusher, on_pushed
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="push")
        self._lock = threading.Lock()
        self._orgs: dict[str, _OrgState] = {}

    def kick(self, config: Config, now: datetime) -> None:
        """Start a push job for each organisation with files to push and no job running."""
        for org in config.organisations:
            if org.push is None:
                continue
            with self._lock:
                state = self._orgs.setdefault(org.id, _OrgState())
                if state.running or (state.next_at is not None and now < state.next_at):
                    continue
                state.running = True
            self._pool.submit(self._run, org.id, org.push, config.outbox / org.id)

    def _run(self, org: str, target: PushTarget, folder: Path) -> None:
        state = self._orgs[org]
        try:
            todo = pushes.pending(self.store.engine, org, folder)
            self._backlog(org, folder, todo)
            if not todo:
                self._succeeded(org, state)
                return
            self.metrics.push_attempts.labels(organisation=org).inc()
            started = time.monotonic()
            n = self.make_pusher(target).push(
                folder, todo, lambda rel, size, remote: self.on_pushed(org, rel, size, remote))
            log.info("pushed", organisation=org, files=n,
                     seconds=round(time.monotonic() - started, 1))
            self._succeeded(org, state)
            self._backlog(org, folder, [])
        except Exception as exc:
            error = str(exc) if isinstance(exc, BrokerError) else type(exc).__name__
            if not isinstance(exc, BrokerError):
                log.error("push failed unexpectedly", organisation=org, exc_info=exc)
            with self._lock:
                state.failures += 1
                delay = min(BACKOFF_FIRST * 2 ** min(state.failures - 1, 16), BACKOFF_MAX)
                state.next_at = datetime.now(UTC) + delay
                state.last_error = error
            self.metrics.push_failures.labels(organisation=org).inc()
            self.metrics.org_failing.labels(organisation=org).set(1)
            log.warning("push failed", organisation=org, failures=state.failures,
                        retry_in=int(delay.total_seconds()), error=error)
        finally:
            with self._lock:
                state.running = False

    def _succeeded(self, org: str, state: _OrgState) -> None:
        with self._lock:
            was_failing = state.failures > 0
            state.failures, state.next_at, state.last_error = 0, None, None
        if was_failing:
            self.metrics.org_failing.labels(organisation=org).set(0)

    def _backlog(self, org: str, folder: Path, todo: list[str]) -> None:
        oldest = min(((folder / rel).stat().st_mtime for rel in todo if (folder / rel).exists()),
                     default=None)
        age = 0.0 if oldest is None else max(0.0, time.time() - oldest)
        self.metrics.push_backlog_age.labels(organisation=org).set(age)

    def busy(self) -> bool:
        """A push job is running now."""
        with self._lock:
            return any(s.running for s in self._orgs.values())

    def problems(self) -> list[str]:
        with self._lock:
            return [f"push to {org} failing ({s.failures} in a row, next try "
                    f"{s.next_at:%H:%M:%S}Z): {s.last_error}"
                    for org, s in sorted(self._orgs.items())
                    if s.failures and s.next_at is not None]

    def failing(self) -> set[str]:
        with self._lock:
            return {org for org, s in self._orgs.items() if s.failures}

    def forget(self, config: Config) -> None:
        """Drop state of organisations no longer pushed to (after a config reload)."""
        with self._lock:
            for org in [o for o in self._orgs
                        if o not in config.by_id or config.by_id[o].push is None]:
                del self._orgs[org]

    def stop(self) -> None:
        # Jobs in progress are bounded by their timeouts; do not wait for them at exit.
        self._pool.shutdown(wait=False, cancel_futures=True)
