"""``kela-broker db copy``: a home's state moved to another engine, whole or not at all.

Each test runs on both engines (conftest.py); the home starts on the run's engine and is
copied to the other one: SQLite to PostgreSQL, and PostgreSQL to SQLite.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import storage_support
from daemon_support import KELA_BROKER
from response_support import T1, Env, make_env, receipt, response, transfer
from response_support import demand as payment_demand
from sqlalchemy import Engine, inspect, select
from sqlalchemy.exc import IntegrityError

from broker.config.settings import load_config
from broker.config.types import sqlite_url
from broker.intake.ingest import ingest_batch
from broker.intake.synthetic import write_batch
from broker.runtime.run_file import home_lock
from broker.storage.db import open_engine
from broker.storage.db_copy import copy_database, tables_in_order
from broker.storage.state_db import make_engine
from broker.storage.store import Store

pytestmark = pytest.mark.both_engines
N3, N4 = "N-2026-000000003", "N-2026-000000004"  # the contract's example batch, for pirha


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KELA_BROKER, "--home", str(home), *args], capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def other_url(tmp_path: Path, storage: str, request: pytest.FixtureRequest) -> str:
    """A new, empty database on the engine the run's home is not on."""
    if storage == "sqlite":
        return str(request.getfixturevalue("pg_cluster").create_database(
            f"c_{uuid.uuid4().hex[:16]}"))
    return sqlite_url(tmp_path / "copy" / "state.db")


def _used_env(tmp_path: Path) -> Env:
    """A home with something in every table the copy must carry: a released batch, a
    transfer, a receipt, a payment demand, audit rows with person references."""
    env = make_env(tmp_path)
    for name, body in (("1.xml", response(transfer(N4, "853"), receipt(N3))),
                       ("2.xml", response(payment_demand("PD-7")))):
        assert env.process("pirha", name, body).status == "accepted"
    env.release(T1)
    return env


def _rows(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as c:
        return {t.name: [tuple(r) for r in c.execute(
            select(t).order_by(*t.primary_key.columns))] for t in tables_in_order()}


def test_a_copied_home_runs_on_the_other_engine_as_it_did(tmp_path: Path,
                                                          other_url: str) -> None:
    env = _used_env(tmp_path)
    before = _rows(env.store.engine)
    assert all(before[t] for t in ("items", "assignments", "response_events",
                                   "payment_demands", "audit_refs", "blobs"))
    status = _cli(env.home, "status", "--json").stdout

    r = _cli(env.home, "db", "copy", other_url)
    assert r.returncode == 0, r.stderr
    assert f"items: {len(before['items'])} rows" in r.stdout
    assert _rows(open_engine(other_url)) == before  # every row, value for value
    assert _rows(env.store.engine) == before  # the source is only read

    cfg = load_config(storage_support.point(env.home, other_url))
    assert cfg.storage_url == other_url
    assert _cli(env.home, "status", "--json").stdout == status
    verify = _cli(env.home, "audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # It goes on from where it was: generated ids carry on, numbers are not reused.
    store = Store(make_engine(cfg.storage_url))
    batch = tmp_path / "more.xml"
    write_batch(batch, count=30, municipalities=["091", "837"], decision_date=T1.date(),
                batch_id="AFTER-COPY", start_id=500, attachment_bytes=100)
    assert ingest_batch(batch, config=cfg, store=store, now=T1).status == "accepted"
    env2 = Env(env.home, cfg, store)
    assert env2.process("pirha", "3.xml", response(payment_demand("PD-8"))).status == "accepted"
    new = env2.release(T1)
    assert new and not set(new) & {r[0] for r in before["deliveries"]}
    assert _cli(env.home, "audit", "verify").returncode == 0


def test_copy_refuses_a_target_with_tables_and_leaves_both_alone(tmp_path: Path,
                                                                   other_url: str) -> None:
    env = _used_env(tmp_path)
    target = open_engine(other_url)
    assert _cli(env.home, "db", "copy", other_url).returncode == 0
    copied = _rows(target)
    again = _cli(env.home, "db", "copy", other_url)
    assert again.returncode == 1 and "already has tables" in again.stderr
    assert "Traceback" not in again.stderr
    assert _rows(target) == copied


def test_a_copy_that_fails_half_way_leaves_the_target_empty(tmp_path: Path,
                                                            other_url: str) -> None:
    env = _used_env(tmp_path)
    target = open_engine(other_url)

    def stop_after_items(name: str, _n: int) -> None:
        if name == "items":
            raise OSError("the machine went away")

    with pytest.raises(OSError):
        copy_database(env.store.engine, target, on_table=stop_after_items)
    with target.connect() as c:
        assert inspect(c).get_table_names() == []
    # ... and a copy after that is whole.
    copy_database(env.store.engine, target)
    assert _rows(target) == _rows(env.store.engine)


def test_generated_ids_in_the_copy_never_collide(tmp_path: Path, other_url: str) -> None:
    """A sequence left at 1 on PostgreSQL would fail the first new row after the move."""
    env = _used_env(tmp_path)
    target = open_engine(other_url)
    copy_database(env.store.engine, target)
    from broker.storage.store import input_files

    with target.begin() as c:
        top = c.execute(select(input_files.c.id).order_by(input_files.c.id.desc())).scalar()
        new = c.execute(input_files.insert().values(
            source="kela", kind="batch", name="x.xml", sha256="0" * 64, size=1,
            status="accepted", received_at=T1, items=0).returning(input_files.c.id)).scalar()
        assert top is not None and new is not None and new > top
    with pytest.raises(IntegrityError), target.begin() as c:  # ids really are checked
        c.execute(input_files.insert().values(
            id=top, source="kela", kind="batch", name="y.xml", sha256="1" * 64, size=1,
            status="accepted", received_at=T1, items=0))


def test_copy_refuses_while_the_daemon_runs_and_into_the_home_itself(
        tmp_path: Path, other_url: str) -> None:
    env = _used_env(tmp_path)
    with home_lock(env.config.var, "start"):  # what a running daemon holds
        r = _cli(env.home, "db", "copy", other_url)
    assert r.returncode == 1 and "daemon is running on this home" in r.stderr
    (env.config.var / "run.json").write_text(json.dumps({"pid": os.getpid()}))
    own = _cli(env.home, "db", "copy", env.config.storage_url)
    assert own.returncode == 1 and "own database" in own.stderr
    with open_engine(other_url).connect() as c:
        assert inspect(c).get_table_names() == []
    # A run file left by a daemon killed outright holds nothing back: the lock went with it.
    assert _cli(env.home, "db", "copy", other_url).returncode == 0


@pytest.mark.parametrize(("url", "says"), [
    ("postgresql://broker:s3cret@db.example:abc/kela", "not a database URL"),
    ("postgresql:/broker:s3cret@db.example/kela", "must be sqlite:///"),
    ("mysql://broker:s3cret@db.example/kela", "must be sqlite:///"),
    ("postgresql+psycopg2://broker:s3cret@db.example/kela", "psycopg is the driver"),
    ("sqlite://", "in-memory"),
    ("sqlite:///:memory:", "in-memory"),
])
def test_an_unusable_target_is_refused_without_echoing_its_password(
        tmp_path: Path, url: str, says: str) -> None:
    env = make_env(tmp_path, release=False)
    r = _cli(env.home, "db", "copy", url)
    assert r.returncode == 1 and says in r.stderr, r.stderr
    assert "s3cret" not in r.stdout + r.stderr and "Traceback" not in r.stderr


@pytest.mark.sqlite_only  # its target is then a PostgreSQL database
def test_a_password_in_the_query_is_never_shown(tmp_path: Path, other_url: str) -> None:
    env = make_env(tmp_path, release=False)
    r = _cli(env.home, "db", "copy", other_url + "?password=s3cret")
    assert r.returncode == 0, r.stderr
    assert "postgresql+psycopg://" in r.stdout and "s3cret" not in r.stdout + r.stderr


@pytest.mark.sqlite_only  # from SQLite to another SQLite file: the target's mode
def test_a_sqlite_target_is_private_even_if_it_was_there(tmp_path: Path) -> None:
    env = make_env(tmp_path, release=False)
    target = tmp_path / "elsewhere" / "state.db"
    target.parent.mkdir()
    target.touch(mode=0o644)
    target.chmod(0o644)
    r = _cli(env.home, "db", "copy", sqlite_url(target))
    assert r.returncode == 0, r.stderr
    for f in target.parent.iterdir():
        assert f.stat().st_mode & 0o777 == 0o600, f
