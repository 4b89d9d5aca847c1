"""The 300-day labour market subsidy list (SPEC 2): in, checked, routed, and out as XML and CSV.

Round trip: a batch carrying the list is read by the validator into a PersonList,
rendered as xml-v2, xml-v1 and CSV, and each rendering reads back to the same entries.
The 200-day list (the 2017 pilot) stays valid beside it.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime
from pathlib import Path
from xml.sax.saxutils import escape

import pytest
from daemon_support import make_home
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

import schemas
from broker.config.settings import Format, load_config
from broker.delivery.release import Releaser
from broker.delivery.render import render_person_list
from broker.delivery.render_csv import CSV_ENCODING
from broker.domain import pic
from broker.domain.model import ListEntry, ListType, PersonList
from broker.errors import InvalidFile
from broker.intake.ingest import ingest_batch, report_text
from broker.intake.validation import BatchContext, BatchReader
from broker.storage.state_db import make_engine
from broker.storage.store import Store

NS = "urn:fi:kela:etotu:decision-batch:2"
NS_OUT = {"xml-v2": "urn:fi:kela:etotu:notification-delivery:2",
          "xml-v1": "urn:fi:kela:etotu:notification-delivery:1"}
TYPE = ListType.LABOUR_MARKET_SUBSIDY_300_DAYS.value
CREATED = datetime(2026, 11, 1, 1, 0, tzinfo=UTC)
ENTRIES = (
    ListEntry(pic.make(date(1964, 11, 18), 980), "Korhonen", "Juho Kalle", 300, "PAID_300_DAYS"),
    ListEntry(pic.make(date(1986, 10, 27), 950), "Öhman", "Ella", 1, "AFTER_MAX_PERIOD"),
)


def batch_xml(entries: tuple[ListEntry, ...], type_: str = TYPE) -> str:
    rows = "".join(
        f"    <Entry>\n      <PersonalIdentityCode>{e.pic}</PersonalIdentityCode>\n"
        f"      <FamilyName>{escape(e.family_name)}</FamilyName>\n"
        f"      <GivenNames>{escape(e.given_names)}</GivenNames>\n"
        f"      <Days>{e.days}</Days>\n      <Reason>{e.reason}</Reason>\n    </Entry>\n"
        for e in entries)
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<DecisionBatch xmlns="{NS}" '
            f'batchId="L300" created="2026-11-01T03:00:00+02:00">\n'
            f'  <PersonList id="L-2026-10-837-TMT300" type="{type_}" municipality="837" '
            f'periodStart="2026-10-01" periodEnd="2026-10-31">\n{rows}  </PersonList>\n'
            "</DecisionBatch>\n")


def read_batch(path: Path) -> list[object]:
    ctx = BatchContext(municipalities=frozenset({"837"}), today=date(2026, 11, 1),
                       max_file_bytes=1 << 30)
    return list(BatchReader(path, ctx))


def xml_entries(data: bytes, fmt: str) -> tuple[PersonList, list[ListEntry]]:
    doc = etree.fromstring(data)
    schema = etree.XMLSchema(etree.parse(str(schemas.path(NS_OUT[fmt]))))
    assert schema.validate(doc), schema.error_log
    ns = {"d": NS_OUT[fmt]}
    (pl,) = doc.findall("d:PersonList", ns)
    assert pl.get("type") == TYPE
    out = []
    for e in pl.findall("d:Entry", ns):
        days = e.findtext("d:Days", namespaces=ns)
        out.append(ListEntry(e.findtext("d:PersonalIdentityCode", namespaces=ns) or "",
                             e.findtext("d:FamilyName", namespaces=ns) or "",
                             e.findtext("d:GivenNames", namespaces=ns) or "",
                             None if days is None else int(days),
                             e.findtext("d:Reason", namespaces=ns),
                             e.findtext("d:Amount", namespaces=ns)))
    return PersonList("", TYPE, "", date.min, date.min, ()), out


def csv_entries(data: bytes) -> list[ListEntry]:
    rows = list(csv.reader(io.StringIO(data.decode(CSV_ENCODING), newline=""), delimiter=";"))
    assert rows[0][1] == "type"
    assert {r[1] for r in rows[1:]} == {TYPE}
    return [ListEntry(r[5], r[6], r[7], int(r[8]) if r[8] else None, r[9] or None, r[10] or None)
            for r in rows[1:]]


def render(plist: PersonList, fmt: Format) -> bytes:
    out = io.BytesIO()
    render_person_list(out, delivery_id="L-tampere-X-20261101T030000-000001",
                       organisation="tampere", created=CREATED, plist=plist, fmt=fmt)
    return out.getvalue()


def round_trip(tmp: Path, entries: tuple[ListEntry, ...]) -> None:
    path = tmp / "l300.xml"
    path.write_text(batch_xml(entries), encoding="utf-8")
    (plist,) = read_batch(path)
    assert isinstance(plist, PersonList) and plist.type == TYPE
    assert plist.entries == entries
    for fmt in ("xml-v2", "xml-v1"):
        assert xml_entries(render(plist, fmt), fmt)[1] == list(entries)
    assert csv_entries(render(plist, "csv")) == list(entries)


def test_300_day_list_round_trips_through_xml_and_csv(tmp_path: Path) -> None:
    round_trip(tmp_path, ENTRIES)


NAMES = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Cn")),
                min_size=1, max_size=30).map(str.strip).filter(bool)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.dates(date(1930, 1, 1), date(2008, 12, 31)),
                          st.integers(900, 999), NAMES, NAMES, st.integers(1, 999),
                          st.sampled_from(["PAID_300_DAYS", "AFTER_MAX_PERIOD"])),
                min_size=1, max_size=6))
def test_property_300_day_entries_read_back_exactly(tmp_path: Path, rows: list[tuple[
        date, int, str, str, int, str]]) -> None:
    entries = tuple(ListEntry(pic.make(born, n), family, given, days, reason)
                    for born, n, family, given, days, reason in rows)
    round_trip(tmp_path, entries)


@pytest.mark.parametrize(("type_", "reason"), [
    (TYPE, "PAID_200_DAYS"),  # the pilot's reason does not belong in today's list
    (ListType.LABOUR_MARKET_SUBSIDY_200_DAYS.value, "PAID_300_DAYS"),
])
def test_reason_must_fit_the_list(tmp_path: Path, type_: str, reason: str) -> None:
    path = tmp_path / "bad.xml"
    path.write_text(batch_xml((ListEntry(ENTRIES[0].pic, "Korhonen", "Juho", 300, reason),),
                              type_), encoding="utf-8")
    with pytest.raises(InvalidFile) as exc:
        read_batch(path)
    assert any(f"Reason {reason} does not belong in {type_} lists" in p.message
               for p in exc.value.problems)


def test_200_day_list_stays_valid(tmp_path: Path) -> None:
    path = tmp_path / "l200.xml"
    old = (ListEntry(ENTRIES[0].pic, "Korhonen", "Juho", 200, "PAID_200_DAYS"),)
    path.write_text(batch_xml(old, ListType.LABOUR_MARKET_SUBSIDY_200_DAYS.value),
                    encoding="utf-8")
    (plist,) = read_batch(path)
    assert isinstance(plist, PersonList) and plist.entries == old


def test_300_day_list_reaches_the_municipality_whole(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    config = load_config(home)
    store = Store(make_engine(config.storage_url))
    path = tmp_path / "l300.xml"
    path.write_text(batch_xml(ENTRIES), encoding="utf-8")
    now = datetime(2026, 11, 1, 3, 0, tzinfo=UTC)
    out = ingest_batch(path, config=config, store=store, now=now)
    assert out.status == "accepted", report_text(out)
    Releaser(config, store).run(now)
    (delivered,) = (home / "outbox" / "tampere").glob(f"L-tampere-{TYPE}-*.xml")
    assert xml_entries(delivered.read_bytes(), "xml-v2")[1] == list(ENTRIES)


@pytest.mark.parametrize(("namespace", "simple_type"), [
    (NS, "ListType"), (NS_OUT["xml-v2"], "ListKind"), (NS_OUT["xml-v1"], "ListKind")])
def test_every_list_type_is_in_every_schema(namespace: str, simple_type: str) -> None:
    xs = "{http://www.w3.org/2001/XMLSchema}"
    doc = etree.parse(str(schemas.path(namespace)))
    (node,) = [n for n in doc.iter(f"{xs}simpleType") if n.get("name") == simple_type]
    assert {e.get("value") for e in node.iter(f"{xs}enumeration")} == {t.value for t in ListType}


def test_synthetic_batches_carry_valid_300_day_lists(tmp_path: Path) -> None:
    from broker.intake.synthetic import write_batch

    path = tmp_path / "synthetic.xml"
    write_batch(path, count=3, municipalities=["837"], decision_date=date(2026, 10, 31),
                batch_id="SYN", seed=8, lists=len(ListType))
    lists = [i for i in read_batch(path) if isinstance(i, PersonList)]
    assert {pl.type for pl in lists} == {t.value for t in ListType}
    (l300,) = [pl for pl in lists if pl.type == TYPE]
    assert {e.reason for e in l300.entries} <= {"PAID_300_DAYS", "AFTER_MAX_PERIOD"}
