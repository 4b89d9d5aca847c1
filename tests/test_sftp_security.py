"""The SFTP server refuses everything outside an organisation's two folders.

Every refusal is checked for its SFTP status (as the client maps it) and for the
session staying usable afterwards.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import paramiko
import pytest

if TYPE_CHECKING:
    from sftp_support import Running

# The server fixtures (sftp_server, start_sftp) live in tests/sftp_support.py; imported
# as a plugin (not with `import`) so that pytest rewrites its asserts.
pytest_plugins = ("sftp_support",)


@pytest.fixture
def alpha(sftp_server: Running) -> Iterator[paramiko.SFTPClient]:
    (sftp_server.outbox("alpha") / "mine.xml").write_bytes(b"<mine/>")
    (sftp_server.outbox("beta") / "secret.xml").write_bytes(b"<beta-secret/>")
    t, client = sftp_server.paramiko_sftp("alpha")
    try:
        yield client
    finally:
        t.close()


def still_usable(client: paramiko.SFTPClient) -> None:
    assert sorted(client.listdir("/from-kela")) == ["acks", "mine.xml"]
    with client.open("/from-kela/mine.xml") as fh:
        assert fh.read() == b"<mine/>"


@pytest.mark.parametrize(
    "path",
    [
        "/etc/passwd",
        "../../../../etc/passwd",
        "/from-kela/../../../etc/passwd",
        "/from-kela/../beta/secret.xml",
        "/beta/secret.xml",
        "/from-kela/../../beta/secret.xml",
        "/from-kela/../../outbox/beta/secret.xml",
        "from-kela/../../../outbox/beta/secret.xml",
        "//from-kela/../../beta/secret.xml",
    ],
)
def test_paths_outside_the_root_do_not_exist(alpha: paramiko.SFTPClient, path: str) -> None:
    with pytest.raises(FileNotFoundError):
        alpha.open(path)
    with pytest.raises(FileNotFoundError):
        alpha.stat(path)
    still_usable(alpha)


def test_other_organisation_folder_cannot_be_listed(alpha: paramiko.SFTPClient) -> None:
    for path in ("/beta", "/from-kela/../beta", "/../beta", "/outbox/beta"):
        with pytest.raises(FileNotFoundError):
            alpha.listdir(path)
    still_usable(alpha)


def test_symlink_creation_refused(sftp_server: Running, alpha: paramiko.SFTPClient) -> None:
    for target, link in (("/etc/passwd", "/to-kela/l"), ("/from-kela/mine.xml", "/to-kela/l2")):
        with pytest.raises(PermissionError):
            alpha.symlink(target, link)
    assert os.listdir(sftp_server.inbox("alpha")) == []
    still_usable(alpha)


def test_symlinks_planted_on_disk_are_not_followed(
    sftp_server: Running, alpha: paramiko.SFTPClient
) -> None:
    outbox = sftp_server.outbox("alpha")
    (outbox / "passwd.xml").symlink_to("/etc/passwd")
    (outbox / "beta-files").symlink_to(sftp_server.outbox("beta"))
    (outbox / "inside.xml").symlink_to(outbox / "mine.xml")  # even inside the root
    for path in (
        "/from-kela/passwd.xml",
        "/from-kela/beta-files/secret.xml",
        "/from-kela/inside.xml",
    ):
        with pytest.raises(PermissionError):
            alpha.open(path)
        with pytest.raises(PermissionError):
            alpha.stat(path)
    with pytest.raises(PermissionError):
        alpha.listdir("/from-kela/beta-files")
    with pytest.raises(PermissionError):
        alpha.remove("/from-kela/passwd.xml")
    still_usable(alpha)  # and the listing does not show the links


def test_symlinked_organisation_root_is_refused(sftp_server: Running) -> None:
    inbox = sftp_server.inbox("alpha")
    inbox.rmdir()
    inbox.symlink_to(sftp_server.inbox("beta"))
    t, client = sftp_server.paramiko_sftp("alpha")
    try:
        with pytest.raises(PermissionError):
            client.listdir("/to-kela")
        with pytest.raises(PermissionError):
            client.putfo(io.BytesIO(b"x"), "/to-kela/x.xml")
        assert os.listdir(sftp_server.inbox("beta")) == []
    finally:
        t.close()


def test_from_kela_is_read_only(sftp_server: Running, alpha: paramiko.SFTPClient) -> None:
    with pytest.raises(PermissionError):
        alpha.putfo(io.BytesIO(b"<x/>"), "/from-kela/new.xml")
    with pytest.raises(PermissionError):
        alpha.open("/from-kela/mine.xml", "r+")
    with pytest.raises(PermissionError):
        alpha.open("/from-kela/mine.xml", "a")
    with pytest.raises(PermissionError):
        alpha.mkdir("/from-kela/dir")
    with pytest.raises(PermissionError):
        alpha.rename("/from-kela/mine.xml", "/from-kela/other.xml")
    with pytest.raises(PermissionError):
        alpha.rename("/from-kela/mine.xml", "/to-kela/mine.xml")
    with pytest.raises(PermissionError):
        alpha.chmod("/from-kela/mine.xml", 0o777)
    with pytest.raises(PermissionError):
        alpha.rmdir("/from-kela/acks")
    assert sorted(os.listdir(sftp_server.outbox("alpha"))) == ["acks", "mine.xml"]
    still_usable(alpha)


def test_to_kela_is_write_only(sftp_server: Running, alpha: paramiko.SFTPClient) -> None:
    alpha.putfo(io.BytesIO(b"<response/>"), "/to-kela/r.xml")
    with pytest.raises(PermissionError):
        alpha.open("/to-kela/r.xml", "r")
    with pytest.raises(PermissionError):
        alpha.open("/to-kela/r.xml", "r+")
    with pytest.raises(PermissionError):
        alpha.remove("/to-kela/r.xml")
    with pytest.raises(PermissionError):
        alpha.mkdir("/to-kela/sub")
    with pytest.raises(PermissionError):
        alpha.putfo(io.BytesIO(b"x"), "/to-kela/sub/x.xml")
    with pytest.raises(PermissionError):
        alpha.rename("/to-kela/r.xml", "/from-kela/r.xml")
    with pytest.raises(FileNotFoundError):
        alpha.putfo(io.BytesIO(b"x"), "/new.xml")
    with pytest.raises(PermissionError):
        alpha.mkdir("/new")
    assert (sftp_server.inbox("alpha") / "r.xml").read_bytes() == b"<response/>"
    still_usable(alpha)


def test_openssh_client_refusals_keep_the_session(sftp_server: Running) -> None:
    (sftp_server.outbox("alpha") / "mine.xml").write_bytes(b"<mine/>")
    (sftp_server.tmp / "up.xml").write_bytes(b"<up/>")
    result = sftp_server.sftp(
        "alpha",
        [
            "-get /etc/passwd",
            "-get ../../etc/passwd",
            "-ls /beta",
            "-put up.xml /from-kela/up.xml",
            "-mkdir /to-kela/d",
            "-ln -s /etc/passwd /to-kela/l",
            "put up.xml /to-kela/up.xml",
            "-get /to-kela/up.xml",
            "-rm /to-kela/up.xml",
            "get /from-kela/mine.xml mine.xml",
        ],
    )
    assert result.returncode == 0, result.stderr
    err = result.stderr
    assert 'File "/etc/passwd" not found' in err
    assert 'Can\'t ls: "/beta" not found' in err
    assert err.count("Permission denied") == 5
    assert (sftp_server.tmp / "mine.xml").read_bytes() == b"<mine/>"
    assert not (sftp_server.tmp / "passwd").exists()


# -- authentication ------------------------------------------------------


def test_password_login_refused(sftp_server: Running) -> None:
    for attempt in (
        lambda t: t.auth_password("alpha", "alpha"),
        lambda t: t.auth_interactive_dumb("alpha"),
    ):
        t = paramiko.Transport(("127.0.0.1", sftp_server.port))
        try:
            t.start_client(timeout=10)
            with pytest.raises(paramiko.BadAuthenticationType) as info:
                attempt(t)
            assert info.value.allowed_types == ["publickey"]
        finally:
            t.close()
    result = sftp_server.sftp("alpha", ["ls /"], key=sftp_server.tmp / "no-such-key")
    assert result.returncode != 0
    assert "Permission denied (publickey)" in result.stderr


def test_unknown_user_and_wrong_key_refused(sftp_server: Running) -> None:
    with pytest.raises(paramiko.AuthenticationException):
        sftp_server.transport("gamma", key=sftp_server.keys["alpha"])
    with pytest.raises(paramiko.AuthenticationException):
        sftp_server.transport("beta", key=sftp_server.keys["alpha"])  # alpha's key is not beta's
    assert sftp_server.sftp("beta", ["ls /"], key=sftp_server.keys["alpha"]).returncode != 0
    # The server records a failed login when the connection closes: wait for all three.
    deadline = time.monotonic() + 10
    while len(sftp_server.actions("login_failed")) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    failed = sftp_server.actions("login_failed")
    assert len(failed) == 3
    # Closes can race, so compare without order.
    assert sorted(str(e.org) for e in failed) == ["None", "beta", "beta"]
    assert any(e.org is None and e.detail == "user 'gamma'" for e in failed)


def test_exec_shell_subsystems_and_forwarding_refused(sftp_server: Running) -> None:
    t = sftp_server.transport("alpha")
    try:
        for request in (
            lambda ch: ch.exec_command("id"),
            lambda ch: ch.invoke_shell(),
            lambda ch: ch.invoke_subsystem("netconf"),
        ):  # (legacy scp is served, inside the jail: tests/test_clients.py)
            chan = t.open_session()
            with pytest.raises(paramiko.SSHException):
                request(chan)
            chan.close()
        chan = t.open_session()
        with pytest.raises(paramiko.SSHException):
            chan.get_pty()
        chan.close()
        with pytest.raises(paramiko.ChannelException):
            t.open_channel("direct-tcpip", ("127.0.0.1", 22), ("127.0.0.1", 5000))
        with pytest.raises(paramiko.SSHException):
            t.request_port_forward("127.0.0.1", 0)
        # SFTP on the same connection still works.
        client = paramiko.SFTPClient.from_transport(t)
        assert client is not None and sorted(client.listdir("/")) == ["from-kela", "to-kela"]
    finally:
        t.close()


def test_openssh_exec_refused(sftp_server: Running) -> None:
    result = subprocess.run(
        [
            "ssh", "-i", str(sftp_server.keys["alpha"]), "-p", str(sftp_server.port),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "alpha@127.0.0.1", "cat /etc/passwd",
        ],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode != 0
    assert "root:" not in result.stdout


def _banned(running: Running) -> bool:
    try:
        running.transport("alpha").close()
    except (paramiko.SSHException, EOFError, OSError):
        return True
    return False


def test_ban_after_failed_logins(start_sftp: Callable[..., Running]) -> None:
    running = start_sftp(ban_after_failures=3, ban_window=60, ban_seconds=2)
    stranger = running.keygen(running.tmp / "stranger")
    for _ in range(3):
        with pytest.raises(paramiko.AuthenticationException):
            running.transport("alpha", key=stranger)
    deadline = time.monotonic() + 10
    while not running.actions("ban") and time.monotonic() < deadline:
        time.sleep(0.05)
    (ban,) = running.actions("ban")
    assert ban.address == "127.0.0.1"
    # Even the right key is refused from a banned address...
    assert _banned(running)
    # ...until the ban expires.
    deadline = time.monotonic() + 15
    while _banned(running) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _banned(running)


def test_unauthenticated_connection_closed_after_login_grace(
    start_sftp: Callable[..., Running],
) -> None:
    running = start_sftp(login_grace=1)
    with socket.create_connection(("127.0.0.1", running.port), timeout=15) as sock:
        banner = sock.recv(100)
        assert banner.startswith(b"SSH-2.0-")
        sock.settimeout(15)
        data = b"x"
        while data:  # the server closes the connection: recv returns b""
            data = sock.recv(4096)
    # Not a failed login (no user name was tried), so it never leads to a ban.
    assert running.actions("login_failed") == []


def _ssh_audit() -> str | None:
    exe = Path(sys.executable).parent / "ssh-audit"
    return str(exe) if exe.exists() else shutil.which("ssh-audit")


@pytest.mark.skipif(_ssh_audit() is None, reason="ssh-audit not installed (pip install ssh-audit)")
def test_ssh_audit_has_no_failures_or_warnings(sftp_server: Running) -> None:
    exe = _ssh_audit()
    assert exe is not None
    result = subprocess.run(
        [exe, "--json", "--skip-rate-test", "-p", str(sftp_server.port), "127.0.0.1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    report = json.loads(result.stdout)
    problems = []
    for section in ("kex", "key", "enc", "mac"):
        for alg in report[section]:
            notes = alg.get("notes", {})
            if notes.get("fail"):
                problems.append(f"{section} {alg['algorithm']}: fail {notes['fail']}")
            for warn in notes.get("warn", []):
                # The one accepted warning: classical curve25519 next to the PQ hybrid.
                if alg["algorithm"].startswith("curve25519") and "post-quantum" in warn:
                    continue
                problems.append(f"{section} {alg['algorithm']}: warn {warn}")
    assert problems == []
    assert report["cves"] == []
    assert report["recommendations"] == {} or not any(
        report["recommendations"].get(level) for level in ("critical", "warning")
    )
    assert [a["algorithm"] for a in report["key"]] == ["ssh-ed25519"]
    kex = [a["algorithm"] for a in report["kex"]]
    assert "kex-strict-s-v00@openssh.com" in kex
    assert any(("mlkem" in k or "sntrup" in k) for k in kex)
