"""A route change makes a new first delivery (SPEC 3 and 4), through the real release path.

IMMIGRANT for Tampere went to the county (pirha) until 2024-12-31 and goes to Tampere
from 2025-01-01. A backlog of 1000 re-routed notifications reaches Tampere 300 at once,
then 300 each Monday 06:00 Europe/Helsinki; the county keeps its own normal timing.
The passes run as the daemon runs them: ingest_batch, then Releaser.run(now).
"""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from daemon_support import make_home
from lxml import etree

from broker.config.settings import load_config
from broker.delivery.release import Releaser
from broker.intake.ingest import ingest_batch, report_text
from broker.intake.synthetic import write_batch
from broker.storage.state_db import make_engine
from broker.storage.store import Store

pytestmark = pytest.mark.both_engines  # conftest.py: SQLite and PostgreSQL

HKI = ZoneInfo("Europe/Helsinki")


def delivered(folder: Path) -> Counter[str]:
    seen: Counter[str] = Counter()
    for path in sorted(folder.glob("D-*.xml")):
        for _, el in etree.iterparse(str(path), tag="{*}Notification"):
            seen[el.get("id")] += 1
    return seen


def ingest(config: object, store: Store, path: Path, now: datetime) -> None:
    out = ingest_batch(path, config=config, store=store, now=now)  # type: ignore[arg-type]
    assert out.status == "accepted", report_text(out)


def test_reroute_of_1000_immigrant_notifications_is_a_staggered_first_delivery(
        tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    config = load_config(home)
    store = Store(make_engine(config.storage_url))
    releaser = Releaser(config, store)
    pirha, tampere = home / "outbox" / "pirha", home / "outbox" / "tampere"

    # 2024: the county receives Tampere's IMMIGRANT notifications.
    before = tmp_path / "2024.xml"
    write_batch(before, count=50, municipalities=["837"], types=["IMMIGRANT"],
                decision_date=date(2024, 12, 31), batch_id="OLD", seed=1)
    t0 = datetime(2024, 12, 31, 15, 0, tzinfo=HKI)
    ingest(config, store, before, t0)
    releaser.run(t0)
    assert len(delivered(pirha)) == 50 and not tampere.exists()

    # Wednesday 8 January 2025: 1000 decided since the reform, and 20 late ones from 2024.
    wed = datetime(2025, 1, 8, 10, 0, tzinfo=HKI)
    backlog = tmp_path / "2025.xml"
    write_batch(backlog, count=1000, municipalities=["837"], types=["IMMIGRANT"],
                decision_date=date(2025, 1, 7), batch_id="REFORM", seed=2)
    late = tmp_path / "late-2024.xml"
    write_batch(late, count=20, municipalities=["837"], types=["IMMIGRANT"],
                decision_date=date(2024, 12, 31), batch_id="LATE", seed=3, start_id=501)
    ingest(config, store, backlog, wed)
    ingest(config, store, late, wed)
    result = releaser.run(wed)
    assert result.plans == [("tampere", "IMMIGRANT", 1000)]
    first = delivered(tampere)
    assert len(first) == 300 and set(first.values()) == {1}
    # Oldest first: the synthetic ids count up in arrival order.
    assert sorted(first) == [f"N-2025-{i:09d}" for i in range(1, 301)]
    # The county had its first delivery long ago: the late ones go out normally, at once.
    assert len(delivered(pirha)) == 70

    # Notifications arriving after the backlog was formed follow their normal release.
    extra = tmp_path / "extra.xml"
    write_batch(extra, count=5, municipalities=["837"], types=["IMMIGRANT"],
                decision_date=date(2025, 1, 8), batch_id="EXTRA", seed=4, start_id=2001)
    wed_noon = datetime(2025, 1, 8, 12, 0, tzinfo=HKI)
    ingest(config, store, extra, wed_noon)
    releaser.run(wed_noon)
    assert len(delivered(tampere)) == 305

    # The next portion waits for Monday 06:00, and comes once.
    releaser.run(datetime(2025, 1, 13, 5, 59, tzinfo=HKI))
    assert len(delivered(tampere)) == 305
    monday = datetime(2025, 1, 13, 6, 0, tzinfo=HKI)
    releaser.run(monday)
    assert len(delivered(tampere)) == 605
    files = sorted(tampere.glob("D-*.xml"))
    releaser.run(monday)
    assert sorted(tampere.glob("D-*.xml")) == files

    # Monday the 20th is missed (downtime): both remaining portions once, nothing twice.
    releaser.run(datetime(2025, 1, 27, 9, 0, tzinfo=HKI))
    final = delivered(tampere)
    assert len(final) == 1005 and set(final.values()) == {1}
    assert len(list(tampere.glob("D-*.xml"))) == 5  # 300, 5, 300, 300, 100
    assert len(delivered(pirha)) == 70
