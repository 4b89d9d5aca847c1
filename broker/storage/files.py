"""Crash-safe file writing and the file-name rules shared by every folder the broker touches.

SPEC 1: a reader never sees a file before it is complete. Writers put the bytes in a
hidden sibling ``.<name>.part`` (a name every reader ignores), fsync it, rename it over
the final name and fsync the directory so the rename itself survives a power cut.
Everything the broker writes holds personal data: files are 0600, directories 0700.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

FILE_MODE = 0o600
DIR_MODE = 0o700

# Upload names readers skip until renamed (SPEC 1): WinSCP writes .filepart, rclone
# (1.63 and later) .partial.
_PARTIAL_SUFFIXES = (".part", ".partial", ".filepart", ".tmp")
# Bytes in one file name on every filesystem we run on.
NAME_MAX = 255


def is_hidden_or_partial(name: str) -> bool:
    """True for names a reader must ignore: ``.*``, ``*.part``, ``*.partial``,
    ``*.filepart``, ``*.tmp``.

    ``name`` is a file name, not a path; only its last component is looked at.
    Suffixes match case-insensitively because Windows clients write ``.TMP`` too.
    """
    base = name.rsplit("/", 1)[-1]
    return base.startswith(".") or base.lower().endswith(_PARTIAL_SUFFIXES)


def temp_path(path: Path) -> Path:
    """The hidden sibling a file is written under before it gets its real name."""
    return path.with_name(f".{path.name}.part")


def fsync_dir(directory: Path) -> None:
    """Make a rename or create inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _locked_temp(tmp: Path) -> int:
    """Open ``tmp`` for writing under an exclusive lock; BlockingIOError if another holds it.

    A stale temp file from a crash is reused. Two processes may write one name (a
    release pass beside the daemon's): the lock keeps their bytes apart, and a file
    that was renamed or removed while we waited for it is opened again.
    """
    # O_NOFOLLOW: a symlink planted at the temp name must not redirect our write.
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    while True:
        fd = os.open(tmp, flags, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with contextlib.suppress(FileNotFoundError):
                if os.stat(tmp, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                    return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the name now holds another file: lock that one


@contextlib.contextmanager
def atomic_writer(path: Path, *, exclusive: bool = False) -> Iterator[BinaryIO]:
    """Yield a binary file whose content appears at ``path`` only if the block succeeds.

    On success: flush, fsync, rename over ``path``, fsync the directory. On an
    exception the temporary file is removed and the exception propagates; ``path``
    is untouched (an older file there stays as it was). With ``exclusive=True`` an
    existing ``path`` is never replaced: FileExistsError is raised instead, which is
    how "a file once released is never rewritten" (SPEC 5) is enforced by the writer.
    BlockingIOError: another process is writing ``path`` at this moment.
    """
    path = Path(path)
    tmp = temp_path(path)
    fd = _locked_temp(tmp)
    try:  # the lock is held until the file has its name
        os.ftruncate(fd, 0)
        # The create mode is masked by umask, and a stale temp file keeps its old mode.
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(os.dup(fd), "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            # link() fails atomically when the target exists, unlike rename().
            os.link(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)
    fsync_dir(path.parent)


def atomic_write(
    path: Path, chunks: bytes | Iterable[bytes], *, exclusive: bool = False
) -> None:
    """Write ``chunks`` (bytes, or an iterable of bytes for big outputs) to ``path`` atomically.

    Same guarantees as :func:`atomic_writer`: never a partial visible file, mode 0600.
    """
    with atomic_writer(path, exclusive=exclusive) as f:
        if isinstance(chunks, bytes | bytearray | memoryview):
            f.write(chunks)
        else:
            for chunk in chunks:
                f.write(chunk)


def private_dir(path: Path) -> Path:
    """``mkdir -p`` where every directory created, and the leaf itself, is mode 0700.

    Existing parents are left alone (they may be shared system folders); the leaf is
    tightened to 0700 because files under it are private.
    """
    path = Path(path)
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process raced us: fine
            d.mkdir(mode=DIR_MODE)
        os.chmod(d, DIR_MODE)  # mkdir's mode is masked by umask
        # A file made durable in it must not vanish with its folder at a power cut. Best
        # effort where the system will not sync the parent (not readable to us, or a
        # file system that cannot sync folders): the folder is there all the same.
        try:
            fsync_dir(d.parent)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EINVAL):
                raise
    if not path.is_dir():
        raise NotADirectoryError(f"{path}: exists and is not a directory")
    if (path.stat().st_mode & 0o777) != DIR_MODE:
        os.chmod(path, DIR_MODE)
    return path


def stored_name(now: datetime, name: str, *, reserve: int = len(".report.txt")) -> str:
    """The one name an input gets in ``var/archive/`` and ``var/quarantine/``: the UTC time
    it was taken, then its own name. A name too long for that (with room for ``reserve``
    more bytes and the writer's ``.<name>.part``) keeps its start and its extension, with a
    digest of the whole name between them so two long names stay apart: an upload name of
    255 bytes must never make the move fail (it would be retried forever).
    """
    stamp = now.strftime("%Y%m%dT%H%M%S%fZ")
    room = NAME_MAX - reserve - len("..part") - len(stamp) - 1
    raw = name.encode()
    if len(raw) > room:
        stem, dot, ext = name.rpartition(".")
        tail = f".{ext}" if dot and stem and len(ext.encode()) <= 16 else ""
        digest = "~" + hashlib.sha256(raw).hexdigest()[:12]
        keep = room - len(digest) - len(tail.encode())
        head = name[: len(name) - len(tail)].encode()[:keep].decode("utf-8", "ignore")
        name = head + digest + tail
    return f"{stamp}-{name}"


def open_for_writing(path: Path) -> bool | None:
    """Does any process have ``path`` open for writing? None when this cannot be told.

    Linux grants a read lease only while nobody has the file open for writing (EAGAIN
    otherwise). Leases need the file's owner or CAP_LEASE (EACCES/EPERM: cannot tell) and
    work on local filesystems only. The lease is dropped at once; a writer that opens the
    file meanwhile makes the kernel send SIGIO, which the daemon ignores.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        except OSError as exc:
            return True if exc.errno == errno.EAGAIN else None
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)


def file_digest(path: Path) -> tuple[str, int]:
    """(sha256 hex, size) of the bytes read: one open, so the two describe the same file
    even if it is replaced meanwhile."""
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
        return digest, f.tell()


def move_taken(path: Path, target: Path, same: Callable[[], bool] | None = None) -> bool:
    """Move an input the broker has handled out of its inbox, unless its name now holds
    another file (the producer published the next one under the same name, or a client
    uploaded it again, meanwhile): ``same()`` compares what is there now with what was
    handled (inode, size and mtime: an inode number alone may be reused at once). That
    one is left for its own turn; False when left. The check and the rename are one
    step apart on the same folder, not atomic; the window is the rename's."""
    if same is not None and not same():
        return False
    shutil.move(str(path), target)
    return True


@contextmanager
def held(path: Path) -> Iterator[Callable[[], bool] | None]:
    """Hold ``path`` open while the broker handles it; the ``same()`` it yields tells
    whether the name still holds that very file (None when the file is already gone).
    The open descriptor keeps the file's inode number from being reused, so the
    comparison is exact; size and times are not compared, since a client may set times
    (SETSTAT) after its upload."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        yield None
        return

    def same() -> bool:
        try:
            return os.path.samestat(os.fstat(fd), os.lstat(path))
        except FileNotFoundError:
            return False

    try:
        yield same
    finally:
        os.close(fd)
