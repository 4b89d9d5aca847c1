"""Shared fixtures of the SFTP server tests: a real server on port 0, real clients.

The server runs on its own event loop in a background thread, like in the daemon;
tests drive it with the OpenSSH ``sftp`` client and paramiko.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import paramiko
import pytest
from daemon_support import keygen

from adapters.sftp_server import SftpOptions, SftpService
from broker.storage.audit import AuditEvent

T = TypeVar("T")

ORGS = ("alpha", "beta")


@dataclass
class Running:
    service: SftpService
    options: SftpOptions
    port: int
    loop: asyncio.AbstractEventLoop
    keys: dict[str, Path]  # org -> private key path
    tmp: Path
    events: list[AuditEvent] = field(default_factory=list)
    uploads: list[tuple[str, Path]] = field(default_factory=list)
    writing_seen: list[bool] = field(default_factory=list)
    cuts: list[tuple[str, Path, int]] = field(default_factory=list)
    # What on_event returns for an event (None: nothing); e.g. a Future to await.
    event_result: Callable[[AuditEvent], object] = lambda event: None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    @staticmethod
    def keygen(path: Path, kind: str = "ed25519") -> Path:
        return keygen(path, kind)

    def actions(self, action: str) -> list[AuditEvent]:
        return [e for e in list(self.events) if e.action == action]

    def wait_for(self, what: Callable[[], T], timeout: float = 15) -> T:
        """Poll until ``what()`` is truthy (the server reports from its own thread)."""
        deadline = time.monotonic() + timeout
        while not (result := what()):
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout}s")
            time.sleep(0.02)
        return result

    def outbox(self, org: str) -> Path:
        return self.options.outbox_dir / org

    def inbox(self, org: str) -> Path:
        return self.options.inbox_dir / org

    # -- clients ---------------------------------------------------------

    def sftp(
        self, org: str, commands: list[str], key: Path | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run the OpenSSH sftp client in batch mode (a leading '-' ignores a failure)."""
        batch = self.tmp / "batch.txt"
        batch.write_text("\n".join(commands) + "\n")
        return subprocess.run(
            [
                "sftp",
                "-b",
                str(batch),
                "-i",
                str(key or self.keys[org]),
                "-P",
                str(self.port),
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "LogLevel=ERROR",
                f"{org}@127.0.0.1",
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.tmp,
        )

    def transport(self, org: str, key: Path | None = None) -> paramiko.Transport:
        pkey = paramiko.Ed25519Key.from_private_key_file(str(key or self.keys[org]))
        t = paramiko.Transport(("127.0.0.1", self.port))
        try:
            t.connect(username=org, pkey=pkey)
        except BaseException:
            t.close()
            raise
        return t

    def paramiko_sftp(self, org: str) -> tuple[paramiko.Transport, paramiko.SFTPClient]:
        t = self.transport(org)
        client = paramiko.SFTPClient.from_transport(t)
        assert client is not None
        return t, client


def _start(tmp: Path, **overrides: Any) -> Running:
    keys_dir = tmp / "keys"
    keys: dict[str, Path] = {}
    for org in ORGS:
        (keys_dir / org).mkdir(parents=True)
        key = keygen(tmp / f"{org}_id")
        (keys_dir / org / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
        keys[org] = key
    options = SftpOptions(
        host="127.0.0.1",
        port=0,
        host_key_path=tmp / "hostkey" / "ssh_host_ed25519_key",
        keys_dir=keys_dir,
        outbox_dir=tmp / "outbox",
        inbox_dir=tmp / "inbox",
        retain_dir=tmp / "retain",
        incomplete_dir=tmp / "incomplete",
        organisations=frozenset(ORGS),
    )
    options = replace(options, **overrides)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    holder: dict[str, Running] = {}

    def on_event(event: AuditEvent) -> object:
        holder["r"].events.append(event)
        return holder["r"].event_result(event)

    def on_upload_closed(org: str, path: Path) -> None:
        running = holder["r"]
        running.uploads.append((org, path))
        running.writing_seen.append(running.service.is_writing(path))

    def on_upload_cut(org: str, path: Path, size: int) -> None:
        holder["r"].cuts.append((org, path, size))

    async def make() -> SftpService:
        return SftpService(options, on_event, on_upload_closed, on_upload_cut)

    service = asyncio.run_coroutine_threadsafe(make(), loop).result(30)
    running = Running(service, options, 0, loop, keys, tmp)
    holder["r"] = running
    running.port = running.run(service.start())
    running.thread = thread  # type: ignore[attr-defined]
    return running


def _stop(running: Running) -> None:
    try:
        running.run(running.service.stop())
    finally:
        running.loop.call_soon_threadsafe(running.loop.stop)
        running.thread.join(10)  # type: ignore[attr-defined]
        running.loop.close()


@pytest.fixture
def start_sftp(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """Start a server with option overrides, e.g. ``start_sftp(idle_timeout=2)``."""
    started: list[Running] = []

    def start(**overrides: Any) -> Running:
        running = _start(tmp_path, **overrides)
        started.append(running)
        return running

    try:
        yield start
    finally:
        for running in started:
            _stop(running)


@pytest.fixture
def sftp_server(start_sftp: Callable[..., Running]) -> Running:
    """A running server with default options."""
    return start_sftp()
