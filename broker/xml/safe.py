"""The one place that makes lxml parsers: every XML the broker reads goes through here.

Files come from outside (Kela, municipal SFTP users), so parsing is locked down:
no DTD loading or validation, no entity substitution, no network, no XInclude (we
never call ``xinclude()``), and a size bound. On top of that a DOCTYPE is refused
outright *before* libxml2 sees the document: the prolog is scanned byte by byte up
to the root start tag, so a billion-laughs or XXE document is rejected without any
expansion and without any file or URL being opened. A resolver that refuses every
URL and a ``docinfo.doctype`` check on the root are second and third lines of defence.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, Protocol

from lxml import etree

from broker.errors import InvalidFile, Problem

# Prologs (XML declaration, comments, PIs before the root) are tiny in practice; a
# megabyte of them is an attack or garbage, and bounding it keeps the scan cheap.
PROLOG_LIMIT = 1 << 20
# What may follow the root element (whitespace, comments, PIs) is bounded the same way.
EPILOGUE_LIMIT = 1 << 20
_HEAD_CHUNK = 64 * 1024

_UTF16_32_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")
_NAME_START = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_:") | frozenset(
    range(0x80, 0x100)
)


class UnsafeXml(ValueError):
    """The document is refused before parsing; ``code`` and ``line`` say why and where."""

    def __init__(self, message: str, *, code: str = "NOT_WELL_FORMED", line: int | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.line = line

    def problem(self, file: str) -> Problem:
        return Problem(file, self.line, self.code, self.message)


class _RefuseAll(etree.Resolver):
    """Answer every external lookup (entity, DTD, XInclude) with an error."""

    def resolve(self, system_url: str | None, public_id: str | None, context: Any) -> Any:
        raise UnsafeXml(f"external reference refused: {system_url or public_id}")


# resolve_entities=True, not False: with False, lxml forgives a document libxml2 found
# not well-formed whenever its error log holds nothing but undeclared-entity errors,
# and with a schema attached libxml2 logs no parse error at all, so a batch cut
# anywhere, or with an unknown entity, was accepted. With True libxml2's verdict
# stands. Nothing beyond the five predefined entities and character references can
# resolve: a DOCTYPE (the only place an entity can be declared) is refused before
# parsing, and should one get through, _RefuseAll answers every external lookup with
# an error and no_network holds. ("internal" would never even ask, but makes
# validation ~25% slower, measured on a 100 MB batch.)
_SAFE_OPTIONS: dict[str, Any] = {
    "resolve_entities": True,
    "no_network": True,
    "load_dtd": False,
    "dtd_validation": False,
    "remove_comments": False,
}


def scan_prolog(head: bytes, *, complete: bool) -> int:
    """Offset of the root start tag in ``head``, or -1 when more bytes are needed.

    Raises UnsafeXml for a DOCTYPE (or any other ``<!`` declaration) before the
    root, and for encodings that are not ASCII compatible (the contract is UTF-8,
    and a UTF-16 document could hide a DOCTYPE from this scan). ``complete`` says
    ``head`` is the whole file, so running out of bytes is final.
    """
    if head.startswith(_UTF16_32_BOMS) or b"\x00" in head[:4]:
        raise UnsafeXml("the file is not UTF-8 (UTF-16/32 is not accepted)", line=1)
    i = 3 if head.startswith(b"\xef\xbb\xbf") else 0
    _check_declared_encoding(head, i)
    n = len(head)
    while True:
        while i < n and head[i] in b" \t\r\n":
            i += 1
        if i + 1 >= n:
            break
        if head[i] != 0x3C:  # '<'
            return i  # text before the root: let the parser word the error
        nxt = head[i + 1]
        if nxt == 0x3F:  # '<?' XML declaration or processing instruction
            end = head.find(b"?>", i + 2)
            if end < 0:
                break
            i = end + 2
        elif head.startswith(b"<!--", i):
            end = head.find(b"-->", i + 4)
            if end < 0:
                break
            i = end + 3
        elif nxt == 0x21:  # '<!' : DOCTYPE, or a declaration that has no place here
            if not complete and n - i < 9:
                break
            line = head.count(b"\n", 0, i) + 1
            if head[i : i + 9].upper() == b"<!DOCTYPE":
                raise UnsafeXml(
                    "a DOCTYPE is not allowed (DTDs and entities are refused for security)",
                    line=line,
                )
            raise UnsafeXml("unexpected declaration before the root element", line=line)
        elif nxt in _NAME_START:
            return i
        else:
            return i  # malformed; the parser reports it with its own words
    if complete:
        return n  # no root element at all: the parser will say so
    if n >= PROLOG_LIMIT:
        raise UnsafeXml(f"no root element in the first {PROLOG_LIMIT} bytes", line=1)
    return -1


_DECL_ENCODING = re.compile(rb"""\sencoding\s*=\s*(?:"([^"]*)"|'([^']*)')""")


def _check_declared_encoding(head: bytes, at: int) -> None:
    """Refuse an XML declaration naming any encoding but UTF-8 (SPEC: text is UTF-8).

    libxml2 would read "latin-1" or "utf8" in its own way; the contract has one
    spelling, compared without case as XML encoding names are.
    """
    if not head.startswith(b"<?xml", at) or head[at + 5 : at + 6] not in (b" ", b"\t", b"\r",
                                                                        b"\n"):
        return
    end = head.find(b"?>", at)
    if end < 0:
        return  # an unfinished declaration: the parser reports it
    m = _DECL_ENCODING.search(head, at, end)
    if m is None:
        return  # no encoding named: UTF-8 by the XML rules
    name = (m.group(1) if m.group(1) is not None else m.group(2)).decode("ascii", "replace")
    if name.lower() != "utf-8":
        raise UnsafeXml(
            f"the XML declaration names encoding '{name[:40]}'; only UTF-8 is accepted",
            line=head.count(b"\n", 0, at) + 1,
        )


def check_stream(f: IO[bytes], *, max_bytes: int) -> None:
    """Refuse an open binary file that is too large or has an unsafe prolog.

    Leaves the file positioned at 0. Raises UnsafeXml.
    """
    size = os.fstat(f.fileno()).st_size
    _check_size(size, max_bytes)
    head = b""
    while True:
        chunk = f.read(_HEAD_CHUNK)
        head += chunk
        if scan_prolog(head, complete=not chunk) >= 0:
            break
    f.seek(0)


def check_bytes(data: bytes, *, max_bytes: int) -> None:
    """Same as check_stream for a document already in memory."""
    _check_size(len(data), max_bytes)
    scan_prolog(data[:PROLOG_LIMIT], complete=len(data) <= PROLOG_LIMIT)


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise UnsafeXml(
            f"file is {size} bytes, more than the limit of {max_bytes} bytes", code="TOO_LARGE"
        )


class Readable(Protocol):
    """What a parse reads from: a binary file, or a piece of one (broker.intake.batch_chunks)."""

    def read(self, n: int = -1) -> bytes: ...

    def close(self) -> None: ...


class BoundedReader:
    """File wrapper for iterparse that stops at ``max_bytes``, whatever fstat said.

    A file can grow after it was checked; reading past the bound raises UnsafeXml.
    Once the reader of the parse calls ``root_ended`` (it saw the root's end event),
    at most EPILOGUE_LIMIT more bytes may follow (plus what the parser had read ahead).
    """

    def __init__(self, f: Readable, max_bytes: int) -> None:
        self._f = f
        self._left = max_bytes
        self.delivered = 0  # bytes handed to the parser so far
        self._epilogue_left: int | None = None

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n if n >= 0 else self._left + 1)
        self._left -= len(data)
        self.delivered += len(data)
        if self._left < 0:
            raise UnsafeXml("file grew beyond the size limit while being read", code="TOO_LARGE")
        if self._epilogue_left is not None:
            self._epilogue_left -= len(data)
            if self._epilogue_left < 0:
                raise UnsafeXml(
                    f"more than {EPILOGUE_LIMIT} bytes follow the root element's end"
                )
        return data

    def root_ended(self) -> None:
        """The parser has shown the root's end: only a bounded epilogue may follow."""
        if self._epilogue_left is None:
            self._epilogue_left = EPILOGUE_LIMIT


def parser(*, schema: etree.XMLSchema | None = None, huge_text: bool = False) -> etree.XMLParser:
    """A locked-down XMLParser (see module doc). ``huge_text``: see ``iterparse``."""
    p = etree.XMLParser(schema=schema, huge_tree=huge_text, **_SAFE_OPTIONS)
    p.resolvers.add(_RefuseAll())
    return p


def iterparse(
    source: Any,
    *,
    events: Iterable[str] = ("end",),
    tag: str | Iterable[str] | None = None,
    schema: etree.XMLSchema | None = None,
    huge_text: bool = False,
) -> etree.iterparse:
    """A locked-down lxml iterparse over ``source`` (path or binary file object).

    Run check_stream first: iterparse alone does not refuse a DOCTYPE.
    ``huge_text`` lifts libxml2's 10 MB limit on one text node, needed for base64
    attachments above ~7 MB. It is safe only because the DOCTYPE is refused before
    parsing, so no entity can be declared and nothing can be amplified; the file
    size bound still applies.
    """
    # Comments and PIs are dropped from the tree (the parser still checks them): the
    # rules read an item's children by position, and a comment between them is legal.
    options = {**_SAFE_OPTIONS, "remove_comments": True, "remove_pis": True}
    it = etree.iterparse(
        source, events=tuple(events), tag=tag, schema=schema, huge_tree=huge_text, **options
    )
    it.resolvers.add(_RefuseAll())
    return it


def has_doctype(root: etree._Element) -> bool:
    """Second look after parsing started: libxml2's own record of a DOCTYPE."""
    return bool(root.getroottree().docinfo.doctype)


def syntax_problem(file: str, exc: etree.XMLSyntaxError) -> Problem:
    """A well-formedness error as a Problem with the parser's line."""
    msg = str(exc.msg or exc).strip()
    # lxml appends ", line N, column M" to some messages; the line is in Problem.line.
    for sep in (", line ", " (line "):
        cut = msg.find(sep)
        if cut > 0:
            msg = msg[:cut]
    # A line always: libxml2 gives 0 for some errors at the very start or end.
    line = exc.lineno if exc.lineno and exc.lineno > 0 else 1
    return Problem(file, line, "NOT_WELL_FORMED", f"not well-formed XML: {msg}")


def last_line(path: Path) -> int:
    """The file's last line: where a file that stops short stops."""
    lines = 1
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            lines += chunk.count(b"\n")
    return lines


def well_formed_problems(path: Path, *, max_bytes: int, huge_text: bool = False) -> list[Problem]:
    """Well-formedness alone, streaming and keeping nothing: [] or the one problem."""
    file = str(path)
    try:
        with path.open("rb") as f:
            check_stream(f, max_bytes=max_bytes)
            for _event, el in iterparse(BoundedReader(f, max_bytes), huge_text=huge_text):
                el.clear()  # only the parser's verdict matters
    except UnsafeXml as exc:
        return [exc.problem(file)]
    except etree.XMLSyntaxError as exc:
        return [syntax_problem(file, exc)]
    return []


def parse(
    source: Path | bytes,
    *,
    max_bytes: int,
    name: str | None = None,
    huge_text: bool = False,
) -> etree._ElementTree:
    """Parse a whole (small) document safely, or raise InvalidFile with the problem.

    For files that fit in memory (responses, acknowledgements, deliveries); decision
    batches are streamed by broker.intake.validation instead.
    """
    file = name or (str(source) if isinstance(source, Path) else "<bytes>")
    try:
        if isinstance(source, Path):
            with source.open("rb") as f:
                check_stream(f, max_bytes=max_bytes)
                data = f.read(max_bytes + 1)
            check_bytes(data, max_bytes=max_bytes)
        else:
            check_bytes(source, max_bytes=max_bytes)
            data = source
        tree = etree.ElementTree(etree.fromstring(data, parser(huge_text=huge_text)))
    except UnsafeXml as exc:
        raise InvalidFile(file, [exc.problem(file)]) from None
    except etree.XMLSyntaxError as exc:
        raise InvalidFile(file, [syntax_problem(file, exc)]) from None
    if has_doctype(tree.getroot()):
        raise InvalidFile(file, [Problem(file, 1, "NOT_WELL_FORMED", "a DOCTYPE is not allowed")])
    return tree


def split_tag(tag: object) -> tuple[str | None, str]:
    """(namespace, local name) of an element's tag, never raising: lxml's QName refuses
    names that libxml2 let through in a broken document (a root named ":", say), and a
    verdict about such a file must not become a traceback."""
    if not isinstance(tag, str):
        return None, "node"
    if tag.startswith("{") and "}" in tag:
        namespace, local = tag[1:].split("}", 1)
        return namespace or None, local
    return None, tag
