"""No client can exhaust the daemon's file descriptors (issue 11).

The daemon runs with a hard limit of 512 descriptors: 600 idle TCP connections (most
never send a banner) come from one address and from several; the caps on unauthenticated
connections turn the surplus away at once, so a batch dropped meanwhile is still taken,
the inbox rescan still runs, /healthz stays ok, and a real client still logs in and
downloads.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import paramiko
from daemon_support import (
    EXAMPLES,
    DaemonProcess,
    drop,
    health,
    keygen,
    make_home,
    set_keys,
    wait_for,
)

IDLE = 600


def test_600_idle_connections_do_not_starve_the_daemon(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    set_keys(home, "sftp", max_unauthenticated=20, max_unauthenticated_per_address=10,
             max_sessions_total=20, login_grace=60)
    key = tmp_path / "key"
    keygen(key)
    (home / "config" / "keys" / "pirha").mkdir(parents=True)
    shutil.copyfile(f"{key}.pub", home / "config" / "keys" / "pirha" / "authorized_keys")
    d = DaemonProcess(home, nofile=512).start()
    idle: list[socket.socket] = []
    try:
        for i in range(IDLE):
            s = socket.socket()
            s.settimeout(10)
            if i % 2:  # half of them from other loopback addresses
                s.bind((f"127.0.0.{2 + i % 5}", 0))
            try:
                s.connect(("127.0.0.1", d.sftp_port))
            except OSError:
                s.close()  # refused outright is fine too
                continue
            idle.append(s)
        # The daemon still works: the watcher takes a batch, the rescan runs, health ok.
        drop(home, EXAMPLES / "decision-batch.xml")
        outbox = home / "outbox" / "pirha"
        wait_for(lambda: len(list(outbox.glob("D-*.xml"))) == 2, what="deliveries")
        assert health(d.metrics_port)[0] == 200, health(d.metrics_port)[1]
        # A real client logs in and downloads while the idle sockets are still open.
        t = paramiko.Transport(("127.0.0.1", d.sftp_port))
        t.banner_timeout = 30
        t.connect(username="pirha", pkey=paramiko.Ed25519Key.from_private_key_file(str(key)))
        sftp = paramiko.SFTPClient.from_transport(t)
        assert sftp is not None
        first = sorted(p.name for p in outbox.glob("D-*.xml"))[0]
        assert sftp.open(f"/from-kela/{first}").read() == (outbox / first).read_bytes()
        sftp.close()
        t.close()
        assert d.alive()
        assert "Too many open files" not in d.log()
    finally:
        for s in idle:
            s.close()
        d.stop()
