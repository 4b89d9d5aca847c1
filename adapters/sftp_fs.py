"""What one organisation may do in its SFTP session (the asyncssh SFTPServer).

Every request resolves its path through ``sftp_paths.Jail`` and runs inside
``sftp_status``, the one place where errors become SFTP status codes (and where
local paths are kept out of messages). Operations not listed here as allowed are
refused, whatever asyncssh's default implementation would have done:

- ``/``: list and stat only (two synthetic folders).
- ``/from-kela/``: list, stat, read, and delete (the file is moved to the
  retain folder, never destroyed). No write, create, rename, mkdir, setstat.
- ``/to-kela/``: create/write (upload), rename within it, list, stat, set times.
  No read-back, no delete, no mkdir.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import stat
import time
from collections.abc import AsyncIterator

import asyncssh

from adapters import sftp_finish
from adapters.sftp_base import Handle, dir_attrs, guarded, sftp_status
from adapters.sftp_meta import MetadataOps, SessionContext
from adapters.sftp_paths import Area, Denied, Resolved
from adapters.sftp_paths import normalise as normalise_path
from adapters.sftp_paths import open_nofollow as _open_nofollow
from broker.storage.audit import AuditEvent
from broker.storage.files import file_digest, is_hidden_or_partial
from broker.storage.incomplete import WRITING, mark_incomplete, move_incomplete

log = logging.getLogger(__name__)

# One read reply is at most this big, whatever the client asks for (asyncssh
# would allow 4 MiB): bounds memory per request. OpenSSH's sftp-server's figure: a
# 256 KiB reply plus its header would exceed the OpenSSH client's 256 KiB message
# limit ("Received message too long" with `sftp -B 262144`).
MAX_READ = 261120
# A session stops reading the disk while this much is queued for the client;
# asyncssh's channel buffers without limit, so without this a client that asks
# faster than it consumes (paramiko prefetch) grows the server by the file size.
MAX_QUEUED = 1024 * 1024
_DRAIN_POLL = 0.002

_WRITE_FLAGS = asyncssh.FXF_WRITE | asyncssh.FXF_CREAT | asyncssh.FXF_TRUNC
_WRITE_FLAGS |= asyncssh.FXF_APPEND | asyncssh.FXF_EXCL


def _size_text(n: int) -> str:
    return f"{n // 1024**2} MB" if n >= 1024**2 else f"{n} bytes"


class JailedSftp(MetadataOps, asyncssh.SFTPServer):
    """An organisation's SFTP session; see the module docstring for the rules."""

    def __init__(self, chan: asyncssh.SSHServerChannel, ctx: SessionContext) -> None:
        super().__init__(chan)
        self.ctx = ctx

    def exit(self) -> None:
        self.ctx.handles.close_channel()
        chan = self.channel
        if not chan.is_closing():
            # The client ended the SFTP session: report success, as sshd does. OpenSSH
            # scp (SFTP mode) exits 1 after a good transfer without an exit-status.
            # (Legacy SCP sessions have exited already: asyncssh sends their status.)
            chan.exit(0)

    # -- names -----------------------------------------------------------

    def format_user(self, uid: int | None) -> str:
        return self.ctx.org

    def format_group(self, gid: int | None) -> str:
        return self.ctx.org

    def map_path(self, path: bytes) -> bytes:
        """Every path asyncssh itself might map goes through the jail too."""
        resolved = self.ctx.jail.resolve(path)
        if resolved.local is None:
            raise Denied("/: not a file")
        return os.fsencode(resolved.local)

    def reverse_map_path(self, path: bytes) -> bytes:
        return path  # client paths are already virtual

    def _resolve(self, path: bytes) -> Resolved:
        return self.ctx.jail.resolve(path)

    @guarded
    async def realpath(self, path: bytes) -> bytes:
        return normalise_path(path).encode("utf-8")

    # -- directories -----------------------------------------------------

    def scandir(self, path: bytes) -> AsyncIterator[asyncssh.SFTPName]:
        # Not async: the path is checked when the client opens the directory,
        # so a refused or missing path fails OPENDIR, not the first READDIR.
        self.ctx.touch()
        with sftp_status():
            res = self._resolve(path)
            if res.local is not None and not stat.S_ISDIR(os.lstat(res.local).st_mode):
                raise asyncssh.SFTPNotADirectory(f"{res.virtual}: not a directory")
        return self._entries(res)

    async def _entries(self, res: Resolved) -> AsyncIterator[asyncssh.SFTPName]:
        yield asyncssh.SFTPName(b".", attrs=dir_attrs())
        yield asyncssh.SFTPName(b"..", attrs=dir_attrs())
        if res.local is None:
            yield asyncssh.SFTPName(b"from-kela", attrs=dir_attrs(0o700))
            yield asyncssh.SFTPName(b"to-kela", attrs=dir_attrs(0o300))
            return
        with sftp_status(), os.scandir(res.local) as entries:
            listing = list(entries)
        for entry in listing:
            self.ctx.touch()
            if res.area is Area.FROM_KELA and is_hidden_or_partial(entry.name):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # vanished while listing
            # Symlinks, devices, sockets: never shown, never followed.
            if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
                attrs = asyncssh.SFTPAttrs.from_local(st)
                yield asyncssh.SFTPName(os.fsencode(entry.name), attrs=attrs)

    @guarded
    async def mkdir(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        raise Denied(f"{normalise_path(path)}: folders cannot be created")

    @guarded
    async def rmdir(self, path: bytes) -> None:
        raise Denied(f"{normalise_path(path)}: folders cannot be removed")

    # -- links -----------------------------------------------------------

    @guarded
    async def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        raise Denied("symbolic links cannot be created")

    @guarded
    async def link(self, oldpath: bytes, newpath: bytes) -> None:
        raise Denied("links cannot be created")

    @guarded
    async def readlink(self, path: bytes) -> bytes:
        self._resolve(path)  # a symlink anywhere on the way is refused here
        raise asyncssh.SFTPNoSuchFile(f"{normalise_path(path)}: not a symbolic link")

    # -- files -----------------------------------------------------------

    def _handle(self, file_obj: object) -> Handle:
        if not isinstance(file_obj, Handle):
            raise asyncssh.SFTPInvalidHandle("invalid handle")
        return file_obj

    @guarded
    async def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> Handle:
        res = self._resolve(path)
        if res.local is None or res.is_area_root:
            raise Denied(f"{res.virtual}: is a folder")
        # Each handle holds a descriptor: past the cap, a clean failure, not EMFILE.
        refused = self.ctx.handles.acquire()
        if refused is not None:
            raise asyncssh.SFTPFailure(refused)
        try:
            if res.area is Area.FROM_KELA:
                handle = self._open_for_read(res, pflags)
                try:
                    # On record before the first byte can leave: a kill -9 (or a lost
                    # connection) before CLOSE must not leave a disclosure unrecorded.
                    await self._record("download_open", res.virtual,
                                       os.fstat(handle.fd).st_size)
                except BaseException:
                    os.close(handle.fd)
                    raise
                return handle
            return await self._open_for_write(res, pflags)
        except BaseException:
            self.ctx.handles.release()
            raise

    @guarded
    async def open56(
        self, path: bytes, desired_access: int, flags: int, attrs: asyncssh.SFTPAttrs
    ) -> Handle:
        raise asyncssh.SFTPOpUnsupported("SFTP version 3 only")

    def _open_for_read(self, res: Resolved, pflags: int) -> Handle:
        assert res.local is not None
        if pflags & _WRITE_FLAGS:
            raise Denied(f"{res.virtual}: /from-kela/ is read-only")
        fd = _open_nofollow(res.local, os.O_RDONLY)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise Denied(f"{res.virtual}: not a file")
        return Handle(fd, res, writing=False)

    async def _open_for_write(self, res: Resolved, pflags: int) -> Handle:
        assert res.local is not None
        if pflags & asyncssh.FXF_READ or not pflags & asyncssh.FXF_WRITE:
            raise Denied(f"{res.virtual}: /to-kela/ is write-only")
        if len(res.parts) != 1:
            raise Denied(f"{res.virtual}: upload directly into /to-kela/")
        flags = os.O_WRONLY
        flags |= os.O_CREAT if pflags & asyncssh.FXF_CREAT else 0
        if pflags & asyncssh.FXF_TRUNC and not pflags & asyncssh.FXF_EXCL:
            # A new upload over an old one gets a file of its own: the broker may be
            # handling the old one right now, and must not see its bytes change under it.
            if self.ctx.is_writing(res.local):
                raise asyncssh.SFTPFailure(f"{res.virtual}: another session is uploading it")
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISREG(os.lstat(res.local).st_mode):
                    os.unlink(res.local)
            flags |= os.O_CREAT
        elif pflags & asyncssh.FXF_TRUNC:
            flags |= os.O_TRUNC  # with EXCL: an existing file makes the open fail anyway
        flags |= os.O_EXCL if pflags & asyncssh.FXF_EXCL else 0
        flags |= os.O_APPEND if pflags & asyncssh.FXF_APPEND else 0
        fd = _open_nofollow(res.local, flags, 0o600)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise Denied(f"{res.virtual}: not a file")
        handle = Handle(fd, res, writing=True, end=st.st_size)
        if st.st_size:
            handle.hashed_upto = -1  # resuming: hash the whole file on close
        self.ctx.writing_add(res.local)
        try:
            # Durable before the first byte: a daemon killed during the upload must
            # not take the fragment for a whole file after its restart.
            await asyncio.to_thread(
                mark_incomplete, self.ctx.incomplete_dir, self.ctx.org, res.local, WRITING)
        except BaseException:
            os.close(fd)
            self.ctx.writing_remove(res.local)
            raise
        self.ctx.quota.refresh(self.ctx.org)
        return handle

    @guarded
    async def read(self, file_obj: object, offset: int, size: int) -> bytes:
        handle = self._handle(file_obj)
        if handle.writing:
            raise Denied(f"{handle.resolved.virtual}: /to-kela/ is write-only")
        chan = self.channel
        while chan.get_write_buffer_size() > MAX_QUEUED and not chan.is_closing():
            await asyncio.sleep(_DRAIN_POLL)
        data = os.pread(handle.fd, min(size, MAX_READ), offset)
        handle.feed(offset, data)
        handle.transferred += len(data)
        handle.covered.add(offset, offset + len(data))
        return data

    @guarded
    async def write(self, file_obj: object, offset: int, data: bytes) -> int:
        handle = self._handle(file_obj)
        if not handle.writing:
            raise Denied(f"{handle.resolved.virtual}: /from-kela/ is read-only")
        if handle.rejected is None:
            growth = offset + len(data) - handle.end
            if offset + len(data) > self.ctx.max_upload_bytes:
                handle.rejected = (
                    f"file exceeds the upload limit of {self.ctx.max_upload_bytes} bytes"
                )
            elif growth > 0 and not self.ctx.quota.grow(self.ctx.org, growth):
                handle.quota_exceeded = True
                handle.rejected = (
                    f"upload quota of {_size_text(self.ctx.quota.limit)} for files waiting "
                    "in /to-kela/ exceeded; upload again once the broker has processed them"
                )
        if handle.rejected is not None:
            # Every later write fails too, and the close discards what arrived.
            error = asyncssh.SFTPQuotaExceeded if handle.quota_exceeded else asyncssh.SFTPFailure
            raise error(f"{handle.resolved.virtual}: {handle.rejected}")
        written = os.pwrite(handle.fd, data, offset)
        handle.end = max(handle.end, offset + written)
        handle.feed(offset, data[:written])
        handle.transferred += written
        return written

    @guarded
    async def fsync(self, file_obj: object) -> None:
        handle = self._handle(file_obj)
        if handle.writing:
            os.fsync(handle.fd)

    async def close(self, file_obj: object) -> None:
        # asyncssh calls close() for a CLOSE request and, on connection loss, for
        # every handle still open: only the first completes an upload.
        if sftp_finish.closing_by_request():
            await self._close_requested(file_obj)
        else:
            await sftp_finish.finish_lost(self.ctx, self._handle(file_obj))

    @guarded
    async def _close_requested(self, file_obj: object) -> None:
        handle = self._handle(file_obj)
        st = os.fstat(handle.fd) if handle.writing else None  # as the client left it
        await sftp_finish.finish_closed(self.ctx, handle)
        if st is not None and handle.resolved.local is not None:  # complete (else raised)
            self.ctx.recent.remember(handle.resolved.local, st, time.monotonic())

    async def _record(
        self,
        action: str,
        path: str | None,
        size: int | None = None,
        sha256: str | None = None,
        detail: str | None = None,
    ) -> None:
        await self.ctx.record(
            AuditEvent(action, self.ctx.org, self.ctx.address, path, size, sha256, detail)
        )

    # -- delete and rename -----------------------------------------------

    @guarded
    async def remove(self, path: bytes) -> None:
        res = self._resolve(path)
        if res.area is not Area.FROM_KELA or res.local is None or res.is_area_root:
            raise Denied(f"{res.virtual}: files cannot be deleted here")
        if not stat.S_ISREG(os.lstat(res.local).st_mode):
            raise Denied(f"{res.virtual}: not a file")
        # The organisation's copy goes away; the broker keeps its own.
        target = self.ctx.retain_dir.joinpath(*res.parts)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if target.exists():
            target = target.with_name(f"{target.name}.{time.time_ns()}")
        try:
            os.rename(res.local, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # Retain folder on another filesystem: copy then unlink, off the loop.
            await asyncio.to_thread(shutil.move, res.local, target)
        digest, size = await asyncio.to_thread(file_digest, target)
        await self._record("delete", res.virtual, size, digest, "moved to retain")

    async def _rename(self, oldpath: bytes, newpath: bytes, overwrite: bool) -> None:
        old, new = self._resolve(oldpath), self._resolve(newpath)
        for res in (old, new):
            if res.area is not Area.TO_KELA or len(res.parts) != 1:
                raise Denied(f"{res.virtual}: files can be renamed only within /to-kela/")
        assert old.local is not None and new.local is not None
        st = os.lstat(old.local)
        if not stat.S_ISREG(st.st_mode):
            raise Denied(f"{old.virtual}: not a file")
        if self.ctx.is_writing(old.local) or self.ctx.is_writing(new.local):
            raise asyncssh.SFTPFailure(f"{old.virtual}: still open for writing")
        if os.path.lexists(new.local):
            if not overwrite:
                raise asyncssh.SFTPFailure(f"{new.virtual}: file already exists")
            if not stat.S_ISREG(os.lstat(new.local).st_mode):
                raise Denied(f"{new.virtual}: not a file")
        os.rename(old.local, new.local)
        self.ctx.recent.renamed(old.local, new.local, st, time.monotonic())
        # The new name is exactly as complete as the old one was (a cut fragment
        # renamed stays a fragment; a whole file renamed over a fragment clears it).
        fragment = await asyncio.to_thread(
            move_incomplete, self.ctx.incomplete_dir, self.ctx.org, old.local, new.local)
        await self._record("rename", old.virtual, st.st_size, None,
                           f"to {new.virtual}" + ("; incomplete upload" if fragment else ""))
        if not fragment:
            self.ctx.upload_closed(self.ctx.org, new.local)

    @guarded
    async def rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self._rename(oldpath, newpath, overwrite=False)

    @guarded
    async def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self._rename(oldpath, newpath, overwrite=True)
