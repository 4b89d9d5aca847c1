"""The session context of an SFTP session, and what a client may learn or set about
files: STAT, SETSTAT (times only, in /to-kela/), and STATVFS with real numbers.

Uploads the broker has already taken are answered from ``sftp_recent`` (clients STAT
and SETSTAT after CLOSE or RENAME, tens of milliseconds later over a real network).
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from adapters.sftp_base import Handle, dir_attrs, guarded
from adapters.sftp_limits import SessionHandles, UploadQuota
from adapters.sftp_paths import Area, Denied, Jail, NotFound, Resolved
from adapters.sftp_recent import RecentUploads
from broker.storage.audit import AuditEvent


@dataclass
class SessionContext:
    """What the filesystem needs from the connection and the service."""

    org: str
    address: str
    jail: Jail
    retain_dir: Path  # <retain>/<org>
    max_upload_bytes: int
    emit: Callable[[AuditEvent], None]
    touch: Callable[[], None]
    writing_add: Callable[[Path], None]
    writing_remove: Callable[[Path], None]
    is_writing: Callable[[Path], bool]
    upload_closed: Callable[[str, Path], None]
    handles: SessionHandles  # this connection's open handles (descriptors)
    quota: UploadQuota
    incomplete_dir: Path  # markers: <incomplete_dir>/<org>/<name>
    # Audit an act and wait until it is on record (the reply waits for it).
    record: Callable[[AuditEvent], Awaitable[None]]
    upload_cut: Callable[[str, Path, int], None]
    recent: RecentUploads  # uploads remembered after the broker took them (STAT/SETSTAT)


class MetadataOps:
    """Mixed into ``sftp_fs.JailedSftp``: the metadata requests."""

    ctx: SessionContext

    def _resolve(self, path: bytes) -> Resolved:
        raise NotImplementedError  # JailedSftp's

    def _handle(self, file_obj: object) -> Handle:
        raise NotImplementedError  # JailedSftp's

    def _stat_resolved(self, res: Resolved) -> os.stat_result | asyncssh.SFTPAttrs:
        if res.local is None:
            return dir_attrs()
        st = os.lstat(res.local)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise NotFound(f"{res.virtual}: no such file")
        return st

    def _stat_or_recent(self, res: Resolved) -> os.stat_result | asyncssh.SFTPAttrs:
        try:
            return self._stat_resolved(res)
        except FileNotFoundError:
            # An upload the broker has already taken: answered as uploaded (sftp_recent).
            attrs = (self.ctx.recent.attrs(res.local, time.monotonic())
                     if res.area is Area.TO_KELA and res.local is not None else None)
            if attrs is None:
                raise
            return attrs

    @guarded
    async def stat(self, path: bytes) -> os.stat_result | asyncssh.SFTPAttrs:
        return self._stat_or_recent(self._resolve(path))

    @guarded
    async def lstat(self, path: bytes) -> os.stat_result | asyncssh.SFTPAttrs:
        return self._stat_or_recent(self._resolve(path))

    @guarded
    async def fstat(self, file_obj: object) -> os.stat_result:
        return os.fstat(self._handle(file_obj).fd)

    def _apply_times(self, target: int | Path, attrs: asyncssh.SFTPAttrs) -> None:
        # Clients (WinSCP, `put -p`) set times after an upload; permissions and
        # owners are the broker's business and are silently left alone.
        if attrs.atime is not None and attrs.mtime is not None:
            os.utime(target, (attrs.atime, attrs.mtime))

    @guarded
    async def setstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        res = self._resolve(path)
        if res.area is not Area.TO_KELA or res.local is None or res.is_area_root:
            raise Denied(f"{res.virtual}: attributes cannot be changed here")
        try:
            if not stat.S_ISREG(os.lstat(res.local).st_mode):
                raise Denied(f"{res.virtual}: not a file")
            self._apply_times(res.local, attrs)
            self.ctx.recent.note_times(res.local, attrs.atime, attrs.mtime)
        except FileNotFoundError:  # taken by the broker (maybe just now): remembered
            if self.ctx.recent.set_times(res.local, attrs.atime, attrs.mtime, time.monotonic()):
                return
            raise

    @guarded
    async def lsetstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        await self.setstat(path, attrs)

    @guarded
    async def fsetstat(self, file_obj: object, attrs: asyncssh.SFTPAttrs) -> None:
        handle = self._handle(file_obj)
        if not handle.writing:
            raise Denied(f"{handle.resolved.virtual}: attributes cannot be changed here")
        self._apply_times(handle.fd, attrs)

    def _space(self) -> asyncssh.SFTPVFSAttrs:
        """``df``: the real file system of the organisation's /to-kela/, with the free
        space a client may use capped by what its upload quota still allows."""
        vfs = os.statvfs(self.ctx.jail.root(Area.TO_KELA))
        frsize = vfs.f_frsize or 4096
        quota = self.ctx.quota
        room_bytes = (max(0, quota.limit - quota.refresh(self.ctx.org)) if quota.limit > 0
                      else vfs.f_bavail * frsize)
        room = min(room_bytes, self.ctx.max_upload_bytes) // frsize
        free = min(vfs.f_bavail, room)
        return asyncssh.SFTPVFSAttrs(
            bsize=vfs.f_bsize, frsize=frsize, blocks=vfs.f_blocks, bfree=min(vfs.f_bfree, room),
            bavail=free, files=vfs.f_files, ffree=vfs.f_ffree, favail=vfs.f_favail,
            fsid=0, flags=vfs.f_flag, namemax=vfs.f_namemax)

    @guarded
    async def statvfs(self, path: bytes) -> asyncssh.SFTPVFSAttrs:
        self._resolve(path)  # the path must be one the client may see
        return await asyncio.to_thread(self._space)

    @guarded
    async def fstatvfs(self, file_obj: object) -> asyncssh.SFTPVFSAttrs:
        self._handle(file_obj)
        return await asyncio.to_thread(self._space)
