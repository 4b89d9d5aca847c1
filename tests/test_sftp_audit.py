"""Every disclosure on record, truly (issue 11): downloads with the file's real size
and SHA-256 whatever the client's read pattern, replies that wait for the audit
writer, and failures whose text stays on the server."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import paramiko
import paramiko.sftp
import pytest
from daemon_support import keygen

from adapters.sftp_hooks import Hooks
from adapters.sftp_keys import KeyFiles, KeyLookup
from adapters.sftp_paths import Jail
from broker.domain import pic
from broker.storage.audit import AuditEvent
from broker.storage.incomplete import upload_incomplete

if TYPE_CHECKING:
    from sftp_support import Running

pytest_plugins = ("sftp_support",)

BODY = os.urandom(3 * 1024 * 1024 + 11)
SHA = hashlib.sha256(BODY).hexdigest()


def _download_event(running: Running) -> AuditEvent:
    (event,) = running.wait_for(lambda: running.actions("download"))
    return event


def test_partial_read_with_prefetch_is_recorded_with_the_file_size_and_hash(
    sftp_server: Running,
) -> None:
    (sftp_server.outbox("alpha") / "big.bin").write_bytes(BODY)
    t, sftp = sftp_server.paramiko_sftp("alpha")
    try:
        with sftp.open("/from-kela/big.bin") as fh:
            fh.prefetch()  # paramiko reads ahead, far beyond what is asked for
            assert fh.read(100_000) == BODY[:100_000]
    finally:
        t.close()
    event = _download_event(sftp_server)
    assert (event.path, event.size, event.sha256) == ("/from-kela/big.bin", len(BODY), SHA)
    assert event.detail is not None and event.detail.startswith("read ")
    assert f" of {len(BODY)} bytes" in event.detail  # "(N sent with re-reads)" may follow


def test_a_download_is_on_record_before_its_first_byte(sftp_server: Running) -> None:
    """Opened for reading: on the trail at once, so a kill -9 or a lost connection
    before CLOSE never leaves a disclosure unrecorded."""
    (sftp_server.outbox("alpha") / "big.bin").write_bytes(BODY)
    t, sftp = sftp_server.paramiko_sftp("alpha")
    try:
        fh = sftp.open("/from-kela/big.bin")
        (opened,) = sftp_server.actions("download_open")
        assert (opened.path, opened.size) == ("/from-kela/big.bin", len(BODY))
        assert sftp_server.actions("download") == []  # the full record comes at CLOSE
        fh.close()
    finally:
        t.close()


def test_re_reads_are_not_counted_twice(sftp_server: Running) -> None:
    (sftp_server.outbox("alpha") / "big.bin").write_bytes(BODY)
    t, sftp = sftp_server.paramiko_sftp("alpha")
    try:
        with sftp.open("/from-kela/big.bin") as fh:
            assert fh.read(200_000) == BODY[:200_000]
            fh.seek(0)
            assert fh.read(50_000) == BODY[:50_000]
    finally:
        t.close()
    event = _download_event(sftp_server)
    assert (event.size, event.sha256) == (len(BODY), SHA)
    assert event.detail == f"read 200000 of {len(BODY)} bytes (250000 sent with re-reads)"


def test_whole_file_get_with_prefetch(sftp_server: Running) -> None:
    (sftp_server.outbox("alpha") / "big.bin").write_bytes(BODY)
    t, sftp = sftp_server.paramiko_sftp("alpha")
    try:
        sftp.get("/from-kela/big.bin", str(sftp_server.tmp / "got.bin"))
    finally:
        t.close()
    assert (sftp_server.tmp / "got.bin").read_bytes() == BODY
    event = _download_event(sftp_server)
    assert (event.size, event.sha256) == (len(BODY), SHA)
    # Read whole, once as far as the file goes. paramiko may also read some of it twice
    # under load: its prefetch marks itself done whenever its outstanding requests
    # drain for a moment (its request thread fell behind the replies), and the reader
    # then asks on its own while that thread goes on asking. The record says so.
    found = re.fullmatch(rf"read {len(BODY)} of {len(BODY)} bytes"
                         r"(?: \((\d+) sent with re-reads\))?", event.detail or "")
    assert found is not None, event.detail
    assert found.group(1) is None or int(found.group(1)) > len(BODY)


class SlowAuditWriter:
    """Stands in for the daemon's audit writer thread: a Future done a while later."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.done_at: dict[str, float] = {}

    def __call__(self, event: AuditEvent) -> concurrent.futures.Future[None]:
        future: concurrent.futures.Future[None] = concurrent.futures.Future()

        def commit() -> None:
            time.sleep(self.delay)
            self.done_at[event.action] = time.monotonic()
            future.set_result(None)

        threading.Thread(target=commit, daemon=True).start()
        return future


def test_replies_wait_for_the_audit_record(sftp_server: Running) -> None:
    writer = SlowAuditWriter(0.4)
    sftp_server.event_result = writer
    (sftp_server.outbox("alpha") / "d.xml").write_bytes(b"<d/>")
    t, sftp = sftp_server.paramiko_sftp("alpha")
    replied: dict[str, float] = {}
    try:
        with sftp.open("/from-kela/d.xml") as fh:
            fh.read()
        replied["download"] = time.monotonic()
        fh = sftp.open("/to-kela/r.xml.part", "w")
        fh.write(b"<r/>")
        fh.close()
        replied["upload"] = time.monotonic()
        sftp.rename("/to-kela/r.xml.part", "/to-kela/r.xml")
        replied["rename"] = time.monotonic()
        sftp.remove("/from-kela/d.xml")
        replied["delete"] = time.monotonic()
    finally:
        t.close()
    for action, at in replied.items():
        assert writer.done_at[action] <= at, action  # on record before the client heard


def test_a_failed_audit_record_fails_the_close(sftp_server: Running) -> None:
    def failing(event: AuditEvent) -> object:
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        if event.action == "upload":
            future.set_exception(OSError("disk full at /var/lib/broker/audit.db"))
        else:
            future.set_result(None)
        return future

    sftp_server.event_result = failing
    t, sftp = sftp_server.paramiko_sftp("alpha")
    try:
        fh = sftp.open("/to-kela/r.xml", "w")
        fh.write(b"<r/>")
        fh.flush()
        # paramiko's own close() swallows a failed CLOSE; send it as a bare request.
        with pytest.raises(OSError) as err:
            sftp._request(paramiko.sftp.CMD_CLOSE, fh.handle)
        assert "internal error" in str(err.value) and "audit.db" not in str(err.value)
    finally:
        t.close()
    # Not on record, so not taken: it stays marked until the client uploads again.
    assert sftp_server.uploads == []
    assert upload_incomplete(sftp_server.options.incomplete_root, "alpha", "r.xml")


def test_internal_errors_stay_on_the_server(
    sftp_server: Running, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    code = pic.make(date(1990, 1, 1), 923)
    original: Callable[[Jail, bytes], object] = Jail.resolve

    def broken(self: Jail, path: bytes) -> object:
        if path.endswith(b"boom.xml"):
            raise RuntimeError(f"bug while handling {code} for {self.org}")
        return original(self, path)

    monkeypatch.setattr(Jail, "resolve", broken)
    t, sftp = sftp_server.paramiko_sftp("alpha")
    try:
        with caplog.at_level(logging.ERROR, logger="adapters"), pytest.raises(OSError) as err:
            sftp.stat("/from-kela/boom.xml")
        assert str(err.value).endswith("internal error")
        assert code not in str(err.value) and "bug" not in str(err.value)
        assert sftp.listdir("/from-kela") == ["acks"]  # the session goes on
    finally:
        t.close()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "RuntimeError" in logged and "Traceback" in logged  # the operator sees the bug
    assert code not in logged and pic.mask(code) in logged  # but not the person


def test_broken_authorized_keys_is_a_login_error_not_a_ban(
    start_sftp: Callable[..., Running],
) -> None:
    running = start_sftp(ban_after_failures=2)
    keys = running.options.keys_dir / "alpha" / "authorized_keys"
    good = keys.read_text()
    keys.write_text("ssh-ed25519 not-base64!!\n")
    for _ in range(4):
        with pytest.raises(Exception):  # noqa: B017 - paramiko's auth failure
            running.transport("alpha")
    errors = running.wait_for(lambda: running.actions("login_error"))
    assert errors[0].org == "alpha" and errors[0].detail is not None
    assert "authorized_keys" in errors[0].detail
    assert running.actions("ban") == [] and running.actions("login_failed") == []
    # Unreadable (a folder where the file should be): the same, and never cached.
    keys.unlink()
    keys.mkdir()
    with pytest.raises(Exception):  # noqa: B017
        running.transport("alpha")
    running.wait_for(lambda: len(running.actions("login_error")) >= 5)
    assert running.actions("ban") == []
    keys.rmdir()
    keys.write_text(good)
    running.transport("alpha").close()  # fixed by the operator: in, and never banned
    assert running.wait_for(lambda: running.actions("login"))


def test_unknown_key_still_counts_towards_a_ban(start_sftp: Callable[..., Running]) -> None:
    running = start_sftp(ban_after_failures=2)
    other = running.keygen(running.tmp / "stranger")
    for _ in range(2):
        with pytest.raises(Exception):  # noqa: B017
            running.transport("alpha", key=other)
    assert running.wait_for(lambda: running.actions("ban"))
    assert running.actions("login_error") == []



def test_key_file_lookup(tmp_path: Path) -> None:
    files = KeyFiles(tmp_path)
    assert files.lookup("alpha") == KeyLookup(None)  # no file: no keys, the client's failure
    (tmp_path / "alpha").mkdir()
    path = files.path_of("alpha")
    path.write_text("# every key was removed\n\n")
    assert files.lookup("alpha") == KeyLookup(None)
    path.write_text("ssh-ed25519 AAAA-not-a-key comment\n")
    broken = files.lookup("alpha")
    assert broken.keys is None and broken.error is not None
    assert "AAAA" not in broken.error
    key = keygen(tmp_path / "k")
    path.write_text(Path(f"{key}.pub").read_text())
    good = files.lookup("alpha")
    assert good.keys is not None and good.error is None


def test_record_awaits_a_coroutine_and_emit_does_not_wait() -> None:
    order: list[str] = []

    async def on_event(event: AuditEvent) -> None:
        await asyncio.sleep(0.05)
        order.append(event.action)

    async def main() -> None:
        hooks = Hooks(on_event, None, None)
        hooks.emit(AuditEvent("login", "alpha"))
        order.append("emitted")
        await hooks.record(AuditEvent("upload", "alpha"))
        order.append("replied")
        await asyncio.sleep(0.1)

    asyncio.run(main())
    assert order[0] == "emitted"  # emit returned before its event was on record
    assert order.index("upload") < order.index("replied")  # record waited for it
    assert "login" in order  # and the emitted one was still recorded
