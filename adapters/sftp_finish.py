"""The end of a file handle: a complete upload, a cut upload, a download on record.

asyncssh calls the server's ``close`` in two situations: for a CLOSE request
(the client says the file is done) and, when the connection is lost, for every
handle still open (``SFTPServerHandler._cleanup``). Only the first completes an
upload; the second leaves a fragment, which is marked incomplete on disk and
reported through ``upload_cut``, never through ``upload_closed``.

asyncssh handles one request at a time per channel and calls ``_cleanup`` only
after the last request returned, so a look at the calling frames tells the two
apart without touching asyncssh's dispatch (see ``closing_by_request``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import logging
import os
import sys
import traceback
from typing import TYPE_CHECKING

import asyncssh
import asyncssh.sftp

from adapters.sftp_base import Handle, hash_fd
from broker.domain.pic import mask_text
from broker.storage.audit import AuditEvent
from broker.storage.incomplete import CUT, clear_incomplete, mark_incomplete

if TYPE_CHECKING:
    from pathlib import Path

    from adapters.sftp_meta import SessionContext

log = logging.getLogger(__name__)

# Fails at import (and so in every test) if asyncssh renames them.
_CLOSE_REQUEST = asyncssh.sftp.SFTPServerHandler._process_close.__code__
_CONNECTION_LOST = asyncssh.sftp.SFTPServerHandler._cleanup.__code__
# Legacy SCP (``scp -O``) runs through the same server object; its file loops close in
# a ``finally`` whether the transfer ended or not: complete only when every byte the
# client announced went through (their ``offset`` reached ``size``).
_scp = importlib.import_module("asyncssh.scp")  # the package's ``scp`` is a function
_SCP_TRANSFERS = (_scp._SCPSink._recv_file.__code__, _scp._SCPSource._send_file.__code__)
_MAX_DEPTH = 16


def closing_by_request() -> bool:
    """True when the running ``close`` serves a client's CLOSE request.

    Call it before the first ``await`` of ``close``: until then the frames of the
    coroutines that awaited it are on the stack. Anything not proven to be a CLOSE
    request counts as connection loss, so an upload is never taken as complete
    by mistake.
    """
    frame = sys._getframe(1)
    for _ in range(_MAX_DEPTH):
        if frame.f_code is _CLOSE_REQUEST:
            return True
        if frame.f_code in _SCP_TRANSFERS:
            done, size = frame.f_locals.get("offset"), frame.f_locals.get("size")
            return isinstance(done, int) and isinstance(size, int) and done >= size
        if frame.f_code is _CONNECTION_LOST or frame.f_back is None:
            return False
        frame = frame.f_back
    return False


def _hash_and_close(fd: int, hasher: hashlib._Hash | None) -> str:
    """Runs in a thread that owns ``fd``: closes it even if the awaiting task is gone."""
    try:
        return hasher.hexdigest() if hasher is not None else hash_fd(fd)
    finally:
        os.close(fd)


async def _conclude(ctx: SessionContext, handle: Handle) -> tuple[int, str]:
    """Close the handle's descriptor; the file's size and whole-file SHA-256."""
    try:
        size = os.fstat(handle.fd).st_size
    except BaseException:
        os.close(handle.fd)
        _release(ctx, handle)
        raise
    # Traffic that covered the file in order was hashed as it passed; anything else
    # (re-reads, read-ahead, resumed uploads) is hashed from disk, off the loop.
    hasher = handle.hasher if handle.hashed_upto == size else None
    try:
        if hasher is not None:
            return size, _hash_and_close(handle.fd, hasher)
        return size, await asyncio.to_thread(_hash_and_close, handle.fd, None)
    finally:
        _release(ctx, handle)


def _release(ctx: SessionContext, handle: Handle) -> None:
    ctx.handles.release()
    if handle.writing and handle.resolved.local is not None:
        ctx.writing_remove(handle.resolved.local)


def _event(ctx: SessionContext, handle: Handle, action: str, size: int, digest: str,
           detail: str | None = None) -> AuditEvent:
    return AuditEvent(action, ctx.org, ctx.address, handle.resolved.virtual, size, digest,
                      detail)


def _download(ctx: SessionContext, handle: Handle, size: int, digest: str,
              lost: bool) -> AuditEvent:
    # The file's size and hash: what was disclosed is the file, whatever the client's
    # read pattern; the detail says how much of it actually left.
    detail = f"read {handle.covered.total} of {size} bytes"
    if handle.transferred != handle.covered.total:
        detail += f" ({handle.transferred} sent with re-reads)"
    if lost:
        detail += "; connection lost before close"
    return _event(ctx, handle, "download", size, digest, detail)


async def _discard(ctx: SessionContext, handle: Handle, local: Path, size: int,
                   digest: str) -> None:
    # A truncated upload (over the limit or the quota) must never be processed:
    # remove what arrived.
    with contextlib.suppress(OSError):
        os.unlink(local)
    await asyncio.to_thread(clear_incomplete, ctx.incomplete_dir, ctx.org, local)
    await ctx.record(_event(ctx, handle, "upload_rejected", size, digest, handle.rejected))


async def finish_closed(ctx: SessionContext, handle: Handle) -> None:
    """The client's CLOSE: an upload is complete, a download is on record.

    The reply to CLOSE waits for the audit record (``ctx.record``)."""
    size, digest = await _conclude(ctx, handle)
    if not handle.writing:
        await ctx.record(_download(ctx, handle, size, digest, lost=False))
        return
    local = handle.resolved.local
    assert local is not None
    if handle.rejected is not None:
        await _discard(ctx, handle, local, size, digest)
        # Tell clients that pipeline writes and only look at the close status.
        error = asyncssh.SFTPQuotaExceeded if handle.quota_exceeded else asyncssh.SFTPFailure
        raise error(f"{handle.resolved.virtual}: {handle.rejected}; it was discarded")
    await ctx.record(_event(ctx, handle, "upload", size, digest))
    # Only now is the file whole: the record first, so a crash in between leaves a
    # marked file (the client got no reply and uploads again), never an unmarked cut.
    await asyncio.to_thread(clear_incomplete, ctx.incomplete_dir, ctx.org, local)
    ctx.upload_closed(ctx.org, local)


async def finish_lost(ctx: SessionContext, handle: Handle) -> None:
    """Connection lost with the handle open. Never raises: asyncssh's cleanup would
    skip the remaining handles (and leak their descriptors)."""
    try:
        size, digest = await _conclude(ctx, handle)
        if not handle.writing:
            await ctx.record(_download(ctx, handle, size, digest, lost=True))
            return
        local = handle.resolved.local
        assert local is not None
        if handle.rejected is not None:
            await _discard(ctx, handle, local, size, digest)
            return
        await asyncio.to_thread(mark_incomplete, ctx.incomplete_dir, ctx.org, local, CUT, size)
        await ctx.record(_event(ctx, handle, "upload_cut", size, digest,
                                "connection lost before the client closed the file; "
                                "kept as incomplete until uploaded again"))
        ctx.upload_cut(ctx.org, local, size)
    except Exception:
        log.error("sftp: finishing a handle after connection loss failed\n%s",
                  mask_text(traceback.format_exc()))
