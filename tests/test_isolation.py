"""One organisation never holds up another (issue 11): a broken outbox, a black-hole push
target or a removed organisation stays with that organisation, and /healthz says why."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from daemon_support import (
    DaemonProcess,
    cli,
    delivered_ids,
    drop,
    health,
    keygen,
    make_home,
    metric,
    set_keys,
    wait_for,
)

from broker.intake.synthetic import write_batch

# 091 Helsinki -> helsinki, 837 Tampere -> pirha, 853 Turku -> varha (sample config)
ORG_OF = {"091": "helsinki", "837": "pirha", "853": "varha"}


def batch(tmp_path: Path, name: str, municipalities: list[str], count: int = 6,
          start_id: int = 1) -> Path:
    """A batch with ``count // len(municipalities)`` SOCIAL_WORK_NEED notifications for each."""
    each = count // len(municipalities)
    parts = []
    for k, code in enumerate(municipalities):
        part = tmp_path / f"{name}.{code}"
        write_batch(part, count=each, municipalities=[code], types=["SOCIAL_WORK_NEED"],
                    decision_date=datetime.now(UTC).date(), batch_id=name.split(".")[0],
                    seed=start_id + k, start_id=start_id + k * each)
        parts.append(part.read_text())
    head = parts[0][:parts[0].index(">", parts[0].index("<DecisionBatch")) + 1]
    body = "".join(p[p.index(">", p.index("<DecisionBatch")) + 1:p.index("</DecisionBatch>")]
                   for p in parts)
    path = tmp_path / name
    path.write_text(head + body + "</DecisionBatch>\n")
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return make_home(tmp_path / "home")


def test_an_immutable_outbox_holds_up_only_its_own_organisation(
        home: Path, tmp_path: Path) -> None:
    stuck = home / "outbox" / "pirha"
    stuck.mkdir(parents=True, mode=0o700)
    subprocess.run(["chattr", "+i", str(stuck)], check=True)
    d = DaemonProcess(home).start()
    try:
        drop(home, batch(tmp_path, "b1.xml", ["091", "837", "853"], count=9))
        for org in ("helsinki", "varha"):
            wait_for(lambda o=org: delivered_ids(home / "outbox" / o), what=f"{org} released")
        _, body = wait_for(lambda: (h := health(d.metrics_port))[0] == 503 and h,
                              what="unhealthy")  # type: ignore[misc]
        assert "deliveries to pirha failing" in body and "Operation not permitted" in body
        # The store knows at once (health reads it); the metrics when the pass ends.
        wait_for(lambda: metric(d.metrics_port, "kela_broker_delivery_failures_total",
                                organisation="pirha") >= 1, what="failure counted")
        wait_for(lambda: metric(d.metrics_port, "kela_broker_organisation_failing",
                                organisation="pirha") == 1, what="failing flag")
        # Other organisations keep getting new batches meanwhile.
        drop(home, batch(tmp_path, "b2.xml", ["091"], count=3, start_id=100))
        wait_for(lambda: len(delivered_ids(home / "outbox" / "helsinki")) == 6,
                 what="a second helsinki release while pirha is stuck")
        status = cli(home, "status").stdout
        assert "pirha" in status

        subprocess.run(["chattr", "-i", str(stuck)], check=True)
        # Retried with backoff (10 s after the first failure): then written, exactly once.
        wait_for(lambda: len(delivered_ids(stuck)) == 3, timeout=60, what="pirha retried")
        wait_for(lambda: health(d.metrics_port)[0] == 200, timeout=30, what="healthy again")
        wait_for(lambda: metric(d.metrics_port, "kela_broker_organisation_failing",
                                organisation="pirha") == 0, what="failing flag cleared")
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=False)
        d.stop()
    all_ids = [i for o in ORG_OF.values() for i in delivered_ids(home / "outbox" / o)]
    assert sorted(all_ids) == sorted(set(all_ids)) and len(all_ids) == 12


def test_an_outbox_replaced_by_a_file_is_reported_and_retried(
        home: Path, tmp_path: Path) -> None:
    (home / "outbox").mkdir(exist_ok=True)
    (home / "outbox" / "varha").write_text("not a folder")
    d = DaemonProcess(home).start()
    try:
        drop(home, batch(tmp_path, "b1.xml", ["091", "853"], count=4))
        wait_for(lambda: delivered_ids(home / "outbox" / "helsinki"), what="helsinki released")
        _, body = wait_for(lambda: (h := health(d.metrics_port))[0] == 503 and h,
                           what="unhealthy")  # type: ignore[misc]
        assert "deliveries to varha failing" in body
        (home / "outbox" / "varha").unlink()
        wait_for(lambda: len(delivered_ids(home / "outbox" / "varha")) == 2, timeout=60,
                 what="varha retried")
    finally:
        d.stop()


class BlackHole:
    """A TCP server that accepts connections and never says a word (a stuck SSH server)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
                self.conns.append(conn)
            except TimeoutError:
                continue

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    try:
        yield hole
    finally:
        hole.close()


def test_a_black_hole_push_target_holds_up_nothing_else(
        home: Path, tmp_path: Path, black_hole: BlackHole) -> None:
    key = keygen(tmp_path / "push_key")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{black_hole.port} "
                           f"{Path(f'{key}.pub').read_text().split(' c')[0].strip()}\n")
    cfg = home / "config" / "broker.toml"
    text = cfg.read_text()
    at = text.index('language = "fi"\n', text.index('id = "pirha"')) + len('language = "fi"\n')
    cfg.write_text(text[:at] + f'push = {{ host = "127.0.0.1", port = {black_hole.port}, '
                   f'user = "kela", key_file = "{key}", remote_dir = "/in", '
                   f'known_hosts = "{known_hosts}", timeout = 3 }}\n' + text[at:])
    d = DaemonProcess(home).start()
    try:
        drop(home, batch(tmp_path, "b1.xml", ["837", "091"], count=4))
        wait_for(lambda: delivered_ids(home / "outbox" / "helsinki"), what="helsinki released")
        wait_for(lambda: black_hole.conns, what="the push connects to the black hole")
        # While the push hangs on the silent server, the worker goes on with new batches.
        drop(home, batch(tmp_path, "b2.xml", ["091"], count=2, start_id=50))
        wait_for(lambda: len(delivered_ids(home / "outbox" / "helsinki")) == 4, timeout=5,
                 what="a new batch released while the push hangs")
        _, body = wait_for(lambda: (h := health(d.metrics_port))[0] == 503 and h, timeout=30,
                           what="unhealthy after the push timed out")  # type: ignore[misc]
        assert "push to pirha failing" in body
        assert metric(d.metrics_port, "kela_broker_push_failures_total",
                      organisation="pirha") >= 1
        assert metric(d.metrics_port, "kela_broker_push_backlog_age_seconds",
                      organisation="pirha") > 0
        # Released locally all the same: the outbox is the source of truth.
        assert len(delivered_ids(home / "outbox" / "pirha")) == 2
    finally:
        d.stop()


def test_removing_an_organisation_that_holds_items_needs_a_handover(
        home: Path, tmp_path: Path) -> None:
    # pirha's notifications are held (next-day type), then pirha is renamed pirkanmaa.
    src = tmp_path / "held.xml"
    write_batch(src, count=5, municipalities=["837"], types=["REDUCED_BASIC_AMOUNT"],
                decision_date=datetime.now(UTC).date(), batch_id="HELD", seed=3)
    src.write_text(src.read_text().replace(' urgent="true"', ""))
    cli(home, "ingest", str(src))
    cfg = home / "config" / "broker.toml"
    cfg.write_text(cfg.read_text().replace('id = "pirha"', 'id = "pirkanmaa"'))
    check = cli(home, "config", "check", check=False)
    assert check.returncode == 1
    assert "'pirha' was removed from the configuration but holds 5 undelivered" in check.stderr
    assert "[handover] pirha" in check.stderr
    refused = DaemonProcess(home).start(wait=False)
    assert refused.proc is not None and refused.proc.wait(30) == 1
    assert "holds 5 undelivered" in refused.log()

    set_keys(home, "handover", pirha="pirkanmaa")
    cli(home, "config", "check")
    d = DaemonProcess(home).start()
    try:
        status = cli(home, "schedule", "--json").stdout
        assert '"organisation": "pirkanmaa"' in status and '"pirha"' not in status
        cli(home, "release-due", "--now", "2099-01-01T06:00:00+02:00", "--force",
            "--reason", "test: the next morning")
        assert len(delivered_ids(home / "outbox" / "pirkanmaa")) == 5
    finally:
        d.stop()
