"""Responses from organisations back into Kela (SPEC 6), with acknowledgements (SPEC 7).

The daemon, on its worker thread (broker.runtime.inputs), for every complete upload in
``inbox/<org>/``:

    outcome = process_upload(path, org, config=..., store=..., now=...)
    settle_upload(path, outcome, config=..., store=..., now=...)   # archive / quarantine
    if outcome.needs_release: run a release pass (a transfer is due at once)

and once at start, before the inbox is scanned: ``finish_pending(config, store)``.

Every upload taken gets exactly one verdict and one acknowledgement, whenever the
process dies. The verdict (accepted, rejected or duplicate) is recorded in one
transaction (``response_files``) with the rendered acknowledgement, and for an accepted
upload with its receipts, transfers, payment demands and the forward to Kela. The files
are written from that row after the commit, then the upload leaves the inbox. A retry
(after a crash, or a failure in between) finds the recorded verdict and only finishes
what is missing; it never decides or acknowledges again.

Taking a new upload of a name first moves the acknowledgement of the previous upload of
that name to ``acks/history/`` (broker.responses.ack), so ``acks/<name>.ack.xml`` is always about
the latest upload.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection

from broker import logs
from broker.config.settings import Config, Organisation
from broker.errors import Problem, StoreError
from broker.responses import ack
from broker.responses.rules import Plan, RuleContext, check, parse
from broker.responses.texts import Finding
from broker.storage import response_store as rs
from broker.storage.db import serialize
from broker.storage.files import atomic_write, file_digest, move_taken, private_dir, stored_name
from broker.storage.response_store import (
    Unreceipted,
    accepted_response,
    demand_hashes,
    note_states,
    unsettled_upload,
)
from broker.storage.response_store import unreceipted as _unreceipted
from broker.storage.store import Store, today_in
from broker.xml.schemas import SMALL_FILE_LIMIT

__all__ = ["ResponseOutcome", "Unreceipted", "finish_pending", "mark_settled",
           "process_upload", "reject_unprocessed", "settle_upload", "size_limit",
           "unreceipted"]

_STATUS = {"accepted": "ACCEPTED", "rejected": "REJECTED", "duplicate": "DUPLICATE"}

log = logs.get("broker.responses")


@dataclass
class ResponseOutcome:
    file: str
    organisation: str
    sha256: str
    size: int
    status: str  # accepted | rejected | duplicate
    findings: list[Finding] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)  # in the organisation's language
    ack_path: Path | None = None
    forward_path: Path | None = None
    response_id: str | None = None
    receipts: int = 0
    transfers: list[tuple[str, str]] = field(default_factory=list)  # (notification, to org)
    payment_demands: int = 0
    replayed: bool = False  # the verdict was recorded by an earlier attempt
    row_id: int | None = None
    report: str | None = None

    @property
    def needs_release(self) -> bool:
        """A transfer was accepted: the next release pass delivers it to its new organisation."""
        return bool(self.transfers) or (self.replayed and self.status == "accepted")

    def problems_in(self, language: str) -> list[Problem]:
        return [f.problem(self.file, language) for f in self.findings]


def size_limit(config: Config) -> int:
    """Responses are parsed whole, in memory: the smallest of the configured bounds."""
    return min(config.max_file_bytes, config.sftp.max_upload_bytes, SMALL_FILE_LIMIT)


def unreceipted(store: Store, now: datetime) -> list[Unreceipted]:
    """Per organisation: delivered, not yet receipted notifications, and the oldest's age."""
    return _unreceipted(store.engine, now)


def process_upload(path: Path, org: Organisation, *, config: Config, store: Store,
                   now: datetime) -> ResponseOutcome:
    """Decide, apply and acknowledge one complete upload of ``org``; never raises for bad
    input (see the module doc)."""
    limit = size_limit(config)
    data: bytes | None = None
    if path.stat().st_size <= limit:
        with path.open("rb") as f:
            data = f.read(limit + 1)
        sha, size = hashlib.sha256(data).hexdigest(), len(data)
    else:
        sha, size = file_digest(path)
    out = ResponseOutcome(file=path.name, organisation=org.id, sha256=sha, size=size,
                          status="accepted")
    with store.engine.connect() as c:
        earlier = unsettled_upload(c, org.id, path.name, sha)
    if earlier is not None:
        return _replay(earlier, out, config, store)

    move_previous_ack(config, org.id, path.name)
    with store.engine.connect() as c:
        prior = accepted_response(c, org.id, sha)
    if prior is not None:
        out.status = "duplicate"
    elif data is None or len(data) > limit:
        out.findings = [Finding("TOO_LARGE", None, "too_large", {"size": size, "limit": limit})]
    else:
        parsed, out.findings = parse(data, max_bytes=limit)
        if parsed is not None:
            out.response_id = parsed.response_id
            with store.writer.begin() as c:
                # One response decides at a time (SQLite: the write lock; PostgreSQL: a
                # lock of this name): the states it checks are still the states it changes.
                serialize(c, "responses")
                notes = note_states(c, [r.notification_id for r in parsed.receipts]
                                    + [t.notification_id for t in parsed.transfers])
                ctx = RuleContext(config=config, org=org, today=today_in(config.timezone, now),
                                  notes=notes,
                                  demand_hashes=demand_hashes(c, org.id,
                                                              [d.id for d in parsed.demands]))
                plan, out.findings = check(parsed, ctx)
                if not out.findings:
                    out.row_id = _apply(c, plan, parsed.root, out, org, config, now)
    if out.findings:
        out.status = "rejected"
        out.problems = out.problems_in(org.language)
    if out.row_id is None:  # rejected or duplicate: the verdict alone is recorded
        with store.writer.begin() as c:
            out.row_id = _record(c, out, org, config, now)
    _finish(config, store, out.row_id)
    out.ack_path = _ack_dir(config, org.id) / ack.ack_name(out.file)
    return out


def reject_unprocessed(path: Path, org: Organisation, finding: Finding, *, config: Config,
                       store: Store, now: datetime, sha256: str | None = None,
                       size: int | None = None, record: bool = True) -> ResponseOutcome:
    """Answer an upload that was not processed at all with a REJECTED acknowledgement saying
    why: one set aside after repeated failures (``record``: its verdict is recorded, so it
    is settled like any other), or one cut off by a disconnect (not recorded: the fragment
    waits in the inbox for the client to resume or upload it again)."""
    if sha256 is None or size is None:
        sha256, size = file_digest(path)
    out = ResponseOutcome(file=path.name, organisation=org.id, sha256=sha256, size=size,
                          status="rejected", findings=[finding])
    out.problems = out.problems_in(org.language)
    with store.engine.connect() as c:
        earlier = unsettled_upload(c, org.id, path.name, sha256)
    if earlier is not None:  # a verdict was already given: it stands, no second ack
        return _replay(earlier, out, config, store)
    move_previous_ack(config, org.id, path.name)
    if record:
        with store.writer.begin() as c:
            out.row_id = _record(c, out, org, config, now)
        _finish(config, store, out.row_id)
    else:
        folder = private_dir(_ack_dir(config, org.id))
        atomic_write(folder / ack.ack_name(out.file), _render_ack(out, config, now))
    out.ack_path = _ack_dir(config, org.id) / ack.ack_name(out.file)
    return out


def move_previous_ack(config: Config, org_id: str, upload_name: str) -> Path | None:
    """A new upload of ``upload_name`` is taken: its previous ack goes to acks/history/."""
    folder = _ack_dir(config, org_id)
    current = folder / ack.ack_name(upload_name)
    try:
        data = current.read_bytes()
    except FileNotFoundError:
        return None
    received = ack.received_of(data) or datetime.fromtimestamp(current.stat().st_mtime)
    history = private_dir(folder / "history")
    n = 1
    while (history / ack.history_name(upload_name, received, n)).exists():
        n += 1
    target = history / ack.history_name(upload_name, received, n)
    os.rename(current, target)
    return target


def _replay(row: Any, out: ResponseOutcome, config: Config, store: Store) -> ResponseOutcome:
    """An earlier attempt recorded this upload's verdict: finish its files, answer as then."""
    _finish(config, store, row.id)
    out.replayed, out.row_id, out.status = True, row.id, row.status
    out.response_id, out.report = row.response_id or None, row.report
    out.ack_path = _ack_dir(config, row.organisation) / row.ack_name
    if row.forward_name:
        out.forward_path = config.outbox / "kela" / row.forward_name
    return out


def _render_ack(out: ResponseOutcome, config: Config, now: datetime) -> bytes:
    return ack.render_ack(file=out.file, sha256=out.sha256, received=now, tz=config.timezone,
                          status=_STATUS[out.status], problems=out.problems)


def _record(c: Connection, out: ResponseOutcome, org: Organisation, config: Config,
            now: datetime, **extra: Any) -> int:
    """The verdict row of one upload (and its rendered ack), in the caller's transaction."""
    if out.status == "rejected":
        out.report = report_text(out)
    return rs.record_verdict(
        c, organisation=org.id, name=out.file, sha256=out.sha256, size=out.size,
        status=out.status, response_id=(out.response_id or "")[:64], received_at=now,
        ack_name=ack.ack_name(out.file), ack_xml=_render_ack(out, config, now),
        report=out.report, **extra)


def _ack_dir(config: Config, org_id: str) -> Path:
    return config.outbox / org_id / "acks"


def _apply(c: Connection, plan: Plan, root: Any, out: ResponseOutcome, org: Organisation,
           config: Config, now: datetime) -> int:
    """Every change of one accepted upload, inside the caller's transaction."""
    count = len(plan.receipts) + len(plan.transfers) + len(plan.new_demands)
    file_id = rs.record_accepted_input(
        c, organisation=org.id, name=out.file, sha256=out.sha256, size=out.size, now=now,
        response_id=(out.response_id or "")[:64], count=count)
    fwd_name = ack.forward_name(org.id, now, out.sha256, config.timezone)
    row_id = _record(c, out, org, config, now, input_file_id=file_id, forward_name=fwd_name,
                     forward_xml=ack.render_forward(root, organisation=org.id,
                                                    sha256=out.sha256, received=now,
                                                    tz=config.timezone, file=out.file))
    for r in plan.receipts:
        _guard(rs.apply_receipt(c, row_id, r.assignment_id, org.id, r.receipt.notification_id,
                                r.receipt.line, r.receipt.handled, now),
               r.receipt.notification_id)
    for t in plan.transfers:
        _guard(rs.apply_transfer(c, row_id, org.id, t, now), t.transfer.notification_id)
        out.transfers.append((t.transfer.notification_id, t.to_organisation))
    for d in plan.new_demands:
        rs.add_demand(c, row_id, org.id, d, now)
    out.receipts, out.payment_demands = len(plan.receipts), len(plan.new_demands)
    out.forward_path = config.outbox / "kela" / fwd_name
    return row_id


def _guard(changed: bool, notification_id: str) -> None:
    if not changed:  # another process moved it between the check and the write
        raise StoreError(f"notification {notification_id} changed while the response was "
                         "applied; the upload is retried", key=notification_id)


def _finish(config: Config, store: Store, row_id: int) -> None:
    """Write the forward, then the ack (Kela has it before the organisation hears ACCEPTED)."""
    with store.engine.connect() as c:
        row = rs.verdict(c, row_id)
    if row.state == "written":
        return
    files = [(_ack_dir(config, row.organisation), row.ack_name, row.ack_xml)]
    if row.forward_name:
        files.insert(0, (config.outbox / "kela", row.forward_name, row.forward_xml))
    for folder, name, data in files:
        # Idempotent: the same bytes again if a crash came between a write and the mark.
        atomic_write(private_dir(folder) / name, bytes(data))
    with store.writer.begin() as c:
        rs.mark_written(c, row_id)


def finish_pending(config: Config, store: Store) -> int:
    """At start: write the files a crash left unwritten; settle uploads no longer in the inbox.

    Returns how many uploads had their files finished.
    """
    with store.engine.connect() as c:
        rows = rs.unfinished(c)
    finished = 0
    for r in rows:
        if r.state == "pending":
            _finish(config, store, r.id)
            finished += 1
        upload = config.inbox / r.organisation / r.name
        if not upload.is_file() or file_digest(upload)[0] != r.sha256:
            mark_settled(store, r.id, None)
    return finished


def mark_settled(store: Store, row_id: int, now: datetime | None) -> None:
    with store.writer.begin() as c:
        rs.settle(c, row_id, now)


def settle_upload(path: Path, outcome: ResponseOutcome, *, config: Config, store: Store,
                  now: datetime, same: Callable[[], bool] | None = None) -> Path:
    """Move the upload out of the inbox: var/archive/<org>/<date>/ when accepted or a
    duplicate, var/quarantine/<org>/ with a report when rejected. Returns the new path."""
    org = outcome.organisation
    if outcome.status == "rejected":
        target = private_dir(config.var / "quarantine" / org) / stored_name(now, path.name)
        atomic_write(target.with_name(f"{target.name}.report.txt"),
                     (outcome.report or report_text(outcome)).encode())
    else:
        dest = private_dir(config.var / "archive" / org / now.strftime("%Y-%m-%d"))
        target = dest / stored_name(now, path.name)
    # ``same``: is it still the file handled? One uploaded again meanwhile is left alone.
    if not move_taken(path, target, same):
        log.warning("upload replaced under its name while it was handled; the new one is "
                    "handled on its own", organisation=org, file=path.name)
    if outcome.row_id is not None:
        mark_settled(store, outcome.row_id, now)
    return target


def report_text(out: ResponseOutcome) -> str:
    """The operator's report beside a quarantined upload (English; the ack has the org's)."""
    lines = [f"File: {out.file}", f"Organisation: {out.organisation}",
             f"SHA-256: {out.sha256}", f"Size: {out.size} bytes",
             f"Verdict: REJECTED ({len(out.findings)} problem(s)); nothing from this file "
             "was accepted.", ""]
    for p in out.problems_in("en"):
        where = f"line {p.line}" if p.line is not None else "file"
        lines.append(f"{where}: {p.code}: {p.message}")
    return "\n".join(lines) + "\n"
