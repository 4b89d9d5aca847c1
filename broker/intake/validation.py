"""Streaming validation of decision batches, and XSD validation of the other formats.

A decision batch may be gigabytes, so it is never held in memory: lxml's iterparse
runs with the XSD attached (validation happens in C while parsing) and each
``Notification``/``PersonList`` is turned into a model item, checked against the
business rules (broker.intake.batch_rules), then cleared.

libxml2's streaming validator reports its errors without line numbers, and only
when the parse ends; and the fast pass remembers ids only as 64-bit hashes, to stay
small (libxml2's streaming validator itself grows by ~150 MB per GB). So when the
fast pass finds any schema error or a possible duplicate id, a second,
precise pass re-reads the file and validates each top-level element on its own
(wrapped in a bare root) against the same XSD, which gives the exact line of every
error; business rules run there only on elements the XSD accepts, so a malformed
element is described once, in schema terms. Valid files, the common case, are
read once.
"""

from __future__ import annotations

import contextlib
import copy
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from lxml import etree

from broker.domain.model import BatchHeader, Item
from broker.errors import InvalidFile, Problem
from broker.intake.batch_rules import (
    NOTIFICATION,
    NS,
    PERSON_LIST,
    ROOT,
    RuleContext,
    Rules,
    ShapeError,
    root_text_problem,
)
from broker.xml import safe as xmlsafe
from broker.xml.schema_messages import schema_problems
from broker.xml.schemas import load_schema

# libxml2 refuses single text nodes above 10 MB unless told otherwise; base64
# attachments above this decoded size need that limit lifted (see xmlsafe.iterparse).
_PLAIN_TEXT_LIMIT = 7_000_000


@dataclass(frozen=True)
class BatchContext:
    municipalities: frozenset[str]  # known codes
    today: date  # DecisionDate must not be after this (Europe/Helsinki date, passed in)
    max_file_bytes: int = 4 * 1024**3
    max_attachment_bytes: int = 64 * 1024**2
    max_problems: int = 100

    @property
    def huge_text(self) -> bool:
        return self.max_attachment_bytes > _PLAIN_TEXT_LIMIT


# ------------------------------------------------------------------ reader


def _open_checked(path: Path, ctx: BatchContext) -> Any:
    f = path.open("rb")
    try:
        xmlsafe.check_stream(f, max_bytes=ctx.max_file_bytes)
    except BaseException:
        f.close()
        raise
    return f


def _wrong_root(file: str, el: Any) -> Problem | None:
    if xmlsafe.has_doctype(el):
        return Problem(file, 1, "NOT_WELL_FORMED", "a DOCTYPE is not allowed")
    if el.tag == ROOT:
        return None
    namespace, local = xmlsafe.split_tag(el.tag)
    return Problem(
        file, el.sourceline, "SCHEMA",
        f"root element is {local} in namespace '{namespace or ''}'; "
        f"a decision batch is DecisionBatch in namespace '{NS}'",
    )


class BatchReader:
    """Iterate the items of a decision batch as they are read; see module doc."""

    def __init__(
        self,
        path: Path,
        ctx: BatchContext,
        on_attachment: Callable[[str, bytes], None] | None = None,
        *,
        build: bool = True,
        source: xmlsafe.Readable | None = None,
    ) -> None:
        self.path = path
        self.build = build  # False: check only, yield nothing (validate_file)
        # A piece of the file (broker.intake.batch_chunks), already checked; it has no precise
        # pass of its own: any problem ends it with an InvalidFile without problems.
        self.source = source
        self.ctx = ctx
        self.on_attachment = on_attachment
        self.header: BatchHeader | None = None
        self._file = str(path)
        self._rule_ctx = RuleContext(
            self._file, ctx.municipalities, ctx.today, ctx.max_attachment_bytes
        )
        self.id_hashes: array[int] = array("q")  # the fast pass's id hashes, once read

    def __iter__(self) -> Iterator[Item]:
        file = self._file
        problems: list[Problem] = []
        rules = Rules(self._rule_ctx, self.on_attachment, exact_ids=False, build=self.build)
        self.id_hashes = rules.id_hashes
        needs_precise = False
        try:
            f = self.source if self.source is not None else _open_checked(self.path, self.ctx)
        except xmlsafe.UnsafeXml as exc:
            raise InvalidFile(file, [exc.problem(file)]) from None
        with contextlib.closing(f):
            src = xmlsafe.BoundedReader(f, self.ctx.max_file_bytes)
            it = xmlsafe.iterparse(
                src,
                events=("start", "end"),
                tag=(ROOT, NOTIFICATION, PERSON_LIST),
                schema=load_schema(NS),
                huge_text=self.ctx.huge_text,
            )
            root: Any = None
            # Proof of well-formedness is the parser's own, plus this: the root's end
            # was seen. Items are only delivered while nothing is in doubt.
            root_closed = False
            try:
                for event, el in it:
                    if event == "start":
                        if root is None:
                            root = el
                            wrong = _wrong_root(file, el)
                            if wrong is not None:
                                raise InvalidFile(file, [wrong])
                            self.header = BatchHeader(
                                batch_id=el.get("batchId", ""), created=el.get("created", "")
                            )
                        continue
                    if el is root:
                        root_closed = True
                        src.root_ended()
                        continue
                    if el.getparent() is not root:
                        # An item inside an item: the XSD refuses it, the precise pass
                        # says where. Not cleared: its ancestors are still being built.
                        needs_precise = True
                        continue
                    try:
                        # Only a PersonList has periodStart; cheaper than reading el.tag.
                        item: Item | None
                        if el.get("periodStart") is None:
                            item = rules.notification(el, problems)
                        else:
                            item = rules.person_list(el, problems)
                    except ShapeError:
                        needs_precise = True
                        item = None
                    # Free what has been read: the element itself and anything before it.
                    el.clear()
                    while el.getprevious() is not None:
                        del root[0]
                    if len(problems) >= self.ctx.max_problems and not needs_precise:
                        break
                    if item is not None and self.build and not needs_precise:
                        yield item
            except etree.LxmlError:
                # Schema errors arrive here without lines, and with the schema attached
                # libxml2 words some syntax errors badly ("no element found", line 0):
                # the precise pass, which parses without the schema, says it right.
                needs_precise = True
            except xmlsafe.UnsafeXml as exc:
                problems.append(exc.problem(file))
                root_closed = True  # the verdict is already "invalid"
            if not root_closed and len(problems) < self.ctx.max_problems:
                needs_precise = True  # never accept what was not seen to its end
        withheld = needs_precise  # items may have been held back: a verdict is owed
        if not needs_precise and rules.maybe_duplicates():
            needs_precise = True  # the exact pass names the duplicates and their lines
        if needs_precise or (problems and self.source is not None):
            if self.source is not None:
                raise InvalidFile(file, [])
            problems = precise_problems(self.path, self.ctx)
            if not problems and withheld:
                # The two passes disagree; refuse rather than deliver part of the file.
                problems = [Problem(file, xmlsafe.last_line(self.path), "NOT_WELL_FORMED",
                                    "the file could not be read consistently")]
        if problems:
            problems.sort(key=lambda p: p.line or 0)
            raise InvalidFile(file, problems[: self.ctx.max_problems])


def precise_problems(path: Path, ctx: BatchContext) -> list[Problem]:
    """The second pass: every schema and business problem with its exact line."""
    file = str(path)
    schema = load_schema(NS)
    rules = Rules(
        RuleContext(file, ctx.municipalities, ctx.today, ctx.max_attachment_bytes), build=False
    )
    problems: list[Problem] = []
    try:
        f = _open_checked(path, ctx)
    except xmlsafe.UnsafeXml as exc:
        return [exc.problem(file)]
    with f:
        src = xmlsafe.BoundedReader(f, ctx.max_file_bytes)
        it = xmlsafe.iterparse(src, events=("start", "end"), huge_text=ctx.huge_text)
        depth = 0
        root: Any = None
        el: Any = None
        root_closed = False
        children = False  # has the root had an element child yet
        wrong: Problem | None = None
        try:
            for event, el in it:
                if event == "start":
                    depth += 1
                    if depth == 1:
                        root = el
                        wrong = _wrong_root(file, el)
                        if wrong is not None:
                            # Read on all the same: a start tag cut short also looks
                            # like a wrong root, and then not-well-formed is the verdict.
                            problems.append(wrong)
                            continue
                        # The root's attributes alone: a childless batch is valid.
                        shell = etree.Element(ROOT, attrib=dict(el.attrib), nsmap={None: NS})
                        if not schema.validate(shell):
                            problems += schema_problems(file, schema.error_log, "", el.sourceline)
                    elif wrong is not None:
                        continue
                    elif depth == 2:
                        root_text_problem(file, root, el, not children, problems)
                        children = True
                    continue
                depth -= 1
                if depth == 0:
                    root_closed = True
                    src.root_ended()
                    if wrong is None:
                        root_text_problem(file, root, None, not children, problems)
                    continue
                if depth != 1 or root is None:
                    continue
                if wrong is None:
                    _check_child(el, schema, rules, problems, file)
                el.clear(keep_tail=True)  # the tail is text in the root: _root_text
                while el.getprevious() is not None:
                    del root[0]
                if len(problems) >= ctx.max_problems and wrong is None:
                    return problems
        except etree.XMLSyntaxError as exc:
            # Not XML: findings about its content would be noise (a cut start tag, say,
            # shows up as a missing attribute).
            return [xmlsafe.syntax_problem(file, exc)]
        except etree.LxmlError as exc:
            return [Problem(file, xmlsafe.last_line(path), "NOT_WELL_FORMED",
                            f"not well-formed XML: {type(exc).__name__}")]
        except ValueError as exc:
            # lxml refuses names libxml2 let through with only a namespace error (an
            # attribute with an undeclared prefix, say): not namespace-well-formed.
            line = el.sourceline if el is not None else None
            return [Problem(file, line or 1, "NOT_WELL_FORMED",
                            f"not well-formed XML: {exc}")]
        except xmlsafe.UnsafeXml as exc:
            problems.append(exc.problem(file))
            return problems
    if not root_closed:
        problems.append(Problem(file, xmlsafe.last_line(path), "NOT_WELL_FORMED",
                                "the file ends before its root element is closed"))
    return problems


def _check_child(el: Any, schema: Any, rules: Rules, problems: list[Problem], file: str) -> None:
    wrapper = etree.Element(
        ROOT, batchId="x", created="2000-01-01T00:00:00Z", nsmap={None: NS}
    )
    child = copy.deepcopy(el)  # deepcopy keeps source lines
    child.tail = None  # text after it is the root's, reported by _root_text
    wrapper.append(child)
    if schema.validate(wrapper):
        try:
            if el.tag == NOTIFICATION:
                rules.notification(el, problems)
            else:
                rules.person_list(el, problems)
        except ShapeError:  # cannot happen for a schema-valid element; say so if it does
            problems.append(Problem(file, el.sourceline, "SCHEMA", "unexpected structure"))
        return
    name = xmlsafe.split_tag(el.tag)[1]
    prefix = f"{name} {el.get('id')}: " if el.get("id") else ""
    problems += schema_problems(file, schema.error_log, prefix, el.sourceline)


# ------------------------------------------------------------------ entry points


def root_namespace(path: Path, ctx: BatchContext) -> tuple[str | None, int | None]:
    """Namespace and line of the root element, reading no further than its start tag."""
    with _open_checked(path, ctx) as f:
        for _event, el in xmlsafe.iterparse(f, events=("start",)):
            return xmlsafe.split_tag(el.tag)[0], el.sourceline
    return None, None
