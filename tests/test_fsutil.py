"""Atomic writes, private directories and the SPEC 1 ignore rules, on real files."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.storage.files import (
    NAME_MAX,
    atomic_write,
    atomic_writer,
    is_hidden_or_partial,
    open_for_writing,
    private_dir,
    stored_name,
    temp_path,
)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """Umask 0: proves the modes come from the code, not from a strict umask."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_atomic_write_bytes(tmp_path: Path, loose_umask: None) -> None:
    target = tmp_path / "D-x.xml"
    atomic_write(target, b"<a/>")
    assert target.read_bytes() == b"<a/>"
    assert mode(target) == 0o600
    assert os.listdir(tmp_path) == ["D-x.xml"]


def test_atomic_write_iterable_replaces_existing(tmp_path: Path) -> None:
    target = tmp_path / "f.csv"
    target.write_bytes(b"old")
    atomic_write(target, (bytes([i]) * 1000 for i in range(5)))
    assert target.read_bytes() == b"".join(bytes([i]) * 1000 for i in range(5))


def test_failing_writer_leaves_nothing_visible(tmp_path: Path) -> None:
    target = tmp_path / "big.zip"

    def chunks() -> Iterator[bytes]:
        yield b"first part"
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(target, chunks())
    assert os.listdir(tmp_path) == []


def test_failing_writer_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "keep.xml"
    target.write_bytes(b"old content")
    with pytest.raises(ValueError), atomic_writer(target) as f:
        f.write(b"new")
        raise ValueError("stop")
    assert target.read_bytes() == b"old content"
    assert sorted(os.listdir(tmp_path)) == ["keep.xml"]


def test_partial_content_is_only_under_the_hidden_temp_name(tmp_path: Path) -> None:
    target = tmp_path / "stream.zip"
    with atomic_writer(target) as f:
        f.write(b"half")
        f.flush()
        assert not target.exists()
        assert temp_path(target).name == ".stream.zip.part"
        assert is_hidden_or_partial(temp_path(target).name)
        assert temp_path(target).read_bytes() == b"half"
        f.write(b" and the rest")
    assert target.read_bytes() == b"half and the rest"
    assert not temp_path(target).exists()


def test_stale_temp_from_a_crash_is_reused_with_private_mode(
    tmp_path: Path, loose_umask: None
) -> None:
    target = tmp_path / "x.xml"
    stale = temp_path(target)
    stale.write_bytes(b"left over from a crash, longer than the new content")
    stale.chmod(0o644)
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert mode(target) == 0o600
    assert not stale.exists()


def test_a_name_another_process_is_writing_is_left_to_it(tmp_path: Path) -> None:
    """Two writers of one name (a release pass beside the daemon's) never mix bytes."""
    target = tmp_path / "D-x.xml"
    with atomic_writer(target, exclusive=True) as first:
        first.write(b"the first writer's ")
        with pytest.raises(BlockingIOError), atomic_writer(target, exclusive=True) as second:
            second.write(b"garbage")
        first.write(b"bytes")
    assert target.read_bytes() == b"the first writer's bytes"
    assert not temp_path(target).exists()
    with pytest.raises(FileExistsError), atomic_writer(target, exclusive=True) as late:
        late.write(b"a second rendering")
    assert target.read_bytes() == b"the first writer's bytes"


def test_symlink_at_temp_name_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    target = tmp_path / "out.xml"
    temp_path(target).symlink_to(victim)
    with pytest.raises(OSError):
        atomic_write(target, b"payload")
    assert victim.read_bytes() == b"precious"
    assert not target.exists()


def test_exclusive_never_rewrites_a_released_file(tmp_path: Path) -> None:
    target = tmp_path / "released.xml"
    atomic_write(target, b"one", exclusive=True)
    with pytest.raises(FileExistsError):
        atomic_write(target, b"two", exclusive=True)
    assert target.read_bytes() == b"one"
    assert os.listdir(tmp_path) == ["released.xml"]


def test_private_dir_creates_every_level_0700(tmp_path: Path, loose_umask: None) -> None:
    leaf = tmp_path / "outbox" / "helsinki" / "acks"
    assert private_dir(leaf) == leaf
    for d in (tmp_path / "outbox", tmp_path / "outbox" / "helsinki", leaf):
        assert d.is_dir()
        assert mode(d) == 0o700
    assert private_dir(leaf) == leaf  # idempotent


def test_private_dir_tightens_existing_leaf_only(tmp_path: Path) -> None:
    parent = tmp_path / "shared"
    parent.mkdir(mode=0o755)
    parent.chmod(0o755)
    leaf = parent / "org"
    leaf.mkdir()
    leaf.chmod(0o755)
    private_dir(leaf)
    assert mode(leaf) == 0o700
    assert mode(parent) == 0o755


def test_private_dir_refuses_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        private_dir(f)


@pytest.mark.parametrize(
    ("name", "ignored"),
    [
        (".hidden", True),
        (".vastaus.xml.part", True),
        ("vastaus.xml.part", True),
        ("vastaus.xml.filepart", True),
        ("vastaus.xml.tmp", True),
        ("VASTAUS.XML.TMP", True),
        ("dir/.x", True),
        ("vastaus.xml", False),
        ("partial.xml", False),
        ("report.parts", False),
        ("tmp", False),
    ],
)
def test_is_hidden_or_partial(name: str, ignored: bool) -> None:
    assert is_hidden_or_partial(name) is ignored


# -- the one archive/quarantine name ---------------------------------------------------

_NAMES = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"),
                 min_size=1, max_size=300).filter(lambda n: len(n.encode()) <= NAME_MAX)


@given(a=_NAMES, b=_NAMES)
def test_stored_names_fit_beside_a_report_and_stay_apart(a: str, b: str) -> None:
    now = datetime(2026, 12, 2, 17, 0, 1, 234567, tzinfo=UTC)
    for name in (a, b):
        stored = stored_name(now, name)
        assert len(f".{stored}.report.txt.part".encode()) <= NAME_MAX
        if len(name.encode()) <= 200:
            assert stored.endswith(name)  # short names are kept whole
    if a != b:
        assert stored_name(now, a) != stored_name(now, b)


def test_partial_upload_names_include_rclone() -> None:
    for name in ("x.part", "x.partial", "x.filepart", "X.TMP", ".x"):
        assert is_hidden_or_partial(name), name
    assert not is_hidden_or_partial("x.xml")


def test_open_for_writing_is_told_by_a_lease(tmp_path: Path) -> None:
    path = tmp_path / "f.xml"
    path.write_bytes(b"x")
    assert open_for_writing(path) is False
    with path.open("ab"):
        assert open_for_writing(path) is True
    with path.open("rb"):
        assert open_for_writing(path) is False
    assert open_for_writing(tmp_path / "missing") is None


def test_file_digest_is_sha256_and_size_of_one_read(tmp_path: Path) -> None:
    import hashlib

    from broker.storage.files import file_digest

    data = bytes(range(256)) * 5000
    p = tmp_path / "f.bin"
    p.write_bytes(data)
    assert file_digest(p) == (hashlib.sha256(data).hexdigest(), len(data))
    (tmp_path / "empty").write_bytes(b"")
    assert file_digest(tmp_path / "empty") == (hashlib.sha256(b"").hexdigest(), 0)
