"""Reading one big decision batch on several cores: split at top-level elements, parse
the pieces in worker processes, hand the items back in file order.

Parsing with the XSD and checking the rules is most of an ingest's work and runs in
one core per file; a batch of hundreds of megabytes is cut into pieces of
``chunk_bytes`` at the start of a ``<Notification`` or ``<PersonList`` tag. Every
piece after the first gets the file's prolog and root start tag in front, every
piece before the last gets ``</DecisionBatch>`` behind, and each is parsed and
checked on its own exactly as a whole file would be (broker.intake.validation.BatchReader).

Why a valid split changes nothing: a piece is accepted only if the parser proved it
well-formed to its end (libxml2's verdict at end of input, and the root's end seen:
broker.intake.validation), so its bytes between the root's tags are balanced content of
the root, and the piece after it starts where a conforming parser of the whole file
is between two top-level elements. So the pieces together are the file's own sequence
of top-level elements, and the root's content model is any sequence of them. A cut in
a bad place (inside a comment, a PI or CDATA, where ``<Notification`` may be mere
text) leaves the piece before it unclosed, and that piece fails: nothing a conforming
parser does not see as an element is ever read as one
(tests/test_parallel_equivalence.py).

This is a fast path for valid files only. Any problem in any piece, an id that may
repeat across pieces, or a file that cannot be cut raises ``SplitFailed``, and the
caller reads the file again the ordinary way, which gives the verdict and every
problem with its line. So a valid file is accepted with exactly the items, in the order,
the sequential reader gives (each with the line of its start tag, counted in the file),
and an invalid one is described the same way.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from broker.domain.model import BatchHeader, StoredItem
from broker.intake.batch_rules import maybe_duplicates
from broker.intake.validation import BatchContext, BatchReader
from broker.xml import safe as xmlsafe

PARALLEL_MIN_BYTES = 48 * 1024**2  # below this, starting worker processes costs more than it saves
CHUNK_BYTES = 8 * 1024**2
_ROOT = b"<DecisionBatch"
_ROOT_END = b"</DecisionBatch>"
_CHILD_TAGS = (b"<Notification", b"<PersonList")
_NAME_END = frozenset(b" \t\r\n>/")


class SplitFailed(Exception):
    """The parallel fast path cannot vouch for this file; read it the ordinary way."""


@dataclass(frozen=True)
class Chunk:
    start: int  # byte range of the file
    end: int
    prefix: bytes  # prolog and root start tag, on one line (empty for the first piece)
    suffix: bytes  # b"</DecisionBatch>" (empty for the last piece)


@dataclass
class ChunkResult:
    ok: bool
    items: list[StoredItem] = field(default_factory=list)  # lines counted within the piece
    blobs: list[tuple[str, bytes]] = field(default_factory=list)
    id_hashes: bytes = b""
    header: BatchHeader | None = None
    newlines: int = 0  # in the piece's own bytes: the next piece's lines start after them


def _start_tag_end(data: bytes, at: int) -> int:
    """Offset just after the start tag beginning at ``at``, quotes respected; -1 if none."""
    quote = 0
    for i in range(at, len(data)):
        c = data[i]
        if quote:
            if c == quote:
                quote = 0
        elif c in (0x22, 0x27):  # " or '
            quote = c
        elif c == 0x3E:  # >
            return i + 1
    return -1


_WINDOW = 256 * 1024
_OVERLAP = max(len(t) for t in _CHILD_TAGS)  # a tag split across two windows is still seen


def _next_child(f: BinaryIO, at: int) -> int:
    """Offset of the first ``<Notification`` or ``<PersonList`` tag at or after ``at``,
    reading forward a window at a time; -1 if there is none."""
    while True:
        f.seek(at)
        window = f.read(_WINDOW + _OVERLAP + 1)
        hits = []
        for tag in _CHILD_TAGS:
            i = window.find(tag)
            # A longer name (<NotificationX) is not a cut point; look further along.
            while i >= 0 and i + len(tag) < len(window) and window[i + len(tag)] not in _NAME_END:
                i = window.find(tag, i + 1)
            if 0 <= i <= _WINDOW and i + len(tag) < len(window):
                hits.append(i)
        if hits:
            return at + min(hits)
        if len(window) <= _WINDOW + _OVERLAP:
            return -1  # end of file
        at += _WINDOW


def plan_chunks(path: Path, ctx: BatchContext, chunk_bytes: int = CHUNK_BYTES) -> list[Chunk]:
    """The pieces of ``path``; raises SplitFailed when it cannot or need not be cut."""
    with path.open("rb") as f:
        try:
            xmlsafe.check_stream(f, max_bytes=ctx.max_file_bytes)
        except xmlsafe.UnsafeXml:
            raise SplitFailed("refused before parsing") from None
        size = os.fstat(f.fileno()).st_size
        if size < 2 * chunk_bytes:
            raise SplitFailed("small file")
        head = f.read(xmlsafe.PROLOG_LIMIT)
        root = xmlsafe.scan_prolog(head, complete=size <= xmlsafe.PROLOG_LIMIT)
        # Only an unprefixed root: its children are then <Notification ...> too.
        if root < 0 or not head.startswith(_ROOT, root) or head[root + len(_ROOT)] \
                not in _NAME_END:
            raise SplitFailed("root element not found as expected")
        root_end = _start_tag_end(head, root)
        if root_end < 0 or head[root_end - 2] == 0x2F:  # '/>': no content to split
            raise SplitFailed("root start tag not found")
        # One line, so a piece's lines are its own lines plus those of the pieces before.
        prefix = head[:root_end].replace(b"\r", b" ").replace(b"\n", b" ")
        cuts = [0]
        while (nxt := _next_child(f, max(cuts[-1] + 1, root_end,
                                         len(cuts) * chunk_bytes))) > 0:
            if size - nxt < chunk_bytes // 2:
                break  # a short tail goes with the piece before it
            cuts.append(nxt)
    if len(cuts) < 2:
        raise SplitFailed("no place to cut")
    cuts.append(size)
    return [Chunk(start, end, prefix if start else b"", b"" if end == size else _ROOT_END)
            for start, end in itertools.pairwise(cuts)]


class _Spliced:
    """prefix + file[start:end] + suffix as one readable stream, for iterparse; counts
    the newlines of the file's own bytes as they pass."""

    def __init__(self, path: Path, chunk: Chunk) -> None:
        self._f = path.open("rb")
        self._f.seek(chunk.start)
        self._left = chunk.end - chunk.start
        self._tail = chunk.suffix
        self._head = chunk.prefix
        self.newlines = 0

    def read(self, n: int = -1) -> bytes:
        n = n if n > 0 else 1 << 20
        if self._head:
            out, self._head = self._head[:n], self._head[n:]
            return out
        if self._left > 0:
            out = self._f.read(min(n, self._left))
            self._left -= len(out)
            if out:
                self.newlines += out.count(b"\n")
                return out
            self._left = 0
        out, self._tail = self._tail[:n], self._tail[n:]
        return out

    def close(self) -> None:
        self._f.close()


def read_chunk(path: Path, chunk: Chunk, ctx: BatchContext, build: bool) -> ChunkResult:
    """Parse and check one piece (in a worker process); ok=False on anything unusual."""
    blobs: list[tuple[str, bytes]] = []
    src = _Spliced(path, chunk)
    try:
        keep = (lambda sha, data: blobs.append((sha, data))) if build else None
        reader = BatchReader(path, ctx, on_attachment=keep, build=build, source=src)
        # JSON and hash made here, on this core.
        items = [StoredItem.of(item) for item in reader]
        while src.read(1 << 20):  # the whole piece counted, for the lines of the next
            pass
        return ChunkResult(True, items, blobs, reader.id_hashes.tobytes(), reader.header,
                           src.newlines)
    except Exception:  # anything at all: the ordinary reader will judge and word it
        return ChunkResult(False)
    finally:
        src.close()


def _worker_init(parent: int) -> None:
    # Ctrl-C reaches the whole process group; the parent handles it and stops the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A worker holds its own end of the task queue, so it would wait for tasks forever
    # after a kill -9 of the broker: it leaves as soon as its parent is gone (which may
    # be before this runs, hence the pid from the parent itself).
    def leave_with_parent() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=leave_with_parent, daemon=True, name="parent-watch").start()


def _workers() -> int:
    return max(2, min(4, (os.cpu_count() or 1)))


class ParallelBatchReader:
    """Like BatchReader (items in file order, as StoredItem rows; ``header``), but raises
    SplitFailed instead of describing problems: see the module doc. ``workers``
    processes are started per file; ``workers=0`` reads the pieces one after another in
    this process, through the same assembly (tests use it to cut files very finely).
    """

    def __init__(self, path: Path, ctx: BatchContext,
                 on_attachment: Callable[[str, bytes], None] | None = None, *,
                 build: bool = True, chunk_bytes: int | None = None,
                 workers: int | None = None) -> None:
        self.path, self.ctx, self.on_attachment, self.build = path, ctx, on_attachment, build
        self.chunk_bytes = chunk_bytes or CHUNK_BYTES
        self.workers = _workers() if workers is None else workers
        self.header: BatchHeader | None = None

    def __iter__(self) -> Iterator[StoredItem]:
        chunks = plan_chunks(self.path, self.ctx, self.chunk_bytes)
        hashes = array("q")
        lines = 0  # of the file, before the piece being handed out
        for result in self._results(chunks):
            if not result.ok:
                raise SplitFailed("a piece has a problem")
            self.header = self.header or result.header
            hashes.frombytes(result.id_hashes)
            if self.on_attachment is not None:
                for sha, data in result.blobs:
                    self.on_attachment(sha, data)
            # A piece's prefix is its line 1, where its own first line begins.
            if lines:
                for row in result.items:
                    yield row._replace(line=None if row.line is None else row.line + lines)
            else:
                yield from result.items
            lines += result.newlines
        if maybe_duplicates(hashes):
            raise SplitFailed("an id may repeat across pieces")

    def _results(self, chunks: list[Chunk]) -> Iterator[ChunkResult]:
        """Each piece's result, in file order."""
        if self.workers == 0:
            for chunk in chunks:
                yield read_chunk(self.path, chunk, self.ctx, self.build)
            return
        # spawn, not fork: the daemon has threads, and a forked child would inherit their locks.
        with ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_worker_init, initargs=(os.getpid(),)) as pool:
            pending: deque[Future[ChunkResult]] = deque()
            todo = deque(chunks)
            try:
                while todo or pending:
                    # A bounded window: results wait in memory only a few pieces ahead.
                    try:
                        while todo and len(pending) < 2 * self.workers:
                            pending.append(pool.submit(read_chunk, self.path, todo.popleft(),
                                                       self.ctx, self.build))
                        result = pending.popleft().result()
                    except (BrokenProcessPool, OSError) as exc:  # no workers: read it here
                        raise SplitFailed(f"worker processes failed: {exc}") from exc
                    yield result
            finally:
                for f in pending:
                    f.cancel()
