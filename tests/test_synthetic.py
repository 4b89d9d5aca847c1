"""Synthetic batches are valid decision batches, whatever the parameters."""

from __future__ import annotations

import csv
import hashlib
import stat
from datetime import date
from pathlib import Path
from tempfile import TemporaryDirectory

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.domain import pic
from broker.domain.model import Notification, NotificationType, PersonList
from broker.intake.read_policy import validate_file
from broker.intake.synthetic import write_batch, write_batch_of_size
from broker.intake.validation import BatchContext, BatchReader

REPO = Path(__file__).resolve().parents[1]
with (REPO / "broker" / "data" / "municipalities.csv").open(encoding="utf-8") as _f:
    CODES = sorted(row["code"] for row in csv.DictReader(_f))
TODAY = date(2026, 11, 20)
CTX = BatchContext(frozenset(CODES), TODAY)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    count=st.integers(0, 30),
    lists=st.integers(0, 5),
    seed=st.integers(0, 2**32),
    attachment_bytes=st.sampled_from([0, 1, 3, 100, 5000]),
    municipalities=st.lists(st.sampled_from(CODES), min_size=1, max_size=5),
    types=st.one_of(st.none(), st.lists(st.sampled_from(list(NotificationType)), min_size=1)),
    start_id=st.integers(1, 10**6),
    days_ago=st.integers(0, 400),
    batch_id=st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True),
)
def test_synthetic_batches_always_validate(
    count: int, lists: int, seed: int, attachment_bytes: int, municipalities: list[str],
    types: list[str] | None, start_id: int, days_ago: int, batch_id: str,
) -> None:
    decision_date = date.fromordinal(TODAY.toordinal() - days_ago)
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "batch.xml"
        write_batch(
            path, count=count, municipalities=municipalities, types=types,
            decision_date=decision_date, batch_id=batch_id, seed=seed,
            attachment_bytes=attachment_bytes, start_id=start_id, lists=lists,
        )
        assert validate_file(path, CTX) == []


def test_content_matches_parameters(tmp_path: Path) -> None:
    path = tmp_path / "b.xml"
    blobs: dict[str, bytes] = {}
    write_batch(
        path, count=12, municipalities=["091", "837"], types=["IMMIGRANT"],
        decision_date=TODAY, batch_id="B-1", seed=7, attachment_bytes=2000, start_id=5, lists=4,
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    reader = BatchReader(path, CTX, lambda h, d: blobs.update({h: d}))
    items = list(reader)
    notes = [i for i in items if isinstance(i, Notification)]
    lists = [i for i in items if isinstance(i, PersonList)]
    assert [n.id for n in notes] == [f"N-2026-{i:09d}" for i in range(5, 17)]
    assert {n.type for n in notes} == {"IMMIGRANT"}
    assert {n.municipality for n in notes} <= {"091", "837"}
    assert len(lists) == 4 and len({lst.type for lst in lists}) == 4
    assert all(900 <= int(n.person.pic[7:10]) <= 999 for n in notes)
    assert all(pic.problem(n.person.pic) is None for n in notes)
    assert all(a.size == 2000 for n in notes for a in n.attachments)
    assert len(blobs) == 12 and all(hashlib.sha256(d).hexdigest() == h for h, d in blobs.items())
    assert reader.header is not None and reader.header.batch_id == "B-1"


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.xml", tmp_path / "b.xml", tmp_path / "c.xml"
    for p, seed in ((a, 1), (b, 1), (c, 2)):
        write_batch(p, count=20, municipalities=CODES, decision_date=TODAY, batch_id="X", seed=seed)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


def test_batch_of_size_is_about_that_size_and_valid(tmp_path: Path) -> None:
    path = tmp_path / "sized.xml"
    count = write_batch_of_size(path, 2, municipalities=CODES, decision_date=TODAY, batch_id="S")
    assert 1_600_000 < path.stat().st_size < 2_400_000
    assert count > 1000
    assert validate_file(path, CTX) == []
