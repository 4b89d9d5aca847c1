"""Pushing releases to an organisation's own SFTP server (paramiko), end to end."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from daemon_support import EXAMPLES, DaemonProcess, cli, drop, keygen, make_home, wait_for

if TYPE_CHECKING:
    from sftp_support import Running

pytest_plugins = ("sftp_support",)


def add_push(home: Path, remote: Running, known_hosts: Path) -> None:
    cfg = home / "config" / "broker.toml"
    text = cfg.read_text()
    block = 'id = "helsinki"'
    start = text.index(block)
    end = text.index('language = "fi"\n', start) + len('language = "fi"\n')
    push = (f'push = {{ host = "127.0.0.1", port = {remote.port}, user = "alpha", '
            f'key_file = "{remote.keys["alpha"]}", remote_dir = "/to-kela", '
            f'known_hosts = "{known_hosts}" }}\n')
    cfg.write_text(text[:end] + push + text[end:])


def test_released_files_are_pushed_once_with_host_key_checked(
        tmp_path: Path, start_sftp: Callable[..., Running]) -> None:
    remote = start_sftp()
    host_pub = subprocess.run(["ssh-keygen", "-y", "-f", str(remote.options.host_key_path)],
                              capture_output=True, text=True, check=True).stdout.strip()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{remote.port} {host_pub}\n")
    home = make_home(tmp_path / "home")
    add_push(home, remote, known_hosts)
    d = DaemonProcess(home).start()
    try:
        drop(home, EXAMPLES / "decision-batch.xml")
        landed = remote.inbox("alpha")
        wait_for(lambda: len([p for p in landed.iterdir() if not p.name.startswith(".")]) == 2,
                 what="the delivery and its zip pushed")
        local = sorted(p.name for p in (home / "outbox" / "helsinki").iterdir()
                       if p.is_file())
        assert sorted(p.name for p in landed.iterdir()) == local
        for name in local:
            assert (landed / name).read_bytes() == \
                (home / "outbox" / "helsinki" / name).read_bytes()
        audit = json.loads(cli(home, "audit", "show", "--org", "helsinki", "--json").stdout)
        assert sorted(r["path"] for r in audit if r["action"] == "push") == local
    finally:
        d.stop()
    # A restart pushes nothing again.
    d = DaemonProcess(home).start()
    try:
        def passes() -> bool:  # wait for the restarted daemon's first release+push pass
            body = urllib.request.urlopen(
                f"http://127.0.0.1:{d.metrics_port}/metrics").read().decode()
            line = next(ln for ln in body.splitlines()
                        if ln.startswith("kela_broker_last_release_pass_timestamp"))
            return float(line.split()[-1]) > 0
        wait_for(passes, what="a release pass after restart")
        uploads = [e for e in remote.events if e.action == "upload"]
        assert len(uploads) == 2
    finally:
        d.stop()


def test_unknown_host_key_is_refused(tmp_path: Path,
                                     start_sftp: Callable[..., Running]) -> None:
    remote = start_sftp()
    known_hosts = tmp_path / "known_hosts"
    other = tmp_path / "other"
    keygen(other)
    known_hosts.write_text(f"[127.0.0.1]:{remote.port} {Path(f'{other}.pub').read_text()}")
    home = make_home(tmp_path / "home")
    add_push(home, remote, known_hosts)
    d = DaemonProcess(home).start()
    try:
        drop(home, EXAMPLES / "decision-batch.xml")
        failed = wait_for(lambda: d.events("push failed", organisation="helsinki"),
                          what="push refused")
        assert not [p for p in remote.inbox("alpha").iterdir()]
        assert isinstance(failed, list) and "cannot connect" in str(failed[0]["error"])
    finally:
        d.stop()
