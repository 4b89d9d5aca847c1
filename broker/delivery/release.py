"""The release pass: decide what is due, write it to the outboxes, exactly once.

Each delivery goes through two commits around one atomic file write:
1. the delivery row is created ``pending`` and its assignments are claimed;
2. the files are written (temp name, fsync, rename);
3. the delivery is marked ``written`` and its assignments ``released``.
A crash after 1 leaves a pending delivery, which ``recover`` finishes by writing
the same (deterministic) files, so every notification lands in exactly one file.
Commit 3 also appends the delivery's ``release`` row to the audit trail (file, sha256,
size, count and every notification id with its person's digest): the record and the
act are one transaction, so neither exists without the other.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

from sqlalchemy import Row
from sqlalchemy.engine import Connection

from broker import logs
from broker.config.settings import Config, Organisation
from broker.delivery.render import (
    attachments_zip_name,
    delivery_file_name,
    delivery_stem,
    list_file_name,
    render_notification_delivery,
    render_person_list,
    write_attachments_zip,
)
from broker.domain.model import Notification, PersonList
from broker.domain.schedule import HeldItem, PlannedRelease, due_groups, plan_first_delivery
from broker.errors import DeliveryError
from broker.storage import audit, releases
from broker.storage.audit import anchor_head
from broker.storage.files import (
    atomic_writer,
    file_digest,
    fsync_dir,
    private_dir,
    temp_path,
)
from broker.storage.store import Store

log = logs.get("broker.delivery.release")

# A delivery whose files cannot be written is retried after 10 s, 20 s, 40 s ... 15 min.
RETRY_FIRST = timedelta(seconds=10)
RETRY_MAX = timedelta(minutes=15)


def retry_delay(attempts: int) -> timedelta:
    """How long a delivery that failed ``attempts`` times waits before the next try."""
    return min(RETRY_FIRST * 2 ** max(0, min(attempts - 1, 16)), RETRY_MAX)


class _Busy(Exception):
    """Another process is writing this delivery's file right now."""


class _LostRace(Exception):
    """Some of a group's items were no longer held and due when it came to claim them."""


@dataclass(frozen=True)
class Failure:
    delivery_id: str
    organisation: str
    error: str


@dataclass
class ReleaseResult:
    deliveries: list[str] = field(default_factory=list)
    notifications: int = 0
    lists: int = 0
    plans: list[tuple[str, str, int]] = field(default_factory=list)  # org, type, total
    failures: list[Failure] = field(default_factory=list)


@dataclass(frozen=True)
class _Group:
    organisation: str
    type: str
    kind: str
    portion: int | None
    assignment_ids: tuple[int, ...]


@dataclass(frozen=True)
class _Written:
    """A delivery whose files are on disk, waiting for commit 3."""

    record: releases.WrittenDelivery
    event: audit.AuditEvent
    kind: str  # notification | list

    @property
    def delivery_id(self) -> str:
        return self.record.delivery_id


class Releaser:
    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self.tz = ZoneInfo(config.timezone)  # names, XML and zip times (config checked it)
        self._note: str | None = None

    def run(self, now: datetime, *, only_org: str | None = None,
            note: str | None = None) -> ReleaseResult:
        """One full pass as of ``now``; running it twice with the same ``now`` changes nothing.

        One organisation never holds up another: a delivery whose files cannot be written
        stays pending and is retried with backoff, and its organisation gets no new
        deliveries meanwhile (its items wait, held, to go out together), while every other
        organisation's releases go on.
        """
        # ``note``: why this pass runs as it does (an operator's forced pass), carried in
        # every release row of the pass, in the transaction of each release.
        self._note = note
        result = ReleaseResult()
        self.recover(result, now)
        held = self.form_plans(now, result)
        claimed, lost = self._claim(self.due_groups(now, only_org=only_org, held=held), now)
        if lost:
            # Another process (an operator's release-due beside the daemon) claimed or
            # changed some of the same rows between our read and our claim: decide again
            # for what is still held (what stays locked waits for the next pass).
            claimed += self._claim(self.due_groups(now, only_org=only_org), now)[0]
        self._write_and_finish(claimed, result, now)
        return result

    # -- stagger -------------------------------------------------------------
    def form_plans(self, now: datetime, result: ReleaseResult) -> list[HeldItem]:
        """A first delivery of a type over the threshold becomes a weekly plan (SPEC 4).
        Returns the held items due by ``now`` as they are after it (read once, for
        :meth:`due_groups`)."""
        with self.store.writer.begin() as c:
            view = releases.held_for_pass(c, now)
            moved: dict[int, PlannedRelease] = {}
            for (org, type_), cands in view.firsts.items():
                plan = plan_first_delivery(cands, self.config.stagger, now)
                if plan is not None and releases.save_plan(c, org, type_, plan, now):
                    result.plans.append((org, type_, len(plan)))
                    moved.update((int(x.id), x) for x in plan)
        return [h if h.id not in moved else
                h._replace(planned_at=moved[h.id].release_at, portion=moved[h.id].portion)
                for h in view.items]

    # -- what is due ---------------------------------------------------------
    def due_groups(self, now: datetime, *, only_org: str | None = None,
                   held: list[HeldItem] | None = None) -> list[_Group]:
        """The pure core decides (domain.schedule.due_groups) from plain rows storage
        returns (``held``, or read now): the path the stagger and timing properties are
        tested on."""
        if held is None:
            held = self.store.held_items(now, only_org)
        elif only_org is not None:
            held = [h for h in held if h.organisation == only_org]
        return [_Group(g.organisation, g.type, g.kind, g.portion, g.ids)
                for g in due_groups(held, now)]

    # -- releasing -------------------------------------------------------------
    def _claim(self, groups: list[_Group], now: datetime) -> tuple[list[str], int]:
        """Commit 1: a pending delivery row per group, its assignments claimed. Returns
        the deliveries, and how many groups lost a race (each undone alone, in its own
        savepoint: its number, row and claims; the others go on)."""
        claimed: list[str] = []
        lost = 0
        with self.store.writer.begin() as c:
            blocked = releases.blocked_organisations(c)
            for group in groups:
                org = self.config.by_id.get(group.organisation)
                if org is None or org.id in blocked:
                    # Removed from the config (config check refuses that while it holds
                    # items), or its earlier delivery still cannot be written: keep holding.
                    continue
                try:
                    with c.begin_nested():
                        claimed.append(self._claim_group(c, org, group, now))
                except _LostRace:
                    lost += 1
        return claimed, lost

    def _claim_group(self, c: Connection, org: Organisation, group: _Group,
                     now: datetime) -> str:
        seq = releases.next_delivery_number(c)
        if group.kind == "list":
            plist = PersonList.from_json(releases.payloads(c, group.assignment_ids)[0])
            name = list_file_name(org.id, plist, now, seq, org.format, self.tz)
            delivery_id = Path(name).stem
        else:
            delivery_id = delivery_stem(org.id, group.type, now, seq, self.tz)
            name = delivery_file_name(delivery_id)
        releases.new_delivery(c, delivery_id=delivery_id, organisation=org.id,
                              type_=group.type, kind=group.kind, file_name=name, now=now,
                              count=len(group.assignment_ids), portion=group.portion, seq=seq)
        if releases.claim(c, delivery_id, group.assignment_ids, now) != len(group.assignment_ids):
            raise _LostRace(delivery_id)  # claimed, locked or re-planned by another
        return delivery_id

    def recover(self, result: ReleaseResult | None = None, now: datetime | None = None) -> int:
        """Finish deliveries a crash (or a failed write) left pending; returns how many were
        tried. With ``now``, a delivery that failed before waits for its next attempt time;
        without (at start), every pending delivery is tried at once."""
        with self.store.engine.connect() as c:
            pending = releases.pending_deliveries(c, now)
        self._write_and_finish(pending, result or ReleaseResult(), now or datetime.now(UTC))
        return len(pending)

    def _write_and_finish(self, delivery_ids: list[str], result: ReleaseResult,
                          now: datetime) -> None:
        """Step 2 (files) for every delivery, then commit 3 for all of them at once."""
        if not delivery_ids:
            return
        done: list[_Written] = []
        failed: list[Failure] = []
        for delivery_id in delivery_ids:
            try:
                done.append(self._write_files(delivery_id))
            except _Busy:
                continue  # stays pending; the pass writing it now confirms it
            except Exception as exc:  # whatever it is, it stays with its organisation
                failed.append(self._failure(delivery_id, exc))
        if not done and not failed:
            return
        with self.store.writer.begin() as c:
            # Only what is still pending: two passes recovering one delivery (or a handover
            # undoing it) confirm it, and audit its release, once.
            pending = releases.still_pending(c, [w.delivery_id for w in done])
            done = [w for w in done if w.delivery_id in pending]
            if done:
                releases.mark_written(c, [w.record for w in done])
                audit.append(c, [w.event for w in done], now,
                             self.config.var / audit.HEAD_FILE)
            for f in failed:
                releases.mark_failed(c, f.delivery_id, f.error, now, retry_delay)
        if done:
            self._anchor()
        result.deliveries.extend(w.delivery_id for w in done)
        result.notifications += sum(w.record.count for w in done if w.kind == "notification")
        result.lists += sum(1 for w in done if w.kind == "list")
        result.failures.extend(failed)

    def _anchor(self) -> None:
        try:
            anchor_head(self.store.engine, self.config.var / audit.HEAD_FILE)
        except OSError as exc:  # committed; the anchor catches up at the next commit
            log.error("audit: anchoring the head failed", exc_info=exc)

    def _failure(self, delivery_id: str, exc: Exception) -> Failure:
        with self.store.engine.connect() as c:
            org = releases.organisation_of(c, delivery_id) or "?"
        if isinstance(exc, OSError):
            # strerror, not str(exc): the message is shown on /healthz and in status.
            error = f"{exc.strerror or type(exc).__name__} ({exc.filename or 'outbox'})"
        elif isinstance(exc, DeliveryError):
            error = str(exc)
        else:
            error = f"unexpected {type(exc).__name__}"
            log.error("release failed unexpectedly", delivery=delivery_id, exc_info=exc)
        return Failure(delivery_id, str(org), error)

    def _write_files(self, delivery_id: str) -> _Written:
        # A connection per delivery, its reads over before the files are written: one
        # dropped connection fails one delivery, and no transaction stays open for a pass.
        with self.store.engine.connect() as c:
            d = releases.delivery(c, delivery_id)
            payloads = releases.delivery_payloads(c, delivery_id)  # oldest first
        org = self.config.by_id.get(d.organisation)
        if org is None:
            raise DeliveryError("organisation is no longer configured",
                                key=d.organisation)
        folder = private_dir(self.config.outbox / org.id)
        zip_name = None
        extra: dict[str, object] = {}
        key = audit.audit_key(self.config.var)
        if d.kind == "list":
            plist = PersonList.from_json(payloads[0])
            digest, size = self._write(folder / d.file_name, lambda f: render_person_list(
                f, delivery_id=d.id, organisation=org.id, created=d.created_at,
                plist=plist, fmt=org.format, tz=self.tz))
            refs = tuple(audit.AuditRef(plist.id, audit.person_digest(key, e.pic))
                         for e in plist.entries)
        else:
            notes = [Notification.from_json(p) for p in payloads]
            if any(n.attachments for n in notes):
                zip_name = attachments_zip_name(d.id)
                # The zip goes first: once the XML is visible, everything it names is there.
                with self.store.blobs() as open_blob:
                    zip_sha, zip_size = self._write(
                        folder / zip_name, lambda f: write_attachments_zip(
                            f, notes, open_blob, created=d.created_at, tz=self.tz))
                extra = {"zip": zip_name, "zip_sha256": zip_sha, "zip_size": zip_size}
            digest, size = self._write(folder / d.file_name,
                                       lambda f: self._render_notes(f, d, org, notes,
                                                                    self.tz))
            refs = tuple(audit.AuditRef(n.id, audit.person_digest(key, n.person.pic))
                         for n in notes)
        if self._note:
            extra["note"] = self._note
        detail = json.dumps({"delivery": d.id, "type": d.type, "kind": d.kind,
                             "count": len(payloads), **extra}, sort_keys=True)
        event = audit.AuditEvent("release", org.id, path=d.file_name, size=size,
                                 sha256=digest, detail=detail, refs=refs)
        return _Written(releases.WrittenDelivery(delivery_id, digest, size, zip_name,
                                                 d.created_at, len(payloads)), event, d.kind)

    @staticmethod
    def _render_notes(f: IO[bytes], d: Row[Any], org: Organisation,
                      notes: list[Notification], tz: tzinfo) -> None:
        render_notification_delivery(
            f, delivery_id=d.id, organisation=org.id, created=d.created_at,
            notifications=notes, fmt="xml-v1" if org.format == "xml-v1" else "xml-v2", tz=tz)

    @staticmethod
    def _write(path: Path, render: Callable[[IO[bytes]], object]) -> tuple[str, int]:
        """Write via temp + fsync + rename, unless a crash already put the file in place."""
        try:
            if not path.exists():
                with atomic_writer(path, exclusive=True) as f:
                    render(f)
            else:
                # A crash between the link to the real name and the temp's unlink left
                # both (a pass still writing it would fail at the link: the name is taken).
                temp_path(path).unlink(missing_ok=True)
                fsync_dir(path.parent)  # the crash may have come before its folder's sync
        except (BlockingIOError, FileExistsError, FileNotFoundError):
            # Another pass (an operator's beside the daemon) is writing the same delivery,
            # or has just written it: the same bytes either way (rendering is deterministic).
            if not path.exists():
                raise _Busy(path) from None
            fsync_dir(path.parent)  # the other pass may not have synced it yet
        return file_digest(path)
