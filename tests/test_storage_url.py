"""``[storage] url``: which database file a home's config names, whatever its folder is called."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
import storage_support
from daemon_support import KELA_BROKER, REPO
from hypothesis import given
from hypothesis import strategies as st

from broker.config.settings import load_config
from broker.config.types import sqlite_file_uri, sqlite_path, sqlite_url
from broker.storage.state_guard import database_state

# Characters a URL gives a meaning of its own (query, fragment, escape), and a space.
AWKWARD = "h?x=1#y%20z &%"


def _home(root: Path, url: str | None = None) -> Path:
    shutil.copytree(REPO / "config", root / "config", ignore=shutil.ignore_patterns("keys"))
    return root if url is None else storage_support.point(root, url)


def test_a_home_whose_folder_name_looks_like_a_url_keeps_its_state_in_it(
        tmp_path: Path) -> None:
    """A folder named ``h?x=1#y%20z`` once put the state in the file ``.../h`` (the rest
    read as a query and a fragment): now the database is the home's own var/state.db."""
    home = _home(tmp_path / AWKWARD)
    assert load_config(home).database == home / "var" / "state.db"
    r = subprocess.run([KELA_BROKER, "--home", str(home), "db", "upgrade"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (home / "var" / "state.db").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [AWKWARD]  # nothing beside it
    # The guard that looks into an existing file before every start read another path
    # (SQLite's file: URI) and called the state database unreadable.
    r = subprocess.run([KELA_BROKER, "--home", str(home), "status"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert database_state(load_config(home)) == "ok"


@pytest.mark.parametrize(("url", "expected"), [
    ("sqlite:///data/x.db", "data/x.db"),  # three slashes: relative to the home
    (None, "var/state.db"),  # the default
])
def test_relative_sqlite_paths_are_in_the_home(tmp_path: Path, url: str | None,
                                               expected: str) -> None:
    home = _home(tmp_path / AWKWARD, url)
    assert load_config(home).database == home / expected


def test_an_absolute_sqlite_url_is_read_as_written(tmp_path: Path) -> None:
    elsewhere = tmp_path / "state dir" / "s.db"
    home = _home(tmp_path / "home", sqlite_url(elsewhere))
    assert load_config(home).database == elsewhere


def test_the_older_broker_database_key_still_names_a_file_in_the_home(tmp_path: Path) -> None:
    home = _home(tmp_path / AWKWARD)
    toml = home / "config" / "broker.toml"
    text = toml.read_text()
    # [storage] url out, [broker] database = "..." (releases before the URL) in.
    text = text.replace('url = "sqlite:///var/state.db"', "", 1)
    toml.write_text(text.replace("[broker]\n", '[broker]\ndatabase = "var/old.db"\n', 1))
    assert load_config(home).database == home / "var" / "old.db"


def test_a_postgresql_url_gets_the_psycopg_driver(tmp_path: Path) -> None:
    home = _home(tmp_path / "home", "postgresql://broker@db.example/kela")
    cfg = load_config(home)
    assert cfg.storage_url == "postgresql+psycopg://broker@db.example/kela"
    assert cfg.database is None


@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"),
                                               blacklist_characters="/\x00"),
                        min_size=1, max_size=12).filter(lambda s: s not in (".", "..")),
                min_size=1, max_size=4))
def test_a_path_comes_back_from_its_url_exactly(parts: list[str]) -> None:
    path = Path("/", *parts, "state.db")
    assert sqlite_path(sqlite_url(path)) == path


@pytest.mark.parametrize("name", [AWKWARD, "plain", "100%", "a?mode=rwc", "#x"])
@pytest.mark.parametrize("mode", ["ro", "rw"])
def test_sqlite_file_uris_open_the_file_named(tmp_path: Path, name: str, mode: str) -> None:
    path = tmp_path / name / "state.db"
    path.parent.mkdir()
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE marker (x)")
    with contextlib.closing(sqlite3.connect(sqlite_file_uri(path, mode), uri=True)) as c:
        assert c.execute("SELECT name FROM sqlite_master").fetchall() == [("marker",)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_database_is_refused_by_the_config_check(tmp_path: Path, url: str) -> None:
    """It would keep nothing across a restart (and crashed at the engine before)."""
    from broker.errors import ConfigErrors

    home = _home(tmp_path / "home", url)
    with pytest.raises(ConfigErrors, match="in-memory database"):
        load_config(home)
