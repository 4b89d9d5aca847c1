"""The memory of recent uploads that answers STAT/SETSTAT after the broker took the file."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from adapters.sftp_recent import RecentUploads


def test_answers_after_the_file_is_gone_until_the_grace_ends(tmp_path: Path) -> None:
    f = tmp_path / "vastaus.xml"
    f.write_bytes(b"x" * 123)
    os.utime(f, (1_600_000_000, 1_600_000_000))
    recent = RecentUploads(grace=60)
    recent.remember(f, f.stat(), now=0)
    f.unlink()
    attrs = recent.attrs(f, now=10)
    assert attrs is not None and attrs.size == 123 and attrs.mtime == 1_600_000_000
    assert recent.set_times(f, 1_700_000_000, 1_700_000_000, now=20)
    assert recent.attrs(f, now=69).mtime == 1_700_000_000  # type: ignore[union-attr]
    assert recent.attrs(f, now=71) is None  # grace counted from the first "gone" answer
    assert not recent.set_times(f, 1, 1, now=72)


def test_rename_moves_the_memory(tmp_path: Path) -> None:
    part, final = tmp_path / "a.xml.filepart", tmp_path / "a.xml"
    part.write_bytes(b"abc")
    recent = RecentUploads()
    recent.remember(part, part.stat(), now=0)
    part.rename(final)
    recent.renamed(part, final, final.stat(), now=1)
    final.unlink()
    assert recent.attrs(part, now=2) is None
    assert recent.attrs(final, now=2).size == 3  # type: ignore[union-attr]


@given(st.lists(st.integers(min_value=0, max_value=50), max_size=200))
def test_the_memory_is_bounded(names: list[int]) -> None:
    recent = RecentUploads(max_entries=8)
    st_ = os.stat(__file__)
    for i, n in enumerate(names):
        recent.remember(Path(f"/nonexistent/{n}"), st_, now=float(i))
    assert len(recent) <= 8
    if names:
        assert recent.attrs(Path(f"/nonexistent/{names[-1]}"), now=float(len(names))) is not None


def test_times_set_while_the_file_is_still_there_are_remembered(tmp_path: Path) -> None:
    f = tmp_path / "vastaus.xml"
    f.write_bytes(b"abc")
    recent = RecentUploads()
    recent.remember(f, f.stat(), now=0)
    recent.note_times(f, 1_700_000_000, 1_700_000_000)  # SETSTAT before the broker took it
    f.unlink()
    assert recent.attrs(f, now=1).mtime == 1_700_000_000  # type: ignore[union-attr]
