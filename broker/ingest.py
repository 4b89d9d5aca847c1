"""Taking in one decision batch: validate, route, time and store it, whole or not at all.

The file is read once, streaming. Items are routed and timed as they are read
and inserted in one transaction; any problem anywhere rolls the whole file back,
so a rejected file changes nothing in the store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from broker.config import Config
from broker.errors import InvalidFile, Problem, RoutingError
from broker.model import Item, Notification
from broker.routing import route
from broker.schedule import release_time
from broker.store import NewAssignment, Store, today_in
from broker.validation import BatchContext, BatchReader

CHUNK = 500


@dataclass
class Outcome:
    file: str
    sha256: str
    size: int
    status: str  # accepted | duplicate | rejected
    new: int = 0
    unchanged: int = 0
    problems: list[Problem] = field(default_factory=list)
    batch_id: str | None = None


def file_digest(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def batch_context(config: Config, now: datetime) -> BatchContext:
    return BatchContext(municipalities=config.register.codes,
                        today=today_in(config.timezone, now),
                        max_file_bytes=config.max_file_bytes)


def ingest_batch(path: Path, *, config: Config, store: Store, now: datetime,
                 on_progress: Callable[[int], None] | None = None) -> Outcome:
    """Validate and store ``path``; never raises for bad input, returns the verdict."""
    sha, size = file_digest(path)
    out = Outcome(file=path.name, sha256=sha, size=size, status="accepted")
    if store.accepted_file("kela", sha) is not None:
        out.status = "duplicate"
        return out
    if size > config.max_file_bytes:
        out.problems.append(Problem(path.name, None, "TOO_LARGE",
                                    f"file is {size} bytes; the limit is {config.max_file_bytes}"))
    else:
        mine: list[Problem] = []
        try:
            with store.ingesting(source="kela", kind="batch", name=path.name, sha256=sha,
                                 size=size, now=now) as tx:
                reader = BatchReader(path, batch_context(config, now), on_attachment=tx.put_blob)
                buf: list[Item] = []
                for item in reader:
                    buf.append(item)
                    if len(buf) >= CHUNK:
                        tx.add(list(_decide(buf, config, store, now, out, mine)))
                        buf = []
                        if on_progress:
                            on_progress(tx.count)
                tx.add(list(_decide(buf, config, store, now, out, mine)))
                tx.batch_id = out.batch_id = reader.header.batch_id if reader.header else None
                if mine:  # raising inside the transaction rolls the whole file back
                    raise InvalidFile(out.file, [])
        except InvalidFile as exc:
            out.problems = sorted([*exc.problems, *mine],
                                  key=lambda p: (p.line is None, p.line or 0))
    if out.problems:
        out.status = "rejected"
        out.new = out.unchanged = 0
        store.record_rejected(source="kela", kind="batch", name=path.name, sha256=sha,
                              size=size, now=now, report=report_text(out))
    return out


def _decide(buf: list[Item], config: Config, store: Store, now: datetime, out: Outcome,
            mine: list[Problem]) -> Iterator[tuple[Item, NewAssignment]]:
    known = store.existing_hashes([i.id for i in buf])
    for item in buf:
        what = f"{'Notification' if item.kind == 'notification' else 'PersonList'} {item.id}"
        previous = known.get(item.id)
        if previous == item.content_hash:
            out.unchanged += 1  # an identical resend is a no-op (SPEC 2)
            continue
        if previous is not None:
            mine.append(Problem(out.file, item.line, "INVALID_VALUE",
                                f"{what} was received before with different content; "
                                "an id is unique for all time"))
            continue
        try:
            org = route(config, item.type, item.municipality)
        except RoutingError as exc:
            mine.append(Problem(out.file, item.line, "INVALID_VALUE",
                                f"{what}: no receiving organisation: {exc.message}"))
            continue
        if isinstance(item, Notification):
            at = release_time(config.timing[item.type], decision_date=item.decision_date,
                              urgent=item.urgent, received=now, tz=config.timezone)
        else:
            at = now
        out.new += 1
        yield item, NewAssignment(org.id, at)


def report_text(out: Outcome) -> str:
    """The human-readable report kept beside a quarantined file."""
    lines = [f"File: {out.file}", f"SHA-256: {out.sha256}", f"Size: {out.size} bytes",
             f"Verdict: REJECTED ({len(out.problems)} problem(s)); nothing from this file "
             "was accepted.", ""]
    for p in out.problems:
        where = f"line {p.line}" if p.line is not None else "file"
        lines.append(f"{where}: {p.code}: {p.message}")
    return "\n".join(lines) + "\n"
