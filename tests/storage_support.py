"""Which database the test homes use: SQLite in the home (the default), or a fresh
database on the throwaway PostgreSQL cluster, for tests marked ``both_engines``
(conftest.py runs each of them once per engine).

Every home the tests make goes through :func:`apply`, so a test written once runs on
both engines without naming one.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.storage.store import Store

# The URL of the running test's database; None: the sample config's SQLite in var/.
current: str | None = None

# The sample config's one url line: [storage] url.
_URL_LINE = re.compile(r'^url = "[^"\n]*"$', re.MULTILINE)


def point(home: Path, url: str) -> Path:
    """Set ``home``'s ``[storage] url`` to ``url`` (whatever it named before)."""
    path = home / "config" / "broker.toml"
    text, n = _URL_LINE.subn(lambda _: f'url = "{url}"', path.read_text())
    assert n == 1, "the sample config's [storage] url line is missing"
    path.write_text(text)
    return home


def apply(home: Path) -> Path:
    """Point ``home``'s config at the running test's database (no-op for SQLite)."""
    return home if current is None else point(home, current)


def is_postgresql() -> bool:
    return current is not None and current.startswith("postgresql")


def side_by_side(url: str, work: Callable[[Store], object], n: int) -> list[object]:
    """Run ``work(store)`` in ``n`` threads at once, each with its own engine on ``url``
    (its own connections, as separate processes would have); their results, in no order.
    An exception in any thread is raised here."""
    from broker.storage.state_db import make_engine
    from broker.storage.store import Store

    results: list[object] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            store = Store(make_engine(url))  # opening is part of what runs side by side
            try:
                results.append(work(store))
            finally:
                store.engine.dispose()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
