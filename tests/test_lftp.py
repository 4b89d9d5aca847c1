"""lftp, a client many municipal integrations script, against the running daemon."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from daemon_support import EXAMPLES, DaemonProcess, drop, keygen, make_home, wait_for
from lxml import etree

LFTP = shutil.which("lftp")


@pytest.mark.skipif(LFTP is None, reason="lftp is not installed (make test installs it)")
def test_lftp_lists_mirrors_and_uploads(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    key = tmp_path / "key"
    keygen(key)
    (home / "config" / "keys" / "pirha").mkdir(parents=True)
    shutil.copyfile(f"{key}.pub", home / "config" / "keys" / "pirha" / "authorized_keys")
    d = DaemonProcess(home).start()
    try:
        drop(home, EXAMPLES / "decision-batch.xml")
        outbox = home / "outbox" / "pirha"
        wait_for(lambda: len(list(outbox.glob("D-*.xml"))) == 2, what="deliveries")
        shutil.copyfile(EXAMPLES / "municipality-response.xml", tmp_path / "vastaus.xml")
        ssh = (f"ssh -a -x -i {key} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no "
               "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR")
        script = (f"set sftp:connect-program '{ssh}'; "
                  f"open -u pirha, sftp://127.0.0.1:{d.sftp_port}; cls -1 /from-kela; "
                  f"mirror /from-kela {tmp_path}/mirror; "
                  f"put {tmp_path}/vastaus.xml -o /to-kela/vastaus.xml; "
                  "cls -1 /../../; bye")
        r = subprocess.run([str(LFTP), "-c", script], capture_output=True, text=True,
                           timeout=60, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        for p in outbox.glob("D-*.xml"):
            assert (tmp_path / "mirror" / p.name).read_bytes() == p.read_bytes()
        assert "config" not in r.stdout and "var" not in r.stdout.replace("vastaus", "")
        ack = outbox / "acks" / "vastaus.xml.ack.xml"
        wait_for(ack.exists, what="acknowledgement")
        assert etree.parse(str(ack)).getroot().get("status") == "ACCEPTED"
    finally:
        d.stop()
