"""The throwaway PostgreSQL cluster (tests/pg_cluster.py) that the storage tests run on."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from pg_cluster import find_pg_bin, start_cluster

pytestmark = pytest.mark.skipif(
    find_pg_bin() is None,
    reason="PostgreSQL server (initdb/pg_ctl) is not installed (make test installs it as root)")


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_cluster_serves_databases_and_leaves_nothing_behind(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path)
    try:
        assert _port_open(cluster.port)
        if os.geteuid() == 0:
            # pytest's temp folders are 0700 root: the postgres user could not enter them.
            assert cluster.run_as == "postgres"
            assert tmp_path not in cluster.root.parents
        else:
            assert cluster.run_as is None
            assert cluster.root.parent == tmp_path
        server_pid = int((cluster.datadir / "postmaster.pid").read_text().split()[0])

        urls = [cluster.create_database(name) for name in ("broker_a", "broker_b")]
        assert urls == [f"postgresql+psycopg://postgres@127.0.0.1:{cluster.port}/{name}"
                        for name in ("broker_a", "broker_b")]
        for name in ("broker_a", "broker_b"):
            assert cluster.psql("SELECT 1", name).strip() == "1"
            assert cluster.psql("SELECT current_database()", name).strip() == name
        databases = cluster.psql("SELECT datname FROM pg_database ORDER BY 1").split()
        assert {"broker_a", "broker_b"} <= set(databases)

        cluster.drop_database("broker_b")
        assert "broker_b" not in cluster.psql("SELECT datname FROM pg_database").split()
    finally:
        cluster.stop()

    assert not _port_open(cluster.port)
    assert not cluster.root.exists()
    # The server process is gone (or a zombie awaiting its reaper, which holds nothing).
    try:
        state = Path(f"/proc/{server_pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in {"gone", "Z", "X"}
    cluster.stop()  # a second stop is harmless


def test_cluster_as_context_manager() -> None:
    with start_cluster() as cluster:
        assert cluster.psql("SHOW fsync").strip() == "off"
        assert cluster.psql("SHOW listen_addresses").strip() == "127.0.0.1"
        assert int(cluster.psql("SHOW max_connections")) >= 200
        assert cluster.start_seconds > 0
    assert not _port_open(cluster.port)
    assert not cluster.root.exists()
    assert cluster.stop_seconds is not None
