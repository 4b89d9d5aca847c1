"""A throwaway PostgreSQL cluster for the tests: initdb into a temp folder, start, stop, remove.

No running service is needed, only the server's programs (``initdb``, ``pg_ctl``, ``postgres``;
Debian's ``postgresql`` package, which ``make postgres`` installs when run as root)::

    with start_cluster() as pg:
        url = pg.create_database("broker")  # postgresql+psycopg://postgres@127.0.0.1:PORT/broker

The cluster listens on 127.0.0.1 only, on a free port, with its unix socket inside its own temp
folder, and trusts every local connection (superuser ``postgres``, no password). It is tuned for
speed, not safety: ``fsync``, ``synchronous_commit`` and ``full_page_writes`` are off, so a crash
of the machine (not of a PostgreSQL process) could corrupt it. That is fine for data that is
thrown away after the test run; never copy these settings to a real database.

PostgreSQL refuses to run as root. When the tests run as root (as CI does here), the server's
programs run as the ``postgres`` system user that Debian's package creates, and the temp folder
is made where that user can reach it (pytest's own temp folders are 0700 root) and given to it.
The clients (``psql``, ``createdb``, ``dropdb``) run as the current user; they do not mind root.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

SUPERUSER = "postgres"  # created by initdb -U; also the system user the server runs as under root
SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")
PORT_TRIES = 5  # a free port can be taken between picking it and the server binding it

# Appended to the cluster's postgresql.conf. The port is given on the command line instead,
# since it changes if a start is retried.
SETTINGS = """
# --- kela-file-broker tests: a throwaway cluster, see tests/pg_cluster.py ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '{socket_dir}'
max_connections = 200          # several daemons, each with its own pool, plus the tests
# Durability off: faster commits and checkpoints; safe only because the data is thrown away.
fsync = off
synchronous_commit = off
full_page_writes = off
"""


def find_pg_bin() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres, or None if PostgreSQL is not installed.

    PATH first, with symlinks resolved (``/usr/local/bin/initdb`` may point into
    ``/usr/lib/postgresql/15/bin``, and pg_ctl and postgres live beside the target, not the
    link); then the newest ``/usr/lib/postgresql/*/bin`` (Debian puts no initdb on PATH).
    """
    candidates: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)

    def version(bin_dir: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", bin_dir.parent.name))

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for bin_dir in candidates:
        if all(os.access(bin_dir / name, os.X_OK) for name in SERVER_PROGRAMS):
            return bin_dir
    return None


@dataclass(eq=False)  # compared and hashed by identity: kept in the _LIVE set
class Cluster:
    """A running throwaway cluster; ``stop()`` (or leaving its ``with`` block) removes it."""

    port: int
    datadir: Path
    bin_dir: Path
    root: Path  # the temp folder: datadir, the unix socket and the server log are inside
    run_as: str | None = None  # system user the server programs run as (None: the current one)
    start_seconds: float = 0.0  # wall time of start_cluster(): initdb and start
    stop_seconds: float | None = None  # wall time of stop(), once stopped
    _running: bool = field(default=True, repr=False)

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def url(self, dbname: str = "postgres") -> str:
        """A SQLAlchemy URL for ``dbname`` on this cluster (psycopg 3 driver)."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def _client(self, program: str, *args: str) -> list[str]:
        # Over TCP, like the broker will connect; -w: never prompt for a password.
        return [str(self.bin_dir / program), "-h", "127.0.0.1", "-p", str(self.port),
                "-U", SUPERUSER, "-w", *args]

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run ``sql`` in ``dbname`` with psql; its unaligned, tuples-only output."""
        # -X: ignore any ~/.psqlrc; ON_ERROR_STOP: a failing statement fails the call.
        cmd = self._client("psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                           "-d", dbname, "-c", sql)
        return _run(cmd).stdout

    def create_database(self, name: str) -> str:
        """Create database ``name`` (UTF8, from template0) and return its SQLAlchemy URL."""
        _run(self._client("createdb", "-T", "template0", "-E", "UTF8", name))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name``, ending any sessions still connected to it."""
        _run(self._client("dropdb", "--if-exists", "--force", name))

    def stop(self) -> None:
        """Stop the server at once (no checkpoint: the data goes anyway) and remove the folder.

        Safe to call more than once; also called at exit for a cluster never stopped.
        """
        if not self._running:
            return
        began = time.monotonic()
        try:
            if (self.datadir / "postmaster.pid").exists():
                _run([str(self.bin_dir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate",
                      "-w", "stop"], user=self.run_as, cwd=self.root, check=False)
        finally:
            self._running = False
            _LIVE.discard(self)
            shutil.rmtree(self.root, ignore_errors=True)
            self.stop_seconds = time.monotonic() - began

    def pause(self) -> None:
        """Stop the server, keeping its data (a server restart, as the broker sees it)."""
        _run([str(self.bin_dir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w",
              "stop"], user=self.run_as, cwd=self.root)

    def resume(self) -> None:
        """Start a paused server again, on the same port."""
        _run([str(self.bin_dir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.log_path),
              "-o", f"-p {self.port}", "-w", "-t", "60", "start"], user=self.run_as,
             cwd=self.root)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# Clusters started and not yet stopped. The atexit hook is a backstop so that a test run that
# forgets stop() (or fails between start and stop) leaves no server behind. It cannot help if
# the Python process is killed with SIGKILL; the server would then stay up until stopped by hand.
_LIVE: set[Cluster] = set()


@atexit.register
def _stop_all() -> None:
    for cluster in list(_LIVE):
        with contextlib.suppress(Exception):
            cluster.stop()


def start_cluster(root: Path | None = None) -> Cluster:
    """initdb a fresh cluster in a new temp folder (under ``root`` if given) and start it.

    Raises RuntimeError if PostgreSQL is not installed, or if running as root and there is no
    ``postgres`` system user; callers that can do without should check ``find_pg_bin()`` first.
    """
    began = time.monotonic()
    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL server programs not found (make postgres installs them)")
    run_as = _server_user()
    folder = Path(tempfile.mkdtemp(prefix="kela-pg-", dir=_reachable_parent(root, run_as)))
    try:
        if run_as is not None:
            entry = pwd.getpwnam(run_as)
            os.chown(folder, entry.pw_uid, entry.pw_gid)
        datadir = folder / "data"
        # Trust auth: anyone on this machine may connect, which a throwaway cluster on
        # 127.0.0.1 can afford. C locale: the same collation everywhere, whatever LANG is.
        _run([str(bin_dir / "initdb"), "-D", str(datadir), "-U", SUPERUSER, "-A", "trust",
              "-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions"],
             user=run_as, cwd=folder)
        with open(datadir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(SETTINGS.format(socket_dir=folder))  # appending keeps the file's owner
        cluster = _start_on_free_port(bin_dir, folder, datadir, run_as)
    except BaseException:
        # Never leave a half-started server or its folder behind.
        if (folder / "data" / "postmaster.pid").exists():
            _run([str(bin_dir / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate", "-w",
                  "stop"], user=run_as, cwd=folder, check=False)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    cluster.start_seconds = time.monotonic() - began
    return cluster


def _start_on_free_port(bin_dir: Path, folder: Path, datadir: Path,
                        run_as: str | None) -> Cluster:
    """pg_ctl -w start on a free port, retrying on another if someone took it meanwhile."""
    log = folder / "server.log"
    for _ in range(PORT_TRIES):
        port = _free_port()
        offset = log.stat().st_size if log.exists() else 0
        # -w: return once the server accepts connections (pg_ctl reads postmaster.pid).
        result = _run([str(bin_dir / "pg_ctl"), "-D", str(datadir), "-l", str(log),
                       "-o", f"-p {port}", "-w", "-t", "60", "start"],
                      user=run_as, cwd=folder, check=False)
        if result.returncode == 0:
            cluster = Cluster(port=port, datadir=datadir, bin_dir=bin_dir, root=folder,
                              run_as=run_as)
            _LIVE.add(cluster)
            return cluster
        tail = log.read_text(errors="replace")[offset:] if log.exists() else ""
        if "Address already in use" not in tail:
            raise RuntimeError(f"PostgreSQL did not start:\n{result.stdout}{result.stderr}{tail}")
    raise RuntimeError(f"PostgreSQL found no free port in {PORT_TRIES} tries")


def _free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (the kernel picks it for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_user() -> str | None:
    """The system user to run the server as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise RuntimeError(
            f"running as root, and PostgreSQL will not; no '{SUPERUSER}' system user to run "
            "it as (Debian's postgresql package creates it)") from None
    return SUPERUSER


def _reachable_parent(root: Path | None, run_as: str | None) -> Path:
    """Where to make the temp folder: ``root`` if the server's user can reach it, else /tmp-ish.

    Under root, ``root`` is often a pytest temp folder (0700, owned by root) that the
    ``postgres`` user cannot enter; then the system temp folder is used instead.
    """
    options = [root] if root is not None else []
    options += [Path(tempfile.gettempdir()), Path("/tmp")]
    for option in options:
        if run_as is None or _can_traverse(option.resolve(), pwd.getpwnam(run_as)):
            return option
    raise RuntimeError(f"no temp folder that the '{run_as}' user can reach")


def _can_traverse(path: Path, user: Any) -> bool:
    """Whether ``user`` (a pwd entry) may enter ``path`` and write in it (by mode bits)."""
    groups = {user.pw_gid, *os.getgrouplist(user.pw_name, user.pw_gid)}
    for i, folder in enumerate([*reversed(path.parents), path]):
        try:
            st = folder.stat()
        except OSError:
            return False
        need = stat.S_IXOTH | (stat.S_IWOTH if i == len(path.parents) else 0)
        if st.st_uid == user.pw_uid:
            need <<= 6  # the owner's bits
        elif st.st_gid in groups:
            need <<= 3  # the group's bits
        if st.st_mode & need != need:
            return False
    return True


def _run(cmd: list[str], user: str | None = None, cwd: Path | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL program, as ``user`` if given (we are root then), capturing its output.

    subprocess's own ``user=``/``group=`` switch ids in the child before exec: no runuser or
    su (no PAM session), and no preexec_fn (unsafe with threads).
    """
    kwargs: dict[str, Any] = {}
    if user is not None:
        entry = pwd.getpwnam(user)
        kwargs = {"user": entry.pw_uid, "group": entry.pw_gid,
                  "extra_groups": os.getgrouplist(user, entry.pw_gid),
                  # HOME etc. of the target user; the cwd must be reachable by it too.
                  "env": {**os.environ, "HOME": entry.pw_dir, "USER": user, "LOGNAME": user}}
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n"
                           f"{result.stdout}{result.stderr}")
    return result
