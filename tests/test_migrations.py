"""Schema migrations: a home made by the last release before migrations (its real
database, tests/data/home-0001, made by that release's code) upgrades in place and goes
on working; new databases are made at the head; a newer schema is refused."""

from __future__ import annotations

import gzip
import shutil
import sqlite3
import subprocess
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import storage_support
from daemon_support import KELA_BROKER, make_home
from sqlalchemy import func, select, text

from broker.config.settings import load_config
from broker.intake.ingest import ingest_batch
from broker.intake.synthetic import write_batch
from broker.storage.db import audit_metadata, metadata, open_engine
from broker.storage.schema import HEAD, MIGRATIONS, revision
from broker.storage.state_db import make_engine
from broker.storage.store import Store, deliveries, items

OLD = Path(__file__).parent / "data" / "home-0001"


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KELA_BROKER, "--home", str(home), *args], capture_output=True,
                          text=True, timeout=120)


def _old_home(tmp_path: Path) -> Path:
    """A home whose var/ holds the old release's database, key and anchor."""
    home = make_home(tmp_path / "home")
    db = home / "var" / "state.db"
    with sqlite3.connect(db) as c:
        c.executescript(gzip.decompress((OLD / "state.sql.gz").read_bytes()).decode())
    for name in ("audit.key", "audit.head"):
        shutil.copy(OLD / name, home / "var" / name)
    db.chmod(0o600)
    return home


def _counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as c:
        names = [r[0] for r in c.execute(
            "select name from sqlite_master where type = 'table' and name not in"
            " ('alembic_version', 'counters')")]
        return {n: c.execute(f"select count(*) from {n}").fetchone()[0] for n in names}


def test_the_head_constant_is_the_newest_migration() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(cfg).get_heads() == [HEAD]


def test_a_home_of_the_last_release_upgrades_in_place_and_goes_on(tmp_path: Path) -> None:
    home = _old_home(tmp_path)
    db = home / "var" / "state.db"
    before = _counts(db)
    assert before["items"] == 455 and before["deliveries"] == 6  # what the old code made

    r = _cli(home, "db", "upgrade")
    assert r.returncode == 0, r.stderr
    assert f"upgraded from schema revision 0001 to {HEAD}" in r.stdout
    assert _counts(db) == before  # every row kept
    again = _cli(home, "db", "upgrade")
    assert f"already at schema revision {HEAD}" in again.stdout
    assert _cli(home, "audit", "verify").returncode == 0  # the chain and anchor intact

    # It goes on: new items and deliveries are numbered after the old ones.
    cfg = load_config(home)
    store = Store(make_engine(cfg.storage_url))
    batch = tmp_path / "new.xml"
    write_batch(batch, count=3, municipalities=["091"], types=["IMMIGRANT"],
                decision_date=date(2026, 12, 1), batch_id="AFTER-UPGRADE", seed=3,
                start_id=970_000)
    now = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    assert ingest_batch(batch, config=cfg, store=store, now=now).status == "accepted"
    r = _cli(home, "release-due", "--now", "2027-03-01T12:00:00+02:00", "--force",
             "--reason", "test: everything held")
    assert r.returncode == 0, r.stderr
    with store.engine.connect() as c:
        new_seqs = c.execute(select(items.c.seq).where(items.c.id.like("N-2026-00097%"))
                             ).scalars().all()
        assert min(new_seqs) > 455
        numbers = c.execute(select(deliveries.c.seq).order_by(deliveries.c.seq)).scalars().all()
        assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) > 6
        assert c.execute(select(func.count()).select_from(items)).scalar() == 458


def test_times_written_without_their_fraction_get_one_text_form(tmp_path: Path) -> None:
    """0004: a whole-second time stored as ``04:00:00`` (the bulk path's old form) becomes
    ``04:00:00.000000``, so it compares and groups as the same instant in SQL."""
    home = _old_home(tmp_path)
    db = home / "var" / "state.db"
    with sqlite3.connect(db) as c:
        c.execute("update assignments set release_at = '2026-11-21 04:00:00' where id = 1")
        c.execute("update assignments set planned_at = '2026-11-23 11:05:00' where id = 2")
    assert _cli(home, "db", "upgrade").returncode == 0
    with sqlite3.connect(db) as c:
        rows = dict(c.execute("select id, release_at from assignments where id in (1, 2)"))
        assert rows[1] == "2026-11-21 04:00:00.000000"
        assert c.execute("select planned_at from assignments where id = 2").fetchone()[0] \
            == "2026-11-23 11:05:00.000000"
        assert c.execute("select count(*) from assignments where length(release_at) <> 26"
                         " or length(created_at) <> 26").fetchone()[0] == 0


def test_the_time_text_migration_names_every_time_column() -> None:
    import importlib.util

    from broker.storage.tables import UTCDateTime

    spec = importlib.util.spec_from_file_location(
        "m0004", MIGRATIONS / "versions" / "0004_sqlite_time_text.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    columns = {(t.name, c.name) for md in (metadata, audit_metadata) for t in md.sorted_tables
               for c in t.columns if isinstance(c.type, UTCDateTime)}
    assert set(module.COLUMNS) == columns


def test_an_upgraded_database_has_the_schema_a_new_one_gets(tmp_path: Path) -> None:
    """The migrations and the table definitions agree: nothing for autogenerate to add."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    home = _old_home(tmp_path)
    assert _cli(home, "db", "upgrade").returncode == 0
    engine = open_engine(home / "var" / "state.db")
    with engine.connect() as c:
        diffs = compare_metadata(MigrationContext.configure(c), [metadata, audit_metadata])
    assert diffs == []


def test_a_new_database_is_made_at_the_head(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    r = _cli(home, "db", "upgrade")
    assert r.returncode == 0 and f"made new at schema revision {HEAD}" in r.stdout
    with open_engine(load_config(home).storage_url).connect() as c:
        assert revision(c) == HEAD
    assert f"schema revision: {HEAD}" in _cli(home, "db", "status").stdout


def test_the_daemon_upgrades_at_start(tmp_path: Path) -> None:
    from daemon_support import DaemonProcess

    home = _old_home(tmp_path)
    d = DaemonProcess(home).start()
    try:
        with open_engine(home / "var" / "state.db").connect() as c:
            assert revision(c) == HEAD
    finally:
        d.stop()


def test_a_schema_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    assert _cli(home, "db", "upgrade").returncode == 0
    with sqlite3.connect(home / "var" / "state.db") as c:
        c.execute("update alembic_version set version_num = '0099'")
    for args in (("status",), ("db", "upgrade")):
        r = _cli(home, *args)
        assert r.returncode == 1, r.stdout
        assert "schema revision 0099" in r.stderr and "newer release" in r.stderr
        assert "Traceback" not in r.stderr


def test_db_upgrade_never_makes_an_empty_database_in_a_used_home(tmp_path: Path) -> None:
    home = _old_home(tmp_path)
    (home / "var" / "state.db").unlink()
    r = _cli(home, "db", "upgrade")
    assert r.returncode == 1 and "refusing" in r.stderr
    assert not (home / "var" / "state.db").exists()


@pytest.mark.both_engines
def test_db_status_names_the_engine(tmp_path: Path, storage: str) -> None:
    home = make_home(tmp_path / "home")
    assert _cli(home, "db", "upgrade").returncode == 0
    out = _cli(home, "db", "status").stdout
    assert ("engine: postgresql" if storage != "sqlite" else "engine: sqlite") in out
    assert "password" not in out


def test_a_used_home_pointed_at_an_empty_postgresql_database_is_refused(
        tmp_path: Path, pg_cluster) -> None:  # type: ignore[no-untyped-def]
    """The wrong (or a freshly restored, empty) database in [storage] url is the lost
    state.db of a server: refused, not filled anew, and no password is shown."""
    home = _old_home(tmp_path)  # used: an audit trail, and its database
    url = pg_cluster.create_database("empty_one").replace("postgres@", "postgres:s3cret@")
    storage_support.point(home, url)
    for args in (("status",), ("db", "upgrade")):
        r = _cli(home, *args)
        assert r.returncode == 1 and "refusing" in r.stderr, r.stderr
        assert "s3cret" not in r.stderr + r.stdout
    with open_engine(url).connect() as c:
        assert revision(c) is None  # nothing was made there


def test_an_unreachable_server_is_not_called_a_damaged_database(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = storage_support.point(make_home(tmp_path / "home"),
                                 f"postgresql+psycopg://broker:s3cret@127.0.0.1:{port}/broker")
    for args in (("status",), ("db", "upgrade"), ("run", "--sftp-listen", "127.0.0.1:0",
                                                   "--metrics-listen", "127.0.0.1:0")):
        r = _cli(home, *args)
        assert r.returncode != 0
        assert "cannot be reached" in r.stderr and "restore" not in r.stderr.lower(), r.stderr
        assert "s3cret" not in r.stderr and "Traceback" not in r.stderr


@pytest.mark.both_engines
def test_an_emptied_version_table_is_refused_not_guessed(tmp_path: Path, storage: str) -> None:
    """A version table with no row once read as "made before migrations": every migration
    was then replayed over tables that may already have had them."""
    home = make_home(tmp_path / "home")
    assert _cli(home, "db", "upgrade").returncode == 0
    engine = open_engine(load_config(home).storage_url)
    with engine.begin() as c:
        c.execute(text("DELETE FROM alembic_version"))
    for args in (("status",), ("db", "upgrade")):
        r = _cli(home, *args)
        assert r.returncode == 1, r.stdout
        assert "no revision in it" in r.stderr and "nothing was changed" in r.stderr
        assert "Traceback" not in r.stderr
    with engine.connect() as c:  # still unstamped: nothing was replayed or stamped
        assert c.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 0


def test_migrations_run_from_an_install_path_with_a_percent_sign(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Alembic reads its options through ConfigParser, where a bare % is an interpolation:
    a venv under such a folder must still upgrade an old home."""
    from broker.storage import schema

    moved = tmp_path / "venv %(x)s 100%" / "migrations"
    shutil.copytree(MIGRATIONS, moved)
    monkeypatch.setattr(schema, "MIGRATIONS", moved)
    home = _old_home(tmp_path)
    upgrade = schema.ensure_schema(open_engine(home / "var" / "state.db"))
    assert upgrade.after == HEAD and upgrade.changed


@pytest.mark.both_engines
def test_the_audit_key_migration_goes_down_and_up_with_releases_recorded(
        tmp_path: Path, storage: str) -> None:
    """Down to 0004 once audit rows have references (a release): a table rebuild would
    trip over audit_refs' foreign key."""
    from response_support import make_env
    from sqlalchemy import inspect

    from broker.storage.db import writer
    from broker.storage.schema import _alembic

    env = make_env(tmp_path)  # ingested and released: audit rows with references
    engine = env.store.engine
    with writer(engine).begin() as c:
        _alembic(c, "downgrade", "0004")
    with engine.connect() as c:
        assert revision(c) == "0004"
        assert "event_key" not in {col["name"] for col in inspect(c).get_columns("audit_log")}
    with writer(engine).begin() as c:
        _alembic(c, "upgrade", HEAD)
    with engine.connect() as c:
        assert revision(c) == HEAD
