"""Decision batch validation: contract examples pass, each broken rule is reported
with the line of the offending element and a readable message; the CLI's exit codes."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
from click.testing import CliRunner

from broker.cli import main
from broker.domain.model import Notification, PersonList
from broker.errors import InvalidFile, Problem
from broker.intake.read_policy import validate_any, validate_file
from broker.intake.validation import BatchContext, BatchReader
from broker.xml.schema_messages import plain_message

EXAMPLES = Path(__file__).resolve().parents[1] / "contracts" / "examples"
REPO = Path(__file__).resolve().parents[1]
with (REPO / "broker" / "data" / "municipalities.csv").open(encoding="utf-8") as _f:
    MUNICIPALITIES = frozenset(row["code"] for row in csv.DictReader(_f))
TODAY = date(2026, 11, 20)


@pytest.fixture
def ctx() -> BatchContext:
    return BatchContext(MUNICIPALITIES, TODAY)


def batch_text() -> str:
    return (EXAMPLES / "decision-batch.xml").read_text(encoding="utf-8")


def lists_text() -> str:
    return (EXAMPLES / "person-lists.xml").read_text(encoding="utf-8")


def write(tmp_path: Path, text: str, name: str = "batch.xml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, problems
    return problems[0]


@pytest.mark.parametrize(
    "name",
    ["decision-batch.xml", "person-lists.xml", "municipality-response.xml",
     "acknowledgement-rejected.xml", "notification-delivery.xml"],
)
def test_every_contract_example_is_valid(name: str, ctx: BatchContext) -> None:
    assert validate_any(EXAMPLES / name, ctx) == []


# Lines are libxml2's (as xmllint reports them): an element's line is where its
# start tag ends, so an element whose attributes span lines 5-6 is on line 6.


def test_reader_yields_items_with_lines_and_attachments(ctx: BatchContext) -> None:
    stored: dict[str, bytes] = {}
    reader = BatchReader(EXAMPLES / "decision-batch.xml", ctx, lambda h, d: stored.update({h: d}))
    items = list(reader)
    assert reader.header is not None and reader.header.batch_id == "KELA-20261120-0001"
    assert [i.line for i in items] == [5, 21, 31, 43]
    first = items[0]
    assert isinstance(first, Notification)
    assert first.person.phone == "+358401234567" and first.municipality == "091"
    assert [a.size for a in first.attachments] == [40, 33]
    assert all(hashlib.sha256(d).hexdigest() == h for h, d in stored.items())
    assert set(stored) == {a.sha256 for a in first.attachments}
    second, third, fourth = items[1], items[2], items[3]
    assert isinstance(second, Notification) and isinstance(third, Notification)
    assert isinstance(fourth, Notification)
    assert fourth.urgent and not third.urgent
    assert second.additional_info is None and second.person.phone is None


def test_reader_builds_person_lists(ctx: BatchContext) -> None:
    items = list(BatchReader(EXAMPLES / "person-lists.xml", ctx))
    assert all(isinstance(i, PersonList) for i in items)
    first, second = items
    assert isinstance(first, PersonList) and isinstance(second, PersonList)
    assert [e.days for e in first.entries] == [200, 1]
    assert first.entries[1].reason == "AFTER_MAX_PERIOD"
    assert second.entries[0].amount == "431.20" and second.line == 23


def test_malformed_xml(tmp_path: Path, ctx: BatchContext) -> None:
    text = batch_text().replace("Lindqvist</FamilyName>", "Lindqvist</Family>")
    p = only(validate_file(write(tmp_path, text), ctx))
    assert (p.line, p.code) == (26, "NOT_WELL_FORMED")
    assert "FamilyName" in p.message


def test_wrong_namespace(tmp_path: Path, ctx: BatchContext) -> None:
    path = write(tmp_path, batch_text().replace("decision-batch:2", "decision-batch:9"))
    p = only(validate_file(path, ctx))
    assert (p.line, p.code) == (4, "SCHEMA")
    assert "urn:fi:kela:etotu:decision-batch:9" in p.message
    assert only(validate_any(path, ctx)).code == "SCHEMA"


def test_bad_identity_code_checksum(tmp_path: Path, ctx: BatchContext) -> None:
    text = batch_text().replace("190370U950C", "190370U950D")
    p = only(validate_file(write(tmp_path, text), ctx))
    assert (p.line, p.code) == (9, "INVALID_VALUE")
    assert p.message == (
        "Notification N-2026-000000001: personal identity code 190370U****: "
        "check character does not match"
    )
    assert str(p).endswith(":9: INVALID_VALUE: " + p.message)


def test_identity_code_with_impossible_date(tmp_path: Path, ctx: BatchContext) -> None:
    text = lists_text().replace("271086-950A", "311186-950A")
    p = only(validate_file(write(tmp_path, text), ctx))
    assert p.line == 15 and "entry 2" in p.message and "311186-950A" not in p.message


def test_unknown_municipality(tmp_path: Path, ctx: BatchContext) -> None:
    text = batch_text().replace("<Municipality>092<", "<Municipality>999<")
    p = only(validate_file(write(tmp_path, text), ctx))
    assert (p.line, p.code) == (22, "INVALID_VALUE")
    assert "999" in p.message and "N-2026-000000002" in p.message


def test_unknown_list_municipality(tmp_path: Path, ctx: BatchContext) -> None:
    text = lists_text().replace('municipality="837"', 'municipality="998"', 1)
    p = only(validate_file(write(tmp_path, text), ctx))
    assert p.line == 6 and "998" in p.message


def test_wrong_attachment_sha256(tmp_path: Path, ctx: BatchContext) -> None:
    text = batch_text().replace("32579cddccd2", "32579cddccd3")
    stored: list[str] = []
    path = write(tmp_path, text)
    with pytest.raises(InvalidFile) as exc:
        list(BatchReader(path, ctx, lambda h, _d: stored.append(h)))
    p = only(exc.value.problems)
    assert (p.line, p.code) == (19, "INVALID_VALUE")
    assert "Laskelma: marraskuu/2026.pdf" in p.message and "sha256" in p.message
    assert len(stored) == 1  # the good attachment was handed over, the bad one not


def test_attachment_too_large(tmp_path: Path) -> None:
    small = BatchContext(MUNICIPALITIES, TODAY, max_attachment_bytes=35)
    p = only(validate_file(write(tmp_path, batch_text()), small))
    assert (p.line, p.code) == (17, "TOO_LARGE")


def test_future_decision_date(tmp_path: Path, ctx: BatchContext) -> None:
    text = batch_text()
    at = text.index("<DecisionDate>", text.index('id="N-2026-000000003"'))
    text = text[:at] + text[at:].replace("2026-11-20", "2026-11-21", 1)
    p = only(validate_file(write(tmp_path, text), ctx))
    assert (p.line, p.code) == (33, "INVALID_VALUE")
    assert "2026-11-21" in p.message and "future" in p.message


def test_list_entry_missing_its_types_field(tmp_path: Path, ctx: BatchContext) -> None:
    text = lists_text().replace("      <Amount>431.20</Amount>\n", "")
    p = only(validate_file(write(tmp_path, text), ctx))
    assert p.line == 24
    assert "L-2026-10-837-TMTSHARE" in p.message and "missing Amount" in p.message


def test_list_entry_with_field_or_reason_of_another_type(tmp_path: Path, ctx: BatchContext) -> None:
    text = lists_text().replace("<Reason>PAID_200_DAYS</Reason>", "<Reason>HOME_CARE</Reason>")
    p = only(validate_file(write(tmp_path, text), ctx))
    assert p.line == 12 and "HOME_CARE" in p.message


def test_duplicate_id_in_file(tmp_path: Path, ctx: BatchContext) -> None:
    text = batch_text().replace('id="N-2026-000000003"', 'id="N-2026-000000001"')
    p = only(validate_file(write(tmp_path, text), ctx))
    assert (p.line, p.code) == (31, "INVALID_VALUE")
    assert "N-2026-000000001" in p.message and "more than once" in p.message


def test_period_start_after_end(tmp_path: Path, ctx: BatchContext) -> None:
    text = lists_text().replace('periodStart="2026-10-01"', 'periodStart="2026-11-01"', 1)
    p = only(validate_file(write(tmp_path, text), ctx))
    assert p.line == 6 and "periodStart" in p.message


def test_schema_errors_have_lines_and_plain_words(tmp_path: Path, ctx: BatchContext) -> None:
    text = (
        batch_text()
        .replace("<Municipality>092<", "<Municipality>92<")
        .replace("<Language>en</Language>", "<Language>EN</Language>")
        .replace("190370U950C", "190370U950D")  # business problem before the schema ones
    )
    problems = validate_file(write(tmp_path, text), ctx)
    assert [(p.line, p.code) for p in problems] == [
        (9, "INVALID_VALUE"), (22, "SCHEMA"), (50, "SCHEMA")
    ]
    assert problems[1].message == (
        "Notification N-2026-000000002: Municipality: "
        "the value '92' does not match the pattern [0-9]{3}."
    )
    assert all("{urn:" not in p.message for p in problems)


def test_missing_child_reported_at_its_parent(tmp_path: Path, ctx: BatchContext) -> None:
    text = batch_text().replace("      <Language>sv</Language>\n", "")
    p = only(validate_file(write(tmp_path, text), ctx))
    assert (p.line, p.code) == (24, "SCHEMA")
    assert "Language" in p.message


def test_schema_message_never_echoes_an_identity_code(tmp_path: Path, ctx: BatchContext) -> None:
    text = batch_text().replace("190370U950C", "190370U950c")
    p = only(validate_file(write(tmp_path, text), ctx))
    assert p.line == 9 and "190370U950" not in p.message


def test_plain_message_strips_namespaces() -> None:
    raw = ("Element '{urn:fi:kela:etotu:decision-batch:2}Phone': This element is not expected. "
           "Expected is ( {urn:fi:kela:etotu:decision-batch:2}Language ).")
    assert plain_message(raw) == "Phone: this element is not expected here; expected Language."


def test_max_problems_caps_the_list(tmp_path: Path) -> None:
    text = batch_text().replace(">2026-11-20</DecisionDate>", ">2027-01-01</DecisionDate>")
    capped = BatchContext(MUNICIPALITIES, TODAY, max_problems=2)
    assert len(validate_file(write(tmp_path, text), capped)) == 2


def test_response_schema_error_has_line(tmp_path: Path, ctx: BatchContext) -> None:
    text = (EXAMPLES / "municipality-response.xml").read_text(encoding="utf-8")
    path = write(tmp_path, text.replace("<Benefit>HOUSING_ALLOWANCE", "<Benefit>LOTTERY"))
    p = only(validate_any(path, ctx))
    assert (p.line, p.code) == (12, "SCHEMA") and "LOTTERY" in p.message


def test_unknown_namespace_in_validate_any(tmp_path: Path, ctx: BatchContext) -> None:
    p = only(validate_any(write(tmp_path, "<x xmlns='urn:other'/>"), ctx))
    assert p.code == "SCHEMA" and "urn:other" in p.message


# ------------------------------------------------------------------ CLI


def run_cli(tmp_path: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--home", str(tmp_path), "validate", *args])
    return result.exit_code, result.output


def test_cli_valid_files_exit_0(tmp_path: Path) -> None:
    code, out = run_cli(
        tmp_path, str(EXAMPLES / "decision-batch.xml"), str(EXAMPLES / "person-lists.xml")
    )
    assert code == 0 and "2 of 2 file(s) valid" in out


def test_cli_invalid_file_exit_1_text(tmp_path: Path) -> None:
    bad = write(tmp_path, batch_text().replace("190370U950C", "190370U950D"), "bad.xml")
    code, out = run_cli(tmp_path, str(bad), str(EXAMPLES / "person-lists.xml"))
    assert code == 1
    assert f"{bad}:9: INVALID_VALUE: Notification N-2026-000000001" in out
    assert "1 of 2 file(s) valid" in out


def test_cli_json(tmp_path: Path) -> None:
    good = str(EXAMPLES / "decision-batch.xml")
    bad = write(tmp_path, batch_text().replace("<Municipality>091<", "<Municipality>998<"), "b.xml")
    code, out = run_cli(tmp_path, "--format", "json", good, str(bad))
    assert code == 1
    report = json.loads(out)
    assert report[0] == {"file": good, "valid": True, "problems": []}
    assert report[1]["valid"] is False
    first = report[1]["problems"][0]
    assert (first["line"], first["code"]) == (6, "INVALID_VALUE")


def test_cli_uses_home_municipality_register(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "municipalities.csv").write_text(
        "code,name_fi,name_sv,area_code,area_name_fi,area_name_sv\n"
        "091,Helsinki,Helsingfors,90,Helsingin kaupunki,Helsingfors stad\n")
    code, out = run_cli(tmp_path, str(EXAMPLES / "decision-batch.xml"))
    assert code == 1 and "municipality 092" in out


def test_cli_refuses_a_broken_home_register_instead_of_using_another(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "municipalities.csv").write_text("code,name_fi\n091,Helsinki\n")
    code, out = run_cli(tmp_path, str(EXAMPLES / "decision-batch.xml"))
    assert code == 2 and "municipality register" in out


def test_cli_usage_errors_exit_2(tmp_path: Path) -> None:
    assert run_cli(tmp_path, str(tmp_path / "missing.xml"))[0] == 2
    assert run_cli(tmp_path)[0] == 2
    assert run_cli(tmp_path, "--format", "yaml", str(EXAMPLES / "decision-batch.xml"))[0] == 2


def test_console_script_exit_codes(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "kela-broker"
    if not exe.exists():
        pytest.skip("console script not installed")
    bad = write(tmp_path, batch_text().replace("190370U950C", "190370U950D"), "bad.xml")
    ok = subprocess.run([exe, "validate", EXAMPLES / "decision-batch.xml"], capture_output=True)
    ko = subprocess.run([exe, "validate", "--format", "json", bad], capture_output=True)
    assert (ok.returncode, ko.returncode) == (0, 1)
    assert json.loads(ko.stdout)[0]["problems"][0]["line"] == 9


def test_unexpected_element_under_root(tmp_path: Path, ctx: BatchContext) -> None:
    text = batch_text().replace(
        '  <Notification id="N-2026-000000002"',
        '  <Surprise/>\n  <Notification id="N-2026-000000002"',
    )
    p = only(validate_file(write(tmp_path, text), ctx))
    assert (p.line, p.code) == (21, "SCHEMA") and "Surprise" in p.message


def test_duplicate_names_first_line(tmp_path: Path, ctx: BatchContext) -> None:
    text = lists_text().replace('id="L-2026-10-837-TMTSHARE"', 'id="L-2026-10-837-TMT200"')
    p = only(validate_file(write(tmp_path, text), ctx))
    assert p.line == 23 and "first at line 6" in p.message


def test_items_are_provisional_until_iteration_ends(tmp_path: Path, ctx: BatchContext) -> None:
    # XSD errors surface when the parse ends: consumers must wait for a clean finish.
    text = batch_text().replace("<Language>en</Language>", "<Language>EN</Language>")
    seen: list[str] = []
    with pytest.raises(InvalidFile):
        for item in BatchReader(write(tmp_path, text), ctx):
            seen.append(item.id)
    assert len(seen) <= 4
