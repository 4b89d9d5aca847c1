"""The database server goes away under a running daemon (a restart, a failover) and
comes back: /healthz says so meanwhile, and the daemon goes on by itself afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest
import storage_support
from daemon_support import EXAMPLES, DaemonProcess, delivered_ids, drop, health, make_home, wait_for
from pg_cluster import find_pg_bin, start_cluster

pytestmark = pytest.mark.skipif(find_pg_bin() is None,
                                reason="PostgreSQL's programs are not installed")


def test_a_database_restart_is_reported_and_recovered_from(tmp_path: Path) -> None:
    with start_cluster() as pg:  # its own: the test stops it
        storage_support.current = pg.create_database("restarts")
        try:
            home = make_home(tmp_path / "home")
        finally:
            storage_support.current = None
        d = DaemonProcess(home).start()
        try:
            assert health(d.metrics_port) == (200, "ok\n")
            pg.pause()
            _, body = wait_for(lambda: (h := health(d.metrics_port))[0] == 503 and h,
                                    timeout=60, what="unhealthy")  # type: ignore[misc]
            assert "the state database cannot be reached" in body
            assert "restore" not in body.lower()
            pg.resume()
            wait_for(lambda: health(d.metrics_port) == (200, "ok\n"), timeout=60,
                     what="healthy again")
            drop(home, EXAMPLES / "decision-batch.xml")
            wait_for(lambda: delivered_ids(home / "outbox" / "helsinki"), timeout=60,
                     what="a delivery after the restart")
            assert d.alive()
        finally:
            d.stop()


def test_server_connections_give_up_and_notice_a_cut_within_a_minute(pg_cluster) -> None:  # type: ignore[no-untyped-def]
    """libpq alone waits on the operating system: about two minutes for a server behind a
    dead route, two hours to notice a connection cut without a word."""
    from broker.storage.db import SERVER_TIMEOUTS, open_engine

    url = pg_cluster.create_database("timeouts")
    for suffix, expected in (("", SERVER_TIMEOUTS),
                             ("?connect_timeout=3", {**SERVER_TIMEOUTS, "connect_timeout": 3})):
        engine = open_engine(url + suffix)
        try:
            with engine.connect() as c:
                params = c.connection.driver_connection.info.get_parameters()  # type: ignore[union-attr]
        finally:
            engine.dispose()
        assert {k: int(params[k]) for k in expected} == expected


def test_a_server_that_never_answers_is_given_up_on(tmp_path: Path) -> None:
    """A listener that takes the connection and says nothing (a hung server, a proxy
    whose back end is gone): the broker's command returns, saying so."""
    import socket
    import subprocess
    import time

    from daemon_support import KELA_BROKER

    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)  # the kernel completes the handshake; nobody ever answers
        port = mute.getsockname()[1]
        home = storage_support.point(make_home(tmp_path / "home"),
                                     f"postgresql+psycopg://broker@127.0.0.1:{port}/broker")
        started = time.monotonic()
        r = subprocess.run([KELA_BROKER, "--home", str(home), "status"], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode != 0 and "cannot be reached" in r.stderr, r.stderr
        assert time.monotonic() - started < 30  # connect_timeout, 10 s (libpq: never)
