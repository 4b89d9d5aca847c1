"""The locked-down parser: DOCTYPEs refused before parsing, nothing expanded or read."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from lxml import etree

from broker.errors import InvalidFile
from broker.intake.read_policy import validate_any, validate_file
from broker.intake.validation import BatchContext
from broker.xml import safe as xmlsafe

MARKER = "SECRET-MARKER-7f3a9c"

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
]>
<DecisionBatch xmlns="urn:fi:kela:etotu:decision-batch:2" batchId="B"
 created="2026-11-20T10:00:00Z">&lol5;</DecisionBatch>
"""


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    p = tmp_path / "secret.txt"
    p.write_text(MARKER)
    return p


def xxe_doc(secret: Path, prolog: str = "") -> str:
    return (
        f'<?xml version="1.0"?>\n{prolog}'
        f'<!DOCTYPE DecisionBatch [<!ENTITY xxe SYSTEM "{secret.as_uri()}">]>\n'
        '<DecisionBatch xmlns="urn:fi:kela:etotu:decision-batch:2" batchId="B" '
        'created="2026-11-20T10:00:00Z">&xxe;</DecisionBatch>\n'
    )


@pytest.fixture
def ctx() -> BatchContext:
    return BatchContext(frozenset({"091"}), date(2026, 11, 20))


def test_control_an_unsafe_parser_would_read_the_file(secret: Path) -> None:
    # Proves the marker test below can fail: a permissive parser does leak the file.
    unsafe = etree.XMLParser(resolve_entities=True, load_dtd=True, no_network=True)
    root = etree.fromstring(xxe_doc(secret).encode(), unsafe)
    assert MARKER in "".join(root.itertext())


def test_xxe_refused_by_validation_without_reading(
    tmp_path: Path, secret: Path, ctx: BatchContext
) -> None:
    doc = tmp_path / "xxe.xml"
    doc.write_text(xxe_doc(secret))
    for problems in (validate_file(doc, ctx), validate_any(doc, ctx)):
        assert [(p.line, p.code) for p in problems] == [(2, "NOT_WELL_FORMED")]
        assert "DOCTYPE" in problems[0].message
        assert MARKER not in str(problems)


def test_doctype_after_comments_and_pis_is_found(tmp_path: Path, secret: Path) -> None:
    prolog = "<!-- a comment with <!DOCTYPE inside -->\n<?pi x?>\n" * 3
    with pytest.raises(InvalidFile) as exc:
        xmlsafe.parse(xxe_doc(secret, prolog).encode(), max_bytes=10_000)
    assert exc.value.problems[0].line == 8
    assert MARKER not in str(exc.value.problems)


def test_lowercase_doctype_and_other_declarations_refused() -> None:
    for decl in ("<!doctype x>", "<!ENTITY e 'x'>", "<!ELEMENT x ANY>"):
        with pytest.raises(xmlsafe.UnsafeXml):
            xmlsafe.scan_prolog(f"<?xml version='1.0'?>{decl}<x/>".encode(), complete=True)


def test_billion_laughs_refused(tmp_path: Path, ctx: BatchContext) -> None:
    doc = tmp_path / "lol.xml"
    doc.write_text(BILLION_LAUGHS)
    problems = validate_any(doc, ctx)
    assert [(p.line, p.code) for p in problems] == [(2, "NOT_WELL_FORMED")]


def test_parser_itself_never_reads_or_amplifies(secret: Path) -> None:
    # Even handed a DOCTYPE directly (bypassing the prolog scan), the parser opens
    # nothing: the resolver refuses the external entity (entities are resolved so that
    # libxml2's well-formedness verdict stands, see xmlsafe), and libxml2 refuses
    # entity amplification.
    with pytest.raises((etree.XMLSyntaxError, xmlsafe.UnsafeXml)) as exc:
        etree.fromstring(xxe_doc(secret).encode(), xmlsafe.parser())
    assert "refused" in str(exc.value) or "xxe" in str(exc.value)
    assert MARKER not in str(exc.value)
    with pytest.raises(etree.XMLSyntaxError, match=r"amplification|[Ee]ntity"):
        etree.fromstring(BILLION_LAUGHS.encode(), xmlsafe.parser())


def test_iterparse_itself_never_reads(tmp_path: Path, secret: Path) -> None:
    doc = tmp_path / "xxe.xml"
    doc.write_text(xxe_doc(secret))
    texts: list[str] = []
    with doc.open("rb") as f, pytest.raises((etree.XMLSyntaxError, xmlsafe.UnsafeXml)) as exc:
        texts.extend("".join(el.itertext()) for _, el in xmlsafe.iterparse(f))
    assert all(MARKER not in t for t in texts)
    assert MARKER not in str(exc.value)


def test_utf16_refused() -> None:
    data = "<?xml version='1.0' encoding='UTF-16'?><x/>".encode("utf-16")
    with pytest.raises(InvalidFile) as exc:
        xmlsafe.parse(data, max_bytes=1000)
    assert "UTF-8" in exc.value.problems[0].message


def test_too_large(tmp_path: Path) -> None:
    doc = tmp_path / "big.xml"
    doc.write_text("<x>" + "a" * 5000 + "</x>")
    with pytest.raises(InvalidFile) as exc:
        xmlsafe.parse(doc, max_bytes=1000)
    assert exc.value.problems[0].code == "TOO_LARGE"
    small = BatchContext(frozenset(), date(2026, 1, 1), max_file_bytes=1000)
    assert [p.code for p in validate_any(doc, small)] == ["TOO_LARGE"]
    assert [p.code for p in validate_file(doc, small)] == ["TOO_LARGE"]


def test_bounded_reader_stops_a_growing_file(tmp_path: Path) -> None:
    doc = tmp_path / "grow.xml"
    doc.write_bytes(b"x" * 100)
    with doc.open("rb") as f:
        reader = xmlsafe.BoundedReader(f, 60)
        assert reader.read(50) == b"x" * 50
        with pytest.raises(xmlsafe.UnsafeXml):
            reader.read(50)


def test_prolog_without_root_in_limit_refused() -> None:
    head = b"<?xml version='1.0'?>" + b"<!--" + b"c" * xmlsafe.PROLOG_LIMIT
    with pytest.raises(xmlsafe.UnsafeXml):
        xmlsafe.scan_prolog(head, complete=False)


def test_plain_document_parses_and_root_found() -> None:
    data = b"\xef\xbb\xbf<?xml version='1.0'?>\n<!-- c -->\n<root a='1'><b/></root>"
    assert data[xmlsafe.scan_prolog(data, complete=True) :].startswith(b"<root")
    tree = xmlsafe.parse(data, max_bytes=1000)
    assert tree.getroot().tag == "root"


def test_malformed_reports_line() -> None:
    with pytest.raises(InvalidFile) as exc:
        xmlsafe.parse(b"<a>\n<b>\n</a>", max_bytes=1000)
    p = exc.value.problems[0]
    assert p.code == "NOT_WELL_FORMED" and p.line == 3
