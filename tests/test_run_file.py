"""``var/run.json``: believed only while its daemon is there."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from broker.runtime.run_file import remove_run_file, running_pid, write_run_file


def test_a_live_daemons_run_file_names_it_and_is_gone_after_the_stop(tmp_path: Path) -> None:
    write_run_file(tmp_path, sftp_port=2222, metrics_port=9464, host_key="SHA256:x")
    assert running_pid(tmp_path) == os.getpid()
    assert (tmp_path / "run.json").stat().st_mode & 0o777 == 0o600
    remove_run_file(tmp_path)
    assert running_pid(tmp_path) is None


@pytest.mark.parametrize("content", [
    json.dumps({"pid": 2**22 + 1}),  # above any pid_max: a daemon killed outright, long gone
    json.dumps({"pid": 0}),  # signal 0 to pid 0 would ask our own process group
    json.dumps({"pid": -1}),
    json.dumps({"port": 1}),
    json.dumps(["pid"]),
    "{half",
    "",
])
def test_a_stale_or_broken_run_file_names_no_daemon(tmp_path: Path, content: str) -> None:
    (tmp_path / "run.json").write_text(content)
    assert running_pid(tmp_path) is None


def test_the_home_lock_admits_one_holder_at_a_time(tmp_path: Path) -> None:
    from broker.errors import HomeBusy
    from broker.runtime.run_file import home_lock

    write_run_file(tmp_path, sftp_port=1, metrics_port=2, host_key="k")
    with home_lock(tmp_path, "start"), pytest.raises(
            HomeBusy, match=f"cannot copy it: .*pid {os.getpid()}"), home_lock(tmp_path, "copy it"):
        pass
    with home_lock(tmp_path, "start"):  # released at the end of the block
        pass
    assert (tmp_path / "daemon.lock").stat().st_mode & 0o777 == 0o600


def test_a_second_daemon_on_a_home_is_refused_and_the_first_goes_on(tmp_path: Path) -> None:
    import subprocess

    from daemon_support import KELA_BROKER, DaemonProcess, make_home

    home = make_home(tmp_path / "home")
    first = DaemonProcess(home).start()
    try:
        second = subprocess.run(
            [KELA_BROKER, "--home", str(home), "run", "--sftp-listen", "127.0.0.1:0",
             "--metrics-listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        assert f"the daemon is running on this home (pid {first.proc.pid})" in second.stderr  # type: ignore[union-attr]
        assert "Traceback" not in second.stderr
        assert first.alive() and (home / "var" / "run.json").exists()
    finally:
        first.stop()
