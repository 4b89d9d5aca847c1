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
