"""Whatever bytes arrive, every reader of a batch or response ends in a verdict: problems
with codes (and lines where the parser gives them), never a traceback (issue 11)."""

from __future__ import annotations

import csv
from datetime import date
from pathlib import Path

from daemon_support import EXAMPLES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.errors import InvalidFile
from broker.intake.read_policy import validate_any, validate_file
from broker.intake.validation import BatchContext, BatchReader
from broker.responses import rules as response_rules

REPO = Path(__file__).resolve().parents[1]
with (REPO / "broker" / "data" / "municipalities.csv").open(encoding="utf-8") as _f:
    CTX = BatchContext(frozenset(row["code"] for row in csv.DictReader(_f)), date(2026, 11, 21))
CODES = {"NOT_WELL_FORMED", "SCHEMA", "INVALID_VALUE", "TOO_LARGE"}
# Bytes that matter to a parser: markup, quotes, entity starts, odd encodings.
SPLICES = [b"<", b">", b"&", b"&foo;", b"&amp;", b"]]>", b"<![CDATA[", b"<!--", b"-->", b"<?",
           b"?>", b'"', b"'", b"\x00", b"\xff", b"\xc3", b"<Notification>", b"</Notification>",
           b"<DecisionBatch>", b"</DecisionBatch>", b"<!DOCTYPE x>", b"\r", b"text",
           b"\xef\xbb\xbf", b":", b"<:", b"xmlns=", b"x:", b"{", b"}"]  # names and prefixes


@st.composite
def mutated(draw: st.DrawFn, name: str) -> bytes:
    data = bytearray((EXAMPLES / name).read_bytes())
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        how = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.sampled_from(SPLICES) | st.binary(max_size=8))
        if how == "insert":
            data[at:at] = piece
        elif how == "delete":
            del data[at:at + draw(st.integers(1, 40))]
        else:
            data[at:at + len(piece)] = piece
    return bytes(data)


@settings(max_examples=250, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=mutated("decision-batch.xml"))
def test_any_mutated_batch_gets_a_verdict(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "batch.xml"
    path.write_bytes(data)
    found = validate_file(path, CTX)
    assert all(p.code in CODES for p in found), found
    assert all(p.line for p in found if p.code == "NOT_WELL_FORMED"), found
    assert bool(validate_any(path, CTX)) == bool(found)  # `kela-broker validate` agrees
    try:
        items = list(BatchReader(path, CTX))
    except InvalidFile as exc:
        assert exc.problems == found
    else:
        assert found == [] and items  # accepted by one reader: by all of them


@settings(max_examples=150, deadline=None)
@given(data=mutated("municipality-response.xml"))
def test_any_mutated_response_gets_a_verdict(data: bytes) -> None:
    parsed, findings = response_rules.parse(data, max_bytes=1 << 20)
    assert (parsed is None) == bool(findings)
    assert all(f.line for f in findings if f.code == "NOT_WELL_FORMED"), findings


def test_a_root_named_by_a_bare_colon_is_a_verdict_not_a_traceback(tmp_path: Path) -> None:
    """Found by the property above: libxml2 lets `<:` through where lxml's QName refuses."""
    from broker.intake.read_policy import validate_any

    path = tmp_path / "colon.xml"
    path.write_bytes(b'<:\x01?xml version="1.0"?>\n<DecisionBatch/>\n')
    for problems in (validate_file(path, CTX), validate_any(path, CTX)):
        assert problems and all(p.code in ("NOT_WELL_FORMED", "SCHEMA") for p in problems)


def test_an_attribute_with_an_undeclared_prefix_is_not_well_formed(tmp_path: Path) -> None:
    """Found by fuzzing: libxml2 reports only a namespace error, lxml refuses the name."""
    from broker.intake.read_policy import validate_any

    path = tmp_path / "prefix.xml"
    path.write_bytes((EXAMPLES / "decision-batch.xml").read_bytes()
                     .replace(b"batchId=", b"ba:tchId=", 1))
    for problems in (validate_file(path, CTX), validate_any(path, CTX)):
        assert problems and problems[0].code == "NOT_WELL_FORMED" and problems[0].line
