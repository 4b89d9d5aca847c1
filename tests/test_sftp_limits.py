"""Resource limits: no client exhausts the daemon's descriptors (issue 11).

The flood tests run the server in its own process with a low open-file limit
(tests/sftp_serve.py), hold 300 idle TCP connections against it and still log
in and download with a real paramiko client.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import paramiko
import pytest
from daemon_support import keygen
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.sftp_base import Coverage
from adapters.sftp_limits import (
    MAX_SFTP_CHANNELS,
    RESERVED_DESCRIPTORS,
    ConnectionGate,
    DescriptorBudgetError,
    UploadQuota,
    check_descriptor_budget,
    descriptor_budget,
)
from adapters.sftp_server import SftpOptions

if TYPE_CHECKING:
    from sftp_support import Running

pytest_plugins = ("sftp_support",)

ROOT = Path(__file__).resolve().parent.parent
HARD_LIMIT = 400
CAPS = {"max_unauthenticated": 40, "max_unauthenticated_per_address": 10,
        "max_sessions_total": 80, "max_handles_per_session": 4}
BODY = os.urandom(2 * 1024 * 1024 + 3)


@dataclass
class Served:
    port: int
    pid: int
    limit: int
    key: Path
    events: Path

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


def _low_limit() -> None:  # in the child, before exec: soft 100, hard 400
    resource.setrlimit(resource.RLIMIT_NOFILE, (100, HARD_LIMIT))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    key = keygen(tmp_path / "alpha_id")
    (tmp_path / "keys" / "alpha").mkdir(parents=True)
    (tmp_path / "keys" / "alpha" / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
    (tmp_path / "outbox" / "alpha").mkdir(parents=True)
    (tmp_path / "outbox" / "alpha" / "d.xml").write_bytes(BODY)
    options = {
        "host": "127.0.0.1", "port": 0, "host_key_path": str(tmp_path / "hostkey"),
        "keys_dir": str(tmp_path / "keys"), "outbox_dir": str(tmp_path / "outbox"),
        "inbox_dir": str(tmp_path / "inbox"), "retain_dir": str(tmp_path / "retain"),
        "incomplete_dir": str(tmp_path / "incomplete"), "organisations": ["alpha"],
        "login_grace": 60, "events": str(tmp_path / "events.jsonl"), **CAPS,
    }
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "sftp_serve.py"), json.dumps(options)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=_low_limit,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        yield Served(ready["port"], proc.pid, ready["limit"], key, tmp_path / "events.jsonl")
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _connect_from(address: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((address, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def _idle(port: int, addresses: list[str], count: int) -> list[socket.socket]:
    socks = []
    for i in range(count):
        sock = _connect_from(addresses[i % len(addresses)], port)
        if i % 3 == 0:
            # A banner, then nothing; the rest: nothing at all. The server may have
            # refused the connection already (a reset): that is what it is for.
            with contextlib.suppress(OSError):
                sock.sendall(b"SSH-2.0-idle\r\n")
        socks.append(sock)
    return socks


def _closed_by_server(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        while True:
            if sock.recv(65536) == b"":
                return True
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def _login_and_download(served: Served, address: str) -> bytes:
    t = paramiko.Transport(_connect_from(address, served.port))
    try:
        t.connect(username="alpha", pkey=paramiko.Ed25519Key.from_private_key_file(str(served.key)))
        sftp = paramiko.SFTPClient.from_transport(t)
        assert sftp is not None
        out = io.BytesIO()
        sftp.getfo("/from-kela/d.xml", out)
        return out.getvalue()
    finally:
        t.close()


def _wait(cond: Callable[[], bool], timeout: float = 15) -> bool:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("spread", [1, 30], ids=["one-address", "thirty-addresses"])
def test_idle_connections_neither_exhaust_descriptors_nor_keep_logins_out(
    served: Served, spread: int
) -> None:
    assert served.limit == HARD_LIMIT  # the server raised its soft limit to the hard one
    baseline = served.open_fds()
    addresses = [f"127.0.0.{2 + i}" for i in range(spread)]
    socks = _idle(served.port, addresses, 300)
    try:
        # Everything beyond the caps is closed by the server: it holds at most the cap.
        bound = baseline + CAPS["max_unauthenticated"] + 2
        closed: set[int] = set()

        def settled() -> bool:
            # The server accepts at its own pace: wait until it has seen them all.
            closed.update(i for i, s in enumerate(socks) if i in closed or _closed_by_server(s))
            return len(closed) >= 300 - CAPS["max_unauthenticated"]

        assert _wait(settled), len(closed)
        assert _wait(lambda: served.open_fds() <= bound), (served.open_fds(), bound)
        # An organisation still logs in and downloads, from an address of its own.
        assert hashlib.sha256(_login_and_download(served, "127.0.0.200")).digest() == \
            hashlib.sha256(BODY).digest()
        assert served.open_fds() <= bound
    finally:
        for s in socks:
            s.close()
    events = [json.loads(line) for line in served.events.read_text().splitlines()]
    assert [e["action"] for e in events if e["action"] in ("login", "download")] == \
        ["login", "download"]
    # Idle connections cut by the gate are not failed logins: nothing was banned.
    assert not [e for e in events if e["action"] in ("ban", "login_failed")]


def test_handles_per_session_are_capped(start_sftp: Callable[..., Running]) -> None:
    running = start_sftp(max_handles_per_session=3)
    for i in range(4):
        (running.outbox("alpha") / f"f{i}.xml").write_bytes(b"<x/>")
    t, sftp = running.paramiko_sftp("alpha")
    try:
        handles = [sftp.open(f"/from-kela/f{i}.xml") for i in range(3)]
        with pytest.raises(OSError, match="too many open files in this session"):
            sftp.open("/from-kela/f3.xml")
        with pytest.raises(OSError, match="too many open files in this session"):
            sftp.open("/to-kela/up.xml", "w")
        assert not (running.inbox("alpha") / "up.xml").exists()
        handles[0].close()
        with sftp.open("/from-kela/f3.xml") as fh:  # a closed handle frees its slot
            assert fh.read() == b"<x/>"
        # Another connection of the same organisation has slots of its own.
        t2, sftp2 = running.paramiko_sftp("alpha")
        try:
            with sftp2.open("/from-kela/f0.xml") as fh:
                assert fh.read() == b"<x/>"
        finally:
            t2.close()
    finally:
        t.close()
    # Every slot is given back when the connection ends with handles open.
    assert running.wait_for(lambda: running.service.handle_pool.in_use == 0)


def test_server_wide_handle_pool(start_sftp: Callable[..., Running]) -> None:
    running = start_sftp()
    (running.outbox("alpha") / "f.xml").write_bytes(b"<x/>")
    assert running.service.handle_pool.total > 0  # sized from the open-file limit at start
    running.service.handle_pool.total = 2  # as if the descriptors were nearly all in use
    t, sftp = running.paramiko_sftp("alpha")
    try:
        a, b = sftp.open("/from-kela/f.xml"), sftp.open("/from-kela/f.xml")
        with pytest.raises(OSError, match="server busy"):
            sftp.open("/from-kela/f.xml")
        a.close()
        b.close()
        sftp.open("/from-kela/f.xml").close()
    finally:
        t.close()


def test_total_sessions_are_capped(start_sftp: Callable[..., Running]) -> None:
    running = start_sftp(max_sessions_total=2)
    first, second = running.transport("alpha"), running.transport("beta")
    try:
        with pytest.raises(Exception):  # noqa: B017 - disconnected after auth
            third = running.transport("alpha")
            paramiko.SFTPClient.from_transport(third)
        refused = running.wait_for(lambda: running.actions("session_refused"))
        assert refused[0].detail is not None and "on this server" in refused[0].detail
        second.close()
        assert running.wait_for(lambda: len(running.actions("logout")) >= 1)
        fourth = running.transport("beta")
        assert paramiko.SFTPClient.from_transport(fourth) is not None
        fourth.close()
    finally:
        first.close()
        second.close()
    assert not running.actions("ban")


def test_upload_quota_per_organisation(start_sftp: Callable[..., Running]) -> None:
    running = start_sftp(upload_quota_bytes=1_000_000)
    t, sftp = running.paramiko_sftp("alpha")
    try:
        sftp.putfo(io.BytesIO(b"a" * 600_000), "/to-kela/one.xml")
        with pytest.raises(OSError, match="upload quota of 1000000 bytes"), \
                sftp.open("/to-kela/two.xml", "w") as fh:
            fh.write(b"b" * 600_000)
        # Over the quota: discarded at close, never handed on, recorded.
        assert not (running.inbox("alpha") / "two.xml").exists()
        assert running.uploads == [("alpha", running.inbox("alpha") / "one.xml")]
        (rejected,) = running.wait_for(lambda: running.actions("upload_rejected"))
        assert rejected.detail is not None and "quota" in rejected.detail
        # Another organisation has its own quota.
        t2, sftp2 = running.paramiko_sftp("beta")
        try:
            sftp2.putfo(io.BytesIO(b"c" * 600_000), "/to-kela/b.xml")
        finally:
            t2.close()
        # Once the broker has taken the waiting file, the same upload fits.
        (running.inbox("alpha") / "one.xml").unlink()
        sftp.putfo(io.BytesIO(b"b" * 600_000), "/to-kela/two.xml")
        assert (running.inbox("alpha") / "two.xml").stat().st_size == 600_000
    finally:
        t.close()


def test_quota_tally(tmp_path: Path) -> None:
    (tmp_path / "alpha").mkdir()
    (tmp_path / "alpha" / "waiting.xml").write_bytes(b"x" * 400)
    quota = UploadQuota(1000, tmp_path)
    assert quota.refresh("alpha") == 400
    assert quota.grow("alpha", 500)
    (tmp_path / "alpha" / "new.xml").write_bytes(b"y" * 500)  # what the grant was for
    assert not quota.grow("alpha", 200)  # 400 + 500 + 200 > 1000
    (tmp_path / "alpha" / "waiting.xml").unlink()  # processed: the next check lists again
    assert quota.grow("alpha", 200)
    assert UploadQuota(0, tmp_path).grow("alpha", 10**12)  # 0: no quota


def test_gate_caps_per_address_and_evicts_the_heaviest_when_full() -> None:
    gate: ConnectionGate[str] = ConnectionGate(total=4, per_address=2)
    assert gate.admit("a", "a1") == (None, None)
    assert gate.admit("a", "a2") == (None, None)
    assert gate.admit("a", "a3")[0] is not None  # third from one address: refused
    assert gate.admit("b", "b1") == (None, None)
    assert gate.admit("c", "c1") == (None, None)
    # Full: a newcomer gets in, the oldest of the address holding most goes.
    assert gate.admit("d", "d1") == (None, "a1")
    assert gate.waiting == 4
    gate.leave("a", "a1")  # the evicted connection's own goodbye changes nothing
    assert gate.waiting == 4
    gate.leave("d", "d1")
    assert gate.waiting == 3 and gate.admit("a", "a4") == (None, None)


def _options(tmp: Path, **caps: int) -> SftpOptions:
    return SftpOptions(host="127.0.0.1", port=0, host_key_path=tmp / "k", keys_dir=tmp,
                       outbox_dir=tmp, inbox_dir=tmp, retain_dir=tmp,
                       organisations=frozenset(), **caps)  # type: ignore[arg-type]


def test_descriptor_budget(tmp_path: Path) -> None:
    defaults = _options(tmp_path)
    budget = descriptor_budget(defaults, limit=1_048_576)
    assert budget.connections_fit and budget.handles_fit
    assert budget.handle_pool == 1_048_576 - RESERVED_DESCRIPTORS - 1100
    # Handles overbooked: allowed, the server-wide pool holds the line.
    tight = check_descriptor_budget(defaults, limit=20_000)
    assert not tight.handles_fit and tight.handle_pool == 20_000 - RESERVED_DESCRIPTORS - 1100
    # The connections themselves do not fit: a clear error naming the setting.
    with pytest.raises(DescriptorBudgetError, match="max_sessions_total") as err:
        check_descriptor_budget(defaults, limit=1024)
    assert err.value.key == "sftp.max_sessions_total"
    assert "1024" in str(err.value)


def test_server_refuses_to_start_with_caps_beyond_the_limit(
    start_sftp: Callable[..., Running]
) -> None:
    with pytest.raises(DescriptorBudgetError):
        start_sftp(max_sessions_total=resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def test_sftp_channels_per_connection_are_capped(sftp_server: Running) -> None:
    t = sftp_server.transport("alpha")
    try:
        clients = [paramiko.SFTPClient.from_transport(t) for _ in range(MAX_SFTP_CHANNELS)]
        assert all(c is not None and c.listdir("/") for c in clients)
        clients[0].close()  # type: ignore[union-attr]
        time.sleep(0.2)
        again = paramiko.SFTPClient.from_transport(t)  # a closed channel frees its place
        assert again is not None and again.listdir("/") == ["from-kela", "to-kela"]
        with pytest.raises((EOFError, paramiko.SSHException, OSError)):
            extra = paramiko.SFTPClient.from_transport(t)  # one more: the connection ends
            assert extra is not None
            extra.listdir("/")
        assert sftp_server.wait_for(lambda: not t.is_active())
    finally:
        t.close()
    (logout,) = sftp_server.wait_for(lambda: sftp_server.actions("logout"))
    assert logout.detail is not None and "too many SFTP channels" in logout.detail


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 700)), max_size=60))
def test_coverage_counts_each_byte_once(reads: list[tuple[int, int]]) -> None:
    """Read offsets and sizes come from the client: any order, overlaps, repeats."""
    coverage = Coverage()
    seen: set[int] = set()
    for offset, size in reads:
        coverage.add(offset, offset + size)
        seen.update(range(offset, offset + size))
    assert coverage.total == len(seen)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5), st.integers(0, 30)), max_size=80))
def test_gate_never_exceeds_its_caps(ops: list[tuple[bool, int, int]]) -> None:
    gate: ConnectionGate[int] = ConnectionGate(total=6, per_address=3)
    inside: dict[int, str] = {}
    for arrive, addr, conn in ops:
        address = f"10.0.0.{addr}"
        if arrive and conn not in inside:
            refused, evicted = gate.admit(address, conn)
            if evicted is not None:
                del inside[evicted]
            if refused is None:
                inside[conn] = address
        elif not arrive and conn in inside:
            gate.leave(inside.pop(conn), conn)
        assert gate.waiting == len(inside) <= 6
        assert all(list(inside.values()).count(a) <= 3 for a in inside.values())
