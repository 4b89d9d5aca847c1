"""Reading a big batch on several cores (broker.intake.batch_chunks): the same items as the
ordinary reader, or SplitFailed so that the ordinary reader decides."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from daemon_support import make_home, wait_for
from sqlalchemy import select

from broker.config.settings import load_config
from broker.domain.model import StoredItem
from broker.intake.batch_chunks import ParallelBatchReader, SplitFailed, plan_chunks
from broker.intake.ingest import ingest_batch
from broker.intake.read_policy import validate_file
from broker.intake.synthetic import write_batch
from broker.intake.validation import BatchContext, BatchReader
from broker.storage.state_db import make_engine
from broker.storage.store import Store, assignments, blobs, items

REPO = Path(__file__).resolve().parents[1]
with (REPO / "broker" / "data" / "municipalities.csv").open(encoding="utf-8") as _f:
    MUNICIPALITIES = sorted(row["code"] for row in csv.DictReader(_f))
DAY = date(2026, 11, 20)
CTX = BatchContext(frozenset(MUNICIPALITIES), DAY)
PIECE = 64 * 1024  # small pieces, so a test batch of ~1 MB is cut many times


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("chunks") / "batch.xml"
    # Attachments make long base64 text nodes; lists put PersonList elements at the end.
    write_batch(path, count=2500, municipalities=MUNICIPALITIES, decision_date=DAY,
                batch_id="CHUNKS", seed=7, attachment_bytes=300, lists=12)
    return path


def sequential(path: Path) -> tuple[list[StoredItem], list[str]]:
    shas: list[str] = []
    reader = BatchReader(path, CTX, on_attachment=lambda sha, _data: shas.append(sha))
    return [StoredItem.of(i) for i in reader], shas


def parallel(path: Path, **kw: object) -> tuple[list[StoredItem], list[str]]:
    shas: list[str] = []
    reader = ParallelBatchReader(path, CTX, on_attachment=lambda sha, _data: shas.append(sha),
                                 chunk_bytes=PIECE, workers=2, **kw)  # type: ignore[arg-type]
    return list(reader), shas


def start_lines(path: Path) -> dict[str, int]:
    """Where each item's start tag is, counted in the file itself."""
    found = {}
    tag = re.compile(r'<(?:Notification|PersonList) id="([^"]+)"')
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if m := tag.search(line):
            found[m.group(1)] = n
    return found


def test_pieces_give_the_same_items_attachments_and_lines(batch: Path) -> None:
    assert len(plan_chunks(batch, CTX, PIECE)) > 10
    ours, our_shas = parallel(batch)
    theirs, their_shas = sequential(batch)
    assert len(ours) == 2512
    # Same rows in the same order: content, hash and stored JSON included.
    assert [r._replace(line=None) for r in ours] == [r._replace(line=None) for r in theirs]
    assert our_shas == their_shas and len(our_shas) == 2500
    lines = start_lines(batch)
    assert [r.line for r in ours] == [lines[r.id] for r in ours]


def edit(src: Path, dst: Path, old: str, new: str, *, last: bool = False) -> Path:
    text = src.read_text(encoding="utf-8")
    i = text.rindex(old) if last else text.index(old)
    dst.write_text(text[:i] + new + text[i + len(old):], encoding="utf-8")
    return dst


@pytest.mark.parametrize("case", ["bad municipality", "schema error", "duplicate across pieces"])
def test_any_problem_in_any_piece_hands_over_to_the_ordinary_reader(
    batch: Path, tmp_path: Path, case: str
) -> None:
    bad = tmp_path / "bad.xml"
    if case == "bad municipality":  # a business rule, deep in the file
        text = batch.read_text(encoding="utf-8")
        m = list(re.finditer(r"<Municipality>\d{3}</Municipality>", text))[-100]
        bad.write_text(text[:m.start()] + "<Municipality>999</Municipality>" + text[m.end():],
                       encoding="utf-8")
    elif case == "schema error":
        edit(batch, bad, "<Language>", "<Language>xx", last=True)
    else:  # the first id again, near the end: each piece alone is fine
        edit(batch, bad, 'id="N-2026-000002500"', 'id="N-2026-000000001"')
    with pytest.raises(SplitFailed):
        parallel(bad)


def test_a_cut_inside_a_comment_is_refused_not_misread(batch: Path, tmp_path: Path) -> None:
    # A comment of the right size holding text that looks like a cut point.
    text = batch.read_text(encoding="utf-8")
    cut = text.index("<Notification ", PIECE)
    fake = "<!-- " + ("<Notification x " * 8000) + " -->\n  "
    odd = tmp_path / "odd.xml"
    odd.write_text(text[:cut] + fake + text[cut:], encoding="utf-8")
    with pytest.raises(SplitFailed):
        parallel(odd)
    # The ordinary reader finds it valid, and so does the ingest that falls back to it.
    assert len(sequential(odd)[0]) == 2512


def test_files_that_cannot_be_cut(tmp_path: Path) -> None:
    small = tmp_path / "small.xml"
    write_batch(small, count=3, municipalities=["091"], decision_date=DAY, batch_id="S")
    with pytest.raises(SplitFailed):
        plan_chunks(small, CTX, PIECE)
    prefixed = tmp_path / "prefixed.xml"
    write_batch(prefixed, count=400, municipalities=["091"], decision_date=DAY, batch_id="P")
    text = prefixed.read_text(encoding="utf-8")
    text = re.sub(r"<(/?)(DecisionBatch|Notification|PersonList)\b", r"<\1b:\2", text)
    ns = "urn:fi:kela:etotu:decision-batch:2"
    prefixed.write_text(text.replace("xmlns=", f'xmlns:b="{ns}" xmlns=', 1), encoding="utf-8")
    with pytest.raises(SplitFailed):
        plan_chunks(prefixed, CTX, 16 * 1024)
    assert len(sequential(prefixed)[0]) == 400  # still a valid batch, read the ordinary way


def spy_on_parallel_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Files the parallel reader is asked to read, from now on."""
    seen: list[Path] = []
    real = ParallelBatchReader.__iter__

    def spied(self: ParallelBatchReader) -> Iterator[StoredItem]:
        seen.append(self.path)
        return real(self)

    monkeypatch.setattr(ParallelBatchReader, "__iter__", spied)
    return seen


def store_of(home: Path) -> Store:
    return Store(make_engine(load_config(home).database))


def rows(store: Store) -> list[tuple[object, ...]]:
    with store.engine.connect() as c:
        got = [tuple(r) for r in c.execute(
            select(items.c.seq, items.c.id, items.c.kind, items.c.type, items.c.municipality,
                   items.c.decision_date, items.c.urgent, items.c.content_hash,
                   items.c.payload, assignments.c.organisation, assignments.c.release_at)
            .join(assignments, assignments.c.item_seq == items.c.seq).order_by(items.c.seq))]
        got.append((c.execute(select(blobs.c.sha256).order_by(blobs.c.sha256)).scalars().all(),))
        return got


def test_ingest_stores_the_same_on_every_core_as_on_one(
    batch: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
    one, many = make_home(tmp_path / "one"), make_home(tmp_path / "many")
    cfg = load_config(one)
    plain = ingest_batch(batch, config=cfg, store=store_of(one), now=now)
    monkeypatch.setattr("broker.intake.batch_chunks.PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr("broker.intake.batch_chunks.CHUNK_BYTES", PIECE)
    calls = spy_on_parallel_reads(monkeypatch)
    cfg = load_config(many)
    fast = ingest_batch(batch, config=cfg, store=store_of(many), now=now)
    assert calls, "the parallel reader was not used"
    assert (plain.status, plain.new) == (fast.status, fast.new) == ("accepted", 2512)
    assert rows(store_of(one)) == rows(store_of(many))


def test_ingest_of_a_bad_big_file_says_what_the_ordinary_reader_says(
    batch: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
    bad = edit(batch, tmp_path / "bad.xml", "<Language>", "<Language>xx", last=True)
    one, many = make_home(tmp_path / "one"), make_home(tmp_path / "many")
    plain = ingest_batch(bad, config=load_config(one),
                         store=store_of(one), now=now)
    monkeypatch.setattr("broker.intake.batch_chunks.PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr("broker.intake.batch_chunks.CHUNK_BYTES", PIECE)
    tried = spy_on_parallel_reads(monkeypatch)
    fast = ingest_batch(bad, config=load_config(many),
                        store=store_of(many), now=now)
    assert tried == [bad]
    assert plain.status == fast.status == "rejected"
    assert plain.problems == fast.problems and plain.problems
    assert rows(store_of(many))[:-1] == []  # nothing of it was stored


def test_validate_reads_big_files_on_every_core_with_the_same_verdicts(
    batch: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = edit(batch, tmp_path / "bad.xml", "<Language>", "<Language>xx", last=True)
    exact = validate_file(bad, CTX)
    assert exact and validate_file(batch, CTX) == []
    monkeypatch.setattr("broker.intake.batch_chunks.PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr("broker.intake.batch_chunks.CHUNK_BYTES", PIECE)
    used = spy_on_parallel_reads(monkeypatch)
    assert validate_file(batch, CTX) == []
    assert validate_file(bad, CTX) == exact
    assert len(used) == 2


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state != b"Z"  # a zombie has exited; only its parent has not collected it


def test_workers_leave_when_the_broker_is_killed(batch: Path, tmp_path: Path) -> None:
    """kill -9 of the reading process must not leave its workers behind for good."""
    script = tmp_path / "reader.py"
    script.write_text(
        "import sys, time\n"
        "from datetime import date\n"
        "from pathlib import Path\n"
        "from broker.intake.batch_chunks import ParallelBatchReader\n"
        "from broker.intake.validation import BatchContext\n"
        "if __name__ == '__main__':\n"
        "    ctx = BatchContext(frozenset(sys.argv[2].split(',')), date(2026, 11, 20))\n"
        f"    for _ in ParallelBatchReader(Path(sys.argv[1]), ctx, chunk_bytes={PIECE},\n"
        "                                 workers=2):\n"
        "        time.sleep(0.01)  # a slow consumer: the workers stay busy or waiting\n",
        encoding="utf-8")
    proc = subprocess.Popen([sys.executable, str(script), str(batch), ",".join(MUNICIPALITIES)])
    try:
        def two_workers() -> list[int] | None:
            kids = [k for k in _children(proc.pid)
                    if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes()]
            return kids if len(kids) == 2 else None

        workers = wait_for(two_workers, what="two worker processes")
        assert isinstance(workers, list)
    finally:
        proc.kill()
        proc.wait()
    wait_for(lambda: not any(_running(w) for w in workers), timeout=10,
             what="workers to leave after their parent was killed")
