"""The daemon end to end: a real process, real folders, real SQLite (issue 4)."""

from __future__ import annotations

import json
import re
import signal
import urllib.request
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from daemon_support import (
    EXAMPLES,
    DaemonProcess,
    cli,
    drop,
    make_home,
    wait_for,
    wait_released,
)
from lxml import etree

import schemas
from broker.intake.synthetic import write_batch

pytestmark = pytest.mark.both_engines  # conftest.py: SQLite and PostgreSQL

NS_V2 = "urn:fi:kela:etotu:notification-delivery:2"


def delivered_files(home: Path) -> list[Path]:
    return sorted(p for p in (home / "outbox").rglob("*")
                  if p.is_file() and not p.name.startswith(".") and p.parent.name != "acks")


def assert_valid_delivery(path: Path) -> etree._Element:
    doc = etree.parse(str(path), etree.XMLParser(resolve_entities=False, no_network=True))
    ns = etree.QName(doc.getroot()).namespace
    schema = etree.XMLSchema(etree.parse(str(schemas.path(ns))))
    assert schema.validate(doc), f"{path.name}: {schema.error_log}"
    return doc.getroot()


def test_demo_batch_is_released_and_next_day_types_are_held(daemon: DaemonProcess) -> None:
    home = daemon.home
    cli(home, "demo", "--count", "60", "--lists", "2")
    wait_for(lambda: not any((home / "inbox" / "kela").iterdir()), what="batch picked up")
    wait_for(lambda: any(p.suffix == ".xml" for p in delivered_files(home)), what="deliveries")

    def settled() -> dict[str, Any] | None:
        # The first file can appear while the same pass still writes others (their rows
        # are 'releasing'); since 2025 IMMIGRANT adds a delivery per municipality.
        status = json.loads(cli(home, "status", "--json").stdout)
        released = sum(a["count"] for a in status["assignments"] if a["state"] == "released")
        held = sum(h["count"] for h in status["held"])
        return status if released + held == 62 else None

    status = wait_for(settled, what="62 items released or held")
    assert isinstance(status, dict)
    held_types = {h["type"] for h in status["held"]}
    assert held_types <= {"SUPPLEMENTARY_ASSISTANCE_NEED", "REDUCED_BASIC_AMOUNT"}
    released = sum(a["count"] for a in status["assignments"] if a["state"] == "released")

    def all_released_written() -> bool:
        notes = sum(int(assert_valid_delivery(p).get("count", "1"))
                    for p in delivered_files(home)
                    if p.suffix == ".xml" and p.name.startswith("D-"))
        return notes + 2 == released
    wait_for(all_released_written, what="every released notification on disk")
    for path in delivered_files(home):
        if path.name.endswith(".attachments.zip"):
            xml = path.with_name(path.name.replace(".attachments.zip", ".xml"))
            root = assert_valid_delivery(xml)
            names = {a.get("fileName") for a in root.iter(f"{{{NS_V2}}}Attachment")}
            assert set(zipfile.ZipFile(path).namelist()) == names
        if path.suffix == ".xml":
            assert path.stat().st_mode & 0o077 == 0, "delivery readable by others"
            for el in assert_valid_delivery(path).iter(f"{{{NS_V2}}}Notification"):
                # next-day types go out on the decision day only when urgent (SPEC 2)
                assert el.get("type") not in held_types or el.get("urgent") == "true"
    table = cli(home, "status").stdout
    assert "next release (Helsinki)" in table
    tomorrow_0600 = [h["release_at"] for h in status["held"]]
    assert all(t.endswith(("T03:00:00+00:00", "T04:00:00+00:00")) for t in tomorrow_0600)


def test_bad_input_is_quarantined_with_a_report_and_the_daemon_stays_up(
        daemon: DaemonProcess, tmp_path: Path) -> None:
    home = daemon.home
    bad = tmp_path / "bad.xml"
    text = (EXAMPLES / "decision-batch.xml").read_text()
    bad.write_text(text.replace("021054X912P", "021054X912A"))
    drop(home, bad)
    notxml = tmp_path / "garbage.xml"
    notxml.write_bytes(b"\x00\x01 this is not xml")
    drop(home, notxml)
    quarantine = home / "var" / "quarantine"
    reports = wait_for(lambda: len(list(quarantine.glob("*.report.txt"))) == 2 and
                       list(quarantine.glob("*.report.txt")), what="two reports")
    texts = "\n".join(p.read_text() for p in reports)  # type: ignore[union-attr]
    assert "line 25: INVALID_VALUE" in texts and "check character" in texts
    assert "021054X912A" not in texts, "a full identity code in a report"
    assert "NOT_WELL_FORMED" in texts
    assert daemon.alive()
    drop(home, EXAMPLES / "decision-batch.xml")
    wait_for(lambda: list((home / "outbox" / "helsinki").glob("D-*.xml")), what="good batch")
    health = urllib.request.urlopen(f"http://127.0.0.1:{daemon.metrics_port}/healthz")
    assert health.status == 200
    metrics = urllib.request.urlopen(
        f"http://127.0.0.1:{daemon.metrics_port}/metrics").read().decode()
    assert 'kela_broker_input_files_total{source="kela",status="rejected"} 2.0' in metrics
    assert 'kela_broker_input_files_total{source="kela",status="accepted"} 1.0' in metrics


def test_resend_is_a_noop_and_changed_content_is_rejected(
        daemon: DaemonProcess, tmp_path: Path) -> None:
    home = daemon.home
    drop(home, EXAMPLES / "decision-batch.xml")
    wait_released(daemon, archived=1)
    before = delivered_files(home)
    assert before, "the example batch has immediate notifications"
    drop(home, EXAMPLES / "decision-batch.xml", "again.xml")
    wait_for(lambda: len(list((home / "var" / "archive").rglob("*.xml"))) == 2, what="archive")
    changed = tmp_path / "changed.xml"
    changed.write_text((EXAMPLES / "decision-batch.xml").read_text()
                       .replace("Asiakas tarvitsee tulkin (arabia).", "Toinen teksti."))
    drop(home, changed)
    report = wait_for(lambda: list((home / "var" / "quarantine").glob("*.report.txt")),
                      what="conflict report")
    text = report[0].read_text()  # type: ignore[index]
    assert "N-2026-000000001 was received before with different content" in text
    assert delivered_files(home) == before


def test_invalid_config_reload_keeps_the_running_config(daemon: DaemonProcess) -> None:
    home = daemon.home
    cfg = home / "config" / "broker.toml"
    cfg.write_text(cfg.read_text().replace('IMMIGRANT = "immediate"', 'IMMIGRANT = "soon"'))
    wait_for(lambda: daemon.events(
        "configuration reload failed; keeping the running configuration"), what="reload log")
    assert daemon.alive()
    drop(home, EXAMPLES / "decision-batch.xml")
    wait_for(lambda: list((home / "outbox" / "helsinki").glob("D-*IMMIGRANT*.xml")),
             what="delivery under the old config")


def test_sigterm_stops_cleanly(tmp_path: Path) -> None:
    d = DaemonProcess(make_home(tmp_path / "home")).start()
    assert d.stop() == 0
    assert not (d.home / "var" / "run.json").exists()


def test_everything_the_daemon_writes_is_private(daemon: DaemonProcess) -> None:
    home = daemon.home
    drop(home, EXAMPLES / "decision-batch.xml")
    wait_released(daemon, archived=1)

    def mode(p: Path) -> int:
        try:
            return p.lstat().st_mode
        except FileNotFoundError:  # a temporary file renamed meanwhile: its target is seen
            return 0

    leaks = [p for p in [*(home / "var").rglob("*"), *(home / "outbox").rglob("*")]
             if mode(p) & 0o077]
    assert leaks == [], leaks


def test_sighup_reloads_the_configuration(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    cfg = home / "config" / "broker.toml"
    # A slow rescan, so that only the signal (not the file watch) can trigger the reload.
    cfg.write_text(cfg.read_text().replace("rescan_seconds = 2.0", "rescan_seconds = 3600"))
    d = DaemonProcess(home).start()
    try:
        cfg.write_text(cfg.read_text().replace('IMMIGRANT = "immediate"',
                                               'IMMIGRANT = "next-day 06:00"'))
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: d.events("configuration reloaded"), what="reload on SIGHUP")
        today = datetime.now(UTC).astimezone(ZoneInfo("Europe/Helsinki")).date()
        batch = tmp_path / "today.xml"
        write_batch(batch, count=4, municipalities=["091"], types=["IMMIGRANT"],
                    decision_date=today, batch_id="HUP-1", seed=1)
        batch.write_text(batch.read_text().replace(' urgent="true"', ""))
        drop(home, batch)
        wait_for(lambda: d.events("batch accepted"), what="batch accepted")
        status = json.loads(cli(home, "status", "--json").stdout)
        assert [(h["organisation"], h["type"], h["count"]) for h in status["held"]] == \
            [("helsinki", "IMMIGRANT", 4)], "the reloaded timing was not applied"
        assert not list((home / "outbox" / "helsinki").glob("D-*IMMIGRANT*"))
    finally:
        d.stop()


def _deliveries(home: Path) -> dict[str, list[tuple[str, tuple[str, ...]]]]:
    """Per organisation: each delivery file as (name without its time, ids in it)."""
    out: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
    for folder in sorted(p for p in (home / "outbox").iterdir() if p.is_dir()):
        files = []
        for path in sorted(folder.glob("[DL]-*")):
            if path.suffix == ".zip":
                files.append((re.sub(r"\d{8}T?\d{4,6}", "T", path.name),
                              tuple(sorted(zipfile.ZipFile(path).namelist()))))
                continue
            root = etree.parse(str(path), etree.XMLParser(resolve_entities=False))
            ids = sorted(el.get("id") for el in root.iter()
                         if isinstance(el.tag, str) and el.get("id")
                         and etree.QName(el).localname in ("Notification", "PersonList"))
            files.append((re.sub(r"\d{8}T?\d{4,6}", "T", path.name), tuple(ids)))
        if files:
            out[folder.name] = files
    return out


@pytest.mark.sqlite_only  # it makes one home on each engine itself
def test_run_then_demo_gives_the_same_deliveries_on_postgresql_as_on_sqlite(
        tmp_path: Path, pg_cluster) -> None:  # type: ignore[no-untyped-def]
    import storage_support

    from broker.config.settings import load_config

    homes = {"sqlite": make_home(tmp_path / "sqlite")}
    storage_support.current = pg_cluster.create_database("same_deliveries")
    try:
        homes["postgresql"] = make_home(tmp_path / "postgresql")
    finally:
        storage_support.current = None
    cfg = load_config(homes["sqlite"])
    batch = tmp_path / "demo.xml"  # what `demo` writes, with a fixed seed
    today = datetime.now(ZoneInfo(cfg.timezone)).date()
    write_batch(batch, count=120, municipalities=sorted(cfg.register.codes)[:40],
                decision_date=today, batch_id="SAME", seed=11, lists=2, attachment_bytes=64)
    seen = {}
    for engine, home in homes.items():
        drop(home, batch)  # waiting before the start: taken, released, then it stops
        d = DaemonProcess(home, until_idle=True).start()
        assert d.wait_idle() == 0
        assert d.events("stopped")
        seen[engine] = _deliveries(home)
    assert seen["sqlite"], "nothing was delivered"
    assert seen["postgresql"] == seen["sqlite"]
