"""The path jail: the one place where a client path becomes a local path.

asyncssh's ``chroot`` only rewrites path strings and happily follows symlinks
found inside the root, so it is not used. Instead every client path goes through
``Jail.resolve``, which

1. normalises the path in the *virtual* namespace (relative to ``/``), so ``..``
   can at most reach the virtual ``/``, never a local directory above a root;
2. allows only ``/``, ``/from-kela/...`` and ``/to-kela/...``;
3. refuses names the organisation may not see (hidden/temporary files in
   ``/from-kela/``: the broker writes ``.name.part`` there before renaming);
4. ``lstat``s every existing component from the organisation's root down and
   refuses any symlink, so a link planted on disk cannot lead outside.

Files are then opened with O_NOFOLLOW as a second line of defence.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from broker.errors import PathError
from broker.storage.files import is_hidden_or_partial

FROM_KELA = "from-kela"
TO_KELA = "to-kela"


class Denied(PathError):
    """The path exists or may exist, but this organisation may not do that there."""


class NotFound(PathError):
    """Nothing this organisation can see is at that path."""


class Area(Enum):
    ROOT = "root"  # the virtual "/": only lists the two folders
    FROM_KELA = FROM_KELA  # outbox/<org>: read, stat, list, delete
    TO_KELA = TO_KELA  # inbox/<org>: upload, rename, stat, list


@dataclass(frozen=True)
class Resolved:
    """A client path after the jail: where it points and what the client calls it."""

    area: Area
    virtual: str  # normalised client path, e.g. "/from-kela/acks/x.ack.xml"
    local: Path | None  # None for the virtual root
    parts: tuple[str, ...]  # components below the area root ("acks", "x.ack.xml")

    @property
    def is_area_root(self) -> bool:
        return self.area is not Area.ROOT and not self.parts


def normalise(path: bytes) -> str:
    """The client path as a normalised absolute virtual path.

    Raises ``NotFound`` for paths that cannot name anything (bad UTF-8, NUL).
    """
    try:
        text = path.decode("utf-8")
    except UnicodeDecodeError:
        raise NotFound("path is not valid UTF-8") from None
    if "\x00" in text:
        raise NotFound("path contains NUL")
    # Resolving against "/" first means "../../etc" can climb no higher than "/".
    norm = posixpath.normpath(posixpath.join("/", text))
    # POSIX keeps a leading "//"; the client namespace has no use for it.
    return "/" + norm.lstrip("/")


class Jail:
    """Maps client paths of one organisation onto its two local folders."""

    def __init__(self, org: str, outbox: Path, inbox: Path) -> None:
        self.org = org
        self._roots = {Area.FROM_KELA: outbox, Area.TO_KELA: inbox}

    def root(self, area: Area) -> Path:
        return self._roots[area]

    def resolve(self, path: bytes) -> Resolved:
        """Resolve and check ``path``; raises ``Denied`` or ``NotFound``."""
        virtual = normalise(path)
        parts = tuple(p for p in virtual.split("/") if p)
        if not parts:
            return Resolved(Area.ROOT, "/", None, ())
        head, rest = parts[0], parts[1:]
        if head == FROM_KELA:
            area = Area.FROM_KELA
            if any(is_hidden_or_partial(p) for p in rest):
                raise NotFound(f"{virtual}: no such file")
        elif head == TO_KELA:
            area = Area.TO_KELA
        else:
            raise NotFound(f"{virtual}: no such file")
        root = self._roots[area]
        self._refuse_symlinks(root, rest, virtual)
        return Resolved(area, virtual, root.joinpath(*rest), rest)

    def virtual_of(self, area: Area, local: Path) -> str:
        """The client's name for a local path inside one of the roots."""
        rel = local.relative_to(self._roots[area])
        return posixpath.join("/", area.value, *rel.parts)

    @staticmethod
    def _refuse_symlinks(root: Path, parts: tuple[str, ...], virtual: str) -> None:
        """lstat the root and each existing component below it; any symlink is refused."""
        current = root
        for name in (None, *parts):
            if name is not None:
                current = current / name
            try:
                st = os.lstat(current)
            except FileNotFoundError:
                return  # the rest does not exist yet (e.g. an upload target)
            except NotADirectoryError:
                raise NotFound(f"{virtual}: no such file") from None
            if stat.S_ISLNK(st.st_mode):
                raise Denied(f"{virtual}: symbolic links are not followed")


def open_nofollow(local: Path, flags: int, mode: int = 0o600) -> int:
    """os.open with O_NOFOLLOW; a symlink swapped in after the check is refused."""
    try:
        return os.open(local, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Denied("symbolic links are not followed") from None
        raise
