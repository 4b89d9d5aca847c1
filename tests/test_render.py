"""Delivery files (SPEC 5): XML v2/v1, person lists, CSV, the attachments zip, member names."""

from __future__ import annotations

import base64
import csv
import functools
import hashlib
import io
import unicodedata
import zipfile
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import IO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

import schemas
from broker.delivery.render import (
    CSV_HEADER,
    Format,
    attachments_zip_name,
    delivery_file_name,
    delivery_stem,
    list_file_name,
    render_notification_delivery,
    render_person_list,
    safe_member_names,
    write_attachments_zip,
)
from broker.domain import pic
from broker.domain.model import Attachment, ListEntry, Notification, Person, PersonList
from broker.errors import DeliveryError
from broker.storage.files import atomic_writer

EXAMPLES = Path(__file__).resolve().parents[1] / "contracts" / "examples"
NS1 = "urn:fi:kela:etotu:notification-delivery:1"
NS2 = "urn:fi:kela:etotu:notification-delivery:2"
NS_BATCH = "urn:fi:kela:etotu:decision-batch:2"
CREATED = datetime(2026, 11, 20, 14, 10, tzinfo=timezone(timedelta(hours=2)))
WINDOWS_FORBIDDEN = set('/\\:*?"<>|')
RESERVED = {"CON", "PRN", "AUX", "NUL"} | {f"{d}{i}" for d in ("COM", "LPT") for i in range(10)}


@functools.cache
def schema(ns: str) -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(schemas.path(ns))))


def assert_valid(data: bytes, ns: str) -> etree._Element:
    doc = etree.fromstring(data)
    xsd = schema(ns)
    assert xsd.validate(doc), xsd.error_log
    return doc


def example_notification() -> tuple[Notification, dict[str, bytes]]:
    """N-2026-000000001 from the contract's decision batch, attachments decoded from base64."""
    batch = etree.parse(str(EXAMPLES / "decision-batch.xml"))
    ns = {"b": NS_BATCH}
    n = batch.find("b:Notification[@id='N-2026-000000001']", ns)
    assert n is not None
    blobs: dict[str, bytes] = {}
    attachments = []
    for a in n.findall("b:Attachment", ns):
        data = base64.b64decode(a.text or "")
        assert hashlib.sha256(data).hexdigest() == a.get("sha256")
        blobs[a.get("sha256", "")] = data
        attachments.append(
            Attachment(a.get("documentName", ""), a.get("mediaType", ""), a.get("sha256", ""),
                       len(data)))
    p = n.find("b:Person", ns)
    assert p is not None

    def t(el: etree._Element, tag: str) -> str:
        return el.findtext(f"b:{tag}", namespaces=ns) or ""

    note = Notification(
        id="N-2026-000000001",
        type="IMMIGRANT",
        municipality=t(n, "Municipality"),
        decision_date=date.fromisoformat(t(n, "DecisionDate")),
        person=Person(t(p, "PersonalIdentityCode"), t(p, "FamilyName"), t(p, "GivenNames"),
                      t(p, "Language"), t(p, "Phone")),
        additional_info=t(n, "AdditionalInfo"),
        attachments=tuple(attachments),
    )
    return note, blobs


def shape(el: etree._Element) -> object:
    """Tag, attributes, text and children, ignoring indentation: the infoset that matters."""
    return (el.tag, dict(el.attrib), (el.text or "").strip(), [shape(c) for c in el])


def render(notes: Sequence[Notification], fmt: Format = "xml-v2", **kw: object) -> bytes:
    out = io.BytesIO()
    render_notification_delivery(
        out, delivery_id="D-helsinki-IMMIGRANT-20261120T141000-000001", organisation="helsinki",
        created=CREATED, notifications=notes, fmt=fmt, **kw)  # type: ignore[arg-type]
    return out.getvalue()


def opener(blobs: dict[str, bytes]) -> Callable[[str], IO[bytes]]:
    return lambda sha: io.BytesIO(blobs[sha])


# --- names -------------------------------------------------------------------------


def test_delivery_stem_matches_contract_example() -> None:
    stem = delivery_stem("helsinki", "IMMIGRANT", CREATED, 1)
    assert stem == "D-helsinki-IMMIGRANT-20261120T141000-000001"
    # Same instant given in UTC: the name uses Helsinki local time.
    assert delivery_stem("helsinki", "IMMIGRANT", CREATED.astimezone(UTC), 1) == stem
    assert delivery_file_name(stem) == stem + ".xml"
    assert attachments_zip_name(stem) == stem + ".attachments.zip"


def test_names_refuse_unsafe_input() -> None:
    with pytest.raises(ValueError):
        delivery_stem("helsinki", "IMMIGRANT", datetime(2026, 11, 20, 14, 10), 1)
    with pytest.raises(DeliveryError):
        delivery_stem("../etc", "IMMIGRANT", CREATED, 1)
    with pytest.raises(DeliveryError):
        delivery_stem("helsinki", "NOT_A_TYPE", CREATED, 1)


def test_list_file_name_shows_type_and_time() -> None:
    plist = example_lists()[0]
    summer = datetime(2026, 7, 1, 3, 0, tzinfo=UTC)  # 06:00 in Helsinki (EEST)
    assert list_file_name("tampere", plist, summer, 7, "csv") == (
        "L-tampere-LABOUR_MARKET_SUBSIDY_200_DAYS-20260701T060000-000007.csv")
    assert list_file_name("tampere", plist, summer, 8, "xml-v1").endswith("-000008.xml")


def test_contract_example_member_names() -> None:
    assert safe_member_names(
        "N-2026-000000001", ["Päätös perustoimeentulotuesta.pdf", "Laskelma: marraskuu/2026.pdf"]
    ) == [
        "N-2026-000000001/Päätös perustoimeentulotuesta.pdf",
        "N-2026-000000001/Laskelma_ marraskuu_2026.pdf",
    ]


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["CON.pdf", "con", "nul.tar.gz", "COM1.txt", "LPT9", "CONSOLE.pdf"],
         ["_CON.pdf", "_con", "_nul.tar.gz", "_COM1.txt", "_LPT9", "CONSOLE.pdf"]),
        (["a/b\\c:d"], ["a_b_c_d"]),
        (['x*y?"z"<w>|.pdf'], ["x_y__z__w__.pdf"]),
        (["report.pdf", "report.pdf", "REPORT.pdf", "report (2).pdf"],
         ["report.pdf", "report (2).pdf", "REPORT (3).pdf", "report (2) (2).pdf"]),
        (["name.  . ", "...", "   ", ""],
         ["name", "attachment", "attachment (2)", "attachment (3)"]),
        ([".bashrc"], ["_bashrc"]),
        (["tab\there\nnewline\x00.pdf"], ["tab_here_newline_.pdf"]),
        (["invoice\u202efdp.exe"], ["invoice_fdp.exe"]),  # right-to-left override disguise
        (["Ma\u0308kinen.pdf"], ["Mäkinen.pdf"]),  # NFD in, NFC out
        (["Päätös.pdf", "PÄÄTÖS.PDF"], ["Päätös.pdf", "PÄÄTÖS (2).PDF"]),
    ],
)
def test_nasty_document_names(names: list[str], expected: list[str]) -> None:
    got = safe_member_names("N-1", names)
    assert got == [f"N-1/{e}" for e in expected]


def test_long_names_are_cut_keeping_extension_and_unique() -> None:
    long = "ä" * 300 + ".pdf"
    got = [n.split("/", 1)[1] for n in safe_member_names("N-1", [long, long])]
    assert got[0].endswith(".pdf") and got[1].endswith(" (2).pdf")
    assert got[0] != got[1]
    for name in got:
        assert len(name) <= 100
        assert len(name.encode()) <= 240


def test_unusable_notification_id_is_refused() -> None:
    with pytest.raises(DeliveryError):
        safe_member_names("../../etc", ["a.pdf"])


def windows_safe(name: str) -> bool:
    return (
        0 < len(name.encode("utf-16-le")) // 2 <= 100
        and len(name.encode()) <= 240
        and not any(c in WINDOWS_FORBIDDEN or ord(c) < 32 for c in name)
        and not any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in name)
        and name[-1] not in ". "
        and not name.startswith((".", " "))
        and name.split(".")[0].rstrip().upper() not in RESERVED
        and unicodedata.is_normalized("NFC", name)
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=300), max_size=12))
def test_property_member_names_unique_safe_bounded(names: list[str]) -> None:
    got = safe_member_names("N-2026-000000001", names)
    assert len(got) == len(names)
    assert len({g.casefold() for g in got}) == len(got)
    for g in got:
        folder, name = g.split("/", 1)
        assert folder == "N-2026-000000001"
        assert windows_safe(name), repr(name)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["a.pdf", "A.PDF", "a (2).pdf", "CON", "con.", "x" * 120]),
                max_size=20))
def test_property_heavy_duplicates_stay_unique(names: list[str]) -> None:
    got = safe_member_names("N-1", names)
    assert len({g.casefold() for g in got}) == len(names)
    assert all(windows_safe(g.split("/", 1)[1]) for g in got)


XML_TEXT = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\ufffe\uffff",
                  min_codepoint=0x20) | st.sampled_from("\t/\\:.. CON"),
    min_size=1, max_size=200)


@settings(max_examples=100, deadline=None)
@given(st.lists(XML_TEXT, min_size=1, max_size=5))
def test_property_file_names_satisfy_the_schema(names: list[str]) -> None:
    """The XSD's fileName rule and the renderer agree on whatever Kela sends."""
    atts = tuple(Attachment(n, "application/pdf", "0" * 64, 1) for n in names)
    note = Notification("N-1", "IMMIGRANT", "091", date(2026, 11, 20),
                        Person(pic.make(date(1990, 1, 1), 990), "A", "B", "fi"),
                        attachments=atts)
    assert_valid(render([note]), NS2)
    assert_valid(render([note], "xml-v1"), NS1)


# Text as a parsed XML document can hold it: any character XML allows, CR/LF/tab included.
ANY_XML_TEXT = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\ufffe\uffff",
                  min_codepoint=0x20) | st.sampled_from("\t\n\r&<>\"']]>"),
    min_size=1, max_size=60)


@settings(max_examples=150, deadline=None)
@given(family=ANY_XML_TEXT, info=ANY_XML_TEXT, doc=ANY_XML_TEXT, phone=ANY_XML_TEXT,
       urgent=st.booleans())
def test_property_every_value_reads_back_exactly(
    family: str, info: str, doc: str, phone: str, urgent: bool
) -> None:
    """The delivery is written as text for speed: whatever the values hold, an XML
    parser reads back exactly those values (escaping of & < > quotes, CR, LF, tab)."""
    note = Notification("N-1", "IMMIGRANT", "091", date(2026, 11, 20),
                        Person(pic.make(date(1990, 1, 1), 990), family, "B", "fi", phone),
                        urgent=urgent, additional_info=info,
                        attachments=(Attachment(doc, "application/pdf", "0" * 64, 1),))
    ns = {"d": NS2}
    root = etree.fromstring(render([note]))
    n = root.find("d:Notification", ns)
    assert n is not None
    assert n.get("urgent") == ("true" if urgent else None)
    assert n.findtext("d:Person/d:FamilyName", namespaces=ns) == family
    assert n.findtext("d:Person/d:Phone", namespaces=ns) == phone
    assert n.findtext("d:AdditionalInfo", namespaces=ns) == info
    att = n.find("d:Attachment", ns)
    assert att is not None and att.get("documentName") == doc
    assert root.get("count") == "1"


# --- notification delivery XML --------------------------------------------------------


def test_v2_matches_contract_example() -> None:
    note, _ = example_notification()
    assert [a.size for a in note.attachments] == [40, 33]
    data = render([note])
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<NotificationDelivery')
    ours = assert_valid(data, NS2)
    example = etree.parse(str(EXAMPLES / "notification-delivery.xml")).getroot()
    assert shape(ours) == shape(example)


def test_contract_example_validates_against_v2_schema() -> None:
    doc = etree.parse(str(EXAMPLES / "notification-delivery.xml"))
    assert schema(NS2).validate(doc), schema(NS2).error_log


def test_v1_has_no_phone_and_validates_against_v1() -> None:
    note, _ = example_notification()
    assert note.person.phone
    data = render([note], "xml-v1")
    doc = assert_valid(data, NS1)
    assert doc.tag == f"{{{NS1}}}NotificationDelivery"
    assert b"Phone" not in data and note.person.phone.encode() not in data
    assert not schema(NS2).validate(doc)
    # The v2 output with Phone is not acceptable as v1 even with the namespace swapped.
    v2_as_v1 = render([note]).replace(NS2.encode(), NS1.encode())
    assert not schema(NS1).validate(etree.fromstring(v2_as_v1))


def test_csv_organisations_get_v2_notifications() -> None:
    note, _ = example_notification()
    assert render([note], "csv") == render([note], "xml-v2")


def synthetic(i: int, attachments: int = 0) -> Notification:
    born = date(1950, 1, 1) + timedelta(days=i * 7)
    atts = tuple(
        Attachment(f"Päätös {k}.pdf", "application/pdf", hashlib.sha256(b"%d" % k).hexdigest(), 1)
        for k in range(attachments)
    )
    return Notification(
        id=f"N-2026-{i:09d}",
        type="SUPPLEMENTARY_ASSISTANCE_NEED",
        municipality="837",
        decision_date=date(2026, 11, 20),
        person=Person(pic.make(born, 900 + i % 100), "Mäkinen & <Co>", "Helmi \"H\"", "fi",
                      "+358501112223" if i % 2 else None),
        urgent=i % 10 == 0,
        additional_info=None if i % 3 else "Vuokrarästejä ]]> kolmelta kuukaudelta.",
        attachments=atts,
    )


def test_two_thousand_notifications_stream_and_validate(tmp_path: Path) -> None:
    notes = [synthetic(i, attachments=i % 3) for i in range(2000)]
    target = tmp_path / "D-pirha-SUPPLEMENTARY_ASSISTANCE_NEED-20261120T141000-000002.xml"
    with atomic_writer(target) as f:
        render_notification_delivery(
            f, delivery_id=target.stem, organisation="pirha", created=CREATED,
            notifications=notes, fmt="xml-v2")
    doc = assert_valid(target.read_bytes(), NS2)
    found = doc.findall(f"{{{NS2}}}Notification")
    assert doc.get("count") == "2000" == str(len(found))
    assert [n.get("id") for n in found] == [n.id for n in notes]
    assert sum(1 for n in found if n.get("urgent") == "true") == 200
    assert found[0].findtext(f"{{{NS2}}}Person/{{{NS2}}}FamilyName") == "Mäkinen & <Co>"
    assert len(doc.findall(f".//{{{NS2}}}Attachment")) == sum(i % 3 for i in range(2000))


def test_duplicate_notification_in_delivery_is_refused() -> None:
    with pytest.raises(DeliveryError):
        render([synthetic(1), synthetic(1)])


def test_zip_deflates_only_what_is_not_compressed_already() -> None:
    text = b"Laskelma marraskuu 2026\n" * 200
    sha = hashlib.sha256(text).hexdigest()
    blobs = {sha: text}
    kinds = {"text/plain; charset=utf-8": zipfile.ZIP_DEFLATED,
             "application/xml": zipfile.ZIP_DEFLATED,
             "APPLICATION/PDF": zipfile.ZIP_STORED, "image/jpeg": zipfile.ZIP_STORED}
    note = Notification(
        id="N-2026-000000009", type="IMMIGRANT", municipality="091",
        decision_date=date(2026, 11, 20),
        person=Person(pic.make(date(1990, 5, 5), 951), "Öhman", "Ella", "sv"),
        attachments=tuple(Attachment(f"liite-{i}", media, sha, len(text))
                          for i, media in enumerate(kinds)))
    zf = zipfile.ZipFile(io.BytesIO(zip_of([note], blobs)[0]))
    assert [i.compress_type for i in zf.infolist()] == list(kinds.values())
    assert all(zf.read(i) == text for i in zf.infolist())
    assert zf.infolist()[0].compress_size < len(text) // 10


def test_blob_size_mismatch_stops_the_delivery() -> None:
    note, blobs = example_notification()
    assert render([note], blob_size=lambda sha: len(blobs[sha])) == render([note])
    with pytest.raises(DeliveryError):
        render([note], blob_size=lambda sha: 1)


def test_empty_delivery_is_valid() -> None:
    doc = assert_valid(render([]), NS2)
    assert doc.get("count") == "0"


# --- attachments zip ----------------------------------------------------------------


def zip_of(notes: Sequence[Notification], blobs: dict[str, bytes],
           created: datetime | None = CREATED) -> tuple[bytes, int]:
    out = io.BytesIO()
    count = write_attachments_zip(out, notes, opener(blobs), created=created)
    return out.getvalue(), count


def test_zip_holds_exactly_the_referenced_members() -> None:
    note, blobs = example_notification()
    other = Notification(
        id="N-2026-000000009", type="IMMIGRANT", municipality="091",
        decision_date=date(2026, 11, 20),
        person=Person(pic.make(date(1990, 5, 5), 951), "Öhman", "Ella", "sv"),
        attachments=(note.attachments[0], note.attachments[0]),  # same blob twice
    )
    data, count = zip_of([note, other], blobs)
    assert count == 4
    zf = zipfile.ZipFile(io.BytesIO(data))
    assert zf.namelist() == [
        "N-2026-000000001/Päätös perustoimeentulotuesta.pdf",
        "N-2026-000000001/Laskelma_ marraskuu_2026.pdf",
        "N-2026-000000009/Päätös perustoimeentulotuesta.pdf",
        "N-2026-000000009/Päätös perustoimeentulotuesta (2).pdf",
    ]
    assert zf.testzip() is None
    # Every fileName in the XML is a member, with the size and sha256 the XML states.
    doc = assert_valid(render([note, other]), NS2)
    refs = doc.findall(f".//{{{NS2}}}Attachment")
    assert [r.get("fileName") for r in refs] == zf.namelist()
    for r in refs:
        member = zf.read(r.get("fileName", ""))
        assert len(member) == int(r.get("size", "-1"))
        assert hashlib.sha256(member).hexdigest() == r.get("sha256")
        assert member == blobs[r.get("sha256", "")]
    info = zf.getinfo("N-2026-000000001/Laskelma_ marraskuu_2026.pdf")
    assert info.compress_type == zipfile.ZIP_STORED  # a PDF is compressed already
    assert info.date_time == (2026, 11, 20, 14, 10, 0)
    assert (info.external_attr >> 16) & 0o777 == 0o600


def test_zip_is_byte_identical_on_rerender() -> None:
    note, blobs = example_notification()
    first, _ = zip_of([note], blobs)
    second, _ = zip_of([note], blobs)
    assert first == second
    assert zip_of([note], blobs, created=CREATED + timedelta(hours=1))[0] != first


def test_zip_streams_big_blob_through_a_real_file(tmp_path: Path) -> None:
    big = bytes(range(256)) * (3 * 4096 + 17)  # several 1 MiB chunks' worth, not aligned
    sha = hashlib.sha256(big).hexdigest()
    note = Notification(
        id="N-BIG", type="IMMIGRANT", municipality="091", decision_date=date(2026, 11, 20),
        person=Person(pic.make(date(1980, 2, 2), 999), "A", "B", "fi"),
        attachments=(Attachment("iso.bin", "application/octet-stream", sha, len(big)),),
    )
    blob_file = tmp_path / sha
    blob_file.write_bytes(big)
    target = tmp_path / "d.attachments.zip"
    with atomic_writer(target) as f:
        assert write_attachments_zip(f, [note], lambda s: (tmp_path / s).open("rb")) == 1
    with zipfile.ZipFile(target) as zf:
        assert zf.read("N-BIG/iso.bin") == big


def test_zip_refuses_blob_that_does_not_match() -> None:
    note, blobs = example_notification()
    damaged = {k: v + b"x" for k, v in blobs.items()}
    with pytest.raises(DeliveryError):
        zip_of([note], damaged)


def test_zip_refuses_duplicate_notification() -> None:
    note, blobs = example_notification()
    with pytest.raises(DeliveryError):
        zip_of([note, note], blobs)


# --- person lists ---------------------------------------------------------------------


def example_lists() -> list[PersonList]:
    batch = etree.parse(str(EXAMPLES / "person-lists.xml"))
    ns = {"b": NS_BATCH}
    out = []
    for pl in batch.findall("b:PersonList", ns):
        entries = []
        for e in pl.findall("b:Entry", ns):
            days = e.findtext("b:Days", namespaces=ns)
            entries.append(ListEntry(
                pic=e.findtext("b:PersonalIdentityCode", namespaces=ns) or "",
                family_name=e.findtext("b:FamilyName", namespaces=ns) or "",
                given_names=e.findtext("b:GivenNames", namespaces=ns) or "",
                days=None if days is None else int(days),
                reason=e.findtext("b:Reason", namespaces=ns),
                amount=e.findtext("b:Amount", namespaces=ns),
            ))
        out.append(PersonList(
            id=pl.get("id", ""), type=pl.get("type", ""), municipality=pl.get("municipality", ""),
            period_start=date.fromisoformat(pl.get("periodStart", "")),
            period_end=date.fromisoformat(pl.get("periodEnd", "")),
            entries=tuple(entries)))
    return out


def render_list(plist: PersonList, fmt: Format) -> bytes:
    out = io.BytesIO()
    render_person_list(out, delivery_id="L-tampere-X-20261101T030000-000001",
                       organisation="tampere", created=CREATED, plist=plist, fmt=fmt)
    return out.getvalue()


@pytest.mark.parametrize(("fmt", "ns"), [("xml-v2", NS2), ("xml-v1", NS1)])
def test_person_list_xml_mirrors_the_batch(fmt: Format, ns: str) -> None:
    batch = etree.parse(str(EXAMPLES / "person-lists.xml")).getroot()
    for plist, source in zip(example_lists(), batch, strict=True):
        doc = assert_valid(render_list(plist, fmt), ns)
        assert doc.tag == f"{{{ns}}}PersonListDelivery"
        assert doc.get("created") == "2026-11-20T14:10:00+02:00"
        (ours,) = doc
        # Same content as Kela sent, namespace aside.
        assert str(shape(ours)).replace(ns, "") == str(shape(source)).replace(NS_BATCH, "")


def read_csv(data: bytes) -> list[list[str]]:
    assert data.startswith(b"\xef\xbb\xbf")  # BOM: Excel then reads UTF-8
    return list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline=""), delimiter=";"))


def test_csv_round_trips_with_header_and_values() -> None:
    plist = example_lists()[1]
    data = render_list(plist, "csv")
    assert b"\r\n" in data
    rows = read_csv(data)
    assert tuple(rows[0]) == CSV_HEADER == (
        "list_id", "type", "municipality", "period_start", "period_end",
        "personal_identity_code", "family_name", "given_names", "days", "reason", "amount")
    assert rows[1:] == [[
        "L-2026-10-837-TMTSHARE", "LABOUR_MARKET_SUBSIDY_MUNICIPAL_SHARE", "837",
        "2026-10-01", "2026-10-31", "121052X917T", "Laine", "Väinö", "22", "", "431.20"]]


def test_csv_quotes_separators_quotes_and_newlines() -> None:
    nasty = [
        ListEntry(pic.make(date(2001, 4, 3), 901), 'Nieminen; "Nisse"', "Anna;Maija", 3,
                  "PAID_200_DAYS"),
        ListEntry(pic.make(date(1999, 12, 31), 902), "O'Brien\nSecond line", 'Tom "T"', 200,
                  "AFTER_MAX_PERIOD"),
        ListEntry(pic.make(date(1970, 1, 1), 999), "Öhman", "Ella", None, None, None),
    ]
    plist = PersonList("L-1", "LABOUR_MARKET_SUBSIDY_200_DAYS", "091", date(2026, 10, 1),
                       date(2026, 10, 31), tuple(nasty))
    data = render_list(plist, "csv")
    assert b'"Nieminen; ""Nisse"""' in data  # RFC 4180: quoted, inner quotes doubled
    assert b";Laine;" not in data and b";\xc3\x96hman;Ella;" in data  # plain fields unquoted
    rows = read_csv(data)
    assert len(rows) == 4
    for e, row in zip(nasty, rows[1:], strict=True):
        assert row[5:] == [e.pic, e.family_name, e.given_names,
                           "" if e.days is None else str(e.days), e.reason or "", e.amount or ""]


def test_csv_leaves_output_open(tmp_path: Path) -> None:
    target = tmp_path / "l.csv"
    with atomic_writer(target) as f:
        render_person_list(f, delivery_id="x", organisation="o", created=CREATED,
                           plist=example_lists()[0], fmt="csv")
        f.write(b"")  # still usable: the CSV writer did not close it
    assert len(read_csv(target.read_bytes())) == 3
