"""How a decision batch is read: the one read policy for validate and ingest.

A batch of ``PARALLEL_MIN_BYTES`` or more is first read on every core
(:mod:`broker.intake.batch_chunks`); that path can only vouch for a valid file, so anything
else, and every smaller file, is judged by the ordinary streaming reader
(:class:`broker.intake.validation.BatchReader`), which gives the verdict and the lines. Other
contract files are recognised by their root namespace and checked against their XSD.
Both readers build on :mod:`broker.intake.validation`; this module sits above both.
"""

from __future__ import annotations

from pathlib import Path

from lxml import etree

import schemas
from broker.errors import InvalidFile, Problem
from broker.intake import batch_chunks
from broker.intake.batch_chunks import ParallelBatchReader, SplitFailed
from broker.intake.validation import (
    NS as BATCH_NS,
)
from broker.intake.validation import BatchContext, BatchReader, root_namespace
from broker.xml import safe as xmlsafe
from broker.xml.schema_messages import schema_problems
from broker.xml.schemas import SMALL_FILE_LIMIT, load_schema


def use_parallel(path: Path, size: int | None = None) -> bool:
    """Whether the parallel reader is tried first for the batch at ``path``."""
    # Read at call time: the threshold has one home (batch_chunks), tests lower it there.
    return (path.stat().st_size if size is None else size) >= batch_chunks.PARALLEL_MIN_BYTES


def validate_file(path: Path, ctx: BatchContext) -> list[Problem]:
    """Every problem of a decision batch (up to ctx.max_problems); [] when valid."""
    # A big file is first read on every core; that path can only say "valid", so
    # anything else is judged by the ordinary reader below.
    if use_parallel(path):
        try:
            for _ in ParallelBatchReader(path, ctx, build=False):
                pass
            return []
        except SplitFailed:
            pass
    try:
        for _ in BatchReader(path, ctx, build=False):
            pass
    except InvalidFile as exc:
        return exc.problems
    return []


def validate_any(path: Path, ctx: BatchContext) -> list[Problem]:
    """Validate any contract file by the namespace of its root element."""
    file = str(path)
    try:
        namespace, line = root_namespace(path, ctx)
    except xmlsafe.UnsafeXml as exc:
        return [exc.problem(file)]
    except etree.XMLSyntaxError as exc:
        return [xmlsafe.syntax_problem(file, exc)]
    if namespace == BATCH_NS:
        return validate_file(path, ctx)
    if namespace not in schemas.NAMESPACES:
        # A start tag cut short shows the root without its namespace: not XML, first.
        broken = xmlsafe.well_formed_problems(path, max_bytes=ctx.max_file_bytes,
                                              huge_text=ctx.huge_text)
        if broken:
            return broken
        known = ", ".join(sorted(schemas.NAMESPACES))
        return [Problem(file, line, "SCHEMA",
                        f"root element namespace '{namespace or ''}' is not one of: {known}")]
    try:
        tree = xmlsafe.parse(path, max_bytes=min(ctx.max_file_bytes, SMALL_FILE_LIMIT))
    except InvalidFile as exc:
        return exc.problems
    if not schemas.path(namespace).is_file():
        return []  # no XSD shipped for this namespace yet: well-formedness is all we can say
    schema = load_schema(namespace)
    if schema.validate(tree):
        return []
    return schema_problems(file, schema.error_log, "", None)[: ctx.max_problems]
