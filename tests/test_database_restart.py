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
