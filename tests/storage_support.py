"""Which database the test homes use: SQLite in the home (the default), or a fresh
database on the throwaway PostgreSQL cluster, for tests marked ``both_engines``
(conftest.py runs each of them once per engine).

Every home the tests make goes through :func:`apply`, so a test written once runs on
both engines without naming one.
"""

from __future__ import annotations

import re
from pathlib import Path

# The URL of the running test's database; None: the sample config's SQLite in var/.
current: str | None = None

_URL_LINE = re.compile(r'^url = "sqlite:///var/state\.db"$', re.MULTILINE)


def apply(home: Path) -> Path:
    """Point ``home``'s config at the running test's database (no-op for SQLite)."""
    if current is not None:
        path = home / "config" / "broker.toml"
        text, n = _URL_LINE.subn(f'url = "{current}"', path.read_text())
        assert n == 1, "the sample config's [storage] url line is missing"
        path.write_text(text)
    return home


def is_postgresql() -> bool:
    return current is not None and current.startswith("postgresql")
