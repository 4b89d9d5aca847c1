"""Well-formedness is proven on every path that reads a batch or a response (issue 11).

A document is valid only if the parser saw its root's end and nothing but whitespace,
comments and PIs after it. Measured before the fix: with the XSD attached, lxml's
iterparse forgave every error found only at the end of input, so a batch cut anywhere
was accepted (and ingested) as if whole.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from daemon_support import EXAMPLES, make_home
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import broker.intake.batch_chunks as batch_chunks
from broker.config.settings import load_config
from broker.errors import InvalidFile, Problem
from broker.intake.ingest import ingest_batch
from broker.intake.read_policy import validate_any, validate_file
from broker.intake.synthetic import write_batch
from broker.intake.validation import BatchContext, BatchReader
from broker.responses import rules as response_rules
from broker.storage.state_db import make_engine
from broker.storage.store import Store
from broker.xml import safe as xmlsafe

REPO = Path(__file__).resolve().parents[1]
with (REPO / "broker" / "data" / "municipalities.csv").open(encoding="utf-8") as _f:
    MUNICIPALITIES = sorted(row["code"] for row in csv.DictReader(_f))
DAY = date(2026, 11, 20)
CTX = BatchContext(frozenset(MUNICIPALITIES), date(2026, 11, 21))
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
ROOT_END = b"</DecisionBatch>"
PIECE = 2048  # pieces of a "big" file in these tests: cut often


def example(name: str) -> bytes:
    path = EXAMPLES / name
    if not path.is_file():
        pytest.skip(f"{path} not available")
    return path.read_bytes()


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A batch that takes the parallel path (with PIECE pieces): 200 notifications."""
    path = tmp_path_factory.mktemp("wf") / "big.xml"
    write_batch(path, count=200, municipalities=MUNICIPALITIES, decision_date=DAY,
                batch_id="WF", seed=3, attachment_bytes=120, lists=3)
    return path.read_bytes()


@contextmanager
def parallel_path() -> Iterator[None]:
    """Every file takes the parallel reader, cut into PIECE pieces, read in this process
    (workers=0: the same pieces and assembly, without starting processes)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(batch_chunks, "PARALLEL_MIN_BYTES", 0)
        mp.setattr(batch_chunks, "CHUNK_BYTES", PIECE)
        mp.setattr(batch_chunks, "_workers", lambda: 0)
        yield


def check_rejected(problems: list[Problem], data: bytes) -> None:
    assert problems, "a document cut short was accepted"
    first = problems[0]
    assert first.code == "NOT_WELL_FORMED", problems
    assert isinstance(first.line, int) and 1 <= first.line <= data.count(b"\n") + 1, problems


def root_closed_at(data: bytes) -> int:
    """Length of the shortest prefix that holds the root's end tag."""
    return data.rindex(ROOT_END) + len(ROOT_END)


# ------------------------------------------------------------------ every prefix


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.data())
def test_every_prefix_of_the_example_is_rejected(tmp_path: Path, cut: st.DataObject) -> None:
    data = example("decision-batch.xml")
    assert validate_file(write(tmp_path, data), CTX) == []
    n = cut.draw(st.integers(0, root_closed_at(data) - 1))
    path = write(tmp_path, data[:n])
    check_rejected(validate_file(path, CTX), data[:n])
    check_rejected(validate_any(path, CTX), data[:n])  # what `kela-broker validate` runs


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.data())
def test_every_prefix_of_a_big_file_is_rejected_on_the_parallel_path(
    tmp_path: Path, big: bytes, cut: st.DataObject
) -> None:
    n = cut.draw(st.integers(PIECE * 2, root_closed_at(big) - 1))
    path = write(tmp_path, big[:n])
    with parallel_path():
        assert batch_chunks.plan_chunks(path, CTX, PIECE), "not cut into pieces"
        check_rejected(validate_file(path, CTX), big[:n])


def test_the_big_file_is_valid_and_cut_on_the_parallel_path(tmp_path: Path, big: bytes) -> None:
    # Control for the property above: the whole file passes the same path.
    path = write(tmp_path, big)
    with parallel_path():
        assert len(batch_chunks.plan_chunks(path, CTX, PIECE)) > 10
        assert len(list(batch_chunks.ParallelBatchReader(path, CTX))) == 203
        assert validate_file(path, CTX) == []


def write(tmp_path: Path, data: bytes, name: str = "batch.xml") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------ named cuts, every path


def cuts(data: bytes) -> dict[str, bytes]:
    """The cuts issue 11 names, applied to a valid batch."""
    body_end = data.rindex(ROOT_END)
    notes = [i for i in range(len(data)) if data.startswith(b"<Notification ", i)]
    att = data.index(b"<Attachment ")
    attr = data.index(b'type="', notes[1]) + 8
    return {
        "first three of four items": data[:notes[3]],
        "mid-attachment": data[:data.index(b">", att) + 20],
        "mid-attribute": data[:attr],
        "unclosed comment at the end": data[:body_end] + b"<!-- to be continued",
        "unclosed PI at the end": data[:body_end] + b"<?pi to be continued",
        "unclosed CDATA at the end": data[:body_end] + b"<![CDATA[ to be continued",
        "unclosed comment after the root": data + b"<!-- to be continued",
        "unclosed PI after the root": data + b"<?pi to be continued",
        "only a prolog": data[:data.index(b"<DecisionBatch")],
        "the root's end tag cut": data[:body_end + 5],
        "nothing": b"",
    }


CUTS = ["first three of four items", "mid-attachment", "mid-attribute",
        "unclosed comment at the end", "unclosed PI at the end", "unclosed CDATA at the end",
        "unclosed comment after the root", "unclosed PI after the root", "only a prolog",
        "the root's end tag cut", "nothing"]


@pytest.mark.parametrize("case", CUTS)
def test_named_cuts_are_rejected_by_validate_and_ingest(tmp_path: Path, case: str) -> None:
    data = example("decision-batch.xml")
    cut = cuts(data)[case]
    path = write(tmp_path, cut, "cut.xml")
    check_rejected(validate_any(path, CTX), cut)
    home = make_home(tmp_path / "home")
    cfg = load_config(home)
    out = ingest_batch(path, config=cfg, store=Store(make_engine(cfg.storage_url)), now=NOW)
    assert out.status == "rejected" and out.new == 0
    check_rejected(out.problems, cut)


def test_the_uncut_example_is_ingested(tmp_path: Path) -> None:
    # Control: the same ingest accepts the whole file, so the rejections above are the cuts'.
    home = make_home(tmp_path / "home")
    cfg = load_config(home)
    path = write(tmp_path, example("decision-batch.xml"))
    out = ingest_batch(path, config=cfg, store=Store(make_engine(cfg.storage_url)), now=NOW)
    assert (out.status, out.problems) == ("accepted", [])
    assert out.new > 3


def test_a_cut_big_file_is_rejected_by_the_parallel_ingest(tmp_path: Path, big: bytes) -> None:
    cut = big[:big.index(b"<Notification ", len(big) * 3 // 4)]
    path = write(tmp_path, cut, "cut.xml")
    home = make_home(tmp_path / "home")
    cfg = load_config(home)
    with parallel_path(), pytest.MonkeyPatch.context() as mp:
        mp.setattr("broker.intake.batch_chunks.PARALLEL_MIN_BYTES", 0)
        out = ingest_batch(path, config=cfg, store=Store(make_engine(cfg.storage_url)), now=NOW)
    assert out.status == "rejected" and out.new == 0
    check_rejected(out.problems, cut)


# ------------------------------------------------------------------ other classes


def edited(old: bytes, new: bytes) -> bytes:
    data = example("decision-batch.xml")
    assert old in data
    return data.replace(old, new, 1)


WRONG = {
    "text directly in the root": (
        edited(b'  <Notification id="N-2026-000000002"',
               b'  stray words\n  <Notification id="N-2026-000000002"'),
        "SCHEMA", 22, "text directly inside DecisionBatch"),
    "text after the last item": (
        edited(b"</DecisionBatch>", b"trailing words\n</DecisionBatch>"), "SCHEMA", None,
        "text directly inside DecisionBatch"),
    "an item inside an item": (
        edited(b"    <AdditionalInfo>",
               b'    <Notification id="N-2026-000000099" type="IMMIGRANT"/>\n'
               b"    <AdditionalInfo>"),
        "SCHEMA", 15, "Notification"),
    "an unknown entity": (
        edited(b"<FamilyName>Ahmed", b"<FamilyName>&foo;Ahmed"), "NOT_WELL_FORMED", 10, "foo"),
    "encoding utf8": (edited(b'encoding="UTF-8"', b'encoding="utf8"'), "NOT_WELL_FORMED", 1,
                      "utf8"),
    "encoding latin-1": (edited(b'encoding="UTF-8"', b'encoding="latin-1"'), "NOT_WELL_FORMED", 1,
                         "latin-1"),
    "encoding ISO-8859-1": (edited(b'encoding="UTF-8"', b"encoding='ISO-8859-1'"),
                            "NOT_WELL_FORMED", 1, "ISO-8859-1"),
    "junk after the root": (example("decision-batch.xml") + b"<Notification/>\n",
                            "NOT_WELL_FORMED", None, "Extra content"),
}


@pytest.mark.parametrize("case", list(WRONG))
def test_each_wrong_shape_is_a_clear_error_with_a_line(tmp_path: Path, case: str) -> None:
    data, code, line, words = WRONG[case]
    path = write(tmp_path, data)
    for problems in (validate_file(path, CTX), validate_any(path, CTX)):
        assert problems and problems[0].code == code, problems
        assert words in problems[0].message
        assert problems[0].line == line if line is not None else problems[0].line, problems
    with pytest.raises(InvalidFile):
        list(BatchReader(path, CTX))


def test_the_nested_item_is_never_delivered(tmp_path: Path) -> None:
    data, *_ = WRONG["an item inside an item"]
    with pytest.raises(InvalidFile):
        for item in BatchReader(write(tmp_path, data), CTX):
            assert item.id != "N-2026-000000099"


def test_utf_8_in_any_case_is_accepted(tmp_path: Path) -> None:
    for spelling in (b"utf-8", b"Utf-8"):
        data = edited(b'encoding="UTF-8"', b'encoding="' + spelling + b'"')
        assert validate_file(write(tmp_path, data), CTX) == []
    assert validate_file(write(tmp_path, edited(b' encoding="UTF-8"', b"")), CTX) == []


def test_comments_and_pis_after_the_root_are_fine_within_a_bound(tmp_path: Path) -> None:
    data = example("decision-batch.xml")
    ok = data + b"<!-- signed -->\n<?checksum abc?>\n  \n"
    assert validate_file(write(tmp_path, ok), CTX) == []
    flood = data + b"<!--" + b"x" * (xmlsafe.EPILOGUE_LIMIT + 100_000) + b"-->\n"
    problems = validate_file(write(tmp_path, flood), CTX)
    assert [p.code for p in problems] == ["NOT_WELL_FORMED"]
    assert "follow the root" in problems[0].message


def test_predefined_entities_and_character_references_still_work(tmp_path: Path) -> None:
    data = edited(b"<FamilyName>Ahmed", b"<FamilyName>&#65;&amp;&apos;hmed")
    items = list(BatchReader(write(tmp_path, data), CTX))
    assert items[0].person.family_name == "A&'hmed"


# ------------------------------------------------------------------ responses


@settings(max_examples=80, deadline=None)
@given(cut=st.data())
def test_every_prefix_of_a_response_is_rejected(cut: st.DataObject) -> None:
    data = example("municipality-response.xml")
    parsed, findings = response_rules.parse(data, max_bytes=1 << 20)
    assert parsed is not None and findings == []
    n = cut.draw(st.integers(0, data.rindex(b"</MunicipalityResponse>") + 22))
    parsed, findings = response_rules.parse(data[:n], max_bytes=1 << 20)
    assert parsed is None and findings
    assert findings[0].code == "NOT_WELL_FORMED" and findings[0].line


@pytest.mark.parametrize("old,new", [
    (b"<Reason>Asiakas", b"<Reason>&foo;Asiakas"),
    (b'encoding="UTF-8"', b'encoding="utf8"'),
    (b'encoding="UTF-8"', b'encoding="latin-1"'),
    (b"</MunicipalityResponse>", b"</MunicipalityResponse><!-- cut"),
])
def test_responses_refuse_entities_encodings_and_cuts(old: bytes, new: bytes) -> None:
    data = example("municipality-response.xml").replace(old, new, 1)
    parsed, findings = response_rules.parse(data, max_bytes=1 << 20)
    assert parsed is None
    assert [f.code for f in findings] == ["NOT_WELL_FORMED"] and findings[0].line
