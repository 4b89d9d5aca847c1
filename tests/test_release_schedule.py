"""Staggered first delivery end to end through the CLI (issue 5)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from daemon_support import DaemonProcess, cli, delivered_ids, drop, make_home, wait_for
from lxml import etree

from broker.intake.synthetic import write_batch

pytestmark = pytest.mark.both_engines  # conftest.py: SQLite and PostgreSQL

HKI = ZoneInfo("Europe/Helsinki")


def next_monday_0600(today: date) -> datetime:
    days = (7 - today.weekday()) % 7 or 7  # a later date, never today
    return datetime.combine(today + timedelta(days=days), datetime.min.time(),
                            tzinfo=HKI).replace(hour=6)


def test_thousand_for_a_new_organisation_go_out_300_a_week(tmp_path: Path) -> None:
    # Since 2025 IMMIGRANT goes to the municipality (SPEC 3): Tampere's first delivery.
    home = make_home(tmp_path / "home")
    today = datetime.now(UTC).astimezone(HKI).date()
    batch = tmp_path / "backlog.xml"
    write_batch(batch, count=1000, municipalities=["837"], types=["IMMIGRANT"],
                decision_date=today, batch_id="BACKLOG-1", seed=3)
    pirha = home / "outbox" / "tampere"
    daemon = DaemonProcess(home).start()
    try:
        drop(home, batch)
        wait_for(lambda: daemon.events("released"), what="the first release")
        assert daemon.events("staggered first delivery planned", organisation="tampere",
                             type="IMMIGRANT", total=1000, portion=300)
        first = delivered_ids(pirha)
        assert len(first) == 300
        _check_portions(home, pirha, today)
    finally:
        daemon.stop()


# These passes run as of a later Monday: an early release, on purpose and on the record.
FUTURE = ("--force", "--reason", "test: the pass a later Monday will run")


def _check_portions(home: Path, pirha: Path, today: date) -> None:
    plan = json.loads(cli(home, "schedule", "--org", "tampere", "--json").stdout)
    assert [(p["portion"], p["count"]) for p in plan] == [(1, 300), (2, 300), (3, 100)]
    monday = next_monday_0600(today)
    assert datetime.fromisoformat(plan[0]["release_at"]) == monday
    assert datetime.fromisoformat(plan[1]["release_at"]) == monday + timedelta(days=7)

    just_before = (monday - timedelta(seconds=1)).isoformat()
    cli(home, "release-due", "--now", just_before, *FUTURE)
    assert len(delivered_ids(pirha)) == 300

    cli(home, "release-due", "--now", monday.isoformat(), *FUTURE)
    second = delivered_ids(pirha)
    assert len(second) == 600 and len(set(second)) == 600
    files = sorted(pirha.glob("D-*.xml"))
    again = cli(home, "release-due", "--now", monday.isoformat(), *FUTURE).stdout
    assert "released 0 file(s)" in again
    assert sorted(pirha.glob("D-*.xml")) == files
    # Oldest first: the synthetic ids count up in arrival order.
    assert second == sorted(second, key=lambda i: int(i.rsplit("-", 1)[-1]))

    # Two missed Mondays later: the last portion once, nothing twice.
    later = monday + timedelta(days=14, hours=3)
    cli(home, "release-due", "--now", later.isoformat(), *FUTURE)
    final = delivered_ids(pirha)
    assert len(final) == 1000 and len(set(final)) == 1000
    assert len(list(pirha.glob("D-*.xml"))) == 4


def test_operator_releases_the_next_portion_early_with_a_reason(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    today = datetime.now(UTC).astimezone(HKI).date()
    batch = tmp_path / "backlog.xml"
    write_batch(batch, count=700, municipalities=["837"], types=["IMMIGRANT"],
                decision_date=today, batch_id="BACKLOG-2", seed=5)
    cli(home, "ingest", str(batch))
    pirha = home / "outbox" / "tampere"
    assert len(delivered_ids(pirha)) == 300
    out = cli(home, "release", "--org", "tampere", "--type", "IMMIGRANT",
              "--reason", "county asked for the rest of the backlog now").stdout
    assert "300 held item(s)" in out
    assert len(delivered_ids(pirha)) == 600
    cli(home, "release", "--org", "tampere", "--all", "--reason", "go-live weekend")
    assert len(set(delivered_ids(pirha))) == 700
    audit = cli(home, "audit", "show", "--org", "tampere", "--json").stdout
    assert "county asked for the rest of the backlog now" in audit
    unknown = cli(home, "release", "--org", "nobody", "--reason", "x", check=False)
    assert unknown.returncode == 2 and "unknown organisation" in unknown.stderr


def test_next_day_type_waits_for_0600_after_the_decision(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    today = datetime.now(UTC).astimezone(HKI).date()
    batch = tmp_path / "nextday.xml"
    write_batch(batch, count=5, municipalities=["837"], types=["REDUCED_BASIC_AMOUNT"],
                decision_date=today, batch_id="ND-1", seed=11)
    cli(home, "ingest", str(batch))
    pirha = home / "outbox" / "pirha"
    urgent = len(delivered_ids(pirha))  # the generator marks a few urgent
    at_six = datetime.combine(today + timedelta(days=1), datetime.min.time(),
                              tzinfo=HKI).replace(hour=6)
    cli(home, "release-due", "--now", (at_six - timedelta(minutes=1)).isoformat(), *FUTURE)
    assert len(delivered_ids(pirha)) == urgent
    cli(home, "release-due", "--now", at_six.isoformat(), *FUTURE)
    assert len(delivered_ids(pirha)) == 5


def test_names_and_xml_use_the_configured_time_zone(tmp_path: Path) -> None:
    from daemon_support import set_keys

    home = make_home(tmp_path / "home")
    set_keys(home, "broker", timezone="America/New_York")
    ny = ZoneInfo("America/New_York")
    today = datetime.now(UTC).astimezone(ny).date()
    batch = tmp_path / "b.xml"
    write_batch(batch, count=3, municipalities=["091"], types=["IMMIGRANT"],
                decision_date=today, batch_id="TZ-1", seed=3, attachment_bytes=100)
    before = datetime.now(ny).replace(microsecond=0)
    cli(home, "ingest", str(batch))
    (path,) = (home / "outbox" / "helsinki").glob("D-*.xml")
    created = datetime.fromisoformat(etree.parse(str(path)).getroot().get("created"))
    assert created.utcoffset() == before.utcoffset()  # New York's offset, not Helsinki's
    stamp = path.name.split("-")[3]  # D-helsinki-IMMIGRANT-<local time>-<seq>.xml
    assert stamp == created.strftime("%Y%m%dT%H%M%S")
    assert created >= before
