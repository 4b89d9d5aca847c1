"""The XSDs accept every contract example and refuse what the contract forbids.

Checked with two independent validators: lxml (libxml2) and the xmlschema package.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import xmlschema
from lxml import etree

import schemas

EXAMPLES = Path(__file__).resolve().parents[1] / "contracts" / "examples"
BATCH = "urn:fi:kela:etotu:decision-batch:2"
RESPONSE = "urn:fi:kela:etotu:municipality-response:1"
ACK = "urn:fi:kela:etotu:acknowledgement:1"

CASES = [
    (BATCH, "decision-batch.xml"),
    (BATCH, "person-lists.xml"),
    (RESPONSE, "municipality-response.xml"),
    (ACK, "acknowledgement-rejected.xml"),
]


def lxml_schema(ns: str) -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(schemas.path(ns))))


def lxml_errors(ns: str, text: str) -> list[str]:
    schema = lxml_schema(ns)
    ok = schema.validate(etree.fromstring(text.encode()))
    return [] if ok else [e.message for e in schema.error_log]


def xmlschema_ok(ns: str, text: str) -> bool:
    return xmlschema.XMLSchema(str(schemas.path(ns))).is_valid(text)


@pytest.mark.parametrize(("ns", "name"), CASES)
def test_example_accepted_by_lxml(ns: str, name: str) -> None:
    assert lxml_errors(ns, (EXAMPLES / name).read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(("ns", "name"), CASES)
def test_example_accepted_by_xmlschema(ns: str, name: str) -> None:
    xmlschema.XMLSchema(str(schemas.path(ns))).validate(str(EXAMPLES / name))


@pytest.mark.parametrize("ns", [BATCH, RESPONSE, ACK])
def test_schema_is_documented(ns: str) -> None:
    doc = etree.parse(str(schemas.path(ns)))
    xs = "{http://www.w3.org/2001/XMLSchema}"
    top = doc.getroot().find(f"{xs}annotation/{xs}documentation")
    assert top is not None and "SPEC" in (top.text or "")
    assert doc.getroot().get("targetNamespace") == ns


BATCH_BREAKAGES = {
    "municipality two digits": ("<Municipality>091<", "<Municipality>91<"),
    "phone not E.164": ("+358401234567", "0401234567"),
    "language upper case": ("<Language>fi</Language>", "<Language>FI</Language>"),
    "identity code shape": ("190370U950C", "190370Z950C"),
    "sha256 upper case": ("22bfd9c2c73cb52f", "22BFD9C2C73CB52F"),
    "unknown type": ('type="IMMIGRANT"', 'type="TOURIST"'),
    "urgent not boolean": ('urgent="true"', 'urgent="yes"'),
    "batchId with space": ('batchId="KELA-20261120-0001"', 'batchId="KELA 0001"'),
    "id too long": ('id="N-2026-000000001"', 'id="' + "N" * 41 + '"'),
    "created without offset": (
        'created="2026-11-20T14:05:00+02:00"', 'created="2026-11-20T14:05:00"'
    ),
    "additional info too long": ("Asiakas tarvitsee tulkin (arabia).", "x" * 4001),
    "empty document name": ('documentName="Päätös perustoimeentulotuesta.pdf"', 'documentName=""'),
    "children out of order": (
        "<Municipality>091</Municipality>\n    <DecisionDate>2026-11-20</DecisionDate>",
        "<DecisionDate>2026-11-20</DecisionDate>\n    <Municipality>091</Municipality>",
    ),
}


@pytest.mark.parametrize("case", sorted(BATCH_BREAKAGES))
def test_batch_breakage_refused_by_both(case: str) -> None:
    old, new = BATCH_BREAKAGES[case]
    text = (EXAMPLES / "decision-batch.xml").read_text(encoding="utf-8")
    assert old in text
    broken = text.replace(old, new, 1)
    assert lxml_errors(BATCH, broken)
    assert not xmlschema_ok(BATCH, broken)


LIST_BREAKAGES = {
    "amount with three decimals": ("<Amount>431.20</Amount>", "<Amount>431.205</Amount>"),
    "amount with comma": ("<Amount>431.20</Amount>", "<Amount>431,20</Amount>"),
    "unknown reason": ("<Reason>PAID_200_DAYS</Reason>", "<Reason>BORED</Reason>"),
    "negative days": ("<Days>200</Days>", "<Days>-1</Days>"),
    "list without entries": (
        '<PersonList id="L-2026-10-837-TMTSHARE"',
        '<PersonList id="L-EMPTY" type="CHILDCARE_SUPPORT_RECIPIENTS" municipality="837"'
        ' periodStart="2026-10-01" periodEnd="2026-10-31"/>\n'
        '  <PersonList id="L-2026-10-837-TMTSHARE"',
    ),
}


@pytest.mark.parametrize("case", sorted(LIST_BREAKAGES))
def test_list_breakage_refused_by_both(case: str) -> None:
    old, new = LIST_BREAKAGES[case]
    text = (EXAMPLES / "person-lists.xml").read_text(encoding="utf-8")
    assert old in text
    broken = text.replace(old, new, 1)
    assert lxml_errors(BATCH, broken)
    assert not xmlschema_ok(BATCH, broken)


RESPONSE_BREAKAGES = {
    "iban lower case": ("FI1086094555154084", "fi1086094555154084"),
    "iban too short": ("FI1086094555154084", "FI10860"),
    "unknown benefit": ("HOUSING_ALLOWANCE", "LOTTERY"),
    "zero amount": ("<Amount>412.50</Amount>", "<Amount>0</Amount>"),
    "transfer to bad municipality": ('toMunicipality="853"', 'toMunicipality="85"'),
    "receipt without date": ('handled="2026-11-21"', ""),
}


@pytest.mark.parametrize("case", sorted(RESPONSE_BREAKAGES))
def test_response_breakage_refused_by_both(case: str) -> None:
    old, new = RESPONSE_BREAKAGES[case]
    text = (EXAMPLES / "municipality-response.xml").read_text(encoding="utf-8")
    assert old in text
    broken = text.replace(old, new, 1)
    assert lxml_errors(RESPONSE, broken)
    assert not xmlschema_ok(RESPONSE, broken)


def test_transfer_reason_is_optional() -> None:
    text = (EXAMPLES / "municipality-response.xml").read_text(encoding="utf-8")
    start = text.index("    <Reason>")
    end = text.index("</Reason>\n") + len("</Reason>\n")
    assert lxml_errors(RESPONSE, text[:start] + text[end:]) == []


ACK_BREAKAGES = {
    "unknown status": ('status="REJECTED"', 'status="MAYBE"'),
    "unknown error code": ('code="FORBIDDEN"', 'code="OOPS"'),
    "line zero": ('line="4"', 'line="0"'),
}


@pytest.mark.parametrize("case", sorted(ACK_BREAKAGES))
def test_ack_breakage_refused_by_both(case: str) -> None:
    old, new = ACK_BREAKAGES[case]
    text = (EXAMPLES / "acknowledgement-rejected.xml").read_text(encoding="utf-8")
    broken = text.replace(old, new, 1)
    assert lxml_errors(ACK, broken)
    assert not xmlschema_ok(ACK, broken)


def test_ack_error_line_is_optional() -> None:
    text = (EXAMPLES / "acknowledgement-rejected.xml").read_text(encoding="utf-8")
    assert lxml_errors(ACK, text.replace('line="4" ', "")) == []


SHARED = Path(__file__).resolve().parents[2] / "shared" / "contracts"


@pytest.mark.skipif(not SHARED.is_dir(), reason="no ../shared beside this clone")
def test_the_contract_copy_in_the_repo_is_the_shared_one() -> None:
    """contracts/ is a copy, so a plain clone runs the suite; it must not drift."""
    ours = Path(__file__).resolve().parents[1] / "contracts"
    for theirs in [SHARED / "SPEC.md", *sorted((SHARED / "examples").iterdir())]:
        mine = ours / theirs.relative_to(SHARED)
        assert mine.read_bytes() == theirs.read_bytes(), f"{mine} differs from {theirs}"
