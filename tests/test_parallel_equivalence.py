"""The parallel reader (broker.intake.batch_chunks) gives exactly the ordinary reader's verdict
and items, wherever its piece boundaries fall (issue 11).

Pieces are cut at bytes that look like ``<Notification`` or ``<PersonList``; such bytes
can sit inside a comment, a PI or CDATA. Measured before the fix: a ``<Notification>``
hidden in a PI was delivered, because the piece before it ended in an unclosed PI and
libxml2's complaint about that was forgiven. Documents here are generated with
comments, PIs and CDATA (holding look-alike tags) between and inside the items, and
cut into pieces of a few hundred bytes, so boundaries land everywhere.
"""

from __future__ import annotations

import csv
from datetime import date
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

import broker.intake.batch_chunks as batch_chunks
from broker.domain.model import StoredItem
from broker.domain.pic import make as make_pic
from broker.errors import InvalidFile
from broker.intake.batch_chunks import ParallelBatchReader, SplitFailed, plan_chunks
from broker.intake.read_policy import validate_file
from broker.intake.validation import BatchContext, BatchReader

REPO = Path(__file__).resolve().parents[1]
with (REPO / "broker" / "data" / "municipalities.csv").open(encoding="utf-8") as _f:
    MUNICIPALITIES = frozenset(row["code"] for row in csv.DictReader(_f))
CTX = BatchContext(MUNICIPALITIES, date(2026, 11, 21))
NS = "urn:fi:kela:etotu:decision-batch:2"
HIDDEN_ID = "N-2026-999999999"


def notification(nid: str, n: int, inside: list[str], municipality: str = "091") -> str:
    """A valid notification; ``inside`` (comments, PIs) goes between its children, and a
    CDATA item among them goes into AdditionalInfo."""
    gaps = [*inside, "", "", "", ""][:4]
    info = "".join(g for g in inside if g.startswith("<![CDATA[")) or "tulkki"
    gaps = ["" if g.startswith("<![CDATA[") else g for g in gaps]
    code = make_pic(date(1970, 1, 1 + n % 28), 900 + n % 100)
    return (
        f'  <Notification id="{nid}" type="IMMIGRANT">{gaps[0]}\n'
        f"    <Municipality>{municipality}</Municipality>{gaps[1]}\n"
        f"    <DecisionDate>2026-11-20</DecisionDate>\n"
        f"    <Person><PersonalIdentityCode>{code}</PersonalIdentityCode>"
        f"<FamilyName>Virtanen</FamilyName><GivenNames>Aino</GivenNames>"
        f"<Language>fi</Language></Person>{gaps[2]}\n"
        f"    <AdditionalInfo>{info}</AdditionalInfo>{gaps[3]}\n"
        f"  </Notification>\n"
    )


HIDDEN = notification(HIDDEN_ID, 0, []).strip()
# Text that looks like a cut point (the parallel reader cuts at these bytes) ... The
# second is the measured attack: in a PI, "<?x " + it + " ?>" is one PI to a conforming
# parser, but a piece that starts at its <Notification sees an element and then a PI.
CUT_LIKE = [HIDDEN, HIDDEN + "<?y", "<Notification ", "<PersonList ", '<Notification id="x">']
# ... and text that does not, though it looks like markup.
HARMLESS = ["</DecisionBatch>", "<DecisionBatch>", "", "plain words", "a < b & c > d"]


def comment(text: str) -> str:
    return "<!-- " + text.replace("--", "- -") + " -->"


def pi(text: str) -> str:
    return "<?note " + text.replace("?>", "? >") + " ?>"


def cdata(text: str) -> str:
    return "<![CDATA[" + text.replace("]]>", "]] >") + "]]>"


def decorations(texts: list[str], *, with_cdata: bool) -> st.SearchStrategy[str]:
    kinds = [comment, pi, cdata] if with_cdata else [comment, pi]
    return st.builds(lambda f, t: f(t), st.sampled_from(kinds), st.sampled_from(texts))


whitespace = st.sampled_from(["", "\n", "  \n\t", "\r\n"])


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    """A batch of a few notifications with comments, PIs and CDATA around and inside
    them; mostly valid (CDATA only where text belongs), sometimes not. In about half,
    the decorations hold text that looks like a cut point, so boundaries fall inside
    them; in the rest, boundaries fall only at real items and the pieces can vouch."""
    texts = HARMLESS + 2 * CUT_LIKE if draw(st.booleans()) else HARMLESS
    anywhere = decorations(texts, with_cdata=True)  # CDATA in the root is text: invalid
    quiet = decorations(texts, with_cdata=False)
    count = draw(st.integers(3, 10))
    parts = ['<?xml version="1.0" encoding="UTF-8"?>\n',
             *draw(st.lists(quiet, max_size=2)),
             f'\n<DecisionBatch xmlns="{NS}" batchId="EQ" created="2026-11-20T14:05:00+02:00">\n']
    for n in range(1, count + 1):
        around = draw(st.lists(quiet if draw(st.integers(0, 9)) else anywhere, max_size=2))
        parts += [*around, draw(whitespace)]
        inside = draw(st.lists(anywhere, max_size=3))
        bad = draw(st.integers(0, 30)) == 0  # now and then a business-rule error
        parts.append(notification(f"N-2026-{n:09d}", n, inside, "999" if bad else "091"))
    parts += [*draw(st.lists(quiet, max_size=2)), "</DecisionBatch>\n",
              *draw(st.lists(quiet, max_size=2)), draw(whitespace)]
    return "".join(parts).encode()


def attack(decorated: str, *, after_root: bool = False) -> bytes:
    """Three notifications, ``decorated`` between the second and third (or after the root)."""
    items = [notification(f"N-2026-{n:09d}", n, []) for n in (1, 2, 3)]
    middle, end = ("", decorated) if after_root else (decorated + "\n", "")
    return (f'<DecisionBatch xmlns="{NS}" batchId="EQ" created="2026-11-20T14:05:00Z">\n'
            + items[0] + items[1] + middle + items[2] + "</DecisionBatch>\n" + end).encode()


def sequential(path: Path) -> tuple[list[StoredItem] | None, list[str]]:
    try:
        return [StoredItem.of(i) for i in BatchReader(path, CTX)], []
    except InvalidFile as exc:
        return None, [p.code for p in exc.problems]


def parallel(path: Path, piece: int) -> list[StoredItem] | None:
    try:
        return list(ParallelBatchReader(path, CTX, chunk_bytes=piece, workers=0))
    except SplitFailed:
        return None


def verdict(path: Path, piece: int, *, use_parallel: bool) -> list[tuple[int | None, str]]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(batch_chunks, "PARALLEL_MIN_BYTES", 0 if use_parallel else 1 << 62)
        mp.setattr(batch_chunks, "CHUNK_BYTES", piece)
        mp.setattr(batch_chunks, "_workers", lambda: 0)
        return [(p.line, p.code) for p in validate_file(path, CTX)]


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(doc=documents(), piece=st.integers(24, 700))
@example(doc=attack(pi(HIDDEN + "<?y")), piece=24)  # the measured case
@example(doc=attack(comment(HIDDEN + "<?y"), after_root=True), piece=24)  # found by this test
def test_parallel_reader_equals_ordinary_reader(tmp_path: Path, doc: bytes, piece: int) -> None:
    path = tmp_path / "batch.xml"
    path.write_bytes(doc)
    items, codes = sequential(path)
    ours = parallel(path, piece)
    if ours is not None:
        event("parallel path vouched")
        # Whatever the pieces accept, the whole file's reader accepts, item for item.
        assert items is not None, codes
        assert ours == items
    else:
        event("parallel path handed over")
    for found in (items or []) + (ours or []):
        assert found.id != HIDDEN_ID, "an element inside a comment, PI or CDATA was stored"
    # The verdict of `validate` (which picks the path by size) is the same either way.
    assert verdict(path, piece, use_parallel=True) == verdict(path, piece, use_parallel=False)
    assert (items is None) == bool(codes)


def test_a_notification_hidden_in_a_pi_across_a_cut_is_never_delivered(tmp_path: Path) -> None:
    """The measured case, with real worker processes: a PI holding a whole notification,
    with a piece boundary at the notification inside it."""
    items = [notification(f"N-2026-{n:09d}", n, []) for n in range(1, 41)]
    head = f'<?xml version="1.0"?>\n<DecisionBatch xmlns="{NS}" batchId="PI" ' \
           'created="2026-11-20T14:05:00+02:00">\n'
    body = "".join(items[:20]) + pi(HIDDEN + "<?y") + "\n" + "".join(items[20:])
    path = tmp_path / "pi.xml"
    path.write_text(head + body + "</DecisionBatch>\n", encoding="utf-8")
    hidden_at = path.read_bytes().index(HIDDEN.encode())
    # A piece size that puts a boundary right at the hidden notification.
    piece = next(p for p in range(300, 3000)
                 if hidden_at in [c.start for c in plan_chunks(path, CTX, p)])
    seq, _ = sequential(path)
    assert seq is not None and len(seq) == 40
    assert all(i.id != HIDDEN_ID for i in seq)
    with pytest.raises(SplitFailed):  # the piece before ends inside the PI: no vouching
        list(ParallelBatchReader(path, CTX, chunk_bytes=piece, workers=2))
    # And the path every reader takes gives the ordinary reader's verdict: valid.
    assert verdict(path, piece, use_parallel=True) == []


def test_decorated_documents_do_take_the_parallel_path(tmp_path: Path) -> None:
    """Control for the property: comments, PIs and CDATA inside items do not stop the
    parallel reader, so the equality above is tested on files it vouches for."""
    inside = [comment("</DecisionBatch>"), pi("<DecisionBatch>"), cdata("a < b & c")]
    items = [notification(f"N-2026-{n:09d}", n, inside) for n in range(1, 30)]
    path = tmp_path / "deco.xml"
    path.write_text(f'<DecisionBatch xmlns="{NS}" batchId="D" created="2026-11-20T14:05:00Z">\n'
                    + "".join(items) + "</DecisionBatch>\n", encoding="utf-8")
    seq, codes = sequential(path)
    assert seq is not None, codes
    assert len(plan_chunks(path, CTX, 900)) > 5
    assert parallel(path, 900) == seq
