"""Building blocks of an SFTP session: error mapping, request guard, file handles.

``sftp_status`` is the one place where failures become SFTP status codes;
``guarded`` wraps every request in it and counts the request as activity for
the idle timer. ``Handle`` is an open file with its running SHA-256.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import functools
import hashlib
import logging
import os
import stat
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ParamSpec, Protocol, TypeVar

import asyncssh

from adapters.sftp_paths import Denied, NotFound, Resolved
from broker.domain.pic import mask_text

log = logging.getLogger(__name__)

_HASH_CHUNK = 1024 * 1024
# The only thing a client learns about a failure that is not its own.
INTERNAL_ERROR = "internal error"

P = ParamSpec("P")
R = TypeVar("R")


class _Toucher(Protocol):
    def touch(self) -> None: ...


class _HasContext(Protocol):
    @property
    def ctx(self) -> _Toucher: ...


@dataclass(eq=False)
class Handle:
    fd: int
    resolved: Resolved
    writing: bool
    hasher: Any = field(default_factory=hashlib.sha256)
    hashed_upto: int = 0  # -1: writes/reads were not sequential, rehash on close
    transferred: int = 0
    # Why the upload was refused mid-way (limit, quota): it is discarded at close.
    rejected: str | None = None
    quota_exceeded: bool = False
    end: int = 0  # size of the file as far as this handle knows (upload quota)
    covered: Coverage = field(default_factory=lambda: Coverage())

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        # asyncssh's ranges@asyncssh.com extension seeks the file object.
        return os.lseek(self.fd, offset, whence)

    def feed(self, offset: int, data: bytes) -> None:
        """Hash in-order traffic as it passes, so close rarely has to re-read."""
        if self.hashed_upto == offset:
            self.hasher.update(data)
            self.hashed_upto += len(data)
        elif offset < self.hashed_upto and not self.writing:
            pass  # a re-read of bytes already hashed changes nothing
        else:
            self.hashed_upto = -1


class Coverage:
    """Distinct byte ranges a download handle has read: prefetching clients read
    ahead and re-read, so the bytes sent are not the bytes of the file that left."""

    def __init__(self) -> None:
        self._ranges: list[list[int]] = []  # sorted, disjoint, non-adjacent [start, end)

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        ranges = self._ranges
        if ranges and ranges[-1][1] == start:  # the common in-order case
            ranges[-1][1] = end
            return
        i = bisect.bisect_left(ranges, [start, start])
        if i > 0 and ranges[i - 1][1] >= start:
            i -= 1
        j = i
        while j < len(ranges) and ranges[j][0] <= end:
            start, end = min(start, ranges[j][0]), max(end, ranges[j][1])
            j += 1
        ranges[i:j] = [[start, end]]

    @property
    def total(self) -> int:
        return sum(e - s for s, e in self._ranges)


@contextlib.contextmanager
def sftp_status() -> Iterator[None]:
    """The one place where failures become SFTP status codes.

    Messages name client paths only: OSError text (which may carry local paths)
    is reduced to its strerror; anything unexpected becomes ``INTERNAL_ERROR``.
    """
    try:
        yield
    except asyncssh.SFTPError:
        raise
    except Denied as exc:
        raise asyncssh.SFTPPermissionDenied(exc.message) from None
    except NotFound as exc:
        raise asyncssh.SFTPNoSuchFile(exc.message) from None
    except FileNotFoundError:
        raise asyncssh.SFTPNoSuchFile("no such file") from None
    except FileExistsError:
        raise asyncssh.SFTPFailure("file already exists") from None
    except (PermissionError, IsADirectoryError) as exc:
        raise asyncssh.SFTPPermissionDenied(exc.strerror or "permission denied") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise asyncssh.SFTPPermissionDenied("symbolic links are not followed") from None
        log.warning("sftp: %s", exc)
        raise asyncssh.SFTPFailure(exc.strerror or "failure") from None
    except Exception:
        # A bug, not the client's doing: its text (which may quote paths or file
        # content) stays in the server's log, masked; the client learns nothing.
        log.error("sftp: internal error\n%s", mask_text(traceback.format_exc()))
        raise asyncssh.SFTPFailure(INTERNAL_ERROR) from None


def guarded(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Run a request under ``sftp_status`` and count it as activity (idle timer)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        server: _HasContext = args[0]  # type: ignore[assignment]
        server.ctx.touch()
        with sftp_status():
            return await fn(*args, **kwargs)

    return wrapper


def dir_attrs(mode: int = 0o500) -> asyncssh.SFTPAttrs:
    now = int(time.time())
    return asyncssh.SFTPAttrs(
        type=asyncssh.FILEXFER_TYPE_DIRECTORY,
        permissions=stat.S_IFDIR | mode,
        size=0,
        uid=0,
        gid=0,
        atime=now,
        mtime=now,
        nlink=2,
    )


def hash_fd(fd: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, _HASH_CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()
