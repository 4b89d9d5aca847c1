"""An upload cut off by a lost connection is not a complete upload (issue 11).

Real paramiko clients against the real server; the cut is a socket shut down
under the client in the middle of a put.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import paramiko
import pytest

from broker.storage.incomplete import (
    CUT,
    WRITING,
    clear_incomplete,
    list_incomplete,
    mark_incomplete,
    marker_path,
    marker_state,
    purge_incomplete,
    upload_incomplete,
)

if TYPE_CHECKING:
    from sftp_support import Running

pytest_plugins = ("sftp_support",)

BODY = os.urandom(4 * 1024 * 1024 + 5)


def _cut_put(running: Running, local: Path, remote: str, after: int) -> None:
    """Start a put and shut the client's socket down once ``after`` bytes went out."""
    t = running.transport("alpha")
    sock = t.sock
    assert isinstance(sock, socket.socket)
    sftp = paramiko.SFTPClient.from_transport(t)
    assert sftp is not None

    def progress(sent: int, _total: int) -> None:
        if sent >= after:
            sock.shutdown(socket.SHUT_RDWR)  # as a dropped line: no CLOSE, no disconnect

    try:
        with pytest.raises((OSError, EOFError, paramiko.SSHException)):
            sftp.put(str(local), remote, callback=progress)
    finally:
        t.close()


def test_cut_upload_is_reported_as_cut_and_marked(sftp_server: Running) -> None:
    local = sftp_server.tmp / "resp.xml"
    local.write_bytes(BODY)
    target = sftp_server.inbox("alpha") / "resp.xml"
    incomplete = sftp_server.options.incomplete_root

    _cut_put(sftp_server, local, "/to-kela/resp.xml", after=1024 * 1024)

    (cut,) = sftp_server.wait_for(lambda: list(sftp_server.cuts))
    org, path, size = cut
    assert (org, path) == ("alpha", target)
    assert 0 < size < len(BODY)
    assert size == target.stat().st_size  # the fragment on disk is what was reported
    assert sftp_server.uploads == []  # never handed on as a complete upload
    assert sftp_server.actions("upload") == []
    (event,) = sftp_server.actions("upload_cut")
    assert event.path == "/to-kela/resp.xml" and event.size == size
    assert event.sha256 == hashlib.sha256(target.read_bytes()).hexdigest()
    # Durable, and readable without the service (the daemon's rescan after a restart).
    assert upload_incomplete(incomplete, "alpha", target)
    assert marker_state(incomplete, "alpha", target) == CUT
    assert sftp_server.service.upload_incomplete("alpha", target)
    assert not sftp_server.service.is_writing(target)
    assert not upload_incomplete(incomplete, "beta", target)

    # A complete re-upload of the same name clears it and is handed on.
    t, sftp = sftp_server.paramiko_sftp("alpha")
    try:
        sftp.put(str(local), "/to-kela/resp.xml")
    finally:
        t.close()
    sftp_server.wait_for(lambda: sftp_server.uploads)
    assert sftp_server.uploads == [("alpha", target)]
    assert target.read_bytes() == BODY
    assert not upload_incomplete(incomplete, "alpha", target)
    assert not sftp_server.service.upload_incomplete("alpha", target)
    assert len(sftp_server.cuts) == 1


def test_marker_exists_while_writing_and_goes_at_close(sftp_server: Running) -> None:
    target = sftp_server.inbox("alpha") / "slow.xml"
    incomplete = sftp_server.options.incomplete_root
    t, sftp = sftp_server.paramiko_sftp("alpha")
    try:
        fh = sftp.open("/to-kela/slow.xml", "w")
        fh.write(b"<half")
        fh.flush()
        # On disk from the open on: a daemon killed now finds the fragment marked.
        assert marker_state(incomplete, "alpha", target) == WRITING
        assert sftp_server.service.upload_incomplete("alpha", target)
        fh.write(b"/>")
        fh.close()
        assert not upload_incomplete(incomplete, "alpha", target)
        assert sftp_server.uploads == [("alpha", target)]
    finally:
        t.close()
    assert sftp_server.cuts == []


def test_session_ended_without_close_is_a_cut(sftp_server: Running) -> None:
    """A client that ends its session cleanly but never closed the file did not say
    the file is complete either."""
    target = sftp_server.inbox("alpha") / "open.xml"
    t, sftp = sftp_server.paramiko_sftp("alpha")
    fh = sftp.open("/to-kela/open.xml", "w")
    fh.write(b"<Municipality")
    fh.flush()
    t.close()  # channel and transport closed; the handle never was
    (cut,) = sftp_server.wait_for(lambda: list(sftp_server.cuts))
    assert cut == ("alpha", target, len(b"<Municipality"))
    assert sftp_server.uploads == []
    assert sftp_server.service.upload_incomplete("alpha", target)


def test_renaming_a_cut_fragment_keeps_it_incomplete(sftp_server: Running) -> None:
    local = sftp_server.tmp / "r.xml"
    local.write_bytes(BODY)
    incomplete = sftp_server.options.incomplete_root
    _cut_put(sftp_server, local, "/to-kela/r.xml.filepart", after=512 * 1024)
    sftp_server.wait_for(lambda: sftp_server.cuts)
    final = sftp_server.inbox("alpha") / "r.xml"
    t, sftp = sftp_server.paramiko_sftp("alpha")
    try:
        sftp.rename("/to-kela/r.xml.filepart", "/to-kela/r.xml")
        assert upload_incomplete(incomplete, "alpha", final)
        assert sftp_server.uploads == []  # a renamed fragment is not handed on either
        assert not upload_incomplete(incomplete, "alpha", "r.xml.filepart")
        # A whole file renamed over the fragment's name makes it complete.
        sftp.put(str(local), "/to-kela/r2.xml.filepart")
        sftp.posix_rename("/to-kela/r2.xml.filepart", "/to-kela/r.xml")
    finally:
        t.close()
    assert not upload_incomplete(incomplete, "alpha", final)
    assert final.read_bytes() == BODY
    assert sftp_server.uploads[-1] == ("alpha", final)


def test_marker_functions_without_a_server(tmp_path: Path) -> None:
    root = tmp_path / "var" / "incomplete"
    mark_incomplete(root, "beta", "x.xml", CUT)
    assert root.stat().st_mode & 0o777 == 0o700 and (root / "beta").stat().st_mode & 0o777 == 0o700
    long_name = "x" * 250 + ".xml"  # as long as a name gets: the marker still fits
    assert not upload_incomplete(tmp_path, "alpha", long_name)
    mark_incomplete(tmp_path, "alpha", Path("/inbox/alpha") / long_name, CUT, 7)
    assert upload_incomplete(tmp_path, "alpha", long_name)
    assert marker_path(tmp_path, "alpha", long_name).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "alpha").stat().st_mode & 0o777 == 0o700
    assert marker_state(tmp_path, "alpha", long_name) == CUT
    assert not upload_incomplete(tmp_path, "beta", long_name)
    assert clear_incomplete(tmp_path, "alpha", long_name)
    assert not upload_incomplete(tmp_path, "alpha", long_name)
    assert not clear_incomplete(tmp_path, "alpha", long_name)


def test_stale_fragments_are_purged(tmp_path: Path) -> None:
    incomplete, inbox = tmp_path / "incomplete", tmp_path / "inbox"
    (inbox / "alpha").mkdir(parents=True)
    for name in ("old.xml", "fresh.xml", "open.xml"):
        (inbox / "alpha" / name).write_bytes(b"<half")
        mark_incomplete(incomplete, "alpha", name, CUT, 5)
    (inbox / "alpha" / "whole.xml").write_bytes(b"<whole/>")  # no marker: not ours
    old = marker_path(incomplete, "alpha", "old.xml")
    os.utime(old, (old.stat().st_mtime - 7200,) * 2)
    opened = marker_path(incomplete, "alpha", "open.xml")
    os.utime(opened, (opened.stat().st_mtime - 7200,) * 2)
    now = old.stat().st_mtime + 7200
    removed = purge_incomplete(incomplete, inbox, 3600, now,
                               is_writing=lambda p: p.name == "open.xml")
    assert removed == [("alpha", "old.xml", 5)]
    assert not (inbox / "alpha" / "old.xml").exists()
    assert not upload_incomplete(incomplete, "alpha", "old.xml")
    assert sorted(n for _, n, _ in list_incomplete(incomplete)) == ["fresh.xml", "open.xml"]
    assert (inbox / "alpha" / "whole.xml").exists()


def test_an_upload_over_an_existing_name_is_a_new_file(sftp_server: Running) -> None:
    """The broker may be handling the old file: a truncating re-upload must not change
    its bytes under it, so the new upload gets a file (inode) of its own."""
    target = sftp_server.inbox("alpha") / "again.xml"
    t, sftp = sftp_server.paramiko_sftp("alpha")
    try:
        with sftp.open("/to-kela/again.xml", "w") as fh:
            fh.write(b"<first/>")
        held = target.open("rb")  # the broker reading the first upload
        first_ino = os.fstat(held.fileno()).st_ino
        with sftp.open("/to-kela/again.xml", "w") as fh:
            fh.write(b"<second, longer/>")
        assert held.read() == b"<first/>"  # what it reads did not change
        held.close()
        assert target.stat().st_ino != first_ino
        assert target.read_bytes() == b"<second, longer/>"
    finally:
        t.close()


def test_a_truncating_open_while_another_session_writes_the_name_is_refused(
        sftp_server: Running) -> None:
    t1, first = sftp_server.paramiko_sftp("alpha")
    t2, second = sftp_server.paramiko_sftp("alpha")
    try:
        fh = first.open("/to-kela/busy.xml", "w")
        fh.write(b"<still")
        fh.flush()
        with pytest.raises(OSError, match="another session is uploading it"):
            second.open("/to-kela/busy.xml", "w")
        fh.write(b"/>")
        fh.close()
        assert (sftp_server.inbox("alpha") / "busy.xml").read_bytes() == b"<still/>"
        with pytest.raises(OSError):  # exclusive create of an existing name still fails
            second.open("/to-kela/busy.xml", "x")
    finally:
        t1.close()
        t2.close()
