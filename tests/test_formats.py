"""Each organisation gets its configured format: xml-v2, legacy xml-v1, or CSV lists."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from daemon_support import EXAMPLES, cli, make_home
from lxml import etree

import schemas


def set_format(home: Path, org: str, fmt: str) -> None:
    cfg = home / "config" / "broker.toml"
    text = cfg.read_text()
    start = text.index(f'id = "{org}"')
    at = text.index('format = "xml-v2"', start)
    cfg.write_text(text[:at] + f'format = "{fmt}"' + text[at + len('format = "xml-v2"'):])


def valid(path: Path) -> etree._Element:
    doc = etree.parse(str(path))
    ns = etree.QName(doc.getroot()).namespace
    schema = etree.XMLSchema(etree.parse(str(schemas.path(ns))))
    assert schema.validate(doc), schema.error_log
    return doc.getroot()


def test_legacy_and_csv_organisations(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    set_format(home, "helsinki", "xml-v1")
    set_format(home, "tampere", "csv")
    cli(home, "ingest", str(EXAMPLES / "decision-batch.xml"), str(EXAMPLES / "person-lists.xml"))

    (legacy,) = (home / "outbox" / "helsinki").glob("D-*.xml")
    root = valid(legacy)
    assert etree.QName(root).namespace == "urn:fi:kela:etotu:notification-delivery:1"
    assert b"Phone" not in legacy.read_bytes()  # v1 has no phone numbers
    assert list((home / "outbox" / "helsinki").glob("D-*.attachments.zip"))

    lists = sorted((home / "outbox" / "tampere").glob("L-*"))
    assert [p.suffix for p in lists] == [".csv", ".csv"]
    rows = list(csv.reader(io.StringIO(lists[0].read_text(encoding="utf-8-sig")),
                           delimiter=";"))
    assert rows[0][:3] == ["list_id", "type", "municipality"]
    assert {r[5] for r in rows[1:]} == {"181164V980L", "271086-950A"}

    (v2,) = (home / "outbox" / "vakehyva").glob("D-*.xml")  # others stay on xml-v2
    assert etree.QName(valid(v2)).namespace == "urn:fi:kela:etotu:notification-delivery:2"
