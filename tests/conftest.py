"""The test harness's fixtures: a home, the daemon, the storage engines, and the throwaway
PostgreSQL cluster.

``home`` is a new broker home (the sample config, on this run's engine);
``start_daemon(home)`` runs the real daemon on it (free ports) and every daemon a test
started is stopped after it, whatever happened; ``daemon`` is one running on ``home``.
Waiting is ``daemon_support.wait_for(condition)``, never a bare sleep.

A module (or test) marked ``pytest.mark.both_engines`` runs once on SQLite and once on
PostgreSQL: its ids end in ``[sqlite]`` and ``[postgresql]``. The cluster starts once per
worker, only when a PostgreSQL run needs it, and every such test gets a new database,
dropped after it. Without PostgreSQL's programs (``make postgres`` installs them as
root) the PostgreSQL runs are skipped, saying so.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import storage_support
from daemon_support import DaemonProcess, make_home
from pg_cluster import Cluster, find_pg_bin, start_cluster

ENGINES = ("sqlite", "postgresql")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_engines: run on SQLite and on PostgreSQL (tests/conftest.py)")
    config.addinivalue_line(
        "markers", "sqlite_only: in a both_engines module, a test of SQLite itself")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marked = metafunc.definition.get_closest_marker
    if marked("both_engines") is None or marked("sqlite_only") is not None:
        return
    if "storage" not in metafunc.fixturenames:
        metafunc.fixturenames.append("storage")
    metafunc.parametrize("storage", ENGINES, indirect=True, ids=ENGINES)


@pytest.fixture(autouse=True)
def _engine_of_the_run(request: pytest.FixtureRequest) -> None:
    """Set up ``storage`` for every test parametrised by it (pytest_generate_tests), also
    those that do not name it: parametrising alone does not make pytest set a fixture up,
    and such a test's [postgresql] run would quietly use SQLite."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and "storage" in callspec.params:
        request.getfixturevalue("storage")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    if find_pg_bin() is None:
        pytest.skip("PostgreSQL's programs are not installed (make postgres installs them)")
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def storage(request: pytest.FixtureRequest) -> Iterator[str]:
    """The engine of this run: "sqlite", or the URL of a fresh PostgreSQL database that
    every home made in the test uses (storage_support.apply)."""
    kind = getattr(request, "param", "sqlite")
    if kind == "sqlite":
        yield kind
        return
    cluster: Cluster = request.getfixturevalue("pg_cluster")
    name = f"t_{uuid.uuid4().hex[:16]}"
    storage_support.current = cluster.create_database(name)
    try:
        yield storage_support.current
    finally:
        storage_support.current = None
        cluster.drop_database(name)


@pytest.fixture
def home(tmp_path: Path, storage: str) -> Path:
    """A new broker home at ``tmp_path/home`` on this run's engine."""
    return make_home(tmp_path / "home")


@pytest.fixture
def start_daemon() -> Iterator[Callable[..., DaemonProcess]]:
    """``start_daemon(home, **options)``: the real daemon, started and waited for; each is
    stopped (SIGTERM, then kill) when the test ends."""
    started: list[DaemonProcess] = []

    def start(home: Path, **options: object) -> DaemonProcess:
        d = DaemonProcess(home, **options)  # type: ignore[arg-type]
        started.append(d)
        return d.start()

    try:
        yield start
    finally:
        for d in started:
            d.stop()


@pytest.fixture
def daemon(home: Path, start_daemon: Callable[..., DaemonProcess]) -> DaemonProcess:
    """The daemon running on ``home``."""
    return start_daemon(home)
