"""The embedded SFTP server against OpenSSH's sshd (internal-sftp), same machine, same run.

- Download and upload of a 500 MB file with the OpenSSH ``sftp`` client at its
  default settings (so its default cipher), best of 3, ours vs sshd.
  Target: at least half of OpenSSH's throughput (time ratio <= 2).
- Download per cipher (informational): why the server lists its ciphers in its order.
- Peak server RSS while paramiko downloads the 500 MB file with its default
  prefetch (many concurrent reads). Target: growth <= 50 MB.
- 1000 concurrent sessions (asyncssh clients), each downloading a 1 MB file:
  successes (target all, peak RSS <= 150 MB), wall time, peak server RSS.

Our server runs in its own process (``python -m bench.sftp_bench serve DIR``) so its
RSS is its own. sshd needs the openssh-server package (/usr/sbin/sshd); without it
the comparison rows say so. Standalone: ``python -m bench.sftp_bench``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import Row

SIZE_MB = 500
ORG = "alpha"
SESSIONS = 1000
RSS_LIMIT_MB = 150
SSHD = Path("/usr/sbin/sshd")
CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


# -- helpers --------------------------------------------------------------


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class _PeakRss:
    """Samples a process's RSS every 10 ms in a thread; ``peak`` is the maximum seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = _rss_mb(pid)
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss_mb(self.pid))

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb(self.pid))


def _keygen(path: Path) -> Path:
    if not path.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def _big_file(workdir: Path) -> Path:
    path = workdir / f"sftp_{SIZE_MB}mb.bin"
    if not path.exists() or path.stat().st_size != SIZE_MB * 1024**2:
        with open(path, "wb") as fh:
            for _ in range(SIZE_MB):
                fh.write(os.urandom(1024**2))
    return path


def _sftp(port: int, user: str, key: Path, commands: str, cipher: str | None = None) -> float:
    """Run the OpenSSH sftp client (defaults, except the cipher if given); seconds."""
    cmd = ["sftp", "-b", "-", "-i", str(key), "-P", str(port)]
    cmd += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    cmd += ["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR"]
    if cipher:
        cmd += ["-c", cipher]
    t0 = time.perf_counter()
    subprocess.run([*cmd, f"{user}@127.0.0.1"], input=commands, text=True, check=True,
                   capture_output=True)  # fmt: skip
    return time.perf_counter() - t0


def _best(n: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(n))


# -- the two servers ------------------------------------------------------


@contextmanager
def _our_server(root: Path, key: Path) -> Iterator[tuple[int, int]]:
    """Our server in a child process; yields (port, pid)."""
    (root / "keys" / ORG).mkdir(parents=True, exist_ok=True)
    shutil.copy(f"{key}.pub", root / "keys" / ORG / "authorized_keys")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.sftp_bench", "serve", str(root)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield port, proc.pid
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)


def _serve(root: Path) -> None:
    """Child process: run SftpService until stdin closes."""
    from adapters.sftp_limits import raise_nofile_limit
    from adapters.sftp_server import SftpOptions, SftpService

    options = SftpOptions(
        host="127.0.0.1",
        port=0,
        host_key_path=root / "host_key",
        keys_dir=root / "keys",
        outbox_dir=root / "outbox",
        inbox_dir=root / "inbox",
        retain_dir=root / "retain",
        organisations=frozenset({ORG}),
        max_sessions_per_org=SESSIONS + 50,
        max_upload_bytes=2 * SIZE_MB * 1024**2,
        # One client address logs in SESSIONS times at once: the per-address cap that
        # protects the daemon would (rightly) refuse most of this storm.
        max_unauthenticated=SESSIONS + 50,
        max_unauthenticated_per_address=SESSIONS + 50,
        max_sessions_total=SESSIONS + 50,
        max_handles_per_session=4,
    )

    raise_nofile_limit()

    async def main() -> None:
        service = SftpService(options, lambda e: None)
        port = await service.start()
        print(port, flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)
        await service.stop()

    asyncio.run(main())


@contextmanager
def _sshd(root: Path, key: Path) -> Iterator[int | None]:
    """OpenSSH sshd with internal-sftp on a free port; yields None if not installed."""
    if not SSHD.exists():
        yield None
        return
    import socket

    root.mkdir(parents=True, exist_ok=True)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    host_key = root / "sshd_host_key"
    _keygen(host_key)
    shutil.copy(f"{key}.pub", root / "authorized_keys")
    (root / "authorized_keys").chmod(0o600)
    config = root / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nPidFile {root / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nPermitRootLogin prohibit-password\n"
        "Subsystem sftp internal-sftp\nForceCommand internal-sftp\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


# -- measurements ---------------------------------------------------------


def _paramiko_rss(port: int, pid: int, key: Path) -> tuple[float, float]:
    """Server RSS (start, peak) while paramiko downloads with default prefetch."""
    import paramiko

    class _Null:
        def write(self, data: bytes) -> int:
            return len(data)

    t = paramiko.Transport(("127.0.0.1", port))
    t.connect(username=ORG, pkey=paramiko.Ed25519Key.from_private_key_file(str(key)))
    try:
        client = paramiko.SFTPClient.from_transport(t)
        assert client is not None
        with _PeakRss(pid) as rss:
            client.getfo(f"/from-kela/sftp_{SIZE_MB}mb.bin", _Null())  # type: ignore[arg-type]
        return rss.start, rss.peak
    finally:
        t.close()


async def _many_sessions(port: int, key: Path, n: int) -> int:
    import asyncssh

    client_key = asyncssh.read_private_key(str(key))

    async def one() -> bool:
        try:
            async with asyncssh.connect(
                "127.0.0.1", port, username=ORG, client_keys=[client_key], known_hosts=None,
                connect_timeout=120,
            ) as conn, conn.start_sftp_client() as sftp:  # fmt: skip
                async with sftp.open("/from-kela/one_mb.bin", "rb") as fh:
                    data = await fh.read()
                return len(data) == 1024**2
        except (OSError, asyncssh.Error):
            return False

    results = await asyncio.gather(*(one() for _ in range(n)))
    return sum(results)


def _row(name: str, ours: float, base: float | None, what: str,
         target: float | None = 0.9) -> Row:
    """A timing row; the ratio is speed (sshd's time / ours): 1.00x = as fast as sshd."""
    mbps = SIZE_MB * 1.048576 / ours
    text = f"{ours:.2f} s ({mbps:.0f} MB/s)"
    want = "info" if target is None else f">= {target:.2f}x sshd"
    if base is None:
        return Row(name, text, "sshd not installed", None, want, None)
    base_text = f"{base:.2f} s ({SIZE_MB * 1.048576 / base:.0f} MB/s)"
    ratio = base / ours
    ok = None if target is None else ratio >= target
    return Row(name, text, f"OpenSSH {what}: {base_text}", ratio, want, ok)


def run(workdir: Path) -> list[Row]:
    from adapters.sftp_limits import raise_nofile_limit

    raise_nofile_limit()  # this process holds SESSIONS client connections at once
    big = _big_file(workdir)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = Path(tmp)
        key = _keygen(root / "client_key")
        ours_root = root / "ours"
        outbox = ours_root / "outbox" / ORG
        outbox.mkdir(parents=True)
        os.link(big, outbox / big.name)
        (outbox / "one_mb.bin").write_bytes(os.urandom(1024**2))
        user = os.environ.get("USER") or "root"
        get = f"get /from-kela/{big.name} /dev/null\n"
        with _our_server(ours_root, key) as (port, pid), _sshd(root / "sshd", key) as sshd:
            base_get = f"get {big} /dev/null\n"
            base_put = f"put {big} {root / 'sshd' / 'up.bin'}\n"
            # One untimed get each first: the file into the page cache, both servers warm.
            _sftp(port, ORG, key, get)
            if sshd:
                _sftp(sshd, user, key, base_get)
            ours_dl = _best(3, lambda: _sftp(port, ORG, key, get))
            base_dl = _best(3, lambda: _sftp(sshd, user, key, base_get)) if sshd else None
            rows.append(_row("SFTP download 500 MB, sftp defaults", ours_dl, base_dl, "sshd"))
            # Uploads stay in to-kela (no delete there): remove between runs ourselves.
            put = f"put {big} /to-kela/up.bin\n"
            (root / "sshd").mkdir(exist_ok=True)

            def ours_put() -> float:
                secs = _sftp(port, ORG, key, put)
                (ours_root / "inbox" / ORG / "up.bin").unlink()
                return secs

            ours_up = _best(3, ours_put)
            base_up = _best(3, lambda: _sftp(sshd, user, key, base_put)) if sshd else None
            rows.append(_row("SFTP upload 500 MB, sftp defaults", ours_up, base_up, "sshd"))
            for cipher in CIPHERS:
                ours_c = _best(2, lambda c=cipher: _sftp(port, ORG, key, get, c))  # type: ignore[misc]
                base_c = (
                    _best(2, lambda c=cipher: _sftp(sshd, user, key, base_get, c))  # type: ignore[misc]
                    if sshd
                    else None
                )
                rows.append(_row(f"SFTP download 500 MB, -c {cipher}", ours_c, base_c, "sshd",
                                 target=None))
            start, peak = _paramiko_rss(port, pid, key)
            rows.append(
                Row(
                    "server RSS growth, paramiko 500 MB download (default prefetch)",
                    f"+{peak - start:.0f} MB (peak {peak:.0f} MB)",
                    target="<= 50 MB",
                    ok=peak - start <= 50,
                )
            )
            with _PeakRss(pid) as rss:
                t0 = time.perf_counter()
                ok = asyncio.run(_many_sessions(port, key, SESSIONS))
                secs = time.perf_counter() - t0
            rows.append(
                Row(
                    f"{SESSIONS} concurrent sessions x 1 MB download",
                    f"{ok}/{SESSIONS} ok in {secs:.1f} s, server RSS {rss.start:.0f} -> "
                    f"peak {rss.peak:.0f} MB",
                    target=f"{SESSIONS}/{SESSIONS}, peak <= {RSS_LIMIT_MB} MB",
                    ok=ok == SESSIONS and rss.peak <= RSS_LIMIT_MB,
                )
            )
    return rows


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        _serve(Path(sys.argv[2]))
        return 0
    workdir = Path(__file__).resolve().parent / "out"
    workdir.mkdir(exist_ok=True)
    for row in run(workdir):
        ratio = "" if row.ratio is None else f"  ratio {row.ratio:.2f}x"
        verdict = "" if row.ok is None else ("  PASS" if row.ok else "  FAIL")
        print(f"{row.benchmark}: {row.ours}  | {row.baseline}{ratio}  target {row.target}{verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
