"""The embedded SFTP server with real clients: what an organisation can do."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import paramiko
import pytest

from adapters.sftp_server import SftpService

if TYPE_CHECKING:
    from sftp_support import Running

# The server fixtures (sftp_server, start_sftp) live in tests/sftp_support.py; imported
# as a plugin (not with `import`) so that pytest rewrites its asserts.
pytest_plugins = ("sftp_support",)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wait_for(cond: Callable[[], bool], deadline: float = 15) -> bool:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def test_root_lists_only_the_two_folders(sftp_server: Running) -> None:
    t, sftp = sftp_server.paramiko_sftp("alpha")
    try:
        assert sorted(sftp.listdir("/")) == ["from-kela", "to-kela"]
        assert sftp.normalize(".") == "/"
        assert sorted(sftp.listdir("/from-kela")) == ["acks"]
        assert sftp.listdir("/to-kela") == []
    finally:
        t.close()


def test_folders_created_at_start_with_mode_0700(sftp_server: Running) -> None:
    for org in ("alpha", "beta"):
        for d in (
            sftp_server.outbox(org),
            sftp_server.outbox(org) / "acks",
            sftp_server.inbox(org),
        ):
            assert d.is_dir()
            assert stat.S_IMODE(d.stat().st_mode) == 0o700


def test_openssh_client_lists_downloads_and_deletes(sftp_server: Running) -> None:
    body = b"<NotificationDelivery/>\n" * 1000
    (sftp_server.outbox("alpha") / "delivery-1.xml").write_bytes(body)
    (sftp_server.outbox("alpha") / ".delivery-2.xml.part").write_bytes(b"half")
    result = sftp_server.sftp(
        "alpha",
        [
            "ls -1 /from-kela",
            "get /from-kela/delivery-1.xml got.xml",
            "rm /from-kela/delivery-1.xml",
        ],
    )
    assert result.returncode == 0, result.stderr
    assert "delivery-1.xml" in result.stdout
    assert ".part" not in result.stdout  # the broker's temporary files are invisible
    assert (sftp_server.tmp / "got.xml").read_bytes() == body
    # Deleting removes the organisation's copy; the broker keeps its own.
    assert not (sftp_server.outbox("alpha") / "delivery-1.xml").exists()
    retained = sftp_server.options.retain_dir / "alpha" / "delivery-1.xml"
    assert retained.read_bytes() == body
    (download,) = sftp_server.actions("download")
    assert (download.org, download.path, download.size) == (
        "alpha",
        "/from-kela/delivery-1.xml",
        len(body),
    )
    assert download.sha256 == sha(body)
    assert download.address == "127.0.0.1"
    (delete,) = sftp_server.actions("delete")
    assert (delete.path, delete.size, delete.sha256) == (
        "/from-kela/delivery-1.xml",
        len(body),
        sha(body),
    )
    assert sftp_server.events[0].action == "login"
    assert wait_for(lambda: bool(sftp_server.actions("logout")))


def test_acks_subfolder_is_readable(sftp_server: Running) -> None:
    (sftp_server.outbox("alpha") / "acks" / "r.xml.ack.xml").write_bytes(b"<Acknowledgement/>")
    t, sftp = sftp_server.paramiko_sftp("alpha")
    try:
        assert sftp.listdir("/from-kela/acks") == ["r.xml.ack.xml"]
        with sftp.open("/from-kela/acks/r.xml.ack.xml") as fh:
            assert fh.read() == b"<Acknowledgement/>"
    finally:
        t.close()


def test_paramiko_prefetch_download_hash(sftp_server: Running) -> None:
    body = os.urandom(3 * 1024 * 1024 + 17)
    (sftp_server.outbox("alpha") / "big.bin").write_bytes(body)
    t, sftp = sftp_server.paramiko_sftp("alpha")
    try:
        out = io.BytesIO()
        sftp.getfo("/from-kela/big.bin", out)  # prefetch: many concurrent reads
        assert out.getvalue() == body
    finally:
        t.close()
    assert wait_for(lambda: bool(sftp_server.actions("download")))
    (download,) = sftp_server.actions("download")
    assert download.size == len(body) and download.sha256 == sha(body)


def test_upload_then_rename(sftp_server: Running) -> None:
    body = b"<MunicipalityResponse/>" * 500
    (sftp_server.tmp / "resp.xml").write_bytes(body)
    result = sftp_server.sftp(
        "alpha",
        ["put resp.xml /to-kela/resp.xml.part", "rename /to-kela/resp.xml.part /to-kela/resp.xml"],
    )
    assert result.returncode == 0, result.stderr
    final = sftp_server.inbox("alpha") / "resp.xml"
    assert final.read_bytes() == body
    assert stat.S_IMODE(final.stat().st_mode) == 0o600
    part = sftp_server.inbox("alpha") / "resp.xml.part"
    assert sftp_server.uploads == [("alpha", part), ("alpha", final)]
    assert sftp_server.writing_seen == [False, False]  # closed before the callback
    (upload,) = sftp_server.actions("upload")
    assert (upload.path, upload.size, upload.sha256) == (
        "/to-kela/resp.xml.part",
        len(body),
        sha(body),
    )
    (rename,) = sftp_server.actions("rename")
    assert rename.path == "/to-kela/resp.xml.part" and rename.detail == "to /to-kela/resp.xml"


def test_is_writing_while_a_handle_is_open(sftp_server: Running) -> None:
    target = sftp_server.inbox("alpha") / "slow.xml"
    t, sftp = sftp_server.paramiko_sftp("alpha")
    try:
        fh = sftp.open("/to-kela/slow.xml", "w")
        fh.write(b"<half")
        fh.flush()
        assert sftp_server.service.is_writing(target)
        assert not sftp_server.service.is_writing(sftp_server.inbox("alpha") / "other.xml")
        assert sftp_server.uploads == []
        # A file still being written cannot be renamed into its final name.
        with pytest.raises(OSError):
            sftp.rename("/to-kela/slow.xml", "/to-kela/final.xml")
        fh.write(b"/>")
        fh.close()
        assert not sftp_server.service.is_writing(target)
        assert sftp_server.uploads == [("alpha", target)]
        assert target.read_bytes() == b"<half/>"
        # The session is still usable after the refused rename.
        sftp.rename("/to-kela/slow.xml", "/to-kela/final.xml")
    finally:
        t.close()


def test_listing_and_stat_of_own_uploads(sftp_server: Running) -> None:
    t, sftp = sftp_server.paramiko_sftp("alpha")
    try:
        sftp.putfo(io.BytesIO(b"12345"), "/to-kela/a.xml")
        assert sftp.listdir("/to-kela") == ["a.xml"]
        assert sftp.stat("/to-kela/a.xml").st_size == 5
        # Setting times (WinSCP, put -p) is accepted; modes are not changed.
        sftp.utime("/to-kela/a.xml", (1_000_000_000, 1_000_000_000))
        sftp.chmod("/to-kela/a.xml", 0o777)
        st = (sftp_server.inbox("alpha") / "a.xml").stat()
        assert int(st.st_mtime) == 1_000_000_000
        assert stat.S_IMODE(st.st_mode) == 0o600
    finally:
        t.close()


def test_upload_over_the_limit_is_refused_and_removed(start_sftp: Callable[..., Running]) -> None:
    running = start_sftp(max_upload_bytes=100_000)
    t, sftp = running.paramiko_sftp("alpha")
    try:
        with (
            pytest.raises(OSError, match="upload limit of 100000 bytes"),
            sftp.open("/to-kela/huge.xml", "w") as fh,
        ):
            fh.write(b"x" * 300_000)
        assert wait_for(lambda: bool(running.actions("upload_rejected")))
        assert not (running.inbox("alpha") / "huge.xml").exists()
        # paramiko's putfo pipelines writes and ignores close errors: it sees the
        # file missing when it checks the size afterwards.
        with pytest.raises(OSError):
            sftp.putfo(io.BytesIO(b"x" * 300_000), "/to-kela/huge.xml")
        assert not (running.inbox("alpha") / "huge.xml").exists()
        assert running.uploads == []
        sftp.putfo(io.BytesIO(b"x" * 100_000), "/to-kela/ok.xml")  # at the limit: fine
        assert (running.inbox("alpha") / "ok.xml").stat().st_size == 100_000
    finally:
        t.close()


def test_idle_session_is_closed(start_sftp: Callable[..., Running]) -> None:
    running = start_sftp(idle_timeout=2)
    t, sftp = running.paramiko_sftp("alpha")
    try:
        # Requests keep the session alive past the timeout...
        for _ in range(8):
            sftp.listdir("/")
            time.sleep(0.4)
        assert t.is_active()
        # ...silence closes it.
        assert wait_for(lambda: not t.is_active())
        assert wait_for(lambda: any(e.detail == "idle timeout" for e in running.actions("logout")))
    finally:
        t.close()


def test_authorized_keys_reloaded_without_restart(sftp_server: Running) -> None:
    new_key = sftp_server.keygen(sftp_server.tmp / "alpha_new")
    assert sftp_server.sftp("alpha", ["ls /"], key=new_key).returncode != 0
    keys_file = sftp_server.options.keys_dir / "alpha" / "authorized_keys"
    old = keys_file.read_text()
    keys_file.write_text(old + Path(f"{new_key}.pub").read_text())
    assert sftp_server.sftp("alpha", ["ls /"], key=new_key).returncode == 0
    # Revoking: the old key stops working at once.
    keys_file.write_text(Path(f"{new_key}.pub").read_text())
    assert sftp_server.sftp("alpha", ["ls /"]).returncode != 0
    assert sftp_server.sftp("alpha", ["ls /"], key=new_key).returncode == 0


def test_session_limit_per_organisation(start_sftp: Callable[..., Running]) -> None:
    running = start_sftp(max_sessions_per_org=2)
    first, second = running.transport("alpha"), running.transport("alpha")
    try:
        with pytest.raises((paramiko.SSHException, EOFError, OSError)):
            extra = running.transport("alpha")
            try:
                paramiko.SFTPClient.from_transport(extra)
            finally:
                extra.close()
        assert wait_for(lambda: bool(running.actions("session_refused")))
        # Other organisations are not affected.
        beta = running.transport("beta")
        beta.close()
        first.close()
        assert wait_for(lambda: sum(1 for e in running.actions("logout") if e.org == "alpha") == 1)
        again = running.transport("alpha")
        assert paramiko.SFTPClient.from_transport(again) is not None
        again.close()
    finally:
        first.close()
        second.close()


def test_host_key_created_once_with_mode_0600(sftp_server: Running) -> None:
    path = sftp_server.options.host_key_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    listed = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True, check=True
    ).stdout
    assert sftp_server.service.host_key_fingerprint in listed
    assert "ED25519" in listed
    again = SftpService(sftp_server.options, lambda e: None)
    assert again.host_key_fingerprint == sftp_server.service.host_key_fingerprint


def test_new_organisation_after_reload(sftp_server: Running) -> None:
    keys_dir = sftp_server.options.keys_dir
    key = sftp_server.keygen(sftp_server.tmp / "gamma_id")
    (keys_dir / "gamma").mkdir()
    (keys_dir / "gamma" / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
    assert sftp_server.sftp("gamma", ["ls /"], key=key).returncode != 0
    sftp_server.service.update_organisations(frozenset({"alpha", "beta", "gamma"}))
    assert (sftp_server.outbox("gamma") / "acks").is_dir()
    assert sftp_server.sftp("gamma", ["ls /from-kela"], key=key).returncode == 0
    # Removing an organisation disconnects its sessions and refuses new ones.
    t = sftp_server.transport("beta")
    sftp_server.service.update_organisations(frozenset({"alpha", "gamma"}))
    assert wait_for(lambda: not t.is_active())
    assert sftp_server.sftp("beta", ["ls /"]).returncode != 0
