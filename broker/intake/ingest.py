"""Taking in one decision batch: validate, route, time and store it, whole or not at all.

The file is read once, streaming. Items are routed and timed as they are read
and inserted in one transaction; any problem anywhere rolls the whole file back,
so a rejected file changes nothing in the store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from broker.config.routing import decide
from broker.config.settings import Config
from broker.domain.model import StoredItem
from broker.domain.schedule import release_time
from broker.errors import AlreadyAccepted, InputChanged, InvalidFile, Problem, RoutingError
from broker.intake.batch_chunks import ParallelBatchReader, SplitFailed
from broker.intake.read_policy import use_parallel
from broker.intake.validation import BatchContext, BatchReader
from broker.storage.files import file_digest
from broker.storage.store import NewAssignment, Store, today_in

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
    # Accepted, but worth a person's look: a merged municipality's code after the merger.
    warnings: list[Problem] = field(default_factory=list)


def batch_context(config: Config, now: datetime) -> BatchContext:
    return BatchContext(municipalities=config.known_codes,
                        today=today_in(config.timezone, now),
                        max_file_bytes=config.max_file_bytes)


def ingest_batch(path: Path, *, config: Config, store: Store, now: datetime,
                 on_progress: Callable[[int], None] | None = None,
                 unchanged: Callable[[], bool] | None = None) -> Outcome:
    """Validate and store ``path``; never raises for bad input, returns the verdict.

    ``unchanged()``, when given, is asked right before the verdict is committed, accepted
    or rejected: if the file changed while it was read (a producer still writing in place),
    InputChanged is raised instead and nothing is stored, so a growing file is neither
    accepted in part nor rejected as truncated.
    """
    still = unchanged or (lambda: True)
    sha, size = file_digest(path)
    out = Outcome(file=path.name, sha256=sha, size=size, status="accepted")
    if store.accepted_file("kela", sha) is not None:
        out.status = "duplicate"
        return out
    if size > config.max_file_bytes:
        out.problems.append(Problem(path.name, None, "TOO_LARGE",
                                    f"file is {size} bytes; the limit is {config.max_file_bytes}"))
    else:
        ctx = batch_context(config, now)
        try:
            try:
                # The read policy (broker.intake.read_policy): a big file is read on every
                # core; the ordinary reader is the judge of anything that cannot vouch for.
                if not use_parallel(path, size):
                    raise SplitFailed("small file")
                _store_file(ParallelBatchReader(path, ctx), path, config, store, now, out,
                            on_progress, still)
            except SplitFailed:
                out.new = out.unchanged = 0
                _store_file(BatchReader(path, ctx), path, config, store, now, out, on_progress,
                            still)
        except InvalidFile as exc:
            out.problems = sorted(exc.problems, key=lambda p: (p.line is None, p.line or 0))
        except AlreadyAccepted:  # another taker (the CLI beside the daemon) was first
            out.status, out.new, out.unchanged = "duplicate", 0, 0
            return out
    if out.problems and not still():
        raise InputChanged("the file changed while it was read", file=path.name)
    if out.problems:
        out.status = "rejected"
        out.new = out.unchanged = 0
        store.record_rejected(source="kela", kind="batch", name=path.name, sha256=sha,
                              size=size, now=now, report=report_text(out))
    return out


def _store_file(reader: BatchReader | ParallelBatchReader, path: Path, config: Config,
                store: Store, now: datetime, out: Outcome,
                on_progress: Callable[[int], None] | None, unchanged: Callable[[], bool]) -> None:
    """Read, decide and insert every item in one transaction; InvalidFile rolls it back."""
    mine: list[Problem] = []
    with store.ingesting(source="kela", kind="batch", name=path.name, sha256=out.sha256,
                         size=out.size, now=now) as tx:
        reader.on_attachment = tx.put_blob
        decide = _Decider(config, store, now, out, mine)
        items: Iterable[StoredItem] = (
            reader if isinstance(reader, ParallelBatchReader)
            else (StoredItem.of(i) for i in reader))
        buf: list[StoredItem] = []
        try:
            for item in items:
                buf.append(item)
                if len(buf) >= CHUNK:
                    tx.add(list(decide(buf)))
                    buf = []
                    if on_progress:
                        on_progress(tx.count)
        except InvalidFile as exc:  # the reader's problems, and ours among the items before
            raise InvalidFile(out.file, [*exc.problems, *mine]) from None
        tx.add(list(decide(buf)))
        tx.batch_id = out.batch_id = reader.header.batch_id if reader.header else None
        if mine:  # raising inside the transaction rolls the whole file back
            raise InvalidFile(out.file, mine)
        if not unchanged():  # the last moment before the commit
            raise InputChanged("the file changed while it was read", file=path.name)


class _Decider:
    """Route and time each new item. Memoised per file: a big batch repeats the same few
    (type, municipality, date) and (type, decision date, urgent) combinations."""

    def __init__(self, config: Config, store: Store, now: datetime, out: Outcome,
                 mine: list[Problem]) -> None:
        self.config, self.store, self.now, self.out, self.mine = config, store, now, out, mine
        self._orgs: dict[tuple[str, str, str], tuple[str, str | None] | RoutingError] = {}
        self._times: dict[tuple[str, str, bool], datetime] = {}

    def _route(self, item: StoredItem) -> str:
        """The receiving organisation; the item's own date picks the route (SPEC 3)."""
        on = item.route_on or item.decision_date or ""
        key = (item.type, item.municipality, on)
        org = self._orgs.get(key)
        if org is None:
            try:
                d = decide(self.config, item.type, item.municipality, date.fromisoformat(on))
                org = (d.organisation.id, d.warning)
            except (RoutingError, ValueError) as exc:
                org = exc if isinstance(exc, RoutingError) else RoutingError(str(exc))
            self._orgs[key] = org
        if isinstance(org, RoutingError):
            raise org
        if org[1] is not None:
            self.out.warnings.append(Problem(self.out.file, item.line, "INVALID_VALUE",
                                             f"{_what(item)}: {org[1]}"))
        return org[0]

    def _release_at(self, n: StoredItem) -> datetime:
        if n.decision_date is None:  # a list goes out when received
            return self.now
        key = (n.type, n.decision_date, n.urgent)
        at = self._times.get(key)
        if at is None:
            at = self._times[key] = release_time(
                self.config.timing[n.type], decision_date=date.fromisoformat(n.decision_date),
                urgent=n.urgent, received=self.now, tz=self.config.timezone)
        return at

    def __call__(self, buf: list[StoredItem]) -> Iterator[tuple[StoredItem, NewAssignment]]:
        out, mine = self.out, self.mine
        known = self.store.existing_hashes([i.id for i in buf])
        for item in buf:
            previous = known.get(item.id)
            if previous is not None:
                if previous == item.content_hash:
                    out.unchanged += 1  # an identical resend is a no-op (SPEC 2)
                else:
                    mine.append(Problem(out.file, item.line, "INVALID_VALUE",
                                        f"{_what(item)} was received before with different "
                                        "content; an id is unique for all time"))
                continue
            try:
                org = self._route(item)
            except RoutingError as exc:
                mine.append(Problem(out.file, item.line, "INVALID_VALUE",
                                    f"{_what(item)}: no receiving organisation: {exc.message}"))
                continue
            out.new += 1
            yield item, NewAssignment(org, self._release_at(item))


def _what(item: StoredItem) -> str:
    return f"{'Notification' if item.kind == 'notification' else 'PersonList'} {item.id}"


def report_text(out: Outcome) -> str:
    """The human-readable report: kept beside a quarantined file; for an accepted file with
    warnings (a merged municipality's code), what the operator should read."""
    lines = [f"File: {out.file}", f"SHA-256: {out.sha256}", f"Size: {out.size} bytes",
             f"Verdict: REJECTED ({len(out.problems)} problem(s)); nothing from this file "
             "was accepted." if out.problems else
             f"Verdict: ACCEPTED ({out.new} new, {out.unchanged} already known).", ""]
    for p in out.problems:
        where = f"line {p.line}" if p.line is not None else "file"
        lines.append(f"{where}: {p.code}: {p.message}")
    if out.warnings and not out.problems:  # a rejection kept nothing to warn about
        lines.append(f"Warnings ({len(out.warnings)}):")
        for p in out.warnings:
            where = f"line {p.line}" if p.line is not None else "file"
            lines.append(f"{where}: {p.message}")
    return "\n".join(lines) + "\n"
